"""What the client and the server both need from the operating system: kernel
receive timestamps on UDP sockets and files only their owner can read.

A query imports this module, so it stays light: no ``tempfile`` (which brings
``shutil``, ``random`` and the compression modules) and no ``ctypes``
(``adjtimex`` lives in :mod:`gnomon._timex`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; 3.11 does not export it
TIMESPEC = struct.Struct("@qq")
TIMESTAMP_ANCILLARY_SPACE = socket.CMSG_SPACE(TIMESPEC.size)


def timestamp_from_ancillary(ancillary: list[tuple[int, int, bytes]], default_ns: int) -> int:
    """The kernel receive time (Unix ns) in ``recvmsg``'s ancillary data, else ``default_ns``."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= TIMESPEC.size:
            seconds, nanoseconds = TIMESPEC.unpack_from(payload)
            return int(seconds) * 1_000_000_000 + int(nanoseconds)
    return default_ns


def write_private_file(path: str | Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only.

    ``owner`` (uid, gid) is given the file when this process, as root, writes it for
    the user a server runs as.
    """
    directory, name = os.path.split(os.fspath(path))
    os.makedirs(directory or ".", exist_ok=True)
    fd, temporary = _create_temporary(directory or ".", name)
    try:
        if owner is not None and os.fstat(fd).st_uid != owner[0]:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_CREATE_FLAGS |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
    """A new file ``.NAME.RANDOM`` in `directory`, mode 0600, as ``tempfile.mkstemp`` makes."""
    for _ in range(100):
        temporary = os.path.join(directory, f".{name}.{os.urandom(6).hex()}")
        try:
            return os.open(temporary, _CREATE_FLAGS, 0o600), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")
