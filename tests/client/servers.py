"""gnomon servers on loopback for the Clock and sync tests, some of them possibly lying.

``NtsServers`` runs in-process gnomon servers (NTS, and with ``roughtime=True``
gnomon's Roughtime service too) on an event loop in a thread of its own, so
blocking clients (``Clock.now()``, ``gnomon sync``) and asyncio clients can both
use them. A server told to lie shifts its NTP timestamps (receive and transmit)
and its signed Roughtime midpoint by a fixed offset: its clock reads that far
off, as a misconfigured or malicious server's would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.certs import DemoPki
from gnomon.proto.roughtime import RoughtimeServer, delegate
from gnomon.server.app import Server
from gnomon.server.roughtime_keys import public_key_of, write_long_term_key
from tests.peers.proc import START_TIMEOUT
from tests.server.helpers import WAIT, base_config, running_server
from tests.unit.roughtime_loopback import LoopbackServer


class OffsetResponder:
    """An NtpResponder whose clock reads ``offset_ns`` off."""

    def __init__(self, inner: Any, offset_ns: int) -> None:
        self._inner = inner
        self.offset_ns = offset_ns

    def respond(self, data: bytes, receive_ns: int, clock: Callable[[], int]) -> bytes | None:
        offset = self.offset_ns
        return self._inner.respond(data, receive_ns + offset, lambda: clock() + offset)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def make_liar(server: Server, offset_s: float) -> None:
    for service in server.ntp_services:
        service.responder = OffsetResponder(service.responder, int(offset_s * 1e9))  # type: ignore[assignment]
    if server.roughtime is not None:
        clock = server.roughtime.clock
        honest = clock.now

        def lying() -> tuple[int, int] | None:
            stamp = honest()
            return None if stamp is None else (stamp[0] + round(offset_s), stamp[1])

        clock.now = lying  # type: ignore[method-assign]


class NtsServers:
    """``with NtsServers(pki, lies=[0, 0, 3600]) as servers: servers.urls``"""

    def __init__(self, pki: DemoPki, lies: Sequence[float], *, roughtime: bool = False) -> None:
        self.pki = pki
        self.lies = list(lies)
        self.roughtime = roughtime
        self.ke_ports: list[int] = []
        self.roughtime_ports: list[int] = []
        self.roughtime_keys: list[bytes] = []
        self._keys = tempfile.TemporaryDirectory(prefix="gnomon-rt-keys-")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def urls(self) -> list[str]:
        return [f"nts://127.0.0.1:{port}?ca={self.pki.ca_cert}" for port in self.ke_ports]

    @property
    def roughtime_urls(self) -> list[str]:
        return [
            f"roughtime://127.0.0.1:{port}?key={base64.b64encode(key).decode()}"
            for port, key in zip(self.roughtime_ports, self.roughtime_keys, strict=True)
        ]

    def _config(self, index: int) -> Any:
        if not self.roughtime:
            return base_config(self.pki, local_stratum=10)
        private = Ed25519PrivateKey.from_private_bytes(bytes([40 + index]) * 32)
        key_file = Path(self._keys.name) / f"roughtime-{index}.key"
        write_long_term_key(key_file, private)
        self.roughtime_keys.append(public_key_of(private))
        return base_config(
            self.pki,
            local_stratum=10,
            roughtime=True,
            roughtime_port=0,
            roughtime_long_term_key=key_file,
            roughtime_max_wait=0.0,
        )

    async def _start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        for index, lie in enumerate(self.lies):
            server = await self._stack.enter_async_context(running_server(self._config(index)))
            if lie:
                make_liar(server, lie)
            self.ke_ports.append(server.bound_ke_port)
            if server.roughtime is not None:
                self.roughtime_ports.append(server.roughtime.bound_port)

    async def _stop(self) -> None:
        assert self._stack is not None
        await self._stack.aclose()

    def __enter__(self) -> NtsServers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(START_TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(WAIT * 2)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            self._loop.close()
            self._keys.cleanup()


# --- Roughtime -------------------------------------------------------------------------

DAY = 86400


class LiveRoughtime(LoopbackServer):
    """gnomon's sans-I/O RoughtimeServer on loopback, signing this machine's time + ``lie``.

    Its delegation covers yesterday to tomorrow of the time it signs.
    """

    def __init__(self, seed: int, lie: float = 0.0, radius: int = 3) -> None:
        private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        online = Ed25519PrivateKey.from_private_bytes(bytes([seed + 100]) * 32)
        now = int(time.time() + lie)
        versions = (1, 0x8000000C)
        delegation = delegate(
            private, online.public_key().public_bytes_raw(), now - DAY, now + DAY, versions
        )
        self.public_key = private.public_key().public_bytes_raw()
        self.lie = lie
        server = RoughtimeServer(self.public_key, online, delegation, versions)
        super().__init__(server, 0, radius)

    @property  # type: ignore[override]
    def midpoint(self) -> int:
        return int(time.time() + self.lie)

    @midpoint.setter
    def midpoint(self, value: int) -> None:
        pass

    @property
    def url(self) -> str:
        key = base64.b64encode(self.public_key).decode()
        return f"roughtime://127.0.0.1:{self.port}?key={key}"
