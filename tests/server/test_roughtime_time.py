"""Midpoint and radius of the Roughtime server from its time source (RadiusPolicy)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gnomon.proto.nts.ntp import seconds_to_short
from gnomon.proto.nts.ntp_server import TimeSource
from gnomon.server.roughtime import RadiusPolicy, midpoint_and_radius

NOW_NS = 1_796_000_000_400_000_000  # .4 s past a second


def synced(delay: float = 0.0, dispersion: float = 0.0, precision: int = -20) -> TimeSource:
    return TimeSource(
        leap=0,
        stratum=3,
        precision=precision,
        root_delay=seconds_to_short(delay),
        root_dispersion=seconds_to_short(dispersion),
    )


def test_unsynchronised_gets_no_time() -> None:
    assert midpoint_and_radius(TimeSource(), NOW_NS, RadiusPolicy()) is None
    assert midpoint_and_radius(TimeSource(leap=0, stratum=16), NOW_NS, RadiusPolicy()) is None


def test_midpoint_is_now_rounded_and_the_radius_at_least_one_second() -> None:
    assert midpoint_and_radius(synced(), NOW_NS, RadiusPolicy()) == (1_796_000_000, 1)
    assert midpoint_and_radius(synced(), NOW_NS + 200_000_000, RadiusPolicy())[0] == 1_796_000_001  # type: ignore[index]


def test_radius_covers_the_root_distance_rounded_up() -> None:
    # 2.0 / 2 + 1.2 + 2^-20 + 0.5 (rounding of MIDP) = 2.70... -> 3
    assert midpoint_and_radius(synced(2.0, 1.2), NOW_NS, RadiusPolicy()) == (1_796_000_000, 3)


def test_without_leap_second_information_radius_is_at_least_three() -> None:
    policy = RadiusPolicy(leap_information=False)
    assert midpoint_and_radius(synced(), NOW_NS, policy) == (1_796_000_000, 3)
    assert midpoint_and_radius(synced(8.0, 3.0), NOW_NS, policy) == (1_796_000_000, 8)


def test_operator_floor() -> None:
    assert midpoint_and_radius(synced(), NOW_NS, RadiusPolicy(min_radius=5))[1] == 5  # type: ignore[index]


def test_local_clock_radius_only_stands_in_for_an_unsynchronised_source() -> None:
    policy = RadiusPolicy(leap_information=False, local_clock_radius=10)
    assert midpoint_and_radius(TimeSource(), NOW_NS, policy) == (1_796_000_000, 10)
    assert midpoint_and_radius(synced(), NOW_NS, policy) == (1_796_000_000, 3)


@given(
    delay=st.floats(0, 30),
    dispersion=st.floats(0, 30),
    precision=st.integers(-30, 0),
    now_ns=st.integers(0, 1 << 62),
    leap=st.booleans(),
)
def test_the_interval_always_holds_the_true_time_bound(
    delay: float, dispersion: float, precision: int, now_ns: int, leap: bool
) -> None:
    """[MIDP - RADI, MIDP + RADI] holds now +- the root distance, and RADI >= the floor."""
    source = synced(delay, dispersion, precision)
    result = midpoint_and_radius(source, now_ns, RadiusPolicy(leap_information=leap))
    assert result is not None
    midpoint, radius = result
    distance = delay / 2 + dispersion + 2.0**precision
    assert radius >= (1 if leap else 3)
    # root delay/dispersion are stored in 1/65536 s: allow that quantisation.
    slack = 2 / 65536
    assert midpoint - radius <= now_ns / 1e9 - distance + slack
    assert midpoint + radius >= now_ns / 1e9 + distance - slack
