"""Worker supervision: a killed NTP worker is replaced and the port keeps answering."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gnomon
from gnomon.certs import make_demo_pki
from gnomon.proto.nts.ntp import NtpHeader
from tests.peers.proc import START_TIMEOUT
from tests.server.helpers import ServerProcess

PLAIN_REQUEST_TRANSMIT = 0x1122334455667788


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


@pytest.fixture
def supervised_server(tmp_path: Path) -> Iterator[dict[str, object]]:
    pki = make_demo_pki(tmp_path / "pki")
    config = tmp_path / "gnomon.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1"]
ntp_port = 0
ke_port = 0
workers = 2
[tls]
certificate = "{pki.cert_chain}"
key = "{pki.key}"
[keys]
path = "{tmp_path / "keys.json"}"
[time]
local_stratum = 10
"""
    )
    server = ServerProcess(config, tmp_path / "ready.json")
    try:
        yield {**server.info, "ca": str(pki.ca_cert)}
    finally:
        assert server.stop() == 0


def _ask(sock: socket.socket, port: int, timeout: float) -> bool:
    sock.settimeout(timeout)
    sock.sendto(NtpHeader(transmit_ts=PLAIN_REQUEST_TRANSMIT).encode(), ("127.0.0.1", port))
    try:
        reply = sock.recv(1024)
    except TimeoutError:
        return False
    header = NtpHeader.decode(reply)
    return header.mode == 4 and header.origin_ts == PLAIN_REQUEST_TRANSMIT


def test_killed_worker_is_replaced_and_port_keeps_answering(
    supervised_server: dict[str, object],
) -> None:
    port = int(supervised_server["ntp_port"])  # type: ignore[call-overload]
    supervisor = int(supervised_server["supervisor"])  # type: ignore[call-overload]
    pids: dict[str, int] = supervised_server["pids"]  # type: ignore[assignment]
    # Many source ports, so SO_REUSEPORT spreads them over both workers.
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        assert all(_ask(c, port, 2.0) for c in clients), "not every client answered before the kill"
        victim = pids["ntp-0"]
        os.kill(victim, signal.SIGKILL)
        lost = 0
        asked = 0
        replaced = False
        deadline = time.monotonic() + START_TIMEOUT  # a worker restarted
        while time.monotonic() < deadline:
            for client in clients:
                asked += 1
                lost += not _ask(client, port, 0.2)
            children = _children(supervisor)
            if victim not in children and len(children - set(pids.values())) >= 1:
                replaced = True
                if asked > 200:
                    break
        assert replaced, "the killed worker was not replaced"
        # Only requests hashed to the dead socket before the kernel rehashed are lost.
        assert lost <= 16, f"{lost} of {asked} requests lost"
        assert all(_ask(c, port, 2.0) for c in clients), "a client is not answered after restart"
        # NTS still works end to end through the replaced worker set.
        result = gnomon.Session(ca_file=str(supervised_server["ca"])).query(
            "127.0.0.1",
            int(supervised_server["ke_port"]),  # type: ignore[call-overload]
        )
        assert result.authenticated and result.stratum == 10
    finally:
        for client in clients:
            client.close()
