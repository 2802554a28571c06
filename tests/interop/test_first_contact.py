"""What a new user meets first: ``gnomon --help`` and ``gnomon query`` against the demo server.

No library warning on stderr, IPv6 addresses in brackets, untrusted certificates
explained, and commands that import only what they use (``--help`` no cryptography;
a query answered from a ``--state`` file's cookies no TLS and no asyncio).  Module
checks run in a fresh interpreter; nothing here measures time (bench/startup.py does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gnomon
from tests.peers.proc import START_TIMEOUT, PeerProcess, localhost_addresses, wait_until

pytestmark = pytest.mark.interop


# Runs gnomon's CLI in this interpreter, then reports which heavy modules it imported.
_PROBE = """
import json, sys
heavy = sys.argv.pop(1).split(",")
from gnomon.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
print(json.dumps({"status": status, "loaded": [m for m in heavy if m in sys.modules]}),
      file=sys.stderr)
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``gnomon serve --demo`` on 127.0.0.1 and ::1: its ready info (ports, CA file)."""
    directory = tmp_path_factory.mktemp("demo")
    ready = directory / "ready.json"
    proc = PeerProcess(
        "gnomon demo server",
        [
            sys.executable,
            "-m",
            "gnomon",
            "serve",
            "--demo",
            "--ke-port",
            "0",
            "--ntp-port",
            "0",
            "--roughtime-port",
            "0",
            "--ready-file",
            str(ready),
            "--log-level",
            "ERROR",
        ],
        directory / "demo.log",
        lifetime=600,
    )
    try:

        def info() -> dict[str, Any] | None:
            try:
                return dict(json.loads(ready.read_text()))
            except (OSError, ValueError):
                return None

        found = wait_until(info, START_TIMEOUT, interval=0.05, alive=proc.alive)
        if found is None:
            raise proc.fail(f"no ready file within {START_TIMEOUT:g} s")
        yield found
    finally:
        proc.stop()


def _gnomon(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # a warning would be shown, not hidden
    return subprocess.run(
        [sys.executable, "-m", "gnomon", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


# Nothing a query answered from cookies uses (TLS, X.509, asyncio; the system CA
# bundle's `ssl`; `tempfile`, `shutil` and the compression modules they bring; ctypes;
# the NTS-KE record code; `dataclasses`, whose code generation cost more than a third
# of such a query; pathlib, threading; cryptography's `ciphers` package), nor `--help`.
HEAVY = (
    "OpenSSL",
    "cryptography.x509",
    "asyncio",
    "ssl",
    "gnomon.tls",
    "gnomon.client.ke",
    "gnomon.proto.nts.ke",
    "tempfile",
    "shutil",
    "bz2",
    "ctypes",
    "dataclasses",
    "pathlib",
    "threading",
    "cryptography.hazmat.primitives.ciphers",
)
# A first query with --ca: TLS, but still no asyncio and no `ssl` (nor what they bring).
NOT_IN_A_FIRST_QUERY = ("asyncio", "ssl", "concurrent.futures", "logging", "tempfile", "ctypes")


def _probe(
    *args: str, heavy: tuple[str, ...] = HEAVY
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(heavy), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report, done


def test_help_imports_no_cryptography_tls_or_asyncio() -> None:
    report, done = _probe("--help")
    assert report == {"status": 0, "loaded": []}, done.stderr
    assert "query" in done.stdout and "serve" in done.stdout


def test_import_gnomon_is_light_and_the_public_names_still_work() -> None:
    code = (
        "import sys, gnomon\n"
        "light = 'OpenSSL' not in sys.modules and 'gnomon.client.session' not in sys.modules\n"
        "names = [getattr(gnomon, n) for n in gnomon.__all__]\n"
        "from gnomon import query, Session\n"
        "print(light, query is gnomon.query, Session is gnomon.Session, len(names))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "True", "True", str(len(gnomon.__all__))], done.stderr


def test_query_with_cookies_in_the_state_file_needs_no_tls(
    demo: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    server = f"127.0.0.1:{demo['ke_port']}"
    heavy = (*HEAVY, *NOT_IN_A_FIRST_QUERY)
    first, done = _probe("query", "--ca", demo["ca"], "--state", str(state), server, heavy=heavy)
    assert first["status"] == 0, done.stderr
    assert "OpenSSL" in first["loaded"]  # the probe sees imports: a key exchange needs TLS
    assert not set(first["loaded"]) & set(NOT_IN_A_FIRST_QUERY), first
    second, done = _probe("query", "--ca", demo["ca"], "--state", str(state), "--json", server)
    assert second == {"status": 0, "loaded": []}, done.stderr
    [row] = json.loads(done.stdout)
    assert row["authenticated"] is True and row["key_exchange"] is False


@pytest.mark.localhost
def test_table_prints_ipv6_in_brackets_and_no_warning(demo: dict[str, Any]) -> None:
    port = demo["ke_port"]
    done = _gnomon("query", "--ca", demo["ca"], f"[::1]:{port}", f"localhost:{port}")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert rows[0][0] == f"[::1]:{port}" and rows[0][1].startswith("[::1]:"), done.stdout
    address = rows[1][1].rpartition(":")[0].strip("[]")
    assert address in localhost_addresses(), done.stdout
    assert all(row[-2:] == ["yes", "(NTS)"] for row in rows), done.stdout


@pytest.mark.localhost
def test_system_cas_give_no_warning_and_say_why_the_demo_is_not_trusted(
    demo: dict[str, Any],
) -> None:
    done = _gnomon("query", f"localhost:{demo['ke_port']}")  # the system's CAs
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert lines == [lines[0]], done.stderr  # one line
    assert lines[0].startswith(
        "gnomon: certificate of localhost not trusted: unknown issuer: certificate "
    ), lines[0]
    assert "no CA trusted here signed it" in lines[0] and "(verifier: " in lines[0]


@pytest.mark.localhost
def test_library_takes_the_same_server_forms(demo: dict[str, Any]) -> None:
    port = demo["ke_port"]
    session = gnomon.Session(ca_file=demo["ca"])
    for server in (f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"):
        assert session.query(server).authenticated, server
    assert session.query("::1", port).server == f"[::1]:{port}"
    assert session.key_exchanges == 3  # "::1", port is "[::1]:port": its cookies were reused
    assert gnomon.query(f"localhost:{port}", ca_file=demo["ca"]).authenticated
    outcomes = session.query_many([f"[::1]:{port}", f"localhost:{port}"])
    assert all(isinstance(o, gnomon.Result) for o in outcomes), outcomes
