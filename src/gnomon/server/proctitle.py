"""Process names in ``ps`` and ``top``: ``gnomon: supervisor``, ``gnomon: ntp worker 0``.

Without a dependency (no ``setproctitle``): two Linux mechanisms through ctypes.

- ``prctl(PR_SET_NAME)`` sets the thread name the kernel shows as ``comm``
  (``/proc/PID/comm``, ``ps -o comm``, ``top``); at most 15 bytes, so it is cut.
- The command line (``/proc/PID/cmdline``, ``ps -f``) is the process's original
  argv strings, which the kernel reads from the process's own memory between
  ``arg_start`` and ``arg_end`` (fields 48 and 49 of ``/proc/self/stat``). CPython
  copies argv at start and never reads that memory again, so it can be written
  over in place, as ``setproctitle`` does. The title is cut to the space the
  original command line had; the bytes are compared with ``/proc/self/cmdline``
  first, and nothing is written when they differ.

Both are best effort: anywhere else (another OS, an unexpected layout) the
process keeps its name, and nothing fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

_PR_SET_NAME = 15
_COMM_LENGTH = 15  # TASK_COMM_LEN - 1


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


def set_comm(name: str) -> bool:
    """Set the kernel's short name of this (main) thread; True if it was set."""
    libc = _libc()
    if libc is None or not hasattr(libc, "prctl"):
        return False
    raw = name.encode("utf-8", "replace")[:_COMM_LENGTH]
    return int(libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)) == 0


def _argument_area() -> tuple[int, int] | None:
    """(address, size) of this process's original argv strings, or None."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        with open("/proc/self/cmdline", "rb") as cmdline:
            current = cmdline.read()
    except OSError:
        return None
    # Fields after "pid (comm)" start with field 3 (state); arg_start is field 48.
    if len(fields) < 47:
        return None
    start, end = int(fields[45]), int(fields[46])
    size = end - start
    if start <= 0 or size <= 0 or size != len(current):
        return None
    if ctypes.string_at(start, size) != current:
        return None
    return start, size


def set_cmdline(title: str) -> bool:
    """Write ``title`` over the original command line; True if it was written."""
    area = _argument_area()
    if area is None:
        return False
    start, size = area
    raw = title.encode("utf-8", "replace")[: size - 1]
    ctypes.memset(start, 0, size)
    ctypes.memmove(start, raw, len(raw))
    return True


def set_process_title(title: str, short: str | None = None) -> None:
    """Name this process in ``ps`` (``title``, the command line) and ``top`` (``short``,
    at most 15 bytes, else ``title`` cut), best effort."""
    with contextlib.suppress(Exception):
        set_comm(short or title)
    with contextlib.suppress(Exception):
        set_cmdline(title)
