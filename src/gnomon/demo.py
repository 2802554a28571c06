"""``make run``: start ``gnomon serve --demo``, query it over NTS, stop it.

Everything stays on loopback; ports are chosen by the kernel.  The server listens on
127.0.0.1 and ::1; ``localhost`` is whichever the system resolves it to first (::1 on
a stock Debian), so the table shows both address families there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gnomon-run-") as scratch:
        ready = Path(scratch) / "ready.json"
        server = subprocess.Popen(
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
                "ERROR",  # the demo's throwaway keys need no warning about persistence
            ],
        )
        try:
            deadline = time.monotonic() + 20
            while not ready.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    print("gnomon: the demo server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            command = [
                sys.executable,
                "-m",
                "gnomon",
                "query",
                "--ca",
                info["ca"],
                "--count",
                "2",
                f"localhost:{info['ke_port']}",
                f"127.0.0.1:{info['ke_port']}",
            ]
            print(
                "$ gnomon query --ca",
                info["ca"],
                "--count 2",
                f"localhost:{info['ke_port']} 127.0.0.1:{info['ke_port']}",
                flush=True,
            )
            status = subprocess.call(command)
            if status == 0:
                print(
                    "\nAuthenticated over NTS: one NTS-KE (TLS 1.3) per server, then NTP with"
                    " cookies.\nThe demo server has no upstream clock, so it honestly says"
                    " leap 3 / stratum 16."
                )
            if status == 0:
                status = roughtime_query(info)
            return status
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def roughtime_query(info: dict[str, object]) -> int:
    """The same server over Roughtime: signed time checked with its public key alone."""
    target = f"127.0.0.1:{info['roughtime_port']}"
    key = str(info["roughtime_public_key"])
    print(f"\n$ gnomon roughtime {target} --key {key}", flush=True)
    status = subprocess.call([sys.executable, "-m", "gnomon", "roughtime", target, "--key", key])
    if status == 0:
        print(
            "\nSigned over Roughtime: verified with the server's Ed25519 public key alone (no"
            " certificate,\nno clock needed). With no upstream the demo signs its local clock"
            " with a 10 s radius."
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
