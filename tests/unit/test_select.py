"""Source selection (gnomon.proto.select): intervals, quorum, falsetickers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.errors import GnomonError, NoMajorityError
from gnomon.proto.select import (
    Interval,
    Policy,
    nts_interval,
    roughtime_interval,
    select,
)


def iv(name: str, low: int, high: int) -> Interval:
    return Interval(name, low, high)


def test_nts_interval_is_offset_plus_minus_root_distance_and_half_delay() -> None:
    # root distance = 0.010 / 2 + 0.002 = 7 ms; half the 4 ms delay = 2 ms
    interval = nts_interval("a", 1_000_000, 4_000_000, root_delay=0.010, root_dispersion=0.002)
    assert (interval.low, interval.high) == (1_000_000 - 9_000_000, 1_000_000 + 9_000_000)


def test_roughtime_interval_is_midpoint_plus_minus_radius_and_delay() -> None:
    interval = roughtime_interval("r", 10_000, radius_ns=1_000, delay_ns=300)
    assert (interval.low, interval.high) == (8_700, 11_300)


def test_all_agree_gives_their_common_part() -> None:
    result = select([iv("a", 0, 10), iv("b", 2, 12), iv("c", 4, 8)])
    # quorum 2 of 3: everything at least two sources cover
    assert (result.low, result.high) == (2, 10)
    assert result.truechimers == ("a", "b", "c")
    assert result.falsetickers == ()
    assert result.quorum == 2


def test_without_liars_assumed_the_result_is_the_full_intersection() -> None:
    result = select([iv("a", 0, 10), iv("b", 2, 12), iv("c", 4, 8)], Policy(max_falsetickers=0))
    assert (result.low, result.high) == (4, 8)


def test_one_liar_of_three_is_named_and_does_not_move_the_result() -> None:
    result = select([iv("a", 0, 10), iv("b", 2, 12), iv("liar", 3600, 3610)])
    assert (result.low, result.high) == (2, 10)
    assert result.falsetickers == ("liar",)
    assert result.truechimers == ("a", "b")


def test_touching_intervals_agree() -> None:
    result = select([iv("a", 0, 5), iv("b", 5, 9)])
    assert (result.low, result.high) == (5, 5)


def test_two_sources_that_disagree_give_no_time() -> None:
    with pytest.raises(NoMajorityError) as info:
        select([iv("a", 0, 5), iv("b", 6, 9)])
    assert isinstance(info.value, GnomonError)
    assert info.value.needed == 2
    assert info.value.sources == ("a", "b")


def test_one_source_is_not_enough_by_default() -> None:
    with pytest.raises(NoMajorityError, match="1 source"):
        select([iv("a", 0, 5)])
    assert select([iv("a", 0, 5)], Policy(min_agree=1)).truechimers == ("a",)


def test_half_is_not_a_majority() -> None:
    with pytest.raises(NoMajorityError):
        select([iv("a", 0, 5), iv("b", 0, 5), iv("c", 10, 15), iv("d", 10, 15)])


def test_majority_of_configured_counts_silent_sources() -> None:
    two = [iv("a", 0, 5), iv("b", 1, 6)]
    assert select(two, configured=5).quorum == 2
    with pytest.raises(NoMajorityError, match="2 source"):
        select(two, Policy(majority_of="configured"), configured=5)


def test_max_falsetickers_never_lets_a_minority_decide() -> None:
    policy = Policy(max_falsetickers=10)
    assert policy.quorum(5) == 3
    assert Policy(max_falsetickers=1).quorum(5) == 4


def test_bad_policies_and_intervals() -> None:
    with pytest.raises(ValueError):
        Policy(min_agree=0)
    with pytest.raises(ValueError):
        Policy(majority_of="everyone")
    with pytest.raises(ValueError):
        Interval("a", 5, 4)
    with pytest.raises(ValueError):
        select([iv("a", 0, 1), iv("a", 0, 1)])


def rfc5905_search(intervals: list[Interval]) -> tuple[int, int]:
    """RFC 5905 appendix A.5.5.1's intersection, allow searched upwards from 0."""
    edges = sorted(
        [(i.low, -1) for i in intervals]
        + [(i.center, 0) for i in intervals]
        + [(i.high, 1) for i in intervals]
    )
    n = len(intervals)
    allow = 0
    while 2 * allow < n:
        found = chime = 0
        low = high = None
        for edge, kind in edges:
            chime -= kind
            if chime >= n - allow:
                low = edge
                break
            found += kind == 0
        chime = 0
        for edge, kind in reversed(edges):
            chime += kind
            if chime >= n - allow:
                high = edge
                break
            found += kind == 0
        if found <= allow and low is not None and high is not None and low <= high:
            return low, high
        allow += 1
    raise AssertionError("no intersection")


