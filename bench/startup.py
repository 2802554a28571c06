"""Start-up time of the ``gnomon`` command, wall clock, against a local demo server.

    .venv/bin/python bench/startup.py [--runs N] [--json]

Starts a gnomon server on 127.0.0.1 (kernel-chosen ports, a throwaway CA from
``gnomon.certs.make_demo_pki``, NTS-KE rate limiting off: every first query comes
from the same address, and the default burst of 20 would refuse the later ones),
then times, `--runs` times each and interleaved (so a burst of load elsewhere hits
every case alike), the installed console script ``gnomon`` as a user runs it:

* ``python -c pass``: the interpreter alone, the floor under every figure;
* ``gnomon --help``;
* a first query: ``gnomon query --ca CA 127.0.0.1:PORT`` (NTS-KE over TLS 1.3, then NTP);
* ``gnomon query --ca CA --state FILE 127.0.0.1:PORT`` with cookies already in FILE
  (NTP only: no TLS is imported).

gnomon's modules are byte-compiled first (``compileall``), as installing a wheel does:
an editable install under ``PYTHONDONTWRITEBYTECODE`` (these machines set it) would
otherwise compile every module from source on every run, some 40 ms of each query.

Prints min / median / max in milliseconds (a Markdown table; --json for a document).
Targets (issue 12): --state <= 150 ms, first query <= 250 ms, --help <= 100 ms.
Nothing is asserted: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_MS = {"--help": 100.0, "first query": 250.0, "query --state (cookies)": 150.0}
START_TIMEOUT = 60.0


def _gnomon_script() -> str:
    script = Path(sys.executable).parent / "gnomon"
    if not script.exists():
        raise SystemExit(f"no gnomon console script next to {sys.executable}: run `make setup`")
    return str(script)


def _byte_compile() -> None:
    """Write gnomon's .pyc files, as `pip install` of a wheel does."""
    import gnomon

    package = Path(gnomon.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


def _time(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of `argv`; it must exit 0.

    CPU time is reported beside wall time because it hardly depends on what else the
    machine runs: on a loaded machine wall time is mostly waiting for a core.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def _start_demo(directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    from gnomon.certs import make_demo_pki

    pki = make_demo_pki(directory / "pki")
    config = directory / "gnomon.toml"
    config.write_text(
        '[server]\nlisten = ["127.0.0.1"]\nntp_port = 0\nke_port = 0\n'
        f'[tls]\ncertificate = "{pki.cert_chain}"\nkey = "{pki.key}"\n'
        "[limits]\nke_rate_interval = 0.000001\nke_rate_burst = 1000000\n"
    )
    ready = directory / "ready.json"
    server = subprocess.Popen(
        [
            "timeout", "600", sys.executable, "-m", "gnomon", "serve", "--config", str(config),
            "--ready-file", str(ready), "--log-level", "ERROR",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited before it was ready")
        try:
            return server, {**json.loads(ready.read_text()), "ca": str(pki.ca_cert)}
        except (OSError, ValueError):
            time.sleep(0.05)
    server.terminate()
    raise SystemExit(f"the server was not ready within {START_TIMEOUT:g} s")


def measure(runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    gnomon = _gnomon_script()
    _byte_compile()
    with tempfile.TemporaryDirectory(prefix="gnomon-startup-") as scratch:
        directory = Path(scratch)
        server, info = _start_demo(directory)
        try:
            target = f"127.0.0.1:{info['ke_port']}"
            ca = str(info["ca"])
            state = directory / "state.json"
            _time([gnomon, "query", "--ca", ca, "--state", str(state), target])  # fills FILE
            cases = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "--help": [gnomon, "--help"],
                "first query": [gnomon, "query", "--ca", ca, target],
                "query --state (cookies)": [gnomon, "query", "--ca", ca, "--state", str(state),
                                            target],
            }  # fmt: skip
            for argv in cases.values():  # warm the page cache once
                _time(argv)
            wall: dict[str, list[float]] = {name: [] for name in cases}
            cpu: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(runs):
                for name, argv in cases.items():
                    elapsed, used = _time(argv)
                    wall[name].append(elapsed * 1e3)
                    cpu[name].append(used * 1e3)
        finally:
            server.terminate()
            server.wait(timeout=15)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each case (default 20)")
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    load_before = os.getloadavg()[0]
    wall, cpu = measure(args.runs)
    load_after = os.getloadavg()[0]
    summary = {
        name: {
            "wall_min_ms": round(min(values), 1),
            "wall_median_ms": round(statistics.median(values), 1),
            "wall_max_ms": round(max(values), 1),
            "cpu_median_ms": round(statistics.median(cpu[name]), 1),
            "target_ms": TARGETS_MS.get(name),
            "runs": len(values),
        }
        for name, values in wall.items()
    }
    if args.json:
        print(json.dumps({"load_average": [load_before, load_after], "cases": summary}, indent=2))
        return 0
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print()
    print(f"| case ({args.runs} runs each) | wall min | wall median | wall max | CPU median "
          "| target (wall) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, row in summary.items():
        target = f"<= {row['target_ms']:g} ms" if row["target_ms"] else ""
        print(
            f"| `{name}` | {row['wall_min_ms']:.0f} ms | {row['wall_median_ms']:.0f} ms "
            f"| {row['wall_max_ms']:.0f} ms | {row['cpu_median_ms']:.0f} ms | {target} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
