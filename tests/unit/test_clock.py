"""gnomon.Clock in memory: fake sources, a fake monotonic clock, an injected system clock."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gnomon.client.clock import Clock, load_config
from gnomon.client.sources import (
    NtsSource,
    Reading,
    RoughtimeAnswer,
    RoughtimeSource,
    decode_key,
    parse_source,
)
from gnomon.errors import ConfigError, GnomonError, NoMajorityError, QueryTimeoutError
from gnomon.proto.select import Policy

NS = 1_000_000_000
TRUE_BASE = 1_800_000_000 * NS  # true Unix time minus the fake monotonic clock
YEAR = 365 * 24 * 3600 * NS


class FakeMonotonic:
    def __init__(self) -> None:
        self.ns = 5_000 * NS

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * NS)


class FakeSource:
    """Answers ``true time + lie`` with a ±``error`` interval, or raises ``failure``."""

    def __init__(
        self,
        name: str,
        monotonic: FakeMonotonic,
        *,
        kind: str = "nts",
        lie: float = 0.0,
        error: float = 0.010,
    ) -> None:
        self.name = name
        self.kind = kind
        self.monotonic = monotonic
        self.lie = lie
        self.error = error
        self.failure: GnomonError | None = None
        self.verify_times: list[datetime | None] = []

    async def measure(self, verify_time: datetime | None) -> Reading:
        self.verify_times.append(verify_time)
        if self.failure is not None:
            raise self.failure
        return Reading(
            self.name,
            self.kind,
            TRUE_BASE + int(self.lie * NS),
            int(self.error * NS),
            self.monotonic(),
        )


def true_now(monotonic: FakeMonotonic) -> int:
    return monotonic() + TRUE_BASE


def make_clock(
    *lies: float, monotonic: FakeMonotonic | None = None, system_offset: float = 0.0, **kw: object
) -> tuple[Clock, list[FakeSource], FakeMonotonic]:
    mono = monotonic or FakeMonotonic()
    sources = [FakeSource(f"s{i}", mono, lie=lie) for i, lie in enumerate(lies)]
    clock = Clock(
        sources,
        monotonic=mono,
        system_clock=lambda: true_now(mono) + int(system_offset * NS),
        **kw,  # type: ignore[arg-type]
    )
    return clock, sources, mono


def test_agreement_gives_the_true_time_within_the_bound() -> None:
    clock, _, mono = make_clock(0.0, 0.002, -0.003)
    now = clock.now()
    assert abs(now.unix_ns - true_now(mono)) <= now.error_ns
    assert now.error < 0.02
    assert now.utc.tzinfo is UTC
    assert clock.status().agreed == ["s0", "s1", "s2"]
    assert clock.status().falsetickers == []


def test_one_liar_is_named_and_the_result_unaffected() -> None:
    clock, _, mono = make_clock(0.0, 0.002, -0.003, 3600.0)
    now = clock.now()
    assert abs(now.unix_ns - true_now(mono)) <= now.error_ns
    assert now.error < 0.02
    status = clock.status()
    assert status.falsetickers == ["s3"]
    assert status.agreed == ["s0", "s1", "s2"]
    liar = next(s for s in status.sources if s.name == "s3")
    assert liar.state == "falseticker"
    assert liar.offset == pytest.approx(3600.0)


def test_no_quorum_is_an_error_never_a_guess() -> None:
    clock, _, _ = make_clock(0.0, 100.0)
    with pytest.raises(NoMajorityError, match="agree"):
        clock.now()
    status = clock.status()
    assert not status.synchronized
    assert status.last_refresh_error is not None
    assert {s.state for s in status.sources} == {"no majority"}


def test_a_source_that_goes_silent_is_reported_and_the_others_carry_on() -> None:
    clock, sources, mono = make_clock(0.0, 0.001, 0.002)
    clock.refresh()
    sources[1].failure = QueryTimeoutError("no valid NTP response within 5 s")
    mono.advance(10)
    status = clock.refresh()
    assert status.agreed == ["s0", "s2"]
    assert status.failed == {"s1": "no valid NTP response within 5 s"}
    now = clock.now()
    assert abs(now.unix_ns - true_now(mono)) <= now.error_ns


def test_too_few_answers_keep_the_previous_agreement_with_a_growing_bound() -> None:
    clock, sources, mono = make_clock(0.0, 0.001, 0.002, refresh_interval=60.0)
    first = clock.now()
    for source in sources[1:]:
        source.failure = QueryTimeoutError("silent")
    mono.advance(120)
    with pytest.raises(NoMajorityError):
        clock.refresh()
    later = clock.now()  # stale and the refresh fails: the old agreement, honestly bounded
    assert later.since_agreement == pytest.approx(120, abs=1)
    assert later.error_ns > first.error_ns
    assert abs(later.unix_ns - true_now(mono)) <= later.error_ns


def test_the_error_bound_grows_with_the_tolerance_between_refreshes() -> None:
    clock, _, mono = make_clock(0.0, 0.0, 0.0, tolerance_ppm=100.0, refresh_interval=1e6)
    first = clock.now()
    mono.advance(1000)
    later = clock.now()
    assert later.since_agreement == pytest.approx(1000)
    # 100 ppm of 1000 s
    assert later.error_ns - first.error_ns == pytest.approx(0.1 * NS, rel=1e-6)
    assert later.unix_ns - first.unix_ns == 1000 * NS


def test_a_step_of_the_system_clock_does_not_move_the_time() -> None:
    mono = FakeMonotonic()
    system = {"offset": 0}
    sources = [FakeSource(f"s{i}", mono) for i in range(3)]
    clock = Clock(
        sources,
        monotonic=mono,
        system_clock=lambda: true_now(mono) + system["offset"],
        refresh_interval=1e6,
    )
    before = clock.now()
    system["offset"] = -3 * YEAR
    mono.advance(1)
    after = clock.now()
    assert after.unix_ns - before.unix_ns == NS
    assert clock.status().offset == pytest.approx(3 * YEAR / NS, rel=1e-9)


def test_a_stale_agreement_refreshes_on_demand() -> None:
    clock, sources, mono = make_clock(0.0, 0.0, 0.0, refresh_interval=60.0)
    clock.now()
    mono.advance(30)
    clock.now()
    assert len(sources[0].verify_times) == 1
    mono.advance(31)
    clock.now()
    assert len(sources[0].verify_times) == 2


async def test_asyncio_now_and_refresh() -> None:
    clock, _, mono = make_clock(0.0, 0.001, 0.5)
    now = await clock.anow()
    assert abs(now.unix_ns - true_now(mono)) <= now.error_ns
    status = await clock.arefresh()
    assert status.falsetickers == ["s2"]


async def test_sync_now_works_inside_a_running_loop() -> None:
    clock, _, mono = make_clock(0.0, 0.001)
    now = clock.now()
    assert abs(now.unix_ns - true_now(mono)) <= now.error_ns


async def test_async_context_manager_refreshes_in_a_task() -> None:
    clock, _, _ = make_clock(0.0, 0.001)
    async with clock:
        assert clock.status().synchronized
        assert clock._task is not None
    assert clock._task is None


def test_background_thread_refreshes_and_stops() -> None:
    clock, _, _ = make_clock(0.0, 0.001)
    with clock:
        deadline = time.monotonic() + 5
        while not clock.status().synchronized and time.monotonic() < deadline:
            time.sleep(0.01)
        assert clock.status().synchronized
    assert clock._thread is None


# --- bootstrap --------------------------------------------------------------------


def bootstrap_clock(
    system_offset_ns: int, *, rough_lies: tuple[float, ...] = (0.0, 0.0, 0.0), **kw: object
) -> tuple[Clock, list[FakeSource], list[FakeSource], FakeMonotonic]:
    mono = FakeMonotonic()
    rough = [
        FakeSource(f"r{i}", mono, kind="roughtime", lie=lie, error=1.0)
        for i, lie in enumerate(rough_lies)
    ]
    nts = [FakeSource(f"n{i}", mono) for i in range(2)]
    clock = Clock(
        [*rough, *nts],
        monotonic=mono,
        system_clock=lambda: true_now(mono) + system_offset_ns,
        sane_minimum=datetime(2020, 1, 1, tzinfo=UTC),
        **kw,  # type: ignore[arg-type]
    )
    return clock, rough, nts, mono


def as_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / NS, UTC)


def test_a_right_system_clock_checks_certificates_at_its_own_time() -> None:
    clock, _, nts, mono = bootstrap_clock(0)
    clock.refresh()
    assert clock.status().verify_time == "system clock"
    assert nts[0].verify_times == [as_datetime(true_now(mono))]


@pytest.mark.parametrize("years", [-5, 5])
def test_a_wrong_system_clock_checks_certificates_at_roughtime_time(years: int) -> None:
    clock, _, nts, mono = bootstrap_clock(years * YEAR)
    status = clock.refresh()
    assert status.verify_time == "roughtime"
    (checked,) = nts[0].verify_times
    assert checked is not None
    assert abs(checked - as_datetime(true_now(mono))) < timedelta(seconds=2)
    now = clock.now()
    assert abs(now.unix_ns - true_now(mono)) <= now.error_ns
    assert status.offset == pytest.approx(-years * YEAR / NS, rel=1e-9)


def test_a_single_lying_roughtime_source_is_outvoted_and_named() -> None:
    clock, _, nts, mono = bootstrap_clock(5 * YEAR, rough_lies=(0.0, 0.0, -4 * YEAR / NS))
    status = clock.refresh()
    assert "r2" in status.falsetickers
    (checked,) = nts[0].verify_times
    assert checked is not None and abs(checked - as_datetime(true_now(mono))) < timedelta(seconds=2)


@pytest.mark.parametrize(
    ("years", "trust"), [(5, False), (-30, None)], ids=["told-not-to", "before-minimum"]
)
def test_without_a_roughtime_quorum_no_nts_source_is_used(years: int, trust: bool | None) -> None:
    clock, _, nts, _ = bootstrap_clock(
        years * YEAR, rough_lies=(0.0, 1000.0, -1000.0), trust_system_clock=trust
    )
    with pytest.raises(NoMajorityError, match="NTS certificates unchecked"):
        clock.refresh()
    assert nts[0].verify_times == []
    states = {s.name: s.state for s in clock.status().sources}
    assert states["n0"] == states["n1"] == "not used"


def test_a_clock_before_the_sane_minimum_is_not_trusted_even_without_roughtime() -> None:
    mono = FakeMonotonic()
    nts = [FakeSource(f"n{i}", mono) for i in range(3)]
    clock = Clock(nts, monotonic=mono, system_clock=lambda: 0)  # 1970
    with pytest.raises(NoMajorityError, match="no Roughtime source configured"):
        clock.refresh()
    assert nts[0].verify_times == []


def test_told_not_to_trust_the_system_clock_it_uses_roughtime_even_if_close() -> None:
    clock, _, _, _ = bootstrap_clock(0, trust_system_clock=False)
    assert clock.refresh().verify_time == "roughtime"


def test_told_to_trust_the_system_clock_it_does() -> None:
    clock, _, nts, mono = bootstrap_clock(5 * YEAR, trust_system_clock=True)
    clock.refresh()
    assert nts[0].verify_times == [as_datetime(true_now(mono) + 5 * YEAR)]


# --- sources, configuration, state -----------------------------------------------

KEY = "iBVjxg/1j7y1+kQUTBYdTabxCppesU/07D4PMDJk2WA="


def test_source_urls() -> None:
    nts = parse_source("nts://time.example.net")
    assert isinstance(nts, NtsSource)
    assert (nts.host, nts.port, nts.name) == ("time.example.net", 4460, "nts://time.example.net")
    v6 = parse_source("nts://[::1]:4461")
    assert isinstance(v6, NtsSource)
    assert (v6.host, v6.port, v6.name) == ("::1", 4461, "nts://[::1]:4461")
    rough = parse_source(f"roughtime://rt.example:2003?key={KEY}")
    assert isinstance(rough, RoughtimeSource)
    assert rough.public_key == decode_key(KEY, "test")
    assert len(rough.public_key) == 32
    assert rough.name == "roughtime://rt.example:2003"
    assert parse_source(f"roughtime://rt.example?key={rough.public_key.hex()}").port == 2002  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "url",
    [
        "http://time.example",
        "nts://",
        "nts://host:99999",
        "nts://host/path",
        "nts://host?cert=x",
        "roughtime://host",
        "roughtime://host?key=abc",
        "roughtime://host?key=" + "A" * 40,
    ],
)
def test_bad_source_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_source(url)


async def test_roughtime_source_interval_covers_radius_and_delay() -> None:
    async def answer(host: str, port: int, key: bytes, timeout: float) -> RoughtimeAnswer:
        return RoughtimeAnswer(midpoint_ns=TRUE_BASE, radius_ns=NS, delay_ns=NS // 10)

    source = RoughtimeSource("rt.example", 2002, bytes(32), query=answer)
    reading = await source.measure(None)
    assert reading.half_width_ns >= NS + NS // 10
    assert reading.kind == "roughtime"


def test_toml_configuration(tmp_path: Path) -> None:
    config = tmp_path / "clock.toml"
    config.write_text(
        'sources = ["nts://a.example", "nts://b.example?ca=ca.pem", '
        f'"roughtime://r.example?key={KEY}"]\n'
        "[clock]\nmin_agree = 3\ntolerance_ppm = 50\nstate_dir = 'state'\n"
    )
    (tmp_path / "ca.pem").write_text("")
    with pytest.raises(GnomonError, match="no valid PEM"):
        Clock(config)  # the relative CA file is read from the configuration's folder
    (tmp_path / "ca.pem").unlink()
    config.write_text(config.read_text().replace("?ca=ca.pem", ""))
    clock = Clock(config)
    assert clock.policy == Policy(min_agree=3)
    assert clock.tolerance_ppm == 50
    assert [s.kind for s in clock.sources] == ["nts", "nts", "roughtime"]
    assert (tmp_path / "state").is_dir()


@pytest.mark.parametrize(
    "text",
    ["sources = 'nts://a'", "sources = []\n[clock]\nbogus = 1", "sources = [", "[clock]\n"],
)
def test_bad_toml_configurations(tmp_path: Path, text: str) -> None:
    config = tmp_path / "clock.toml"
    config.write_text(text)
    with pytest.raises(ConfigError):
        Clock(config)


def test_one_url_is_one_source_not_a_file() -> None:
    assert [s.name for s in Clock("nts://a.example").sources] == ["nts://a.example"]


def test_a_clock_needs_distinct_sources() -> None:
    with pytest.raises(ConfigError):
        Clock([])
    with pytest.raises(ConfigError):
        Clock(["nts://a.example", "nts://a.example:4460"])
    assert load_config  # the loader is public for tools


def test_the_last_agreement_is_kept_for_the_same_boot(tmp_path: Path) -> None:
    sources = [RealMonotonicSource(f"s{i}") for i in range(3)]
    clock = Clock(sources, state_dir=tmp_path)
    first = clock.now()
    state = json.loads((tmp_path / "clock.json").read_text())
    assert state["truechimers"] == ["s0", "s1", "s2"]
    assert (tmp_path / "clock.json").stat().st_mode & 0o777 == 0o600
    for source in sources:
        source.silent = True
    again = Clock(sources, state_dir=tmp_path)
    later = again.now()  # no source answers: the stored agreement still gives the time
    assert later.unix_ns >= first.unix_ns
    assert later.error_ns >= first.error_ns


def test_a_remembered_agreement_raises_the_sane_minimum(tmp_path: Path) -> None:
    future = time.time_ns() + 3 * YEAR
    (tmp_path / "clock.json").write_text(
        json.dumps(
            {
                "version": 1,
                "boot_id": "another boot",
                "center_ns": 0,
                "half_width_ns": 0,
                "monotonic_ns": 0,
                "unix_ns": future,
            }
        )
    )
    sources = [RealMonotonicSource(f"s{i}") for i in range(3)]
    clock = Clock(sources, state_dir=tmp_path)
    with pytest.raises(NoMajorityError, match="not trusted"):
        clock.refresh()


def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "clock.json").write_text('{"version": 1, "unix_ns": "x"}')
    with pytest.raises(GnomonError, match="corrupt"):
        Clock([RealMonotonicSource("s0")], state_dir=tmp_path)


class RealMonotonicSource:
    kind = "nts"

    def __init__(self, name: str) -> None:
        self.name = name
        self.silent = False

    async def measure(self, verify_time: datetime | None) -> Reading:
        if self.silent:
            raise QueryTimeoutError("silent")
        monotonic = time.monotonic_ns()
        return Reading(self.name, self.kind, time.time_ns() - monotonic, NS // 100, monotonic)


CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "gnomon-clock.toml"


def test_the_example_configuration_loads() -> None:
    options = load_config(CONTRIB)
    assert options["policy"] == Policy(min_agree=2)
    assert options["trust_system_clock"] is None
    clock = Clock(CONTRIB)
    assert [s.name for s in clock.sources] == [
        "nts://time.cloudflare.com",
        "nts://nts.netnod.se",
        "nts://ptbtime1.ptb.de",
    ]
    assert clock.refresh_interval == 1024


@pytest.mark.parametrize(
    "table",
    [
        "min_agree = 0",
        "min_agree = 'two'",
        "min_agree = true",
        "tolerance_ppm = -1",
        "timeout = 0",
        "trust_system_clock = 'maybe'",
        "majority_of = 'everyone'",
    ],
)
def test_bad_clock_options_are_config_errors(tmp_path: Path, table: str) -> None:
    config = tmp_path / "clock.toml"
    config.write_text(f"sources = ['nts://a.example']\n[clock]\n{table}\n")
    with pytest.raises(ConfigError):
        Clock(config)


@pytest.mark.parametrize("pause_first", [True, False])
def test_offset_is_not_moved_by_a_pause_between_clock_readings(pause_first: bool) -> None:
    """A thread switch between reading the monotonic and the system clock must not count
    as offset (``gnomon sync`` would slew it): the system clock here stalls 5 ms once,
    before or after the reading it returns, right when the offset is read."""
    mono = FakeMonotonic()
    armed = False

    def system_clock() -> int:
        nonlocal armed
        if armed and pause_first:
            mono.advance(0.005)
        value = true_now(mono)
        if armed and not pause_first:
            mono.advance(0.005)
        armed = False
        return value

    sources = [FakeSource(f"s{i}", mono) for i in range(3)]
    clock = Clock(sources, monotonic=mono, system_clock=system_clock)  # type: ignore[arg-type]
    clock.refresh()
    armed = True
    assert abs(clock.offset()) < 1e-6
    armed = True
    assert abs(clock.status().offset or 0.0) < 1e-6
