"""In-process cost of gnomon's Roughtime server per response, and its instruction counts.

``.venv/bin/python bench/rtmicro.py`` times, per response, on batches of ``--batch``
(64) requests shaped like the bench's load (1024 B, versions 1 and 0x8000000c
offered, SRV): ``RoughtimeServer.parse_request``, ``RoughtimeServer.respond``
(one tree and one signature per batch) and the whole service
(``RoughtimeService.drain`` with ``recvmmsg``/``sendmmsg`` on loopback, replies to
a socket nobody reads, client ``sendto`` included). Best of ``--repeat`` runs.

``--callgrind`` runs each part under ``valgrind --tool=callgrind`` twice (``--low``
and ``--high`` batches) and prints the difference per response: start-up cancels
and the count does not depend on how busy the machine is. ``--baseline SRC``
also measures another checkout (its ``src`` put first on ``sys.path``), for a
before/after in one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from callgrind import instructions_per_step

PARTS = ("parse", "respond", "drain")


def _setup(batch: int) -> tuple[Any, list[bytes], int]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gnomon.proto.roughtime import RoughtimeServer, build_request, delegate

    long_term = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    online = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    public = long_term.public_key().public_bytes_raw()
    now = int(time.time())
    versions = (1, 0x8000000C)
    dele = delegate(
        long_term, online.public_key().public_bytes_raw(), now - 86400, now + 86400, versions
    )
    core = RoughtimeServer(public, online, dele, versions)
    packets = [build_request(os.urandom(32), versions, public).packet for _ in range(batch)]
    return core, packets, now


def _service(core: Any) -> tuple[Any, socket.socket, socket.socket]:
    from gnomon.proto.nts.ntp_server import TimeSource
    from gnomon.server.roughtime import RoughtimeClock, RoughtimeService
    from gnomon.server.udp import open_udp_socket

    server = open_udp_socket("127.0.0.1", 0)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    clock = RoughtimeClock(source=TimeSource(leap=0, stratum=2))
    return RoughtimeService(core, server, clock, max_batch=64), server, client


def run(part: str, batches: int, batch: int) -> float:
    """Seconds per response of ``batches`` batches through ``part``."""
    core, packets, now = _setup(batch)
    if part == "parse":
        parse = core.parse_request
        start = time.perf_counter()
        for _ in range(batches):
            for packet in packets:
                parse(packet)
        return (time.perf_counter() - start) / (batches * batch)
    if part == "respond":
        requests = [core.parse_request(p) for p in packets]
        respond = core.respond
        start = time.perf_counter()
        for _ in range(batches):
            respond(requests, now, 1)
        return (time.perf_counter() - start) / (batches * batch)
    service, server, client = _service(core)
    address = server.getsockname()
    send, recv = client.sendto, client.recv
    elapsed = 0.0
    for _ in range(batches):
        start = time.perf_counter()
        for packet in packets:
            send(packet, address)
        while service.received < batch:
            service.drain()
        elapsed += time.perf_counter() - start
        service.received = 0
        try:  # the client's receive is not the server's cost
            while True:
                recv(4096)
        except BlockingIOError:
            pass
    if service.counters.outcomes.get("answered") != batches * batch:
        raise SystemExit(f"drain answered {service.counters.outcomes}")
    return elapsed / (batches * batch)


def callgrind(part: str, low: int, high: int, batch: int, src: Path) -> float:
    """Instructions per response of ``part``: (Ir at ``high`` - Ir at ``low``) / responses."""

    def command(batches: int) -> list[str]:
        argv = [sys.executable, __file__, "--src", str(src), "--only", part]
        return [*argv, "--batches", str(batches), "--batch", str(batch), "--repeat", "1"]

    return instructions_per_step(command, low, high, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1] / "src"
    parser.add_argument("--src", type=Path, default=here, help="the gnomon tree to measure")
    parser.add_argument("--baseline", type=Path, help="also measure this checkout's src")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--callgrind", action="store_true", help="instruction counts")
    parser.add_argument("--low", type=int, default=10)
    parser.add_argument("--high", type=int, default=30)
    args = parser.parse_args()
    if args.only:  # a child: one measurement of one tree
        sys.path.insert(0, str(args.src))
        cost = min(run(args.only, args.batches, args.batch) for _ in range(args.repeat))
        print(f"{cost * 1e6:.2f}")
        return
    trees = [("this tree", args.src)]
    if args.baseline:
        trees.insert(0, ("baseline", args.baseline.resolve() / "src"))
    for label, src in trees:
        print(f"{label} ({src}):")
        for part in PARTS:
            if args.callgrind:
                ir = callgrind(part, args.low, args.high, args.batch, src)
                print(f"  {part:8s} {ir:9,.0f} instructions per response")
                continue
            child = subprocess.run(
                [
                    *(sys.executable, __file__, "--src", str(src), "--only", part),
                    *("--batches", str(args.batches), "--batch", str(args.batch)),
                    *("--repeat", str(args.repeat)),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            print(f"  {part:8s} {float(child.stdout):7.2f} µs per response (best of runs)")


if __name__ == "__main__":
    main()
