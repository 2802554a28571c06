"""``adjtimex(2)`` through ctypes: ``gnomon sync`` sets the clock with it, tests read
the kernel's clock state with it. Apart from :mod:`gnomon._os` so that a query does
not import ``ctypes``."""

from __future__ import annotations

import ctypes
from typing import Any


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
