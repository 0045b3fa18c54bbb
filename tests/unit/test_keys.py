"""Tests for myason.keys: key generation, safe key files, rotation order, error messages."""
import base64
import os
import stat

import pytest
from cryptography.fernet import Fernet, InvalidToken

from myason import keys
from myason.errors import KeyFileError


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def write_plain(path, text, perm=0o600):
    path.write_text(text)
    os.chmod(path, perm)
    return path


def test_generate_key_is_a_fresh_fernet_key():
    a, b = keys.generate_key(), keys.generate_key()
    assert isinstance(a, bytes) and len(a) == 44 and a != b
    assert Fernet(a).decrypt(Fernet(a).encrypt(b"x")) == b"x"


def test_write_then_load_round_trip(tmp_path):
    path = tmp_path / "agent.key"
    key = keys.generate_key()
    old_umask = os.umask(0)  # mode must not depend on the caller's umask
    try:
        keys.write_key_file(path, key)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert keys.load_keys(path) == [key]
    mf = keys.load_key_file(str(path))
    assert isinstance(mf, keys.FernetKeys) and len(mf) == 1
    assert Fernet(key).decrypt(mf.encrypt(b"flows")) == b"flows"


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "agent.key"
    first, second = keys.generate_key(), keys.generate_key()
    keys.write_key_file(path, first)
    with pytest.raises(KeyFileError, match="agent.key"):
        keys.write_key_file(path, second)
    assert keys.load_keys(path) == [first]
    keys.write_key_file(path, second.decode(), overwrite=True)
    assert keys.load_keys(path) == [second] and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["agent.key"]  # no temporary file left


def test_write_rejects_bad_key_and_bad_directory(tmp_path):
    with pytest.raises(ValueError):
        keys.write_key_file(tmp_path / "k", b"not a key")
    assert not (tmp_path / "k").exists()
    # Without make_dirs a missing directory is an error: the library never creates one unasked.
    for overwrite in (False, True):
        with pytest.raises(KeyFileError, match="missing-dir"):
            keys.write_key_file(tmp_path / "missing-dir" / "k", keys.generate_key(), overwrite)
    assert not (tmp_path / "missing-dir").exists()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("overwrite", [False, True])
def test_make_dirs_creates_missing_parents_0700_whatever_the_umask(tmp_path, umask, overwrite):
    path = tmp_path / "etc" / "myason" / "agent.key"
    key = keys.generate_key()
    old_umask = os.umask(umask)
    try:
        created = keys.write_key_file(path, key, overwrite=overwrite, make_dirs=True)
    finally:
        os.umask(old_umask)
    assert created == [str(tmp_path / "etc"), str(tmp_path / "etc" / "myason")]
    assert mode(tmp_path / "etc") == mode(tmp_path / "etc" / "myason") == 0o700
    assert mode(path) == 0o600 and keys.load_keys(path) == [key]


def test_make_dirs_leaves_existing_directories_alone(tmp_path):
    (tmp_path / "etc").mkdir()
    os.chmod(tmp_path / "etc", 0o755)
    created = keys.write_key_file(tmp_path / "etc" / "myason" / "k", keys.generate_key(), make_dirs=True)
    assert created == [str(tmp_path / "etc" / "myason")]
    assert mode(tmp_path / "etc") == 0o755
    assert keys.write_key_file(tmp_path / "etc" / "k2", keys.generate_key(), make_dirs=True) == []


