"""Time sources for :class:`gnomon.Clock`: what one answer says, on the monotonic clock.

A source is anything with a ``name``, a ``kind`` and an async ``measure``
returning a :class:`Reading`: the true time minus ``CLOCK_MONOTONIC`` at the
moment of the answer, with the half-width of its correctness interval. Keeping
readings on the monotonic clock is what makes :class:`~gnomon.Clock` immune to
steps of the system clock. Sources are named by URLs a user can type:

- ``nts://time.cloudflare.com``, ``nts://host:4460?ca=/path/ca.pem``
- ``roughtime://host:2002?key=BASE64`` (the server's Ed25519 public key)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, GnomonError, QueryTimeoutError
from ..proto.roughtime.versions import DEFAULT_PORT as ROUGHTIME_PORT
from ..proto.roughtime.versions import GOOGLE
from ..proto.select import Interval, nts_interval, roughtime_interval
from .ke import NTS_KE_PORT
from .session import Session

# realtime - monotonic moving more than this during one query means someone stepped
# the system clock meanwhile: the answer cannot be placed on the monotonic clock.
STEP_DURING_QUERY_NS = 50_000_000


@dataclass(frozen=True, slots=True)
class Reading:
    """One source's answer, placed on the monotonic clock."""

    source: str
    kind: str  # "nts" or "roughtime"
    center_ns: int  # true Unix time minus CLOCK_MONOTONIC, both in ns
    half_width_ns: int  # the truth is within center ± half_width if the source is honest
    monotonic_ns: int  # CLOCK_MONOTONIC when the answer arrived
    detail: dict[str, Any] = field(default_factory=dict)  # for status(): offset, delay, ...

    def interval(self, at_monotonic_ns: int, tolerance_ppm: float) -> Interval:
        """The correctness interval, widened for the local clock's drift since the answer."""
        age = max(0, at_monotonic_ns - self.monotonic_ns)
        widen = int(age * tolerance_ppm / 1e6) + 1
        return Interval.around(self.source, self.center_ns, self.half_width_ns).widened(widen)


class Source(Protocol):
    """What :class:`~gnomon.Clock` needs from a time source."""

    name: str
    kind: str

    async def measure(self, verify_time: datetime | None) -> Reading:
        """One answer. ``verify_time``: the time to check certificates at (NTS)."""
        ...


def _clock_base(realtime: Callable[[], int], monotonic: Callable[[], int]) -> int:
    return realtime() - monotonic()


