"""What hpcflow unpickles was written by this user's hpcflow: a per-user key, sealed
results, private run folders.

A result is an arbitrary Python object, so it is stored as a pickle, and loading a pickle
runs whatever code it names. Every pickle hpcflow writes (a small result inline in the
journal, a large one in ``results/``) is therefore *sealed*: an HMAC-SHA256 of its bytes
under a key that only this user can read, made where the pickle was made (the worker),
and checked before anything is unpickled. A value whose seal does not check out is never
loaded (:class:`UntrustedResult`): a resume runs its task again. The journal itself holds
plain data only (``store/journal.py``), so reading a run never runs anything.

**The key.** 32 random bytes in ``$HPCFLOW_KEY_FILE``, else
``$XDG_CONFIG_HOME/hpcflow/key`` (``~/.config/hpcflow/key``), made on first use with
mode 0600: written to a private temporary file, then linked into place, so that
processes starting together (a worker per rank) all read the one key that won, once per
process. A key file that others can read or write, or that another user owns, is refused. Batch jobs
see the same home directory, so workers under Slurm seal with the same key.

**Trusting a colleague.** ``$HPCFLOW_TRUSTED_KEYS`` lists other key files (``:``
between them) whose seals are accepted too, for a lab that continues each other's runs
on purpose. They may be group-readable, never readable or writable by everyone.

**Private folders.** A resume refuses a run folder, journal or ``results/`` folder that
another user owns or that group or others may write (:func:`check_private`): the seals
stop planted results, but not a planted journal that points at another result of yours.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import pickle
import secrets
import stat
from pathlib import Path
from typing import Any, BinaryIO

from hpcflow.errors import RunDirError, SpecError

KEY_ENV = "HPCFLOW_KEY_FILE"
TRUSTED_ENV = "HPCFLOW_TRUSTED_KEYS"
MAC_SIZE = 32
FILE_HEAD = b"hpcflow\x01"
"""A sealed result file: this, the MAC of the rest, then the pickle."""
_KEY_BYTES = 32
_PRIVATE = 0o600


class TrustError(RunDirError):
    """A key file or a run folder cannot be trusted; the message says what to do."""


class UntrustedResult(TrustError):
    """A stored result whose seal does not check out; ``where`` names it. Never unpickled."""

    def __init__(self, where: str, why: str) -> None:
        self.where = where
        super().__init__(f"{where}: {why}")

    __reduce__ = SpecError.__reduce__


def key_path() -> Path:
    """``$HPCFLOW_KEY_FILE``, else ``$XDG_CONFIG_HOME/hpcflow/key`` (``~/.config``)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "hpcflow" / "key"


@functools.cache
def own_key() -> bytes:
    """This user's key, made on first use; read once per process (a worker seals every
    result with it)."""
    path = key_path()
    try:
        try:
            return _read_key(path)
        except FileNotFoundError:
            _create_key(path)
            return _read_key(path)
    except TrustError:
        raise
    except OSError as exc:
        raise TrustError(f"cannot use key file {path}: {exc.strerror}; set {KEY_ENV} to a "
                         "file of your own in a place you can write") from None


def _create_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(_KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise TrustError(f"key file {path} belongs to uid {st.st_uid}, not you: "
                             f"remove it, or set {KEY_ENV} to a key of your own")
        if st.st_mode & 0o077:
            raise TrustError(f"key file {path} is open to others (mode "
                             f"{stat.S_IMODE(st.st_mode):o}): `chmod 600 {path}`")
        key = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(key) < 16:
        raise TrustError(f"key file {path} is too short to be a key: remove it (a new one "
                         "is made on next use; results sealed with the old one rerun)")
    return key


def trusted_keys() -> tuple[bytes, ...]:
    """This user's key, then each key that ``$HPCFLOW_TRUSTED_KEYS`` lists."""
    return (own_key(), *_listed_keys(os.environ.get(TRUSTED_ENV, "")))


@functools.lru_cache(maxsize=8)
def _listed_keys(listing: str) -> tuple[bytes, ...]:
    keys = []
    for name in filter(None, listing.split(os.pathsep)):
        path = Path(name).expanduser()
        try:
            keys.append(_trusted_key(path))
        except OSError as exc:
            raise TrustError(f"{TRUSTED_ENV}: cannot read {path}: {exc.strerror}") from None
    return tuple(keys)


def _trusted_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o007:
            raise TrustError(f"{TRUSTED_ENV}: {path} is open to everyone (mode {mode:o}): "
                             f"`chmod o-rwx {path}`, or leave it out")
        return os.read(fd, 4096)
    finally:
        os.close(fd)


class _Mac:
    """HMAC-SHA256 (RFC 2104) under one key, from the two padded-key states hashed once:
    a MAC then costs two copies and two short sha256 passes. ``hmac.digest`` sets the key
    up again on every call, several times the cost of the hashing for a small result."""

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes) -> None:
        key = key if len(key) <= 64 else hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def of(self, data: bytes | memoryview) -> bytes:
        inner = self.inner.copy()
        inner.update(data)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@functools.cache
