"""Fixtures for the fleet tests: a real redis-server on loopback.

No test here skips: without redis-server the fixture fails with "run `make peers`".
Each Redis runs in the test's tmp_path with no persistence (``--save ''
--appendonly no``), on 127.0.0.1 and a free port, under the peer harness's
``timeout`` wrapper and parent-death signal, and is stopped by PID when the
test ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # `tests.peers` importable however pytest was started
    sys.path.insert(0, str(_REPO))

from tests.peers.proc import (  # noqa: E402
    START_TIMEOUT,
    PeerNotInstalled,
    PeerProcess,
    free_port,
    require_executable,
    wait_until,
)

REDIS_HINT = "run `make peers` (scripts/install-peers.sh) as root to install redis-server"
LIFETIME = 300.0  # a forgotten redis-server ends by itself after this


def raw_client(port: int) -> redis.Redis:
    """A plain client for poking at Redis by hand (short time-outs, no retries)."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


class RedisServer:
    """One redis-server on 127.0.0.1:port; `stop` and `start` again keep the port."""

    def __init__(self, directory: Path) -> None:
        try:
            self.binary = require_executable("redis-server", hint=REDIS_HINT)
        except PeerNotInstalled as exc:
            pytest.fail(str(exc), pytrace=False)
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port("127.0.0.1", udp=False)
        self.proc: PeerProcess | None = None
        self.starts = 0
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None, "redis-server already running"
        self.starts += 1
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        proc = PeerProcess(
            "redis-server",
            argv,
            self.directory / f"redis-{self.starts}.log",
            lifetime=LIFETIME,
            cwd=self.directory,
        )
        self.proc = proc
        client = raw_client(self.port)
        try:

            def ready() -> bool:
                try:
                    return bool(client.ping())
                except redis.exceptions.RedisError:
                    return False

            if not wait_until(ready, START_TIMEOUT, interval=0.05, alive=proc.alive):
                error = proc.fail(f"no PONG on 127.0.0.1:{self.port} within {START_TIMEOUT} s")
                self.stop()
                raise error
        finally:
            client.close()

    def freeze(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel, never answered."""
        assert self.proc is not None, "redis-server not running"
        os.killpg(self.proc.pgid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server (harmless on one that runs)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pgid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Stop the server (SIGTERM to its PID, then its process group; bounded waits)."""
        if self.proc is not None:
            self.thaw()  # a stopped process would not see SIGTERM
            self.proc.stop(grace=5.0)
            self.proc = None

    def client(self) -> redis.Redis:
        return raw_client(self.port)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
