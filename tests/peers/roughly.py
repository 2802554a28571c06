"""roughly 0.3.0 (Python Roughtime client and server, MIT) as an interop peer.

Installed by scripts/install-roughly.sh into .peers/roughly (a venv of its own:
roughly asks for Python >= 3.12 but runs on 3.11). The server always binds
127.0.0.1 (its default is 0.0.0.0) and runs without grease unless asked.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .proc import (
    PEERS_DIR,
    START_TIMEOUT,
    PeerProcess,
    free_port,
    require_executable,
    udp_bound,
    wait_until,
)

ROUGHLY = PEERS_DIR / "roughly" / "bin" / "roughly"
HINT = "run `make peers` (or scripts/install-roughly.sh) to install roughly 0.3.0"

_ANSWER = re.compile(r"Current time:\s*(\d+)\s*±\s*(\d+)\s*seconds")


def roughly_binary() -> str:
    return require_executable(str(ROUGHLY), hint=HINT)


@dataclass
class RoughlyServer:
    process: PeerProcess
    host: str
    port: int


@contextlib.contextmanager
def roughly_server(
    workdir: Path,
    private_key_b64: str,
    *,
    radius: int = 3,
    grease: bool = False,
    port: int | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[RoughlyServer]:
    """``roughly server run`` on 127.0.0.1 with the given base64 seed; stopped at the end."""
    binary = roughly_binary()
    chosen = port or free_port("127.0.0.1", tcp=False, udp=True)
    argv = [
        binary,
        "server",
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        str(chosen),
        "--radius",
        str(radius),
    ]
    if not grease:
        argv.append("--no-grease")
    env = {**os.environ, "ROUGHLY_PRIVATE_KEY": private_key_b64}
    process = PeerProcess("roughly-server", argv, workdir / "roughly-server.log", env=env)
    try:
        if not wait_until(lambda: udp_bound(chosen), start_timeout, alive=process.alive):
            raise process.fail(f"not bound to UDP 127.0.0.1:{chosen} within {start_timeout:g} s")
        yield RoughlyServer(process, "127.0.0.1", chosen)
    finally:
        process.stop()


def roughly_query(
    host: str, port: int, public_key_b64: str, timeout: float = 20.0
) -> tuple[int, int]:
    """``roughly query``: the (unix time, radius) roughly's client verified, or AssertionError."""
    done = subprocess.run(
        [roughly_binary(), "query", host, str(port), public_key_b64],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    match = _ANSWER.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise AssertionError(
            f"roughly query failed (status {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return int(match.group(1)), int(match.group(2))
