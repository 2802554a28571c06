"""Workers drop root once their ports are bound; key files stay private."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import gnomon
from gnomon.certs import DemoPki

from .helpers import ServerProcess


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _config(tmp_path: Path, pki: DemoPki, keys: Path) -> Path:
    config = tmp_path / "gnomon.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1"]
ntp_port = 0
ke_port = 0
user = "nobody"
[tls]
certificate = "{pki.cert_chain}"
key = "{pki.key}"
[keys]
path = "{keys}"
[time]
local_stratum = 10
"""
    )
    return config


def test_workers_run_as_the_configured_user(tmp_path: Path, pki: DemoPki) -> None:
    assert os.geteuid() == 0, "this test checks dropping root, so it runs as root"
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    tmp_path.chmod(0o755)
    server = ServerProcess(_config(tmp_path, pki, state / "keys.json"), tmp_path / "ready.json")
    try:
        info = server.info
        assert {_uid_of(pid) for pid in info["pids"].values()} == {nobody.pw_uid}
        result = gnomon.Session(ca_file=pki.ca_cert).query("127.0.0.1", info["ke_port"])
        assert result.authenticated
        keys = state / "keys.json"
        assert keys.stat().st_mode & 0o777 == 0o600
    finally:
        assert server.stop() == 0


def test_key_folder_not_owned_by_the_user_is_refused(tmp_path: Path, pki: DemoPki) -> None:
    state = tmp_path / "state"
    state.mkdir()  # owned by root, not by nobody
    config = _config(tmp_path, pki, state / "k.json")
    done = subprocess.run(
        [sys.executable, "-m", "gnomon", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"gnomon: {state} (keys.path) must belong to server.user 'nobody'"
    ]