def test_two_coordinated_liars_of_five_cannot_exclude_the_truth() -> None:
    # The truth is 20. Honest: a, b (wide) and c (narrow, around the truth).
    # The liars overlap a and b away from c: RFC 5905's search stops at one
    # falseticker allowed (only c's midpoint is outside) and returns [0, 16].
    truth = 20
    intervals = [
        iv("a", 0, 21),
        iv("b", 0, 21),
        iv("c", 19, 21),
        iv("liar1", 0, 16),
        iv("liar2", 0, 16),
    ]
    low, high = rfc5905_search(intervals)
    assert not low <= truth <= high, "the example no longer shows the RFC search's weakness"
    result = select(intervals)
    assert result.low <= truth <= result.high
    assert "c" in result.truechimers


# --- properties -------------------------------------------------------------------

SPAN = 10**12
values = st.integers(-SPAN, SPAN)


@st.composite
def scenarios(draw: st.DrawFn, *, allowed_liars: int | None = None) -> tuple[int, list, list]:
    truth = draw(values)
    honest_count = draw(st.integers(2, 9))
    limit = honest_count - 1 if allowed_liars is None else allowed_liars
    liar_count = draw(st.integers(0, limit))
    honest = []
    for k in range(honest_count):
        below = draw(st.integers(0, SPAN))
        above = draw(st.integers(0, SPAN))
        honest.append(Interval(f"honest{k}", truth - below, truth + above))
    liars = []
    for k in range(liar_count):
        a, b = draw(values), draw(values)
        liars.append(Interval(f"liar{k}", min(a, b), max(a, b)))
    return truth, honest, liars


@given(scenarios(), st.randoms())
@settings(max_examples=400)
def test_a_minority_of_liars_never_moves_the_result_off_the_honest_sources(
    scenario: tuple[int, list[Interval], list[Interval]], rng: random.Random
) -> None:
    _, honest, liars = scenario
    everything = honest + liars
    rng.shuffle(everything)
    result = select(everything)
    shared_low = max(i.low for i in honest)
    shared_high = min(i.high for i in honest)
    # every time all honest sources allow is still in the result...
    assert result.low <= shared_low and shared_high <= result.high
    # ...the result never reaches beyond what some honest source allows...
    assert min(i.low for i in honest) <= result.low
    assert result.high <= max(i.high for i in honest)
    # ...and no honest source is called a falseticker.
    assert set(result.falsetickers).isdisjoint(i.source for i in honest)


@given(scenarios(allowed_liars=1))
@settings(max_examples=200)
def test_with_a_bound_on_liars_the_honest_intersection_still_holds(
    scenario: tuple[int, list[Interval], list[Interval]],
) -> None:
    truth, honest, liars = scenario
    result = select(honest + liars, Policy(max_falsetickers=1))
    assert result.low <= truth <= result.high
    assert result.low <= max(i.low for i in honest)
    assert min(i.high for i in honest) <= result.high


@given(st.lists(st.tuples(values, values), min_size=1, max_size=12))
def test_any_answer_is_covered_by_a_quorum_or_an_error(pairs: list[tuple[int, int]]) -> None:
    intervals = [Interval(f"s{k}", min(a, b), max(a, b)) for k, (a, b) in enumerate(pairs)]
    try:
        result = select(intervals, Policy(min_agree=1))
    except NoMajorityError:
        return
    for end in (result.low, result.high):
        assert sum(i.low <= end <= i.high for i in intervals) >= result.quorum
    for name in result.truechimers:
        assert name not in result.falsetickers
    assert len(result.truechimers) >= result.quorum
