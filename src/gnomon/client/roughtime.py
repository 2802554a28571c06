"""Roughtime over the network, blocking and asyncio: one server, or a chain of several.

>>> from gnomon.client.roughtime import query_roughtime
>>> result = query_roughtime("roughtime.example.net", public_key="AW5uAoTSTDfG...=")
>>> result.midpoint, result.radius

A response that fails verification is retried with a fresh request a bounded
number of times (servers "grease": they send invalid responses on purpose);
when UDP gets no answer at all the query moves to TCP on the same port. A
chain (:meth:`RoughtimeClient.query_chain`) asks every server of a list in
order, twice, each nonce chained to the previous response, and returns the
interval they all agree on or the servers that disagree with a report ready
to send. All checks live in :mod:`gnomon.proto.roughtime`; the retry, fallback
and chain rules are written once, as generators of I/O steps (resolve, send) that
a blocking and an asyncio adapter carry out.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import (
    GnomonError,
    QueryTimeoutError,
    RoughtimeError,
    RoughtimeFormatError,
    RoughtimeVerificationError,
)
from ..proto.roughtime import message as m
from ..proto.roughtime.chain import RAND_SIZE, Link, Verdict, judge, next_nonce
from ..proto.roughtime.client import (
    MAX_RESPONSE,
    ClientRequest,
    Reply,
    build_request,
    verify_response,
)
from ..proto.roughtime.serverlist import ServerAddress, ServerEntry, decode_public_key
from ..proto.roughtime.versions import CLIENT_VERSIONS, DEFAULT_PORT, GOOGLE, RULES

MAX_DATAGRAM = 4096

Random = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class RoughtimeResult:
    """A verified answer of one server."""

    server: str  # the name asked for ("host:port" or the server list's name)
    address: str  # the IP address that answered
    port: int
    protocol: str  # "udp" or "tcp"
    public_key: bytes
    midpoint: int  # Unix seconds
    radius: int  # seconds: the true time is within midpoint ± radius
    delay: float  # round-trip delay of the answered request, seconds
    attempts: int  # requests sent (more than 1 after grease or loss)
    reply: Reply = field(repr=False)  # everything verified, the raw packets included
    rand: bytes | None = field(default=None, repr=False)  # chain input of this request

    @property
    def version(self) -> int:
        return self.reply.version

    @property
    def version_name(self) -> str:
        return self.reply.version_name

    @property
    def request(self) -> bytes:
        return self.reply.request

    @property
    def response(self) -> bytes:
        return self.reply.response

    @property
    def earliest(self) -> int:
        return self.reply.earliest

    @property
    def latest(self) -> int:
        return self.reply.latest

    def as_dict(self) -> dict[str, object]:
        return {
            "server": self.server,
            "address": self.address,
            "port": self.port,
            "protocol": self.protocol,
            "public_key": base64.b64encode(self.public_key).decode(),
            "version": f"0x{self.version:08x}",
            "version_name": self.version_name,
            "midpoint": self.midpoint,
            "radius": self.radius,
            "earliest": self.earliest,
            "latest": self.latest,
            "delay": self.delay,
            "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True)
class ChainFailure:
    """A server of a chain that gave no verified answer (left out of the chain)."""

    server: str
    error: GnomonError


@dataclass(frozen=True, slots=True)
class ChainResult:
    """A chain over a server list: the agreed interval, or who disagrees and the report."""

    results: tuple[RoughtimeResult, ...]  # in chain order (every server, twice)
    verdict: Verdict
    failures: tuple[ChainFailure, ...] = ()

    @property
    def consistent(self) -> bool:
        return self.verdict.consistent

    @property
    def interval(self) -> tuple[int, int] | None:
        """(earliest, latest) Unix seconds that every answer allows, when consistent."""
        return self.verdict.interval

    @property
    def disagreeing(self) -> tuple[str, ...]:
        """Names of the servers in some violated pair."""
        return self._names(self.verdict.involved)

    @property
    def suspects(self) -> tuple[str, ...]:
        """Names of the servers whose removal alone makes the chain consistent."""
        return self._names(self.verdict.suspects)

    def _names(self, positions: tuple[int, ...]) -> tuple[str, ...]:
        """The servers at ``positions``, in the order of the server list."""
        chosen = {self.results[i].server for i in positions}
        return tuple(n for n in dict.fromkeys(r.server for r in self.results) if n in chosen)

    @property
    def report(self) -> str | None:
        """The malfeasance report (JSON) when the servers disagree, else None."""
        return None if self.consistent else self.verdict.report()


# --- transports --------------------------------------------------------------------

Resolved = tuple[int, tuple[str, int]]  # address family, (IP address, port)


def _kind(address: ServerAddress) -> int:
    return socket.SOCK_DGRAM if address.protocol == "udp" else socket.SOCK_STREAM


def _first(infos: list[Any]) -> Resolved:
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


def _resolve(address: ServerAddress) -> Resolved:
    try:
        return _first(socket.getaddrinfo(address.host, address.port, type=_kind(address)))
    except OSError as exc:
        raise GnomonError(f"cannot resolve {address.host}: {exc}") from None


async def _aresolve(address: ServerAddress) -> Resolved:
    loop = asyncio.get_running_loop()
    try:
        return _first(await loop.getaddrinfo(address.host, address.port, type=_kind(address)))
    except OSError as exc:
        raise GnomonError(f"cannot resolve {address.host}: {exc}") from None


def _body_length(head: bytes) -> int:
    """The length a TCP frame header announces, refused when too long for an answer."""
    length = m.frame_length(head)
    if length + m.FRAME_HEADER > MAX_RESPONSE:
        raise RoughtimeFormatError(f"TCP response of {length} bytes")
    return length


def _udp(family: int, address: tuple[str, int], packet: bytes, timeout: float) -> bytes | None:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            sock.send(packet)
            return sock.recv(MAX_DATAGRAM)
        except (TimeoutError, ConnectionRefusedError):
            return None  # lost, or ICMP port unreachable: the caller retries or moves on
        except OSError as exc:
            raise GnomonError(f"UDP to {address[0]}:{address[1]}: {exc}") from None


def _tcp(family: int, address: tuple[str, int], packet: bytes, timeout: float) -> bytes | None:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(packet)

            def read(n: int) -> bytes:
                chunks = bytearray()
                while len(chunks) < n:
                    chunk = sock.recv(n - len(chunks))
                    if not chunk:
                        raise RoughtimeFormatError("TCP connection closed mid-response")
                    chunks += chunk
                return bytes(chunks)

            head = read(m.FRAME_HEADER)
            return head + read(_body_length(head))
    except (TimeoutError, ConnectionError):
        return None
    except OSError as exc:
        raise GnomonError(f"TCP to {address[0]}:{address[1]}: {exc}") from None


class _DatagramWaiter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: no server there, as the blocking form sees it
        if isinstance(exc, ConnectionRefusedError) and not self.answer.done():
            self.answer.set_result(None)


async def _audp(
    family: int, address: tuple[str, int], packet: bytes, timeout: float
) -> bytes | None:
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            _DatagramWaiter, remote_addr=address, family=family
        )
    except OSError as exc:
        raise GnomonError(f"UDP to {address[0]}:{address[1]}: {exc}") from None
    try:
        transport.sendto(packet)
        try:
            return await asyncio.wait_for(asyncio.shield(protocol.answer), timeout)
        except TimeoutError:
            return None
    finally:
        transport.close()


async def _atcp(
    family: int, address: tuple[str, int], packet: bytes, timeout: float
) -> bytes | None:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address[0], address[1], family=family)
            try:
                writer.write(packet)
                await writer.drain()
                head = await reader.readexactly(m.FRAME_HEADER)
                return head + await reader.readexactly(_body_length(head))
            finally:
                writer.close()
    except asyncio.IncompleteReadError:
        raise RoughtimeFormatError("TCP connection closed mid-response") from None
    except (TimeoutError, ConnectionError):
        return None
    except OSError as exc:
        raise GnomonError(f"TCP to {address[0]}:{address[1]}: {exc}") from None


# --- the query logic without I/O: a generator of the steps to carry out --------------


@dataclass(frozen=True, slots=True)
class Target:
    """A server to ask: its name, key, addresses (UDP first) and the versions to offer."""

    name: str
    public_key: bytes
    addresses: tuple[ServerAddress, ...]
    versions: tuple[int, ...] = CLIENT_VERSIONS

    @classmethod
    def from_entry(cls, entry: ServerEntry) -> Target:
        # A list naming a version gnomon speaks but does not offer by default (Google)
        # gets exactly that; otherwise the server picks from gnomon's usual offer.
        versions: tuple[int, ...] = CLIENT_VERSIONS
        if entry.version in RULES and entry.version not in CLIENT_VERSIONS:
            versions = (entry.version,)
        return cls(entry.name, entry.public_key, entry.addresses, versions)

    @classmethod
    def from_host(
        cls,
        host: str,
        port: int,
        public_key: bytes | str,
        protocol: str = "udp",
        versions: Sequence[int] = CLIENT_VERSIONS,
    ) -> Target:
        key = decode_public_key(public_key) if isinstance(public_key, str) else public_key
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(name, key, (ServerAddress(protocol, host, port),), tuple(versions))

    def plan(self) -> list[ServerAddress]:
        """The addresses to try in order: UDP ones, then TCP ones, then TCP on the UDP ports."""
        udp = [a for a in self.addresses if a.protocol == "udp"]
        if self.versions == (GOOGLE,):
            return udp  # Google-Roughtime has no TCP framing
        plan = udp + [a for a in self.addresses if a.protocol == "tcp"]
        for address in udp:
            fallback = ServerAddress("tcp", address.host, address.port)
            if fallback not in plan:
                plan.append(fallback)
        return plan


@dataclass(frozen=True, slots=True)
class _Resolve:
    address: ServerAddress  # answer: its Resolved


@dataclass(frozen=True, slots=True)
class _Send:
    address: ServerAddress  # answer: (the response or None, the seconds it took)
    resolved: Resolved
    packet: bytes


_Step = _Resolve | _Send
_T = TypeVar("_T")
_Steps = Generator[_Step, Any, _T]


class _Attempts:
    """Bounded retries of one server: a fresh request each time, grease tolerated."""

    def __init__(self, client: RoughtimeClient, target: Target, previous: bytes | None) -> None:
        self.client = client
        self.target = target
        self.previous = previous
        self.sent = 0
        self.last_error: GnomonError | None = None

    def steps(self) -> _Steps[RoughtimeResult]:
        """Each address of the plan in turn, a few requests to each, until one verifies."""
        for address in self.target.plan():
            resolved = yield _Resolve(address)
            answered = False
            for _ in range(self.client.attempts):
                request, rand = self.request()
                response, delay = yield _Send(address, resolved, request.packet)
                if response is None:
                    continue
                answered = True
                reply = self.check(request, response)
                if reply is not None:
                    return self.result(address, resolved, reply, delay, rand)
            if answered:
                break  # the server answers: another transport would not help
        raise self.failure()

    def request(self) -> tuple[ClientRequest, bytes | None]:
        self.sent += 1
        rand: bytes | None = None
        google = self.target.versions == (GOOGLE,)
        size = 64 if google else 32
        if self.previous is None:
            nonce = self.client.random(size)
        else:
            rand = self.client.random(RAND_SIZE)
            nonce = next_nonce(self.previous, rand, size)
        versions = self.target.versions
        return build_request(nonce, versions, None if google else self.target.public_key), rand

    def check(self, request: ClientRequest, response: bytes) -> Reply | None:
        try:
            return verify_response(request, response, self.target.public_key)
        except (RoughtimeFormatError, RoughtimeVerificationError) as exc:
            self.last_error = exc
            return None

    def result(
        self,
        address: ServerAddress,
        resolved: Resolved,
        reply: Reply,
        delay: float,
        rand: bytes | None,
    ) -> RoughtimeResult:
        return RoughtimeResult(
            server=self.target.name,
            address=resolved[1][0],
            port=resolved[1][1],
            protocol=address.protocol,
            public_key=self.target.public_key,
            midpoint=reply.midpoint,
            radius=reply.radius,
            reply=reply,
            delay=delay,
            attempts=self.sent,
            rand=rand,
        )

    def failure(self) -> GnomonError:
        if self.last_error is not None:
            return RoughtimeVerificationError(
                f"{self.target.name}: no valid response in {self.sent} attempts "
                f"(last: {self.last_error})"
            )
        return QueryTimeoutError(
            f"{self.target.name}: no answer within {self.client.timeout:g} s "
            f"({self.sent} requests over UDP and TCP)"
        )


def _chain_steps(
    client: RoughtimeClient, servers: Sequence[ServerEntry | Target], passes: int
) -> _Steps[ChainResult]:
    """Every server in order ``passes`` times, each nonce chained to the last answer."""
    targets = [s if isinstance(s, Target) else Target.from_entry(s) for s in servers]
    if not targets:
        raise RoughtimeError("a chain needs at least one server")
    chain = _Chain()
    for _ in range(passes):
        for target in targets:
            try:
                chain.add((yield from _Attempts(client, target, chain.previous).steps()))
            except GnomonError as exc:
                chain.fail(target, exc)
    return chain.result()


def _advance(steps: _Steps[_T], answer: object) -> _Step:
    """The next step after ``answer``, which is raised in ``steps`` when it is an error."""
    return steps.throw(answer) if isinstance(answer, GnomonError) else steps.send(answer)


# --- the client: the steps carried out, blocking or in asyncio -----------------------


class RoughtimeClient:
    """Queries Roughtime servers; options shared by every query.

    ``timeout`` bounds each request's wait; ``attempts`` the requests per
    address (answers that fail verification and lost datagrams both count).
    ``random`` gives nonces and chain rands (``os.urandom`` unless a test
    passes its own).
    """

    def __init__(
        self,
        *,
        timeout: float = 2.0,
        attempts: int = 3,
        random: Random = os.urandom,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.timeout = timeout
        self.attempts = attempts
        self.random = random

    def query(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        public_key: bytes | str,
        protocol: str = "udp",
        versions: Sequence[int] = CLIENT_VERSIONS,
    ) -> RoughtimeResult:
        """Verified time from one server known by its long-term ``public_key``."""
        return self.query_target(Target.from_host(host, port, public_key, protocol, versions))

    async def aquery(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        public_key: bytes | str,
        protocol: str = "udp",
        versions: Sequence[int] = CLIENT_VERSIONS,
    ) -> RoughtimeResult:
        """The asyncio form of :meth:`query`."""
        target = Target.from_host(host, port, public_key, protocol, versions)
        return await self.aquery_target(target)

    def query_target(self, target: Target, previous: bytes | None = None) -> RoughtimeResult:
        return self._run(_Attempts(self, target, previous).steps())

    async def aquery_target(self, target: Target, previous: bytes | None = None) -> RoughtimeResult:
        return await self._arun(_Attempts(self, target, previous).steps())

    def query_chain(self, servers: Sequence[ServerEntry | Target], passes: int = 2) -> ChainResult:
        """Ask every server in order ``passes`` times, each nonce chained to the last answer."""
        return self._run(_chain_steps(self, servers, passes))

    async def aquery_chain(
        self, servers: Sequence[ServerEntry | Target], passes: int = 2
    ) -> ChainResult:
        """The asyncio form of :meth:`query_chain` (sequential: each nonce needs the last)."""
        return await self._arun(_chain_steps(self, servers, passes))

    def _run(self, steps: _Steps[_T]) -> _T:
        """Carry out ``steps`` with blocking sockets; a step's error is raised in them."""
        try:
            step = next(steps)
            while True:
                step = _advance(steps, self._blocking(step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _arun(self, steps: _Steps[_T]) -> _T:
        """The asyncio form of :meth:`_run`."""
        try:
            step = next(steps)
            while True:
                step = _advance(steps, await self._async(step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _blocking(self, step: _Step) -> object:
        """A step's answer, or the error it ended in."""
        try:
            if isinstance(step, _Resolve):
                return _resolve(step.address)
            exchange = _udp if step.address.protocol == "udp" else _tcp
            started = time.monotonic()
            response = exchange(*step.resolved, step.packet, self.timeout)
            return response, time.monotonic() - started
        except GnomonError as exc:
            return exc

    async def _async(self, step: _Step) -> object:
        try:
            if isinstance(step, _Resolve):
                return await _aresolve(step.address)
            exchange = _audp if step.address.protocol == "udp" else _atcp
            started = asyncio.get_running_loop().time()
            response = await exchange(*step.resolved, step.packet, self.timeout)
            return response, asyncio.get_running_loop().time() - started
        except GnomonError as exc:
            return exc


class _Chain:
    def __init__(self) -> None:
        self.results: list[RoughtimeResult] = []
        self.failures: list[ChainFailure] = []

    @property
    def previous(self) -> bytes | None:
        return self.results[-1].response if self.results else None

    def add(self, result: RoughtimeResult) -> None:
        self.results.append(result)

    def fail(self, target: Target, error: GnomonError) -> None:
        self.failures.append(ChainFailure(target.name, error))

    def result(self) -> ChainResult:
        if not self.results:
            detail = "; ".join(str(f.error) for f in self.failures)
            raise RoughtimeError(f"no server of the chain answered ({detail})")
        links = [
            Link(r.public_key, r.reply, r.rand if i else None, r.server)
            for i, r in enumerate(self.results)
        ]
        return ChainResult(tuple(self.results), judge(links), tuple(self.failures))


# --- module-level shortcuts ---------------------------------------------------------


def query_roughtime(
    host: str,
    port: int = DEFAULT_PORT,
    *,
    public_key: bytes | str,
    timeout: float = 2.0,
    attempts: int = 3,
    protocol: str = "udp",
) -> RoughtimeResult:
    """Verified rough time from one server, in one call."""
    client = RoughtimeClient(timeout=timeout, attempts=attempts)
    return client.query(host, port, public_key=public_key, protocol=protocol)


async def aquery_roughtime(
    host: str,
    port: int = DEFAULT_PORT,
    *,
    public_key: bytes | str,
    timeout: float = 2.0,
    attempts: int = 3,
    protocol: str = "udp",
) -> RoughtimeResult:
    """The asyncio form of :func:`query_roughtime`."""
    client = RoughtimeClient(timeout=timeout, attempts=attempts)
    return await client.aquery(host, port, public_key=public_key, protocol=protocol)
