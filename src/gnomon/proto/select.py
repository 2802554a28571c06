"""Source selection: which time do a majority of the sources agree on?

Each answer becomes a correctness interval, a range that holds the true time
if its source is honest and working (:func:`nts_interval`, :func:`roughtime_interval`).
:func:`select` sweeps the sorted interval endpoints as Marzullo's algorithm does
in RFC 5905 section 11.2.1 and returns the stretch of time covered by at least a
quorum of intervals; the sources with no part in it are the falsetickers.

One deliberate difference from RFC 5905: the number of falsetickers allowed is
fixed by the policy (by default, anything short of a majority) instead of being
searched upwards from zero. The search stops at the first count that yields an
intersection, so a coordinated minority can win it: with five sources, two liars
overlapping two honest sources far from the third honest one produce a
four-source intersection that excludes the truth, and RFC 5905's midpoint check
does not catch it (``tests/unit/test_select.py`` has the case). With the count
fixed, the result is the hull of every point a quorum covers, which holds the
truth whenever the liars are fewer than the quorum's margin: when at most
``n - quorum`` sources lie, every point the honest sources share is covered by
a quorum. The price is a wider interval than the search would give when all
sources are honest; a caller who can bound the liars (``max_falsetickers``)
gets a tighter one.

Values are integers (nanoseconds on whatever timeline the caller uses), so the
sweep is exact. Nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import NoMajorityError

__all__ = [
    "Interval",
    "NoMajorityError",
    "Policy",
    "Selection",
    "nts_interval",
    "roughtime_interval",
    "select",
]


@dataclass(frozen=True, slots=True)
class Interval:
    """``[low, high]``: where the true value lies if ``source`` tells the truth."""

    source: str
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.high < self.low:
            raise ValueError(f"interval of {self.source} ends before it starts")

    @classmethod
    def around(cls, source: str, center: int, half_width: int) -> Interval:
        return cls(source, center - abs(half_width), center + abs(half_width))

    @property
    def center(self) -> int:
        return (self.low + self.high) // 2

    def widened(self, by: int) -> Interval:
        return Interval(self.source, self.low - by, self.high + by)


def root_distance_ns(root_delay: float, root_dispersion: float) -> int:
    """RFC 5905 section 10 (without the local terms): root delay / 2 + root dispersion."""
    return round((root_delay / 2 + root_dispersion) * 1e9)


def nts_interval(
    source: str, offset_ns: int, delay_ns: int, root_delay: float, root_dispersion: float
) -> Interval:
    """An NTP answer: offset ± (root distance + delay / 2)."""
    half = root_distance_ns(root_delay, root_dispersion) + abs(delay_ns) // 2 + abs(delay_ns) % 2
    return Interval.around(source, offset_ns, half)


def roughtime_interval(source: str, midpoint_ns: int, radius_ns: int, delay_ns: int) -> Interval:
    """A Roughtime answer: midpoint ± (radius + round-trip delay)."""
    return Interval.around(source, midpoint_ns, abs(radius_ns) + abs(delay_ns))


@dataclass(frozen=True, slots=True)
class Policy:
    """How many sources must agree.

    ``min_agree``: never fewer agreeing sources than this (2: no time on one
    source's word). ``max_falsetickers``: how many liars to tolerate; ``None``
    means any minority, i.e. a strict majority must agree. A value that would
    let a minority decide is raised to a majority. ``majority_of``: count the
    majority among the sources that answered (``"answered"``) or among all the
    sources configured (``"configured"``, stricter when some are silent).
    """

    min_agree: int = 2
    max_falsetickers: int | None = None
    majority_of: str = "answered"

    def __post_init__(self) -> None:
        if self.min_agree < 1:
            raise ValueError("min_agree must be at least 1")
        if self.max_falsetickers is not None and self.max_falsetickers < 0:
            raise ValueError("max_falsetickers cannot be negative")
        if self.majority_of not in ("answered", "configured"):
            raise ValueError("majority_of is 'answered' or 'configured'")

    def quorum(self, answered: int, configured: int | None = None) -> int:
        """The number of intervals that must share a point."""
        base = configured if self.majority_of == "configured" and configured else answered
        base = max(base, answered)
        needed = base // 2 + 1
        if self.max_falsetickers is not None:
            needed = max(needed, answered - self.max_falsetickers)
        return max(needed, self.min_agree)


@dataclass(frozen=True, slots=True)
class Selection:
    """What a quorum agrees on, and who is outside it."""

    low: int
    high: int
    quorum: int
    truechimers: tuple[str, ...]  # sources whose interval meets a point a quorum covers
    falsetickers: tuple[str, ...]  # sources whose interval meets none

    @property
    def center(self) -> int:
        return (self.low + self.high) // 2

    @property
    def half_width(self) -> int:
        return self.high - self.center


def _covered(intervals: Sequence[Interval], quorum: int) -> list[tuple[int, int]]:
    """The maximal stretches that at least ``quorum`` intervals cover, in order.

    The RFC 5905 sweep: endpoints sorted, a low end counting +1 and a high end -1;
    at equal values low ends come first, so intervals that touch intersect.
    """
    events = sorted(
        [(i.low, 0) for i in intervals] + [(i.high, 1) for i in intervals]
    )  # 0 sorts before 1: opening before closing
    stretches: list[tuple[int, int]] = []
    chime = 0
    start: int | None = None
    for value, kind in events:
        if kind == 0:
            chime += 1
            if chime == quorum:
                start = value
        else:
            if chime == quorum:
                assert start is not None
                stretches.append((start, value))
                start = None
            chime -= 1
    return stretches


def select(
    intervals: Sequence[Interval], policy: Policy | None = None, *, configured: int | None = None
) -> Selection:
    """The interval a quorum of ``intervals`` agrees on; raises :class:`NoMajorityError`.

    ``configured``: how many sources were asked (for ``majority_of="configured"``);
    defaults to the number of intervals.
    """
    policy = policy or Policy()
    names = [i.source for i in intervals]
    if len(set(names)) != len(names):
        raise ValueError("one interval per source")
    quorum = policy.quorum(len(intervals), configured)
    if len(intervals) < quorum:
        asked = f" of {configured}" if configured and configured != len(intervals) else ""
        raise NoMajorityError(
            f"{len(intervals)} source(s){asked} answered, {quorum} must agree",
            sources=tuple(names),
            needed=quorum,
        )
    stretches = _covered(intervals, quorum)
    if not stretches:
        raise NoMajorityError(
            f"no {quorum} of the {len(intervals)} sources agree ({', '.join(names)})",
            sources=tuple(names),
            needed=quorum,
        )
    low, high = stretches[0][0], stretches[-1][1]
    agreed = [i.source for i in intervals if any(i.low <= b and a <= i.high for a, b in stretches)]
    false = [name for name in names if name not in agreed]
    return Selection(low, high, quorum, tuple(agreed), tuple(false))
