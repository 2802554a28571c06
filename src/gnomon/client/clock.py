"""``gnomon.Clock``: trustworthy UTC from several NTS and Roughtime sources.

>>> clock = gnomon.Clock(["nts://time.cloudflare.com", "nts://nts.netnod.se",
...                       "nts://ptbtime1.ptb.de"])
>>> clock.now().utc, clock.now().error        # datetime (UTC), seconds

A refresh asks every source, turns each answer into a correctness interval
and keeps what a quorum agrees on (:mod:`gnomon.proto.select`). The agreement
is held as "true time minus the monotonic clock", so :meth:`Clock.now` reads
only ``CLOCK_MONOTONIC``: a step of the system clock does not move it, and its
error bound grows with the time since the agreement by a frequency tolerance.

Bootstrap: when the system clock cannot be trusted (before a sane minimum,
told so by the caller, or far from what Roughtime says), NTS-KE certificates
are checked at the time a quorum of Roughtime sources agrees on, never with
the checks turned off; without that quorum no NTS source is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._os import write_private_file
from ..errors import ConfigError, GnomonError, NoMajorityError
from ..proto.select import Policy, Selection, select
from .sources import Reading, RoughtimeQuery, Source, parse_source

# Nothing gnomon runs on can legitimately be before this: the release date of this
# version (raise it at each release). A system clock before it is not trusted.
SANE_MINIMUM = datetime(2026, 12, 1, tzinfo=UTC)
DEFAULT_TOLERANCE_PPM = 100.0  # a crystal beyond 100 ppm is broken; chrony's maxdrift is 500
DEFAULT_REFRESH = 1024.0  # seconds between background refreshes (NTP's maxpoll 10)
RETRY_AFTER_FAILURE = 16.0
# When Roughtime's agreed time and the system clock differ by more than this, the
# system clock is not used to check certificates.
MAX_SYSTEM_CLOCK_ERROR = 3600.0
STATE_VERSION = 1
_DATES = re.compile(r"expired on|not valid before")  # tls.py's words for a validity failure


@dataclass(frozen=True, slots=True)
class TrustedTime:
    """A reading of :class:`Clock`: the true time is within ``unix_ns ± error_ns``."""

    unix_ns: int
    error_ns: int
    since_agreement: float  # seconds since the sources last agreed

    @property
    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.unix_ns // 1000 / 1e6, UTC)

    @property
    def unix(self) -> float:
        return self.unix_ns / 1e9

    @property
    def error(self) -> float:
        """The error bound in seconds."""
        return self.error_ns / 1e9

    def __str__(self) -> str:
        return f"{self.utc.isoformat()} ± {self.error * 1e3:.3f} ms"


@dataclass(frozen=True, slots=True)
class Agreement:
    """What a quorum agreed on at one refresh, on the monotonic clock."""

    center_ns: int  # true Unix time minus CLOCK_MONOTONIC
    half_width_ns: int
    monotonic_ns: int  # when
    unix_ns: int  # the agreed time at that moment
    truechimers: tuple[str, ...]
    falsetickers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SourceStatus:
    name: str
    kind: str
    state: str  # "agreed", "falseticker", "failed", "not used"
    offset: float | None = None  # seconds: this source's time minus the system clock
    error: float | None = None  # half-width of its interval, seconds
    message: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if not self.detail:
            del values["detail"]
        return values


@dataclass(frozen=True, slots=True)
class ClockStatus:
    """:meth:`Clock.status`: who agreed at the last refresh, and how good the time is."""

    synchronized: bool
    sources: tuple[SourceStatus, ...]
    last_refresh_error: str | None
    since_agreement: float | None
    error: float | None  # current error bound, seconds
    offset: float | None  # true time minus the system clock, seconds (the last agreement)
    verify_time: str | None  # how certificates were checked: "system clock" or "roughtime"
    quorum: int | None

    @property
    def agreed(self) -> list[str]:
        return [s.name for s in self.sources if s.state == "agreed"]

    @property
    def falsetickers(self) -> list[str]:
        return [s.name for s in self.sources if s.state == "falseticker"]

    @property
    def failed(self) -> dict[str, str]:
        return {s.name: s.message or "" for s in self.sources if s.state in ("failed", "not used")}

    def as_dict(self) -> dict[str, Any]:
        return {
            "synchronized": self.synchronized,
            "offset": self.offset,
            "error": self.error,
            "since_agreement": self.since_agreement,
            "quorum": self.quorum,
            "verify_time": self.verify_time,
            "last_refresh_error": self.last_refresh_error,
            "sources": [s.as_dict() for s in self.sources],
        }


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "min_agree": (int,),
    "max_falsetickers": (int,),
    "majority_of": (str,),
    "tolerance_ppm": (int, float),
    "refresh_interval": (int, float),
    "timeout": (int, float),
    "ca_file": (str,),
    "state_dir": (str,),
    "trust_system_clock": (bool, str),
}


def load_config(path: str | Path) -> dict[str, Any]:
    """A TOML file: ``sources = [...]`` and an optional ``[clock]`` table of options.

    Returns the sources, the file's folder (``base_dir``), the :class:`Policy`
    and the other options, checked (see ``contrib/gnomon-clock.toml``).
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    sources = document.get("sources")
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ConfigError(f"{path}: 'sources' must be a list of source URLs")
    options = document.get("clock", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: [clock] must be a table")
    unknown = set(options) - set(_OPTION_TYPES)
    if unknown:
        raise ConfigError(f"{path}: unknown [clock] option {sorted(unknown)[0]!r}")
    for key, value in options.items():
        kinds = _OPTION_TYPES[key]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise ConfigError(f"{path}: [clock] {key} = {value!r} is not valid")
    if options.get("trust_system_clock") == "auto":
        options["trust_system_clock"] = None
    elif isinstance(options.get("trust_system_clock"), str):
        raise ConfigError(f'{path}: [clock] trust_system_clock is true, false or "auto"')
    rules = {
        k: options.pop(k) for k in ("min_agree", "max_falsetickers", "majority_of") if k in options
    }
    try:
        policy = Policy(**rules)
    except ValueError as exc:
        raise ConfigError(f"{path}: [clock] {exc}") from None
    if options.get("tolerance_ppm", 0) < 0:
        raise ConfigError(f"{path}: [clock] tolerance_ppm cannot be negative")
    for key in ("refresh_interval", "timeout"):
        if options.get(key, 1) <= 0:
            raise ConfigError(f"{path}: [clock] {key} must be positive")
    return {"sources": sources, "base_dir": path.parent, "policy": policy, **options}


class Clock:
    """UTC from a quorum of sources, read from the monotonic clock between refreshes.

    ``sources``: URLs (``nts://...``, ``roughtime://...?key=...``), source
    objects, or the path of a TOML file. ``trust_system_clock``: ``True`` checks
    certificates at the system clock's time; ``False`` only at the time a
    Roughtime quorum gives; ``None`` (default) decides per refresh (see the
    module docstring). ``state_dir`` keeps NTS cookies and the last agreement.
    ``system_clock`` and ``monotonic`` (nanosecond callables) are for tests.
    """

    def __init__(
        self,
        sources: Iterable[str | Source] | str | Path,
        *,
        policy: Policy | None = None,
        tolerance_ppm: float = DEFAULT_TOLERANCE_PPM,
        refresh_interval: float = DEFAULT_REFRESH,
        timeout: float = 5.0,
        ca_file: str | Path | None = None,
        state_dir: str | Path | None = None,
        trust_system_clock: bool | None = None,
        sane_minimum: datetime = SANE_MINIMUM,
        system_clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
        roughtime_query: RoughtimeQuery | None = None,
    ) -> None:
        base_dir: Path | None = None
        if isinstance(sources, str) and "://" in sources:
            sources = [sources]  # one source URL, not a file
        if isinstance(sources, str | Path):
            options = load_config(sources)
            listed: Iterable[str | Source] = options.pop("sources")
            base_dir = options.pop("base_dir")
            policy = policy or options.pop("policy")
            tolerance_ppm = float(options.get("tolerance_ppm", tolerance_ppm))
            refresh_interval = float(options.get("refresh_interval", refresh_interval))
            timeout = float(options.get("timeout", timeout))
            ca_file = options.get("ca_file", ca_file)
            state_dir = options.get("state_dir", state_dir)
            trust_system_clock = options.get("trust_system_clock", trust_system_clock)
            if ca_file is not None:
                ca_file = base_dir / Path(ca_file).expanduser()
            if state_dir is not None:
                state_dir = base_dir / Path(state_dir).expanduser()
        else:
            listed = sources
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sources: list[Source] = []
        for source in listed:
            if isinstance(source, str):
                source = parse_source(
                    source,
                    timeout=timeout,
                    ca_file=ca_file,
                    state_dir=self.state_dir,
                    base_dir=base_dir,
                    roughtime_query=roughtime_query,
                )
            self.sources.append(source)
        if not self.sources:
            raise ConfigError("a Clock needs at least one source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError("the same source is named twice")
        self.policy = policy or Policy()
        if tolerance_ppm < 0:
            raise ConfigError("tolerance_ppm cannot be negative")
        self.tolerance_ppm = tolerance_ppm
        self.refresh_interval = refresh_interval
        self.trust_system_clock = trust_system_clock
        self.sane_minimum = sane_minimum
        self._system_clock = system_clock
        self._monotonic = monotonic
        self._agreement: Agreement | None = None
        self._status: ClockStatus | None = None
        self._last_attempt: int | None = None
        self._refresh_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_unix_ns: int | None = None  # the last agreement persisted, minus its error
        self._load_state()

    # --- reading the time -------------------------------------------------------

    def now(self) -> TrustedTime:
        """The time, refreshed first if there has been no agreement yet or it is stale.

        Raises :class:`~gnomon.NoMajorityError` (or another :class:`GnomonError`)
        when no agreement was ever reached. A refresh blocks; in asyncio code use
        :meth:`anow` (or ``async with clock``) so the event loop keeps running.
        """
        if self._needs_refresh():
            with self._unless_never_agreed():
                self.refresh()
        return self._read()

    async def anow(self) -> TrustedTime:
        """The asyncio form of :meth:`now`."""
        if self._needs_refresh():
            with self._unless_never_agreed():
                await self.arefresh()
        return self._read()

    @contextlib.contextmanager
    def _unless_never_agreed(self) -> Iterator[None]:
        """A failed refresh is an error only when there is no earlier agreement to read."""
        try:
            yield
        except GnomonError:
            if self._agreement is None:
                raise

    def time(self) -> float:
        """Like :func:`time.time`, but trusted: Unix seconds."""
        return self.now().unix

    def _read(self, monotonic: int | None = None) -> TrustedTime:
        agreement = self._agreement
        if agreement is None:
            raise NoMajorityError("the sources have never agreed")
        if monotonic is None:
            monotonic = self._monotonic()
        elapsed = max(0, monotonic - agreement.monotonic_ns)
        error = agreement.half_width_ns + int(elapsed * self.tolerance_ppm / 1e6)
        return TrustedTime(monotonic + agreement.center_ns, error, elapsed / 1e9)

    def _needs_refresh(self) -> bool:
        if self._agreement is None:
            return True
        if self._thread is not None or self._task is not None:
            return False  # the background refresher keeps it fresh
        now = self._monotonic()
        if now - self._agreement.monotonic_ns < self.refresh_interval * 1e9:
            return False
        return self._last_attempt is None or now - self._last_attempt >= RETRY_AFTER_FAILURE * 1e9

    # --- refreshing ---------------------------------------------------------------

    def refresh(self) -> ClockStatus:
        """Ask every source now and keep what a quorum agrees on (blocking)."""
        with self._refresh_lock:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self._refresh())
            # Called from a coroutine: run the refresh on a loop of its own in a thread.
            outcome: list[ClockStatus | BaseException] = []

            def run() -> None:
                try:
                    outcome.append(asyncio.run(self._refresh()))
                except BaseException as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=run, name="gnomon-clock-refresh")
            worker.start()
            worker.join()
            if isinstance(outcome[0], BaseException):
                raise outcome[0]
            return outcome[0]

    async def arefresh(self) -> ClockStatus:
        """The asyncio form of :meth:`refresh`."""
        return await self._refresh()

    async def _refresh(self) -> ClockStatus:
        self._last_attempt = self._monotonic()
        readings: dict[str, Reading] = {}
        failures: dict[str, str] = {}
        roughtime = [s for s in self.sources if s.kind == "roughtime"]
        others = [s for s in self.sources if s.kind != "roughtime"]
        await self._measure(roughtime, None, readings, failures)
        verify_time, how, refusal = self._verification_time(
            [readings[s.name] for s in roughtime if s.name in readings], len(roughtime)
        )
        unused: dict[str, str] = {}
        if refusal is None:
            await self._measure(others, verify_time, readings, failures)
        else:
            unused = {s.name: refusal for s in others}
        error: GnomonError | None = None
        selection: Selection | None = None
        try:
            selection = self._select(
                list(readings.values()),
                len(self.sources),
                f"no source answered ({len(self.sources)} asked)",
            )
        except NoMajorityError as exc:
            detail = "; ".join(f"{name}: {why}" for name, why in {**failures, **unused}.items())
            hint = ""
            if how == "system clock" and any(_DATES.search(why) for why in failures.values()):
                hint = (
                    f"; certificates were checked at the system clock's time "
                    f"({verify_time:%Y-%m-%d %H:%M} UTC), which may be wrong: add Roughtime "
                    "sources to check them at a quorum's time"
                )
            error = NoMajorityError(
                f"{exc}" + (f" (failed: {detail})" if detail else "") + hint,
                sources=exc.sources,
                needed=exc.needed,
            )
        if selection is not None:
            latest = max(r.monotonic_ns for r in readings.values())
            self._agreement = Agreement(
                selection.center,
                selection.half_width,
                latest,
                latest + selection.center,
                selection.truechimers,
                selection.falsetickers,
            )
            self._save_state()
        self._status = self._make_status(
            readings, failures, unused, selection, error, how if refusal is None else None
        )
        if error is not None:
            raise error
        return self._status

    async def _measure(
        self,
        sources: Sequence[Source],
        verify_time: datetime | None,
        readings: dict[str, Reading],
        failures: dict[str, str],
    ) -> None:
        async def one(source: Source) -> None:
            try:
                readings[source.name] = await source.measure(verify_time)
            except GnomonError as exc:
                failures[source.name] = str(exc)
            except OSError as exc:
                failures[source.name] = exc.strerror or str(exc)

        await asyncio.gather(*(one(s) for s in sources))

    def _select(self, readings: list[Reading], configured: int, silence: str) -> Selection:
        """What a quorum of ``configured`` sources agrees on; ``silence``: none answered."""
        if not readings:
            raise NoMajorityError(silence, needed=self.policy.min_agree)
        at = max(r.monotonic_ns for r in readings)
        intervals = [r.interval(at, self.tolerance_ppm) for r in readings]
        return select(intervals, self.policy, configured=configured)

    def _verification_time(
        self, rough: list[Reading], rough_count: int
    ) -> tuple[datetime | None, str, str | None]:
        """When to check NTS-KE certificates: (time, how, or why NTS cannot be used)."""
        system_ns = self._system_clock()
        system = datetime.fromtimestamp(system_ns / 1e9, UTC)
        rough_time: datetime | None = None
        rough_problem = "no Roughtime source configured"
        if rough_count:
            try:
                silence = f"none of the {rough_count} Roughtime sources answered"
                agreed = self._select(rough, rough_count, silence)
                rough_ns = self._monotonic() + agreed.center
                rough_time = datetime.fromtimestamp(rough_ns / 1e9, UTC)
            except NoMajorityError as exc:
                rough_problem = f"no Roughtime quorum: {exc}"
        if self.trust_system_clock is True:
            return system, "system clock", None
        if self.trust_system_clock is None and system >= self._sane_minimum():
            if rough_time is None:
                return system, "system clock", None
            if abs((rough_time - system).total_seconds()) <= MAX_SYSTEM_CLOCK_ERROR:
                return system, "system clock", None
        if rough_time is not None:
            return rough_time, "roughtime", None
        return None, "", f"system clock not trusted and {rough_problem}: NTS certificates unchecked"

    def _sane_minimum(self) -> datetime:
        minimum = self.sane_minimum
        if self._last_unix_ns is not None:
            minimum = max(minimum, datetime.fromtimestamp(self._last_unix_ns / 1e9, UTC))
        return minimum

    # --- status -------------------------------------------------------------------

    def status(self) -> ClockStatus:
        """Which sources agreed at the last refresh, which did not, and the error now."""
        last = self._status or ClockStatus(
            False,
            tuple(SourceStatus(s.name, s.kind, "not asked yet") for s in self.sources),
            *(None,) * 6,
        )
        return self._now_status(last)

    def _now_status(self, status: ClockStatus) -> ClockStatus:
        """``status`` with whether the clock is synchronised and its error as of now."""
        since, error, offset = self._current()
        return dataclasses.replace(
            status,
            synchronized=self._agreement is not None,
            since_agreement=since,
            error=error,
            offset=offset,
        )

    def _current(self) -> tuple[float | None, float | None, float | None]:
        if self._agreement is None:
            return None, None, None
        return self._offset_now()

    def offset(self) -> float:
        """True time minus the system clock, seconds (refreshing as :meth:`now` does)."""
        self.now()
        return self._offset_now()[2]

    def _offset_now(self) -> tuple[float, float, float]:
        """Seconds since the agreement, its error, and true time minus the system clock."""
        monotonic, system = self._clock_pair()
        reading = self._read(monotonic)
        return reading.since_agreement, reading.error, (reading.unix_ns - system) / 1e9

    def _clock_pair(self, tries: int = 3) -> tuple[int, int]:
        """The monotonic clock and the system clock at one moment: a monotonic reading
        between two system readings, the tightest bracket of ``tries``, the system time
        its middle. Read one after the other, a thread switch (or a descheduled process)
        between the two would count in the offset, milliseconds that a slew then applies."""
        readings = []
        for _ in range(tries):
            before = self._system_clock()
            monotonic = self._monotonic()
            after = self._system_clock()
            readings.append((after - before, monotonic, (before + after) // 2))
        _, monotonic, system = min(readings)
        return monotonic, system

    def _make_status(
        self,
        readings: dict[str, Reading],
        failures: dict[str, str],
        unused: dict[str, str],
        selection: Selection | None,
        error: GnomonError | None,
        how: str | None,
    ) -> ClockStatus:
        monotonic = self._monotonic()
        system_minus_monotonic = self._system_clock() - monotonic
        rows = []
        for source in self.sources:
            name = source.name
            reading = readings.get(name)
            if reading is not None:
                if selection is None:
                    state = "no majority"
                elif name in selection.truechimers:
                    state = "agreed"
                else:
                    state = "falseticker"
                rows.append(
                    SourceStatus(
                        name,
                        source.kind,
                        state,
                        (reading.center_ns - system_minus_monotonic) / 1e9,
                        reading.half_width_ns / 1e9,
                        None,
                        reading.detail,
                    )
                )
            elif name in unused:
                rows.append(SourceStatus(name, source.kind, "not used", message=unused[name]))
            else:
                rows.append(SourceStatus(name, source.kind, "failed", message=failures.get(name)))
        quorum = selection.quorum if selection is not None else None
        last_error = str(error) if error is not None else None
        return self._now_status(
            ClockStatus(False, tuple(rows), last_error, None, None, None, how, quorum)
        )

    # --- background refresh ---------------------------------------------------------

    def start(self) -> Clock:
        """Refresh in a daemon thread every ``refresh_interval`` (sooner after a failure)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run_thread, name="gnomon-clock", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _pause(self, failed: bool) -> float:
        return min(self.refresh_interval, RETRY_AFTER_FAILURE) if failed else self.refresh_interval

    def _run_thread(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                failed = False
            except GnomonError:
                failed = True
            self._stop.wait(self._pause(failed))

    async def astart(self) -> Clock:
        """Refresh in an asyncio task (first refresh awaited, so :meth:`now` is ready)."""
        if self._task is None:
            with contextlib.suppress(GnomonError):
                await self.arefresh()
            self._task = asyncio.create_task(self._run_task(self._agreement is None))
        return self

    async def _run_task(self, failed: bool) -> None:
        while True:
            await asyncio.sleep(self._pause(failed))
            try:
                await self.arefresh()
                failed = False
            except GnomonError:
                failed = True

    def __enter__(self) -> Clock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Clock:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- state ------------------------------------------------------------------------

    def _state_file(self) -> Path | None:
        return self.state_dir / "clock.json" if self.state_dir is not None else None

    def _load_state(self) -> None:
        path = self._state_file()
        if path is None:
            return
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise GnomonError(f"cannot read clock state {path}: {exc}") from None
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
            return
        try:
            # A time agreed before can never be in the future: it raises the sane minimum.
            self._last_unix_ns = int(document["unix_ns"]) - int(document["half_width_ns"])
            if document.get("boot_id") is not None and document.get("boot_id") == _boot_id():
                self._agreement = Agreement(
                    int(document["center_ns"]),
                    int(document["half_width_ns"]),
                    int(document["monotonic_ns"]),
                    int(document["unix_ns"]),
                    tuple(document.get("truechimers", ())),
                    tuple(document.get("falsetickers", ())),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise GnomonError(f"clock state {path} is corrupt: {exc!r}") from None

    def _save_state(self) -> None:
        path = self._state_file()
        agreement = self._agreement
        if path is None or agreement is None:
            return
        document = {
            "version": STATE_VERSION,
            "boot_id": _boot_id() if self._monotonic is time.monotonic_ns else None,
            "center_ns": agreement.center_ns,
            "half_width_ns": agreement.half_width_ns,
            "monotonic_ns": agreement.monotonic_ns,
            "unix_ns": agreement.unix_ns,
            "truechimers": list(agreement.truechimers),
            "falsetickers": list(agreement.falsetickers),
        }
        write_private_file(path, json.dumps(document))