def _own_mac() -> _Mac:
    return _Mac(own_key())


@functools.lru_cache(maxsize=8)
def _macs(listing: str) -> tuple[_Mac, ...]:
    return (_own_mac(), *(_Mac(key) for key in _listed_keys(listing)))


def new_mac() -> hmac.HMAC:
    return hmac.new(own_key(), digestmod=hashlib.sha256)


def seal(data: bytes) -> bytes:
    """``data`` with its MAC in front: a result's inline journal form."""
    return _own_mac().of(data) + data


def unseal(blob: bytes, where: str) -> Any:
    """The value of a sealed inline result, unpickled only once its MAC checks out."""
    view = memoryview(blob)
    if len(view) < MAC_SIZE or not _known(bytes(view[:MAC_SIZE]), view[MAC_SIZE:]):
        raise UntrustedResult(where, _NOT_OURS)
    return pickle.loads(view[MAC_SIZE:])


def sealed_payload(blob: bytes) -> memoryview:
    """The pickle inside a sealed blob, unchecked (for hashing, never for loading)."""
    return memoryview(blob)[MAC_SIZE:]


def _known(mac: bytes, data: bytes | memoryview) -> bool:
    return any(hmac.compare_digest(known.of(data), mac)
               for known in _macs(os.environ.get(TRUSTED_ENV, "")))


_NOT_OURS = ("not sealed with your key (or a trusted one), so it was not loaded: another "
             "user or program wrote it")


class _MacWriter:
    """A file for ``pickle.dump`` that feeds the MAC with every byte it writes."""

    __slots__ = ("fh", "mac")

    def __init__(self, fh: BinaryIO, mac: hmac.HMAC) -> None:
        self.fh, self.mac = fh, mac

    def write(self, data: bytes) -> int:
        self.mac.update(data)
        return self.fh.write(data)


def write_sealed(path: Path, value: Any, data: bytes = b"") -> None:
    """A sealed pickle of ``value`` (``data`` if already made), mode 0600, written aside
    then renamed. The MAC is one pass over the bytes as they are written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mac = new_mac()
    with open_private(tmp) as fh:
        fh.write(FILE_HEAD + bytes(MAC_SIZE))
        if data:
            mac.update(data)
            fh.write(data)
        else:
            pickle.dump(value, _MacWriter(fh, mac), protocol=5)
        fh.seek(len(FILE_HEAD))
        fh.write(mac.digest())
    os.replace(tmp, path)


def load_sealed(path: str | os.PathLike[str]) -> Any:
    """The value in a sealed result file, unpickled only once its MAC checks out (one
    read to check, a second from the page cache to load, both through one descriptor)."""
    with open(path, "rb") as fh:
        head = fh.read(len(FILE_HEAD) + MAC_SIZE)
        if not head.startswith(FILE_HEAD) or len(head) < len(FILE_HEAD) + MAC_SIZE:
            raise UntrustedResult(str(path), "not a sealed hpcflow result, so it was not loaded")
        st = os.fstat(fh.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise UntrustedResult(str(path), "others could have written it, so it was not loaded")
        keys = trusted_keys()
        macs = [hmac.new(key, digestmod=hashlib.sha256) for key in keys]
        while chunk := fh.read(1 << 22):
            for mac in macs:
                mac.update(chunk)
        wanted = head[len(FILE_HEAD):]
        if not any(hmac.compare_digest(mac.digest(), wanted) for mac in macs):
            raise UntrustedResult(str(path), _NOT_OURS)
        fh.seek(len(head))
        return pickle.load(fh)


def open_private(path: Path) -> BinaryIO:
    """``path`` opened for writing, created 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE)
    os.fchmod(fd, _PRIVATE)
    return os.fdopen(fd, "wb")


def check_private(folder: Path, *paths: Path) -> None:
    """Refuse (one line, what to do) a run folder or file of it that another user owns or
    that group or others may write: a resume would load what they put there."""
    for path in (folder, *paths):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_uid != os.getuid():
            raise TrustError(f"{path} belongs to uid {st.st_uid}, not you: a resume only "
                             "continues your own runs; copy the run folder (cp -r) and resume "
                             "the copy (docs/user-guide.md, sharing runs)")
        if st.st_mode & 0o022:
            raise TrustError(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}),"
                             " so they could have planted what a resume would load: if its "
                             f"content is yours, `chmod -R go-w {folder}` and resume again")
