"""Sessions: keys and cookies kept between queries, and the public query API.

A :class:`Session` remembers, per NTS-KE server, the association that one
NTS-KE exchange produced, so later queries go straight to NTP until the
cookies run out or the server stops accepting them. It can persist that
state to a file (mode 0600, atomic replace) so a restarted program does not
hit the KE server again.

Importing it is cheap on purpose: TLS (pyOpenSSL, X.509) is imported only when a
query needs an NTS-KE exchange, asyncio only by the asyncio methods, so a query
answered with cookies from a session file starts in a fraction of the time.
"""

from __future__ import annotations

import contextlib
import json
import os
from _thread import allocate_lock  # threading.Lock, without importing threading
from collections.abc import Iterable, Iterator, Sequence

from .._frozen import Frozen
from .._os import write_private_file
from ..errors import CertificateError, GnomonError, NoCookiesError, NtsNakError
from ..hostport import NTS_KE_PORT, join_host_port, split_host_port
from ..proto.nts.aead import aead_name
from ..proto.nts.client import DEFAULT_AEADS, Association, Sample
from .ntp import Timing, antp_exchange, ntp_exchange

TYPE_CHECKING = False  # neither `typing`, `datetime` nor `pathlib` is imported for a query
if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path
    from typing import Any

    from ..tls import TrustStore
    from .ke import KeResult

STATE_VERSION = 1


class Result(Frozen):
    """One authenticated NTP measurement against an NTS server."""

    __slots__ = __match_args__ = (
        "server",
        "address",
        "port",
        "offset",
        "delay",
        "stratum",
        "leap",
        "reference_id",
        "root_delay",
        "root_dispersion",
        "precision",
        "aead",
        "cookies_left",
        "key_exchange",
        "server_time",
        "authenticated",
        "version",
        "poll",
        "receive_ns",
        "transmit_ns",
    )
    server: str  # the NTS-KE server asked, "host:port"
    address: str  # the NTP server's IP address
    port: int  # the NTP server's UDP port
    offset: float  # seconds to add to the local clock to match the server
    delay: float  # round-trip delay, seconds
    stratum: int
    leap: int
    reference_id: str
    root_delay: float
    root_dispersion: float
    precision: int
    aead: int
    cookies_left: int
    key_exchange: bool  # this query needed a new NTS-KE exchange
    server_time: float  # the server's time (Unix seconds) when the response arrived
    authenticated: bool
    version: int  # the NTP version of the reply
    poll: int
    receive_ns: int  # the server's receive and transmit timestamps (Unix ns)
    transmit_ns: int

    def __init__(
        self,
        server: str,
        address: str,
        port: int,
        offset: float,
        delay: float,
        stratum: int,
        leap: int,
        reference_id: str,
        root_delay: float,
        root_dispersion: float,
        precision: int,
        aead: int,
        cookies_left: int,
        key_exchange: bool,
        server_time: float,
        authenticated: bool = True,
        version: int = 4,
        poll: int = 0,
        receive_ns: int = 0,
        transmit_ns: int = 0,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "server", server)
        set_field(self, "address", address)
        set_field(self, "port", port)
        set_field(self, "offset", offset)
        set_field(self, "delay", delay)
        set_field(self, "stratum", stratum)
        set_field(self, "leap", leap)
        set_field(self, "reference_id", reference_id)
        set_field(self, "root_delay", root_delay)
        set_field(self, "root_dispersion", root_dispersion)
        set_field(self, "precision", precision)
        set_field(self, "aead", aead)
        set_field(self, "cookies_left", cookies_left)
        set_field(self, "key_exchange", key_exchange)
        set_field(self, "server_time", server_time)
        set_field(self, "authenticated", authenticated)
        set_field(self, "version", version)
        set_field(self, "poll", poll)
        set_field(self, "receive_ns", receive_ns)
        set_field(self, "transmit_ns", transmit_ns)

    @property
    def aead_name(self) -> str:
        return aead_name(self.aead)

    @property
    def synchronized(self) -> bool:
        """False when the server says it does not know the time (leap 3 or stratum 16)."""
        return self.leap != 3 and 1 <= self.stratum < 16

    def as_dict(self) -> dict[str, object]:
        fields: dict[str, object] = {name: getattr(self, name) for name in self._fields}
        fields["aead_name"] = self.aead_name
        fields["synchronized"] = self.synchronized
        return fields


