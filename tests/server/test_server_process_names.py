"""Worker processes are named in ``ps``: ``gnomon: supervisor``, ``gnomon: ke worker 0``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gnomon.certs import DemoPki
from gnomon.server.roughtime_keys import demo_long_term_key

from .helpers import ServerProcess, toml_config


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_supervisor_and_workers_are_named(pki: DemoPki, tmp_path: Path) -> None:
    key = demo_long_term_key(tmp_path)
    roughtime = f'[roughtime]\nenabled = true\nport = 0\nlong_term_key = "{key}"\n'
    roughtime += "local_clock_radius = 10\n"
    config = tmp_path / "gnomon.toml"
    config.write_text(toml_config(pki, server="workers = 2\nke_workers = 1\n", extra=roughtime))
    server = ServerProcess(config, tmp_path / "ready.json")
    try:
        pids = server.info["pids"]
        names = {_cmdline(int(pid)): _comm(int(pid)) for pid in pids.values()}
        names[_cmdline(server.info["supervisor"])] = _comm(server.info["supervisor"])
    finally:
        server.stop()
    assert names == {
        "gnomon: supervisor": "gnomon-super",
        "gnomon: ke worker 0": "gnomon-ke-0",
        "gnomon: ntp worker 0": "gnomon-ntp-0",
        "gnomon: ntp worker 1": "gnomon-ntp-1",
        "gnomon: roughtime worker 0": "gnomon-rt-0",
    }
