"""The server does not import the client: an NTP worker loads neither ``gnomon.client``
nor pyOpenSSL (issue 10 item 5)."""

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
import json, sys
from gnomon.server import supervisor  # the module a worker process starts in
from gnomon.server.app import Server
from gnomon.server.config import ServerConfig

config = ServerConfig(role={role!r}, listen=("127.0.0.1",), ntp_port=0, ke_port=0,
                      certificate={certificate!r}, key={key!r})
Server(config, roles=frozenset({{{role!r}}}))
print(json.dumps(sorted(m for m in sys.modules
                        if m.startswith("gnomon.client") or m.split(".")[0] == "OpenSSL")))
"""


def _modules_loaded(role: str, certificate: str | None, key: str | None) -> list[str]:
    code = _PROBE.format(role=role, certificate=certificate, key=key)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_ntp_worker_imports_neither_client_nor_pyopenssl() -> None:
    assert _modules_loaded("ntp", None, None) == []


def test_ke_worker_loads_pyopenssl_only(pki: DemoPki) -> None:
    """The probe sees what it looks for: a KE worker needs pyOpenSSL, still no client."""
    loaded = _modules_loaded("ke", str(pki.cert_chain), str(pki.key))
    assert "OpenSSL" in loaded
    assert not [m for m in loaded if m.startswith("gnomon.client")]


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
