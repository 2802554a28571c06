"""Read the kernel clock discipline state without changing it, to prove peers left it alone.

`read_adjtimex()` calls adjtimex(2) with ``modes = 0``: a pure read, allowed to any
user.  `ClockSnapshot` adds the distance between CLOCK_REALTIME and CLOCK_MONOTONIC,
which moves only when someone steps the clock (both are slewed alike).

    before = snapshot()
    ...run a peer...
    assert_clock_unchanged(before)          # AssertionError listing what moved

or ``with ClockGuard(): ...``.  The check cannot tell our peers from anything else on
the machine that disciplines the clock; on the test machines nothing else does.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

from gnomon._timex import TimexStruct, adjtimex_function

# adjtimex status bits (include/uapi/linux/timex.h)
STA_PLL = 0x0001
STA_PPSFREQ = 0x0002
STA_PPSTIME = 0x0004
STA_FLL = 0x0008
STA_INS = 0x0010
STA_DEL = 0x0020
STA_UNSYNC = 0x0040
STA_FREQHOLD = 0x0080
STA_NANO = 0x2000
STA_MODE = 0x4000

_STATUS_NAMES = {
    STA_PLL: "PLL",
    STA_PPSFREQ: "PPSFREQ",
    STA_PPSTIME: "PPSTIME",
    STA_FLL: "FLL",
    STA_INS: "INS",
    STA_DEL: "DEL",
    STA_UNSYNC: "UNSYNC",
    STA_FREQHOLD: "FREQHOLD",
    0x0100: "PPSSIGNAL",
    0x0200: "PPSJITTER",
    0x0400: "PPSWANDER",
    0x0800: "PPSERROR",
    0x1000: "CLOCKERR",
    STA_NANO: "NANO",
    STA_MODE: "MODE",
    0x8000: "CLK",
}

_STATES = {
    0: "TIME_OK",
    1: "TIME_INS",
    2: "TIME_DEL",
    3: "TIME_OOP",
    4: "TIME_WAIT",
    5: "TIME_ERROR",
}


_Timex = TimexStruct  # shared with gnomon sync's adjtimex adapter
_adjtimex = adjtimex_function()


class Timex(NamedTuple):
    """adjtimex(2) read-out. `state` is the return value (TIME_OK=0 ... TIME_ERROR=5)."""

    state: int
    offset: int
    freq: int
    maxerror: int
    esterror: int
    status: int
    constant: int
    precision: int
    tolerance: int
    tick: int
    ppsfreq: int
    jitter: int
    shift: int
    stabil: int
    jitcnt: int
    calcnt: int
    errcnt: int
    stbcnt: int
    tai: int

    def status_flags(self) -> list[str]:
        return [name for bit, name in _STATUS_NAMES.items() if self.status & bit]

    def describe(self) -> str:
        return (
            f"{_STATES.get(self.state, self.state)} freq={self.freq / 65536:.3f}ppm "
            f"offset={self.offset} status=0x{self.status:04x}"
            f"[{','.join(self.status_flags())}] constant={self.constant} tick={self.tick} "
            f"tai={self.tai}"
        )


def read_adjtimex() -> Timex:
    """The kernel's clock discipline state, read with adjtimex(modes=0): changes nothing."""
    tx = _Timex()
    tx.modes = 0
    state = _adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, "adjtimex(modes=0) failed")
    return Timex(
        state,
        tx.offset,
        tx.freq,
        tx.maxerror,
        tx.esterror,
        tx.status,
        tx.constant,
        tx.precision,
        tx.tolerance,
        tx.tick,
        tx.ppsfreq,
        tx.jitter,
        tx.shift,
        tx.stabil,
        tx.jitcnt,
        tx.calcnt,
        tx.errcnt,
        tx.stbcnt,
        tx.tai,
    )


# Fields that nothing but a clock-disciplining process changes. maxerror grows by
# itself; offset decays by itself while the PLL is on, so it is compared only when
# the PLL is off (then it is the pending adjtime() slew, which must stay untouched).
_WATCHED = ("state", "freq", "status", "constant", "tick", "tai", "esterror")


@dataclass(frozen=True)
class ClockSnapshot:
    timex: Timex
    realtime_minus_monotonic_ns: int

    def changes(self, later: ClockSnapshot, *, step_tolerance_ns: int = 1_000_000) -> list[str]:
        """What differs in `later`, as readable lines (empty list: unchanged)."""
        out = []
        for name in _WATCHED:
            a, b = getattr(self.timex, name), getattr(later.timex, name)
            if a != b:
                out.append(f"{name}: {a} -> {b}")
        if not (self.timex.status & STA_PLL) and self.timex.offset != later.timex.offset:
            out.append(f"offset: {self.timex.offset} -> {later.timex.offset}")
        step = later.realtime_minus_monotonic_ns - self.realtime_minus_monotonic_ns
        if abs(step) > step_tolerance_ns:
            out.append(f"clock stepped by {step / 1e9:+.6f} s")
        return out


def _realtime_minus_monotonic_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of 5 monotonic brackets."""
    best: tuple[int, int] | None = None
    for _ in range(5):
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        rt = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m2 - m1 < best[0]:
            best = (m2 - m1, rt - (m1 + m2) // 2)
    assert best is not None
    return best[1]


def snapshot() -> ClockSnapshot:
    """adjtimex state plus the realtime/monotonic distance (moves only on a step)."""
    return ClockSnapshot(read_adjtimex(), _realtime_minus_monotonic_ns())


def assert_clock_unchanged(before: ClockSnapshot, after: ClockSnapshot | None = None) -> None:
    """AssertionError naming every change between `before` and `after` (default: now)."""
    after = after if after is not None else snapshot()
    changes = before.changes(after)
    if changes:
        raise AssertionError(
            "the system clock discipline changed while peers ran (a peer must never touch "
            "the clock):\n  "
            + "\n  ".join(changes)
            + f"\n  before: {before.timex.describe()}\n  after:  {after.timex.describe()}"
        )


class ClockGuard:
    """``with ClockGuard():`` asserts the clock state is the same at the end of the block."""

    def __init__(self) -> None:
        self.before: ClockSnapshot | None = None

    def __enter__(self) -> ClockGuard:
        self.before = snapshot()
        return self

    def check(self) -> None:
        assert self.before is not None, "ClockGuard used outside its with block"
        assert_clock_unchanged(self.before)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.check()
