"""Each worker loads what it serves with: an NTP worker no ``gnomon.client`` (issue 10
item 5), no TLS stack (pyOpenSSL, ``ssl``), no HTTP server (prometheus_client), no Redis
client and no ``hashlib`` (libcrypto) (issue 15 item 1)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gnomon.server
from gnomon.certs import DemoPki

SERVER = Path(gnomon.server.__file__).parent

_PROBE = """
import json, os, sys
from gnomon.server import worker  # the module a worker process starts in (python -m)
from gnomon.server.config import ServerConfig

class Ready:  # stands for the supervisor's end: what is loaded once the worker serves
    closed = False
    def send(self, message):
        assert message[0] == {role!r}, message
        print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)))
        sys.stdout.flush()
        os._exit(0)
    def close(self):
        pass

config = ServerConfig(role={role!r}, listen=("127.0.0.1",), ntp_port=0, ke_port=0,
                      certificate={certificate!r}, key={key!r})
worker.serve(config, {role!r}, 0, Ready(), 30, "text")
"""

UNWANTED_IN_NTP = ("gnomon.client", "OpenSSL", "ssl", "prometheus_client", "redis", "hashlib")


def _modules_loaded(role: str, certificate: str | None, key: str | None) -> list[str]:
    code = _PROBE.format(role=role, certificate=certificate, key=key)
    result = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def _unwanted(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m in UNWANTED_IN_NTP or m.startswith(_UNWANTED_PACKAGES)]


_UNWANTED_PACKAGES = tuple(f"{name}." for name in UNWANTED_IN_NTP)


def test_ntp_worker_loads_no_tls_http_redis_or_client() -> None:
    loaded = _modules_loaded("ntp", None, None)
    assert "gnomon.server.ntp" in loaded  # the probe ran a worker that serves NTP
    assert _unwanted(loaded) == []


def test_ke_worker_loads_pyopenssl_only(pki: DemoPki) -> None:
    """The probe sees what it looks for: a KE worker needs pyOpenSSL, still no client."""
    loaded = _modules_loaded("ke", str(pki.cert_chain), str(pki.key))
    assert "OpenSSL" in loaded and "ssl" in loaded
    assert not [m for m in loaded if m.startswith(("gnomon.client", "prometheus_client"))]


@pytest.mark.parametrize("path", sorted(SERVER.glob("*.py")), ids=lambda p: p.name)
def test_no_server_module_imports_the_client(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = "." * node.level + (node.module or "")
            names = [target]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            assert not name.startswith(("..client", "gnomon.client")), f"{path.name}: {name}"
            assert name not in ("gnomon", ".."), f"{path.name} imports the gnomon package API"


def test_supervised_ntp_worker_maps_no_tls_library(tmp_path: Path, pki: DemoPki) -> None:
    """The real thing: ``gnomon serve``'s NTP worker has neither Python's ``_ssl`` nor
    libssl in its address space; its NTS-KE sibling has both."""
    from .helpers import ServerProcess, toml_config

    config = tmp_path / "gnomon.toml"
    config.write_text(toml_config(pki))
    server = ServerProcess(config, tmp_path / "ready.json")
    try:
        pids = {role: int(pid) for role, pid in server.info["pids"].items()}

        def mapped(pid: int) -> str:
            return Path(f"/proc/{pid}/maps").read_text()

        assert "libssl" in mapped(pids["ke-0"])
        ntp_maps = mapped(pids["ntp-0"])
        assert "libssl" not in ntp_maps and "/_ssl." not in ntp_maps
    finally:
        server.stop()


def _epoll_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if "eventpoll" in str(fd.readlink()))


def test_supervised_ntp_worker_waits_with_poll_not_epoll(tmp_path: Path, pki: DemoPki) -> None:
    """An epoll instance registered on the NTP socket would be called back from inside
    every send, between the transmit timestamp and the wire: the NTP worker holds none,
    its NTS-KE sibling (many TLS connections) does."""
    from .helpers import ServerProcess, toml_config

    config = tmp_path / "gnomon.toml"
    config.write_text(toml_config(pki))
    server = ServerProcess(config, tmp_path / "ready.json")
    try:
        pids = {role: int(pid) for role, pid in server.info["pids"].items()}
        assert _epoll_instances(pids["ke-0"]) >= 1
        assert _epoll_instances(pids["ntp-0"]) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("role", ["ntp", "roughtime"])
def test_udp_workers_run_a_poll_event_loop(role: str) -> None:
    import selectors

    from gnomon.server.worker import event_loop_factory

    factory = event_loop_factory(role)
    assert factory is not None and event_loop_factory("ke") is None
    loop = factory()
    try:
        assert isinstance(loop._selector, selectors.PollSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()
