"""roughly 0.3.0's client against gnomon's Roughtime server on loopback.

gnomon runs as ``python -m gnomon serve --config FILE`` (a supervisor and one Roughtime
worker, ``server.role = "roughtime"``), serving its own clock at stratum 10 with no
upstream, so RADI is 3 s (no leap-second information). roughly verifies it with its
command-line client (its default offer: it gets version 1) and with its library for
each version alone (1 and 0x8000000c), one request at a time and 64 at once; gnomon's
own verifier checks 64 requests sent at once too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.proto.roughtime.client import build_request, verify_response
from gnomon.proto.roughtime.versions import DRAFT_12, VERSION_1
from gnomon.server.roughtime_keys import public_key_of, write_long_term_key
from tests.peers import PeerProcess, free_port, wait_until
from tests.peers.proc import START_TIMEOUT
from tests.peers.roughly import ROUGHLY, roughly_binary, roughly_query

pytestmark = pytest.mark.interop

LONG_TERM = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUBLIC = public_key_of(LONG_TERM)
PUBLIC_B64 = base64.b64encode(PUBLIC).decode()


@dataclass
class GnomonRoughtime:
    process: PeerProcess
    port: int
    info: dict[str, object]


@contextlib.contextmanager
def gnomon_roughtime(workdir: Path, *, max_wait: float = 0.005) -> Iterator[GnomonRoughtime]:
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "roughtime.key"
    write_long_term_key(key, LONG_TERM)
    port = free_port("127.0.0.1", tcp=False, udp=True)
    config = workdir / "gnomon.toml"
    config.write_text(
        "[server]\n"
        'role = "roughtime"\n'
        'listen = ["127.0.0.1"]\n'
        "[roughtime]\n"
        f"port = {port}\n"
        f'long_term_key = "{key}"\n'
        f"max_wait = {max_wait}\n"
        "[time]\n"
        "local_stratum = 10\n"
    )
    ready = workdir / "ready.json"
    argv = [sys.executable, "-m", "gnomon", "serve", "--config", str(config)]
    argv += ["--ready-file", str(ready), "--log-level", "WARNING"]
    process = PeerProcess("gnomon-roughtime", argv, workdir / "gnomon.log", lifetime=300)
    try:
        info = wait_until(lambda: _read_ready(ready), START_TIMEOUT, alive=process.alive)
        if info is None:
            raise process.fail(f"no ready file within {START_TIMEOUT:g} s")
        assert info["roughtime_port"] == port and info["roughtime_public_key"] == PUBLIC_B64
        yield GnomonRoughtime(process, port, info)
    finally:
        process.stop()


def _read_ready(path: Path) -> dict[str, object] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet, or half written
        return None
    return info if isinstance(info, dict) else None


def roughly_library(script: str, timeout: float = 60.0) -> object:
    """Run ``script`` with roughly's own Python (its venv); it prints one JSON value."""
    roughly_binary()  # fails with the install hint when roughly is missing
    python = ROUGHLY.parent / "python"
    done = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"roughly failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


QUERY = """
import asyncio, base64, json
from roughly.client import send_request
async def main():
    answers = await asyncio.gather(*(
        send_request("127.0.0.1", {port}, base64.b64decode("{key}"), versions=[v])
        for v in {versions}
    ))
    return [[a.signed_response.version, a.signed_response.midpoint, a.signed_response.radius]
            for a in answers]
print(json.dumps(asyncio.run(main())))
"""


def roughly_verifies(port: int, versions: list[int]) -> list[list[int]]:
    """roughly's library sends one request per entry, all at once, and verifies each
    (it raises on any failure); the version, midpoint and radius of each."""
    script = QUERY.format(port=port, key=PUBLIC_B64, versions=versions)
    result = roughly_library(script)
    assert isinstance(result, list)
    return result


def test_roughly_cli_verifies_gnomon(tmp_path: Path) -> None:
    with gnomon_roughtime(tmp_path) as server:
        before = time.time()
        midpoint, radius = roughly_query("127.0.0.1", server.port, PUBLIC_B64)
        after = time.time()
    assert radius == 3  # stratum 10 without upstream: no leap-second information
    assert before - 4 <= midpoint <= after + 4


@pytest.mark.parametrize("version", [VERSION_1, DRAFT_12], ids=["v1", "0x8000000c"])
def test_roughly_library_verifies_each_version(tmp_path: Path, version: int) -> None:
    with gnomon_roughtime(tmp_path) as server:
        ((answered, midpoint, radius),) = roughly_verifies(server.port, [version])
    assert answered == version
    assert radius == 3 and abs(midpoint - time.time()) < 60


def test_64_requests_at_once_all_verify_with_roughly(tmp_path: Path) -> None:
    versions = [VERSION_1, DRAFT_12] * 32
    with gnomon_roughtime(tmp_path, max_wait=0.05) as server:
        answers = roughly_verifies(server.port, versions)
    assert [a[0] for a in answers] == versions


def test_64_requests_at_once_all_verify_with_gnomon(tmp_path: Path) -> None:
    with gnomon_roughtime(tmp_path, max_wait=0.05) as server:
        socks = []
        try:
            requests = []
            for i in range(64):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.settimeout(5)
                socks.append(sock)
                offer = (VERSION_1,) if i % 2 else (DRAFT_12,)
                requests.append(build_request(os.urandom(32), offer, server_key=PUBLIC))
            for sock, sent in zip(socks, requests, strict=True):
                sock.sendto(sent.packet, ("127.0.0.1", server.port))
            replies = [
                verify_response(r, s.recv(4096), PUBLIC)
                for s, r in zip(socks, requests, strict=True)
            ]
        finally:
            for sock in socks:
                sock.close()
    assert sorted({reply.version for reply in replies}) == [VERSION_1, DRAFT_12]
    assert all(reply.radius == 3 for reply in replies)
