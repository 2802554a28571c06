"""Several NTP workers, one rate limit per client: the kernel steers each client
address to one worker (a reuseport BPF program), whatever its source port."""

from __future__ import annotations

import collections
import contextlib
import socket
import time
from pathlib import Path

import pytest

from gnomon.certs import make_demo_pki
from gnomon.proto.nts.ntp import NtpHeader
from gnomon.server.ntp import steer_by_source
from tests.server.helpers import ServerProcess, toml_config


def _answers_from_fresh_ports(port: int, count: int, source: str) -> tuple[int, int]:
    """``count`` requests, each from a new socket (a new source port): (answers, kisses)."""
    answers = kisses = 0
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.settimeout(0.15)
            sock.sendto(NtpHeader(transmit_ts=0x5000 + i).encode(), ("127.0.0.1", port))
            try:
                header = NtpHeader.decode(sock.recv(1024))
            except TimeoutError:
                continue
            if header.reference_id == b"RATE":
                kisses += 1
            else:
                answers += 1
    return answers, kisses


def test_rate_limit_holds_across_workers(tmp_path: Path) -> None:
    pki = make_demo_pki(tmp_path / "pki")
    config = tmp_path / "gnomon.toml"
    limits = "[limits]\nntp_rate_limit = true\nntp_rate_burst = 4\nntp_rate_interval = 3600.0\n"
    config.write_text(
        toml_config(pki, server="workers = 2\n", key_path=tmp_path / "keys.json", extra=limits)
    )
    server = ServerProcess(config, tmp_path / "ready.json")
    try:
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            answers, kisses = _answers_from_fresh_ports(server.ntp_port, 16, source)
            # Unsteered, source ports spread over both workers: about twice the burst.
            assert answers == 4, f"{source}: {answers} answers for a burst of 4"
            assert kisses < 12  # the rest mostly dropped (one in four kissed, on average)
    finally:
        assert server.stop() == 0


def _receivers(sockets: list[socket.socket]) -> dict[str, set[int]]:
    seen: dict[str, set[int]] = collections.defaultdict(set)
    deadline = time.monotonic() + 1.0
    for index, sock in enumerate(sockets):
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            while True:
                _, address = sock.recvfrom(64)
                seen[address[0]].add(index)
                sock.settimeout(0.05)
    return seen


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_steering_keeps_each_address_on_one_socket(family: int, host: str) -> None:
    group = []
    try:
        for _ in range(3):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, group[0].getsockname()[1] if group else 0))
            group.append(sock)
        assert steer_by_source(group[0], 3, 32 if family == socket.AF_INET else 64)
        port = group[0].getsockname()[1]
        sources = [f"127.0.{i}.{i}" for i in range(1, 25)] if family == socket.AF_INET else ["::1"]
        for source in sources:
            for _ in range(8):  # new source port each time
                with socket.socket(family, socket.SOCK_DGRAM) as client:
                    client.bind((source, 0))
                    client.sendto(b"x", (host, port))
        seen = _receivers(group)
        assert set(seen) == set(sources)
        assert all(len(indexes) == 1 for indexes in seen.values()), seen
        if family == socket.AF_INET:  # and the addresses spread over every socket
            assert set().union(*seen.values()) == {0, 1, 2}
    finally:
        for sock in group:
            sock.close()
