"""Helpers for the server conformance tests: raw NTS-KE clients, NTS packets
built by hand, an in-process server and a server subprocess.

Everything stays on loopback; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from gnomon.errors import GnomonError
from gnomon.proto.nts.ke import Record, RecordStream
from gnomon.server.app import Server
from gnomon.server.config import ServerConfig
from gnomon.tls import ALPN_NTSKE, TlsEngine
from tests.peers.proc import START_TIMEOUT
from tests.unit.nts_messages import (  # noqa: F401 (re-exported for the server tests)
    NtsReply,
    aead_record,
    compliant_record,
    error_code,
    fake_exporter,
    message,
    npn,
    nts_request,
    open_reply,
    parse_response_bytes,
    plain_request,
    raw_record,
    records_of,
    u16s,
)

LOOPBACK = "127.0.0.1"
WAIT = 5.0  # the longest any single step may take


class ManualClock:
    """Monotonic seconds that move only when a test says so (``clock=`` of server parts)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- NTS-KE messages ----------------------------------------------------------


# --- a raw NTS-KE client (blocking; run it in a thread next to an in-process server) ----


class Refused(Exception):
    """The server closed, reset or failed the connection instead of answering."""


def client_context(
    *, alpn: Sequence[bytes] | None = (ALPN_NTSKE,), max_version: int | None = None
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    else:
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
    if alpn:
        context.set_alpn_protos(list(alpn))
    context.set_verify(SSL.VERIFY_NONE)
    return context


class RawKeClient:
    """One NTS-KE connection whose every byte the test controls."""

    def __init__(
        self,
        port: int,
        *,
        alpn: Sequence[bytes] | None = (ALPN_NTSKE,),
        max_version: int | None = None,
        timeout: float = WAIT,
        source: str | None = None,
    ) -> None:
        self.deadline = time.monotonic() + timeout
        self.sock = socket.create_connection(
            (LOOPBACK, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.tls = TlsEngine(client_context(alpn=alpn, max_version=max_version), server_side=False)

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the NTS-KE server did not answer in time")
        return remaining

    def _recv(self) -> bytes:
        self.sock.settimeout(self._remaining())
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise Refused(f"connection reset: {exc}") from None
        if not data:
            raise Refused("connection closed")
        return data

    def _flush(self) -> None:
        outgoing = self.tls.outgoing()
        if outgoing:
            try:
                self.sock.sendall(outgoing)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Refused(f"connection reset: {exc}") from None

    def handshake(self) -> None:
        try:
            while True:
                done = self.tls.handshake()
                self._flush()
                if done:
                    return
                self.tls.receive(self._recv())
        except GnomonError as exc:
            raise Refused(f"TLS handshake failed: {exc}") from None

    def send(self, data: bytes, *, per_write: int | None = None) -> None:
        """``data`` in TLS records of ``per_write`` bytes each (one record by default)."""
        step = per_write or len(data) or 1
        for start in range(0, len(data), step):
            self.tls.write(data[start : start + step])
            self._flush()

    def receive(self) -> tuple[Record, ...]:
        """The records of the server's response; raises Refused if there is none."""
        stream = RecordStream(1 << 20)
        while True:
            try:
                self.tls.receive(self._recv())
                payload = self.tls.read()
            except GnomonError as exc:
                raise Refused(f"TLS failed: {exc}") from None
            records = stream.feed(payload)
            if records is not None:
                return records
            if self.tls.closed:
                raise Refused("close_notify before End of Message")

    def export(self, label: bytes, length: int, context: bytes) -> bytes:
        return self.tls.export(label, length, context)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawKeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class KeOutcome:
    records: tuple[Record, ...]
    exporter: Any  # the connection's exporter, still usable after the close


def ke_request(
    port: int, request: bytes, *, per_write: int | None = None, **kwargs: Any
) -> KeOutcome:
    """Handshake, send ``request``, return the response (raises Refused)."""
    with RawKeClient(port, **kwargs) as client:
        client.handshake()
        client.send(request, per_write=per_write)
        return KeOutcome(client.receive(), client.export)


def wait_closed(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closes or resets ``sock``; TimeoutError after ``timeout``."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        raise TimeoutError(f"still open after {timeout} s") from None
    return time.monotonic() - start


# --- NTP / NTS packets ----------------------------------------------------------


def udp_ask(port: int, packet: bytes, timeout: float = 2.0) -> bytes | None:
    """One datagram to the server and its answer, or None after ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((LOOPBACK, port))
        sock.send(packet)
        try:
            return sock.recv(4096)
        except (TimeoutError, ConnectionRefusedError):
            return None


# --- servers ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig, **kwargs: Any) -> AsyncIterator[Server]:
    """An in-process server on loopback, stopped with ``Server.stop()`` on exit."""
    ready = asyncio.Event()
    server = Server(config, ready=lambda _server: ready.set(), **kwargs)
    task = asyncio.create_task(server.run())
    waiter = asyncio.create_task(ready.wait())
    try:
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED"
        )
        if task in done:
            task.result()  # raises what stopped it
            raise AssertionError("server stopped before it was ready")
        if waiter not in done:
            raise AssertionError("server not ready in time")
        yield server
    finally:
        waiter.cancel()
        server.stop()
        try:
            await asyncio.wait_for(task, WAIT)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, WAIT)
            raise AssertionError("Server.stop() did not stop run() in time") from None
        # Server.run() installs SIGINT/SIGTERM handlers and never removes them.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def base_config(pki: Any, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {
        "listen": (LOOPBACK,),
        "ntp_port": 0,
        "ke_port": 0,
        "certificate": pki.cert_chain,
        "key": pki.key,
    }
    values.update(overrides)
    return ServerConfig(**values)


def toml_config(
    pki: Any, *, extra: str = "", key_path: Path | None = None, server: str = ""
) -> str:
    """A configuration on loopback with ephemeral ports; ``server``: more [server] lines."""
    text = (
        "[server]\n"
        f'listen = ["{LOOPBACK}"]\n'
        "ntp_port = 0\n"
        "ke_port = 0\n"
        f"{server}"
        "[tls]\n"
        f'certificate = "{pki.cert_chain}"\n'
        f'key = "{pki.key}"\n'
    )
    if key_path is not None:
        text += f'[keys]\npath = "{key_path}"\n'
    return text + extra


class ServerProcess:
    """``python -m gnomon serve --config FILE`` in a subprocess."""

    def __init__(self, config_file: Path, ready_file: Path) -> None:
        ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gnomon",
                "serve",
                "--config",
                str(config_file),
                "--ready-file",
                str(ready_file),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise AssertionError(f"server exited with {self.process.returncode}: {error}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("server process not ready in time")
            try:
                info = json.loads(ready_file.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.02)
                continue
            self.info = info
            self.ke_port = int(info["ke_port"])
            self.ntp_port = int(info["ntp_port"])
            return

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT)
        if self.process.stderr:
            self.process.stderr.close()
        return self.process.returncode
