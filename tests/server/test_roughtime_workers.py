"""Roughtime workers: with a rate limit each client address is steered to one worker
(whatever its source port), and under the supervisor they drop root for server.user once
their port is bound, and answer; the long-term key file stays root's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import time
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.certs import DemoPki
from gnomon.proto.acl import Acl
from gnomon.proto.nts.ntp_server import TimeSource
from gnomon.proto.roughtime.client import build_request, verify_response
from gnomon.server.roughtime_keys import public_key_of, write_long_term_key
from gnomon.server.roughtime_role import RoughtimeRole

from .helpers import ServerProcess, base_config

LONG_TERM = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
PUBLIC = public_key_of(LONG_TERM)


def _config(tmp_path: Path, *, workers: int, server: str = "") -> Path:
    key = tmp_path / "long-term.key"
    write_long_term_key(key, LONG_TERM)
    config = tmp_path / "gnomon.toml"
    config.write_text(
        "[server]\n"
        'role = "roughtime"\n'
        'listen = ["127.0.0.1"]\n'
        f"{server}"
        "[roughtime]\n"
        "port = 0\n"
        f"workers = {workers}\n"
        f'long_term_key = "{key}"\n'
        "local_clock_radius = 5\n"
    )
    return config


def _answers_from_fresh_ports(port: int, count: int, source: str) -> int:
    """``count`` requests, each from a new socket (a new source port): verified answers."""
    answers = 0
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.settimeout(0.3)
            sent = build_request(os.urandom(32), (1,), PUBLIC)
            sock.sendto(sent.packet, ("127.0.0.1", port))
            try:
                packet = sock.recv(4096)
            except TimeoutError:
                continue
            assert verify_response(sent, packet, PUBLIC).radius == 5
            answers += 1
    return answers


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_roughtime_workers_run_as_the_configured_user(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "this test checks dropping root, so it runs as root"
    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)
    config = _config(tmp_path, workers=2, server='user = "nobody"\n')
    server = ServerProcess(config, tmp_path / "ready.json")
    try:
        workers = [
            pid for name, pid in server.info["pids"].items() if name.startswith("roughtime-")
        ]
        assert len(workers) == 2, server.info["pids"]
        assert {_uid_of(pid) for pid in workers} == {nobody.pw_uid}
        assert _answers_from_fresh_ports(int(server.info["roughtime_port"]), 4, "127.0.0.1") == 4
        key = tmp_path / "long-term.key"
        assert (key.stat().st_uid, key.stat().st_mode & 0o777) == (0, 0o600)  # root's alone
    finally:
        assert server.stop() == 0


def test_roughtime_workers_with_a_rate_limit_keep_each_client_on_one_worker(
    tmp_path: Path, pki: DemoPki
) -> None:
    """Two workers' sockets on one port, as the supervisor's workers open them: every
    datagram from one address reaches the same one, whatever its source port (else a
    client would meet each worker's bucket in turn and get twice its rate)."""
    key = tmp_path / "long-term.key"
    write_long_term_key(key, LONG_TERM)
    config = base_config(
        pki,
        roughtime=True,
        roughtime_port=0,
        roughtime_long_term_key=key,
        roughtime_workers=2,
        roughtime_rate_limit=True,
    )
    loop = asyncio.new_event_loop()
    roles, sockets = [], []
    try:
        for _ in range(2):
            role = RoughtimeRole(config, Acl(), TimeSource(leap=0, stratum=2))
            roles.append(role)
            opened = role.open(loop, reuse_port=True)
            sockets += [s for s in opened if s.family == socket.AF_INET]
            config = replace(config, roughtime_port=sockets[0].getsockname()[1])
        port = sockets[0].getsockname()[1]
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"):
            for _ in range(8):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind((source, 0))
                    sock.sendto(b"x" * 64, ("127.0.0.1", port))
        seen: dict[str, set[int]] = {}
        received = 0
        deadline = time.monotonic() + 2
        while received < 32 and time.monotonic() < deadline:
            for index, sock in enumerate(sockets):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        _, address = sock.recvfrom(4096)
                        seen.setdefault(address[0], set()).add(index)
                        received += 1
        assert received == 32 and len(seen) == 4
        assert all(len(workers) == 1 for workers in seen.values()), seen
    finally:
        for role in roles:
            for service in role.services:
                service.detach(loop)
        for sock in sockets:
            sock.close()
        loop.close()
