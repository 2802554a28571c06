"""What the client and the server both need from the operating system: kernel
receive timestamps on UDP sockets and files only their owner can read."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

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


def write_private_file(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only.

    ``owner`` (uid, gid) is given the file when this process, as root, writes it for
    the user a server runs as.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
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


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class TimexStruct(ctypes.Structure):
    """``struct timex`` of <sys/timex.h>, for adjtimex(2) (sync, and tests that read it)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def adjtimex_function() -> Any:
    """libc's ``adjtimex`` (errno kept), typed for :class:`TimexStruct`."""
    function = ctypes.CDLL(None, use_errno=True).adjtimex
    function.argtypes = [ctypes.POINTER(TimexStruct)]
    function.restype = ctypes.c_int
    return function
