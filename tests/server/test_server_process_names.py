"""Worker processes are named in ``ps``: ``gnomon: supervisor``, ``gnomon: ke worker 0``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gnomon.certs import DemoPki

from .helpers import ServerProcess, toml_config


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_supervisor_and_workers_are_named(pki: DemoPki, tmp_path: Path) -> None:
    config = tmp_path / "gnomon.toml"
    config.write_text(toml_config(pki, server="workers = 2\nke_workers = 1\n"))
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
    }