class NtsSource:
    """An NTS server (NTS-KE, then NTP), through its own :class:`Session`."""

    kind = "nts"

    def __init__(
        self,
        host: str,
        port: int = NTS_KE_PORT,
        *,
        ca_file: str | Path | None = None,
        timeout: float = 5.0,
        state_file: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name or f"nts://{_netloc(host, port, NTS_KE_PORT)}"
        self.session = Session(ca_file=ca_file, timeout=timeout, state_file=state_file)

    async def measure(self, verify_time: datetime | None) -> Reading:
        before = _clock_base(time.time_ns, time.monotonic_ns)
        result = await self.session.aquery(self.host, self.port, verify_time=verify_time)
        monotonic = time.monotonic_ns()
        after = time.time_ns() - monotonic
        if abs(after - before) > STEP_DURING_QUERY_NS:
            raise GnomonError(f"{self.name}: the system clock was stepped during the query")
        if not result.synchronized:
            raise GnomonError(f"{self.name}: server says it is not synchronised")
        offset_ns = round(result.offset * 1e9)
        delay_ns = round(result.delay * 1e9)
        interval = nts_interval(
            self.name, offset_ns, delay_ns, result.root_delay, result.root_dispersion
        )
        return Reading(
            self.name,
            self.kind,
            after + offset_ns,
            interval.high - offset_ns,
            monotonic,
            {
                "offset": result.offset,
                "delay": result.delay,
                "stratum": result.stratum,
                "root_delay": result.root_delay,
                "root_dispersion": result.root_dispersion,
                "address": f"{result.address}:{result.port}",
                "key_exchange": result.key_exchange,
            },
        )


@dataclass(frozen=True, slots=True)
class RoughtimeAnswer:
    """What a Roughtime query gives the clock: the server's signed time and the trip."""

    midpoint_ns: int  # Unix ns
    radius_ns: int
    delay_ns: int  # round trip as the client measured it


RoughtimeQuery = Callable[[str, int, bytes, float], Any]  # awaitable of RoughtimeAnswer


class RoughtimeSource:
    """A Roughtime server, known by its long-term Ed25519 public key.

    ``query`` (for tests and other transports) is an async callable
    ``(host, port, public_key, timeout) -> RoughtimeAnswer``; by default
    gnomon's Roughtime client.
    """

    kind = "roughtime"

    def __init__(
        self,
        host: str,
        port: int,
        public_key: bytes,
        *,
        timeout: float = 5.0,
        name: str | None = None,
        query: RoughtimeQuery | None = None,
    ) -> None:
        if len(public_key) != 32:
            raise ConfigError(f"Roughtime key for {host} must be 32 bytes, not {len(public_key)}")
        self.host = host
        self.port = port
        self.public_key = public_key
        self.timeout = timeout
        self.name = name or f"roughtime://{_netloc(host, port, ROUGHTIME_PORT)}"
        self._query = query or _gnomon_roughtime_query

    async def measure(self, verify_time: datetime | None) -> Reading:
        before = time.monotonic_ns()
        answer: RoughtimeAnswer = await self._query(
            self.host, self.port, self.public_key, self.timeout
        )
        after = time.monotonic_ns()
        # The midpoint was stamped at some moment between before and after.
        delay = max(answer.delay_ns, after - before)
        interval = roughtime_interval(self.name, answer.midpoint_ns, answer.radius_ns, delay)
        return Reading(
            self.name,
            self.kind,
            answer.midpoint_ns - (before + after) // 2,
            interval.high - answer.midpoint_ns,
            after,
            {"radius": answer.radius_ns / 1e9, "delay": answer.delay_ns / 1e9},
        )


async def _gnomon_roughtime_query(
    host: str, port: int, public_key: bytes, timeout: float
) -> RoughtimeAnswer:
    from .roughtime import RoughtimeClient

    # ``timeout`` bounds the whole query: three tries a third of it each (grease or loss),
    # and no time left for a TCP fallback after a silent UDP server.
    client = RoughtimeClient(timeout=timeout / 3, attempts=3)
    try:
        async with asyncio.timeout(timeout):
            result = await client.aquery(host, port, public_key=public_key)
    except TimeoutError:
        raise QueryTimeoutError(
            f"no verified Roughtime answer from {host}:{port} within {timeout:g} s"
        ) from None
    reply = result.reply
    radius_us = reply.radius_us
    if reply.version != GOOGLE:
        radius_us += 1_000_000  # MIDP in whole seconds: up to one more second of truncation
    return RoughtimeAnswer(reply.midpoint_us * 1000, radius_us * 1000, round(result.delay * 1e9))


def _netloc(host: str, port: int, default: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default else f"{shown}:{port}"


def _options(query: str, url: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        name, equals, value = part.partition("=")
        if not equals or not name:
            raise ConfigError(f"bad option {part!r} in {url!r}")
        options[unquote(name)] = unquote(value)  # not unquote_plus: base64 keeps its '+'
    return options


def decode_key(text: str, where: str) -> bytes:
    """A Roughtime public key in base64 (standard or URL-safe) or hex."""
    text = text.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
        padded = text + "=" * (-len(text) % 4)
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError(f"bad Roughtime key in {where}") from None


def parse_source(
    url: str,
    *,
    timeout: float = 5.0,
    ca_file: str | Path | None = None,
    state_dir: Path | None = None,
    base_dir: Path | None = None,
    roughtime_query: RoughtimeQuery | None = None,
) -> Source:
    """A source from ``nts://host[:port][?ca=FILE]`` or ``roughtime://host[:port]?key=KEY``.

    ``ca_file``: the CA for NTS sources that name none; ``base_dir``: where
    relative ``ca=`` paths start (a configuration file's folder).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("nts", "roughtime"):
        raise ConfigError(f"source {url!r}: scheme must be nts:// or roughtime://")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(f"source {url!r}: nothing may follow host[:port] but ?options")
    host = parts.hostname
    if not host:
        raise ConfigError(f"source {url!r} names no host")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"source {url!r}: bad port") from None
    options = _options(parts.query, url)
    if scheme == "nts":
        unknown = set(options) - {"ca"}
        if unknown:
            raise ConfigError(f"source {url!r}: unknown option {sorted(unknown)[0]!r}")
        ca: str | Path | None = options.get("ca") or ca_file
        if ca is not None and base_dir is not None:
            ca = base_dir / Path(ca).expanduser()
        port = port or NTS_KE_PORT
        state = state_dir / f"nts-{host.replace(':', '_')}-{port}.json" if state_dir else None
        return NtsSource(host, port, ca_file=ca, timeout=timeout, state_file=state)
    unknown = set(options) - {"key"}
    if unknown:
        raise ConfigError(f"source {url!r}: unknown option {sorted(unknown)[0]!r}")
    if "key" not in options:
        raise ConfigError(f"source {url!r}: a Roughtime source needs ?key=PUBLIC_KEY")
    key = decode_key(options["key"], url)
    return RoughtimeSource(
        host, port or ROUGHTIME_PORT, key, timeout=timeout, query=roughtime_query
    )
