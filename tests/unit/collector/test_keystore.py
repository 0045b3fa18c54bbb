"""The collector keystore: file format, permissions, errors that never leak keys, networks."""
import os

import pytest
from cryptography.fernet import Fernet

from myason.collector.keystore import Keystore, format_line, parse_keystore
from myason.errors import KeyFileError

K1, K2, K3 = (Fernet.generate_key().decode() for _ in range(3))


def _write(tmp_path, text, mode=0o600):
    path = tmp_path / "agents.keys"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_load_rotation_networks_comments(tmp_path):
    path = _write(tmp_path, "# header\n\nedge-01 %s,%s 192.0.2.0/24,2001:db8::/32  # rotating\n"
                            "lab-7\t%s\n" % (K1, K2, K3))
    ks = Keystore.load(path)
    assert ks.agents == ["edge-01", "lab-7"]
    multi = ks.keys_for("edge-01")
    # The first key encrypts; both decrypt.
    assert Fernet(K1).decrypt(multi.encrypt(b"a")) == b"a"
    assert multi.decrypt(Fernet(K2).encrypt(b"b")) == b"b"
    assert ks.keys_for("nobody") is None
    assert ks.keys_for("lab-7").decrypt(Fernet(K3).encrypt(b"c")) == b"c"


def test_allowed_networks():
    ks = Keystore({"a": ([K1], ["192.0.2.0/24", "2001:db8::/32"]), "b": ([K2], None)})
    assert ks.allowed("a", "192.0.2.77")
    assert ks.allowed("a", "2001:db8::5")
    assert ks.allowed("a", "::ffff:192.0.2.9")  # dual-stack socket form
    assert not ks.allowed("a", "198.51.100.1")
    assert not ks.allowed("a", "not an address")
    assert not ks.allowed("a", None)
    assert ks.allowed("b", "203.0.113.1")  # no networks: anywhere
    assert not ks.allowed("c", "192.0.2.1")  # unknown agent
    # Cached answers stay right.
    assert ks.allowed("a", "192.0.2.77") and not ks.allowed("a", "198.51.100.1")


def test_allowed_cache_is_bounded():
    ks = Keystore({"a": ([K1], ["10.0.0.0/8"])})
    for i in range(10000):
        ks.allowed("a", "11.0.%d.%d" % (i // 256, i % 256))
    assert len(ks._cache) <= 4096


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_readable_is_refused_with_chmod_hint(tmp_path, mode):
    path = _write(tmp_path, "a %s\n" % K1, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Keystore.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(KeyFileError, match="not found"):
        Keystore.load(tmp_path / "nope")


@pytest.mark.parametrize("text, words", [
    ("a\n", "line 1: 1 columns"),
    ("a %s 10.0.0.0/8 extra\n" % K1, "line 1: 4 columns"),
    ("%s a\n" % K1, "line 1: column 1"),               # swapped columns
    ("a %s\n" % K1[:-2], "line 1: column 2"),          # truncated key
    ("a %s;%s\n" % (K1, K2), "line 1: column 2"),
    ("a %s %s\n" % (K1, K2), "separate keys with commas"),  # space instead of comma
    ("a %s 10.0.0.300/8\n" % K1, "line 1: column 3"),
    ("# only\n\n", "no agents"),
    ("a %s\n\nb %s\na %s\n" % (K1, K2, K3), "line 4: agent already defined on line 1"),
])
def test_errors_name_file_and_line_never_key_material(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(KeyFileError) as exc:
        Keystore.load(path)
    msg = str(exc.value)
    assert words in msg and str(path) in msg
    for key in (K1, K2, K3):
        assert key[:20] not in msg


def test_non_utf8_file(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"a \xff\xfe\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="UTF-8"):
        Keystore.load(path)


def test_format_line_round_trips():
    line = format_line("edge-01", [K1.encode(), K2], ["10.0.0.0/8"])
    assert line == "edge-01 %s,%s 10.0.0.0/8" % (K1, K2)
    entries = parse_keystore(line)
    assert entries["edge-01"][0] == [K1.encode(), K2.encode()]
    with pytest.raises(ValueError):
        format_line("bad id", [K1])
