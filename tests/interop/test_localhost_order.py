"""The tests that give a client the name ``localhost`` pass whatever it resolves to.

Stock Debian's /etc/hosts maps ``localhost`` to ::1 as well as 127.0.0.1 (and glibc
returns ::1 first); many development machines map it to 127.0.0.1 only.  The suite
runs on the host's own /etc/hosts; this test runs the tests marked ``localhost`` (and
gnomon's own NTS-KE client tests, which connect to ``localhost``) once more, in a
private mount namespace where a temporary hosts file is bind-mounted over /etc/hosts,
with the *other* order:

* host resolves ``localhost`` to 127.0.0.1 first: ``::1 localhost`` listed first;
* host resolves it to ::1 first: ``localhost`` is 127.0.0.1 only.

So every machine runs both orders.  The real /etc/hosts is never written: the bind
mount exists only in the namespace of the ``unshare`` child and ends with it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.proc import REPO_ROOT, require_executable, require_root

pytestmark = pytest.mark.interop

V6_FIRST = "::1 localhost ip6-localhost ip6-loopback\n127.0.0.1 localhost\n"
V4_ONLY = "127.0.0.1 localhost\n::1 ip6-localhost ip6-loopback\n"

# Inside the namespace: show what `localhost` resolves to now, then run the tests.
_CHECK = (
    "import socket; "
    "print('localhost ->', *dict.fromkeys(i[4][0] for i in socket.getaddrinfo("
    "'localhost', None, proto=socket.IPPROTO_TCP)))"
)


def _first_localhost_address() -> str:
    return str(socket.getaddrinfo("localhost", None, proto=socket.IPPROTO_TCP)[0][4][0])


def _hosts_file(path: Path, localhost_lines: str) -> Path:
    """`localhost_lines`, then the host's own lines that do not name localhost."""
    kept = []
    for line in Path("/etc/hosts").read_text().splitlines():
        names = line.split("#", 1)[0].split()[1:]
        if names and "localhost" not in names:
            kept.append(line)
    path.write_text(localhost_lines + "".join(f"{line}\n" for line in kept))
    path.chmod(0o644)
    return path


def _name_sensitive(session: pytest.Session) -> list[str]:
    """Node ids of the collected tests marked ``localhost``, and gnomon's NTS-KE client tests."""
    marked = {
        item.nodeid.split("[")[0] for item in session.items if item.get_closest_marker("localhost")
    }
    return [*sorted(marked), "tests/client/test_ke_transport.py"]


def _collect_name_sensitive() -> list[str]:
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--collect-only",
            "-m",
            "localhost",
            "-p",
            "no:cacheprovider",
            "tests/interop",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    ids = {line.split("[")[0] for line in listed.stdout.splitlines() if "::" in line}
    return [*sorted(ids), "tests/client/test_ke_transport.py"]


def test_name_sensitive_tests_pass_with_the_other_localhost_order(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    require_root("a private mount namespace")
    unshare = require_executable("unshare")
    host_v6_first = _first_localhost_address() == "::1"
    want = "127.0.0.1" if host_v6_first else "::1"
    hosts = _hosts_file(tmp_path / "hosts", V4_ONLY if host_v6_first else V6_FIRST)
    tests = _name_sensitive(request.session)
    if len(tests) < 2:  # this test run alone: all of them
        tests = _collect_name_sensitive()
    # sh: bind-mount the hosts file, show what localhost resolves to, run the tests.
    script = (
        'mount --bind "$0" /etc/hosts && "$1" -c "$2" && py=$1 && shift 2 '
        '&& exec "$py" -m pytest "$@"'
    )
    done = subprocess.run(
        [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(hosts),
            sys.executable,
            _CHECK,
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "inner"),
            *tests,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    resolved = re.search(r"^localhost -> (.*)$", out, re.M)
    assert resolved is not None, out[-2000:]
    addresses = resolved.group(1).split()
    assert addresses[0] == want, resolved.group(0)
    if host_v6_first:
        assert "::1" not in addresses, resolved.group(0)
    passed = re.search(r"(\d+) passed", out)
    assert passed is not None and int(passed.group(1)) >= max(len(tests), 20), out[-2000:]
    # The host's own /etc/hosts was never touched.
    assert _first_localhost_address() == ("::1" if host_v6_first else "127.0.0.1")