def test_make_dirs_under_a_file_is_a_key_error(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(KeyFileError, match="plain"):
        keys.write_key_file(tmp_path / "plain" / "sub" / "k", keys.generate_key(), make_dirs=True)


def test_rotation_first_key_encrypts_all_decrypt(tmp_path):
    new, old = keys.generate_key(), keys.generate_key()
    text = "# rotated 2024-06\n\n  %s  # new\n%s\n\n" % (new.decode(), old.decode())
    path = write_plain(tmp_path / "k", text)
    assert keys.load_keys(path) == [new, old]
    mf = keys.load_key_file(path)
    token = mf.encrypt(b"x")
    assert Fernet(new).decrypt(token) == b"x"
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt(token)
    assert mf.decrypt(Fernet(old).encrypt(b"y")) == b"y"


def test_missing_file(tmp_path):
    with pytest.raises(KeyFileError, match="nope.key.*not found"):
        keys.load_key_file(tmp_path / "nope.key")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_no_keys(tmp_path, text):
    with pytest.raises(KeyFileError, match="empty.key.*no keys"):
        keys.load_keys(write_plain(tmp_path / "empty.key", text))


@pytest.mark.parametrize("bad", ["abc", "A" * 44, "!" * 43 + "=", "%s extra"])
def test_malformed_key_names_file_and_line_not_the_key(tmp_path, bad):
    good = keys.generate_key().decode()
    bad = bad.replace("%s", good)
    path = write_plain(tmp_path / "bad.key", "# header\n%s\n%s\n" % (good, bad))
    with pytest.raises(KeyFileError, match="bad.key: line 3") as exc:
        keys.load_key_file(path)
    assert good not in str(exc.value)


def test_non_utf8_file_is_malformed(tmp_path):
    path = tmp_path / "bin.key"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="line 1"):
        keys.load_keys(path)


@pytest.mark.parametrize("perm", [0o640, 0o604, 0o644, 0o660, 0o700 | 0o004])
def test_group_or_other_access_refused_with_fix(tmp_path, perm):
    path = write_plain(tmp_path / "open.key", keys.generate_key().decode() + "\n", perm)
    with pytest.raises(KeyFileError) as exc:
        keys.load_keys(path)
    assert "chmod 600" in str(exc.value) and "open.key" in str(exc.value)
    os.chmod(path, 0o400)  # owner read-only is fine
    assert len(keys.load_keys(path)) == 1


def test_directory_is_not_a_key_file(tmp_path):
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="dir.key"):
        keys.load_keys(d)


def _raw(token):
    return base64.urlsafe_b64decode(token)


def test_decrypt_raw_matches_fernet_for_every_key_of_a_rotation():
    new, old = keys.generate_key(), keys.generate_key()
    fk = keys.FernetKeys([new, old.decode()])
    for key in (new, old):
        for plain in (b"", b"x", os.urandom(15), os.urandom(16), os.urandom(7777)):
            token = Fernet(key).encrypt(plain)
            assert fk.decrypt_raw(_raw(token)) == plain == fk.decrypt(token)
    assert fk.decrypt_raw(_raw(fk.encrypt(b"abc"))) == b"abc"       # the first key encrypts


@pytest.mark.parametrize("damage", [
    lambda t: t[:-1], lambda t: t[:56], lambda t: b"\x81" + t[1:], lambda t: t + b"\x00" * 16,
    lambda t: t[:30] + bytes([t[30] ^ 1]) + t[31:],          # ciphertext
    lambda t: t[:12] + bytes([t[12] ^ 1]) + t[13:],          # IV
    lambda t: t[:-1] + bytes([t[-1] ^ 1]),                   # HMAC
    lambda t: t[:3] + bytes([t[3] ^ 1]) + t[4:]])            # timestamp
def test_decrypt_raw_refuses_what_fernet_refuses(damage):
    key = keys.generate_key()
    token = damage(_raw(Fernet(key).encrypt(b"payload" * 9)))
    fk = keys.FernetKeys([key])
    with pytest.raises(InvalidToken):
        fk.decrypt_raw(token)
    with pytest.raises(InvalidToken):
        fk.decrypt(base64.urlsafe_b64encode(token))
    with pytest.raises(InvalidToken):
        keys.FernetKeys([keys.generate_key()]).decrypt_raw(_raw(Fernet(key).encrypt(b"x")))


def test_decrypt_raw_refuses_bad_padding_under_a_valid_mac():
    import hashlib
    import hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    key = keys.generate_key()
    raw = base64.urlsafe_b64decode(key)
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(raw[16:]), modes.CBC(iv)).encryptor()
    body = b"\x80" + b"\x00" * 8 + iv + enc.update(b"A" * 16) + enc.finalize()     # no padding block
    token = body + hmac.new(raw[:16], body, hashlib.sha256).digest()
    with pytest.raises(InvalidToken):
        keys.FernetKeys([key]).decrypt_raw(token)
    with pytest.raises(InvalidToken):
        Fernet(key).decrypt(base64.urlsafe_b64encode(token))
