"""Fernet key files shared by agents and collectors: safe creation, loading with rotation.

A key file holds one or more url-safe base64 Fernet keys, one per line; '#' starts a comment
and blank lines are ignored. The first key encrypts, every key decrypts, so a key is rotated
by putting the new key first and removing the old one once every agent uses the new one.
"""
import base64
import hmac
import os
import re
import stat
import tempfile

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from myason.errors import KeyFileError

_FILE_HEADER = (b"# myason Fernet keys: the first key encrypts, every key decrypts.\n"
                b"# Keep this file mode 0600.\n")
# The canonical text of 32 bytes in url-safe base64; Fernet() alone would skip stray characters.
_KEY_RE = re.compile(rb"[A-Za-z0-9_-]{43}=")


def generate_key():
    """A new random Fernet key (url-safe base64 bytes)."""
    return Fernet.generate_key()


def _key_bytes(key):
    if isinstance(key, str):
        key = key.encode("ascii")
    if not isinstance(key, bytes) or not _KEY_RE.fullmatch(key.strip()):
        raise ValueError("a Fernet key is 44 characters of url-safe base64")
    return key


def write_key_file(path, key, overwrite=False, make_dirs=False):
    """Write one key to path with mode 0600; KeyFileError if it exists and not overwrite.

    make_dirs: create the missing parent directories first, each with mode 0700 whatever the
    umask. Returns the directories created, outermost first.
    """
    data = _FILE_HEADER + _key_bytes(key).strip() + b"\n"
    path = os.fspath(path)
    created = _make_parents(path) if make_dirs else []
    if not overwrite:
        # O_EXCL makes creation atomic and the file is never readable by others, not even briefly.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError("%s: already exists; refusing to overwrite a key file"
                               % path) from None
        except OSError as exc:
            raise KeyFileError("%s: cannot create: %s" % (path, exc.strerror)) from None
        try:
            _write_all(fd, data)
        except OSError as exc:
            os.unlink(path)
            raise KeyFileError("%s: cannot write: %s" % (path, exc.strerror)) from None
        return created
    # Replacing: write a private temporary file next to the target, then rename over it so
    # readers see either the old or the new key file, never a partial one.
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".myason-key-", dir=directory)  # mode 0600
    except OSError as exc:
        raise KeyFileError("%s: cannot create: %s" % (path, exc.strerror)) from None
    try:
        _write_all(fd, data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise KeyFileError("%s: cannot write: %s" % (path, exc.strerror)) from None
    return created


def _make_parents(path):
    """Create the missing ancestors of path, outermost first, mode 0700; returns them."""
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise KeyFileError("%s: cannot create: %s is not a directory" % (path, parent))
        missing.append(parent)
        parent = os.path.dirname(parent)
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if os.path.isdir(directory):
                continue            # made meanwhile by someone else: theirs, left as it is
            raise KeyFileError("%s: cannot create: %s is not a directory" % (path, directory)) from None
        except OSError as exc:
            raise KeyFileError("%s: cannot create directory %s: %s"
                               % (path, directory, exc.strerror)) from None
        # mkdir's mode is cut by the umask: a umask such as 0277 would leave a directory the
        # key cannot be written into, so the mode is set outright.
        os.chmod(directory, 0o700)
        created.append(directory)
    return created


def _write_all(fd, data):
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path, what="key file", limit=None):
    """The bytes of a secret file (the first `limit` at most); KeyFileError when it is missing,
    not a regular file, or readable by group or others (with the chmod that fixes it)."""
    # fstat on the opened descriptor so the mode checked is the mode of the file read.
    # O_NONBLOCK: a FIFO put in place of the file must not hang the program.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError("%s: cannot open %s: not found" % (path, what)) from None
    except OSError as exc:
        raise KeyFileError("%s: cannot open %s: %s" % (path, what, exc.strerror)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError("%s: not a regular file" % path)
        if st.st_mode & 0o077:
            raise KeyFileError("%s: mode %04o lets group or others read the %s; "
                               "fix with: chmod 600 %s" % (path, stat.S_IMODE(st.st_mode), what, path))
        chunks, size = [], 0
        while limit is None or size < limit:
            chunk = os.read(fd, 65536 if limit is None else min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise KeyFileError("%s: cannot read %s: %s" % (path, what, exc.strerror)) from None
    finally:
        os.close(fd)


def load_keys(path):
    """The raw keys of a key file, in file order; KeyFileError if missing, unsafe, empty or bad."""
    path = os.fspath(path)
    data = read_private(path)
    keys = []
    for number, line in enumerate(data.split(b"\n"), 1):
        # Fernet keys never contain '#' or spaces, so a trailing comment is safe to cut.
        text = line.split(b"#", 1)[0].strip()
        if not text:
            continue
        if not _KEY_RE.fullmatch(text):
            # Never echo the line: it may be a real key with a typo.
            raise KeyFileError("%s: line %d is not a Fernet key (44 characters of url-safe base64)"
                               % (path, number))
        keys.append(text)
    if not keys:
        raise KeyFileError("%s: no keys in key file" % path)
    return keys


def load_key_file(path):
    """FernetKeys from a key file: the first key encrypts, all keys decrypt."""
    return FernetKeys(load_keys(path))


class FernetKeys:
    """A key ring with MultiFernet's behaviour, plus decrypt_raw for raw (not base64) tokens.

    It wraps cryptography's MultiFernet instead of subclassing it: MultiFernet became a Rust
    type in cryptography 51 that cannot be subclassed, and its implementation is not ours to
    depend on. Only what myason uses is exposed.

    The collector receives tokens as raw bytes; MultiFernet.decrypt wants them in base64, which
    it then decodes again, and that round trip cost more than the cryptography itself (about
    70 -> 20 µs per 8 KB datagram here). decrypt_raw does what Fernet does (HMAC-SHA256 check,
    AES-128-CBC, PKCS7), with each key in turn, and raises InvalidToken the same way.
    """

    __slots__ = ("_multi", "_raw")

    def __init__(self, keys):
        """keys: Fernet keys (url-safe base64, bytes or str), the first one encrypting."""
        keys = [k.encode("ascii") if isinstance(k, str) else k for k in keys]
        if not keys:
            raise ValueError("at least one Fernet key is needed")
        self._multi = MultiFernet([Fernet(k) for k in keys])
        self._raw = []
        for k in keys:
            raw = base64.urlsafe_b64decode(k)
            self._raw.append((raw[:16], algorithms.AES(raw[16:])))

    def __len__(self):
        return len(self._raw)

    def encrypt(self, data: bytes) -> bytes:
        """A base64 Fernet token of data under the first key."""
        return self._multi.encrypt(data)

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        """As encrypt, with the token's timestamp set to current_time (epoch seconds)."""
        return self._multi.encrypt_at_time(data, current_time)

    def decrypt(self, token, ttl=None) -> bytes:
        """The plaintext of a base64 token under any key; InvalidToken otherwise."""
        return self._multi.decrypt(token, ttl)

    def decrypt_at_time(self, token, ttl: int, current_time: int) -> bytes:
        """As decrypt, judging the ttl at current_time."""
        return self._multi.decrypt_at_time(token, ttl, current_time)

    def decrypt_raw(self, token: bytes) -> bytes:
        """The plaintext of a raw Fernet token (no ttl check: the caller checks the timestamp)."""
        if len(token) < 57 or token[0] != 0x80 or (len(token) - 57) % 16:
            raise InvalidToken
        body, mac = token[:-32], token[-32:]
        for signing, aes in self._raw:
            if hmac.compare_digest(hmac.digest(signing, body, "sha256"), mac):
                dec = Cipher(aes, modes.CBC(token[9:25])).decryptor()
                plain = dec.update(token[25:-32]) + dec.finalize()
                unpadder = padding.PKCS7(128).unpadder()
                try:
                    return unpadder.update(plain) + unpadder.finalize()
                except ValueError:
                    raise InvalidToken from None
        raise InvalidToken