def format_reference_id(stratum: int, reference_id: bytes) -> str:
    """As RFC 5905 section 7.3 reads it: ASCII at stratum 0-1, an address above."""
    if stratum <= 1:
        return reference_id.rstrip(b"\x00").decode("ascii", "replace")
    return ".".join(str(b) for b in reference_id)


def _result(
    server: str,
    ke_done: bool,
    sample: Sample,
    address: tuple[str, int],
    association: Association,
) -> Result:
    return Result(
        server=server,
        address=address[0],
        port=address[1],
        offset=sample.offset_ns / 1e9,
        delay=sample.delay_ns / 1e9,
        stratum=sample.stratum,
        leap=sample.leap,
        reference_id=format_reference_id(sample.stratum, sample.reference_id),
        root_delay=sample.root_delay,
        root_dispersion=sample.root_dispersion,
        precision=sample.precision,
        aead=association.aead_id,
        cookies_left=association.cookie_count,
        key_exchange=ke_done,
        server_time=(sample.transmit_ns + sample.delay_ns // 2) / 1e9,
        version=sample.version,
        poll=sample.poll,
        receive_ns=sample.receive_ns,
        transmit_ns=sample.transmit_ns,
    )


class _ServerState:
    __slots__ = ("association", "ntp_host", "ntp_port")

    def __init__(self, association: Association, ntp_host: str, ntp_port: int) -> None:
        self.association = association
        self.ntp_host = ntp_host
        self.ntp_port = ntp_port

    def target(self, timing: Timing) -> tuple[Association, str, int, Timing]:
        return self.association, self.ntp_host, self.ntp_port, timing


def parse_server(spec: str, default_port: int = NTS_KE_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, a bare IPv6 or an IPv4 address."""
    try:
        host, port = split_host_port(spec, default_port)
    except ValueError as exc:
        raise GnomonError(f"bad server {exc}") from None
    assert port is not None
    return host, port


def server_address(
    server: str, port: int | None = None, default_port: int = NTS_KE_PORT
) -> tuple[str, int]:
    """Where to connect for ``query(server)`` or ``query(server, port)``.

    `server` takes every form :func:`parse_server` does; a `port` argument fills in
    a port the text leaves out, and giving both is an error rather than a guess.
    """
    host, written = parse_server(server, default_port)
    if port is None:
        return host, written
    if split_host_port(server, None)[1] is not None:
        raise GnomonError(f"bad server {server!r}: port given twice ({written} and {port})")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise GnomonError(f"bad port {port!r}: must be a number from 1 to 65535")
    return host, port


def _read_ca_file(path: str) -> bytes:
    """The CA file's bytes, refused now if unreadable or holding no PEM certificate.

    Parsing the certificates waits until an NTS-KE exchange needs them (it imports
    the X.509 machinery); a query served from cached cookies never does.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise CertificateError(f"cannot read CA file {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"CA file {path} holds no valid PEM certificate")
    return data


class Session:
    """Keys and cookies for any number of NTS servers, reused across queries.

    >>> session = Session(ca_file="ca.pem")
    >>> session.query("time.example.net").offset   # NTS-KE, then NTP
    >>> session.query("time.example.net").offset   # NTP only: a cookie is reused
    """

    def __init__(
        self,
        *,
        ca_file: str | Path | None = None,
        aeads: Sequence[int] = DEFAULT_AEADS,
        timeout: float = 5.0,
        state_file: str | Path | None = None,
        timing: Timing | None = None,
    ) -> None:
        self.aeads = tuple(aeads)
        self.timeout = timeout
        self.timing = timing or Timing(timeout=timeout)
        self._ca_file = os.fspath(ca_file) if ca_file else None
        self._ca_pem = _read_ca_file(self._ca_file) if self._ca_file else None
        self._trust: TrustStore | None = None
        self._servers: dict[str, _ServerState] = {}
        self._lock = allocate_lock()
        self._state_file = os.fspath(state_file) if state_file else None
        self.key_exchanges = 0
        if self._state_file is not None:
            self._load(self._state_file)

    @property
    def state_file(self) -> Path | None:
        """Where the keys and cookies are kept between runs (None: in memory only)."""
        from pathlib import Path  # only when asked: a query does not import pathlib

        return Path(self._state_file) if self._state_file is not None else None

    @property
    def trust(self) -> TrustStore:
        """The CA certificates servers are checked against (loaded on first use)."""
        from ..tls import TrustStore

        if self._trust is None:
            if self._ca_pem is None:
                return TrustStore.system()
            self._trust = TrustStore.from_pem(self._ca_pem, str(self._ca_file))
        return self._trust

    def cookies_for(self, host: str, port: int | None = None) -> int:
        state = self._servers.get(join_host_port(*server_address(host, port)))
        return state.association.cookie_count if state else 0

    def forget(self, host: str, port: int | None = None) -> None:
        with self._lock:
            self._servers.pop(join_host_port(*server_address(host, port)), None)
        self._save()

    # --- sync ---------------------------------------------------------------

    def query(
        self,
        host: str,
        port: int | None = None,
        *,
        ntp_server: str | None = None,
        ntp_port: int | None = None,
        verify_time: datetime | None = None,
    ) -> Result:
        """Authenticated time from one NTS server (NTS-KE only when needed).

        `host` is a name or an address, or any form of :func:`parse_server`
        (``"time.example:4461"``, ``"[::1]:4460"``); `port` defaults to 4460.
        ``verify_time``: check the NTS-KE certificate at that time rather than
        the system clock's (see :class:`gnomon.Clock`'s bootstrap).
        """
        host, port, key, state = self._lookup(host, port)
        if state is not None:
            with self._saving(), contextlib.suppress(NtsNakError, NoCookiesError):
                # NAK or no cookie left: RFC 8915 5.7, run NTS-KE again (below)
                return self._result(key, False, state, ntp_exchange(*state.target(self.timing)))
        from .ke import ke_exchange

        ke = ke_exchange(host, port, **self._ke_options(ntp_server, ntp_port, verify_time))
        state = self._store(key, ke)
        with self._saving():
            return self._result(key, True, state, ntp_exchange(*state.target(self.timing)))

    # --- asyncio ------------------------------------------------------------

    async def aquery(
        self,
        host: str,
        port: int | None = None,
        *,
        ntp_server: str | None = None,
        ntp_port: int | None = None,
        verify_time: datetime | None = None,
    ) -> Result:
        """The asyncio twin of :meth:`query`."""
        host, port, key, state = self._lookup(host, port)
        if state is not None:
            with self._saving(), contextlib.suppress(NtsNakError, NoCookiesError):
                return self._result(
                    key, False, state, await antp_exchange(*state.target(self.timing))
                )
        from .ke import ake_exchange

        ke = await ake_exchange(host, port, **self._ke_options(ntp_server, ntp_port, verify_time))
        state = self._store(key, ke)
        with self._saving():
            return self._result(key, True, state, await antp_exchange(*state.target(self.timing)))

    def _ke_options(
        self, ntp_server: str | None, ntp_port: int | None, verify_time: datetime | None
    ) -> dict[str, Any]:
        return {
            "verify_time": verify_time,
            "trust": self.trust,
            "timeout": self.timeout,
            "aeads": self.aeads,
            "ntp_server": ntp_server,
            "ntp_port": ntp_port,
        }

    @staticmethod
    def _result(
        key: str, ke_done: bool, state: _ServerState, outcome: tuple[Sample, tuple[str, int]]
    ) -> Result:
        sample, address = outcome
        return _result(key, ke_done, sample, address, state.association)

    async def aquery_many(self, servers: Iterable[str]) -> list[Result | GnomonError]:
        """Query several ``host[:port]`` servers at once; failures come back as errors."""
        import asyncio

        async def one(spec: str) -> Result | GnomonError:
            try:
                return await self.aquery(spec)
            except GnomonError as exc:
                return exc

        return list(await asyncio.gather(*(one(spec) for spec in servers)))

    def query_many(self, servers: Iterable[str]) -> list[Result | GnomonError]:
        """Blocking form of :meth:`aquery_many` (runs its own event loop)."""
        import asyncio

        return asyncio.run(self.aquery_many(list(servers)))

    # --- state --------------------------------------------------------------

    def _lookup(self, host: str, port: int | None) -> tuple[str, int, str, _ServerState | None]:
        """Where to connect, the state's key, and its state if it still holds a cookie."""
        host, port = server_address(host, port)
        key = join_host_port(host, port)
        with self._lock:
            state = self._servers.get(key)
        usable = state is not None and state.association.cookie_count
        return host, port, key, state if usable else None

    @contextlib.contextmanager
    def _saving(self) -> Iterator[None]:
        """Save the state file however the query ends (cookies were spent or gained)."""
        try:
            yield
        finally:
            self._save()

    def _store(self, key: str, ke: KeResult) -> _ServerState:
        self.key_exchanges += 1
        state = _ServerState(
            Association(ke.response.aead, ke.c2s, ke.s2c, ke.response.cookies),
            ke.ntp_host,
            ke.ntp_port,
        )
        with self._lock:
            self._servers[key] = state
        return state

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as file:
                document = json.loads(file.read())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise GnomonError(f"cannot read session file {path}: {exc}") from None
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
            return  # an unknown format costs one NTS-KE, nothing more
        try:
            for key, entry in document["servers"].items():
                association = Association(
                    int(entry["aead"]),
                    bytes.fromhex(entry["c2s"]),
                    bytes.fromhex(entry["s2c"]),
                    [bytes.fromhex(c) for c in entry["cookies"]],
                )
                self._servers[key] = _ServerState(
                    association, str(entry["ntp_host"]), int(entry["ntp_port"])
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GnomonError(f"session file {path} is corrupt: {exc!r}") from None

    def _save(self) -> None:
        if self._state_file is None:
            return
        with self._lock:
            servers = {
                key: {
                    "aead": s.association.aead_id,
                    "c2s": s.association.c2s.hex(),
                    "s2c": s.association.s2c.hex(),
                    "cookies": [c.hex() for c in s.association.cookies],
                    "ntp_host": s.ntp_host,
                    "ntp_port": s.ntp_port,
                }
                for key, s in self._servers.items()
            }
        write_private_file(
            self._state_file, json.dumps({"version": STATE_VERSION, "servers": servers})
        )


_default_session: Session | None = None
_default_lock = allocate_lock()


def default_session() -> Session:
    """The process-wide session behind :func:`query` and :func:`aquery`."""
    global _default_session
    with _default_lock:
        if _default_session is None:
            _default_session = Session()
        return _default_session


def _session_for(
    ca_file: str | Path | None, timeout: float | None, aeads: Sequence[int] | None
) -> Session:
    if ca_file is None and timeout is None and aeads is None:
        return default_session()
    return Session(ca_file=ca_file, timeout=timeout or 5.0, aeads=aeads or DEFAULT_AEADS)


def query(
    host: str,
    port: int | None = None,
    *,
    ca_file: str | Path | None = None,
    timeout: float | None = None,
    aeads: Sequence[int] | None = None,
    session: Session | None = None,
) -> Result:
    """Authenticated time from an NTS server, in one call.

    >>> import gnomon
    >>> result = gnomon.query("time.cloudflare.com")
    >>> result.offset, result.delay, result.authenticated

    `host` takes the forms of :func:`parse_server`: ``gnomon.query("localhost:24460")``
    is ``gnomon.query("localhost", 24460)``.

    Without ``session`` (and with default options) a process-wide session
    keeps the cookies, so repeated calls skip NTS-KE.
    """
    session = session or _session_for(ca_file, timeout, aeads)
    return session.query(host, port)


async def aquery(
    host: str,
    port: int | None = None,
    *,
    ca_file: str | Path | None = None,
    timeout: float | None = None,
    aeads: Sequence[int] | None = None,
    session: Session | None = None,
) -> Result:
    """The asyncio form of :func:`query`."""
    session = session or _session_for(ca_file, timeout, aeads)
    return await session.aquery(host, port)
