"""Side-by-side benchmark: gnomon's NTS server against chrony, and its Roughtime server
against roughly's, on loopback, in one run.

    .venv/bin/python bench/run.py [--quick] [--duration S] [--servers gnomon,chrony,chrony-4.6]
                                  [--scenarios plain,nts0-15,...] [--workers W]

For every server (gnomon; chrony 4.3 from Debian; chrony 4.6 from .peers/chrony-modern
when present), started with a throwaway ECDSA P-256 PKI and bound to loopback only:

* NTP scenarios (plain NTP; NTS with 0 and 1 cookie placeholders, AEAD 15 and, where the
  server has it, AEAD 30): valid requests are precomputed from real NTS-KE sessions and
  replayed by a separate load-generator process (bench/loadgen.py: non-blocking UDP,
  sendmmsg/recvmmsg, ``--inflight`` requests outstanding, a sample of replies validated).
* NTS-KE: ``--ke-threads`` clients doing full TLS 1.3 handshakes and KE exchanges.
* Roughtime (gnomon against roughly 0.3.0's server, ``roughly server run --no-grease``,
  when .peers/roughly is installed): 1024-byte requests offering versions 1 and
  0x8000000c, replayed by the same load generator with the same requests in flight;
  a sample of responses is verified fully (signatures, Merkle path).

Server CPU is utime + stime from /proc over the whole process tree (chrony's NTS-KE
helpers, gnomon's workers), read at the start and end of each measurement window;
rates are what the load generator counted in the same window. Scenarios run
interleaved (each scenario on every server in turn), so drift on a shared machine
hits all servers alike. Results: a table on stdout, bench/results/latest.json and
bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import procfs
import servers as srv

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LOADGEN = BENCH / "loadgen.py"
CHRONY_43 = str(srv.CHRONY_43)
CHRONY_MODERN = REPO / ".peers" / "chrony-modern" / "chronyd"
OTHER_LOAD_LIMIT = 0.15  # cores used by other processes during a window: flagged, retried


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    aead: int | None  # None: plain NTP
    placeholders: int = 0
    ke: bool = False
    groups: str | None = None  # NTS-KE: the only TLS key-exchange groups the client offers
    roughtime: bool = False

    @property
    def unit(self) -> str:
        if self.roughtime:
            return "µs/response"
        return "ms/handshake" if self.ke else "µs/reply"


SCENARIOS = [
    Scenario("plain", "plain NTP (48 B)", None),
    Scenario("nts0-15", "NTS, 0 placeholders, AEAD 15", 15, 0),
    Scenario("nts1-15", "NTS, 1 placeholder, AEAD 15", 15, 1),
    Scenario("nts0-30", "NTS, 0 placeholders, AEAD 30", 30, 0),
    Scenario("nts1-30", "NTS, 1 placeholder, AEAD 30", 30, 1),
    Scenario("ke", "NTS-KE, client's default TLS groups", None, ke=True),
    Scenario("ke-x25519", "NTS-KE, client offers X25519 only", None, ke=True, groups="X25519"),
    Scenario("roughtime", "Roughtime, 1024 B requests", None, roughtime=True),
]
SCENARIO_BY_KEY = {s.key: s for s in SCENARIOS}

SERVER_ALIASES = {
    "gnomon": "gnomon",
    "roughly": "roughly",
    "chrony": "chrony-4.3",
    "chrony43": "chrony-4.3",
    "chrony-4.3": "chrony-4.3",
    "chrony46": "chrony-4.6",
    "chrony-4.6": "chrony-4.6",
    "chrony-modern": "chrony-4.6",
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- load-generator processes --------------------------------------------------------------


class LoadGen:
    """One bench/loadgen.py process; see its docstring for the line protocol."""

    live: ClassVar[set[LoadGen]] = set()

    def __init__(self, spec: dict[str, Any], path: Path, cpus: list[int] | None) -> None:
        path.write_text(json.dumps(spec))
        self.err_path = path.with_suffix(".err")
        with open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, str(LOADGEN), str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                preexec_fn=srv.child_setup(cpus),
                cwd=REPO,
            )
        LoadGen.live.add(self)

    def _line(self, deadline: float) -> str:
        assert self.popen.stdout is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("load generator did not answer in time" + self._err())
            ready, _, _ = select.select([self.popen.stdout], [], [], remaining)
            if ready:
                line = self.popen.stdout.readline()
                if not line:
                    raise RuntimeError("load generator exited" + self._err())
                return line.strip()

    def _err(self) -> str:
        text = srv.tail(self.err_path, 20)
        return f"\n--- {self.err_path} ---\n{text}" if text.strip() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        line = self._line(time.monotonic() + timeout)
        if line != "READY":
            raise RuntimeError(f"load generator said {line!r}" + self._err())

    def start(self, t0: float, t1: float) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(f"{t0!r} {t1!r}\n")
        self.popen.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        line = self._line(time.monotonic() + timeout)
        self.stop()
        data: dict[str, Any] = json.loads(line)
        if "error" in data:
            raise RuntimeError(f"load generator: {data['error']}")
        return data

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(2.0)
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5.0)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        LoadGen.live.discard(self)


# --- the benchmark -------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="gnomon-bench-"))
        os.chmod(self.tmp, 0o755)  # chrony, running as nobody, needs to reach its folder
        self.servers: list[srv.Server] = []
        self.request_sets: dict[tuple[str, str], srv.RequestSet] = {}
        self.skipped: dict[tuple[str, str], str] = {}
        self.results: dict[str, dict[str, dict[str, Any]]] = {}
        self.window_no = 0
        cpus = sorted(os.sched_getaffinity(0))
        server_share = max(args.workers or 1, *args.workers_curve, args.ke_workers or 1)
        if args.pin and len(cpus) >= server_share + 1:
            self.server_cpus: list[int] | None = cpus[:server_share]
            self.loadgen_cpus: list[int] | None = cpus[server_share:]
        else:
            self.server_cpus = self.loadgen_cpus = None

    # -- servers --

    def start_servers(self, wanted: list[str], lifetime: float) -> None:
        from gnomon.certs import make_demo_pki

        self.pki = make_demo_pki(self.tmp / "pki", key_type="ecdsa-p256")
        self.gnomon_options = srv.gnomon_serve_options()
        for key in wanted:
            if key == "roughly":
                log(f"starting roughly ({srv.ROUGHLY})")
                server = srv.start_roughly(self.tmp / key, lifetime=lifetime, cpus=self.server_cpus)
            elif key.startswith("gnomon"):
                log(f"starting {key}")
                workers = self.args.workers
                if key.startswith("gnomon-w"):  # a point of the --workers curve
                    workers = int(key.removeprefix("gnomon-w"))
                server = srv.start_gnomon(
                    self.tmp / key,
                    self.pki.cert_chain,
                    self.pki.key,
                    workers=workers,
                    ke_workers=self.args.ke_workers,
                    options=self.gnomon_options,
                    lifetime=lifetime,
                    cpus=self.server_cpus,
                    source=self.args.baseline if key == "gnomon-base" else None,
                )
                if key.startswith("gnomon-w"):
                    server.key, server.label = key, f"gnomon, {workers} NTP workers"
                elif self.args.workers_curve:
                    server.label = f"gnomon, {workers} NTP workers"
            else:
                binary = CHRONY_43 if key == "chrony-4.3" else str(self.args.chrony_modern)
                log(f"starting {key} ({binary})")
                server = srv.start_chrony(
                    key,
                    binary,
                    self.tmp / key,
                    self.pki.cert_chain,
                    self.pki.key,
                    processes=self.args.ke_workers or 1,
                    lifetime=lifetime,
                    cpus=self.server_cpus,
                )
            self.servers.append(server)
            for note in server.notes:
                log(f"{server.label}: {note}")
            server.info["memory_after_start"] = procfs.tree_memory(server.pid)

    def stop_servers(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()

    # -- material --

    def prepare(self, scenarios: list[Scenario]) -> None:
        count = self.args.requests
        plain = srv.plain_requests(count)
        roughtime = srv.roughtime_requests(count) if any(s.roughtime for s in scenarios) else None
        for server in self.servers:
            if server.key == "roughly":
                for scenario in scenarios:
                    if not scenario.roughtime:
                        self.skipped[(scenario.key, server.key)] = "serves Roughtime only"
            sessions_by_aead: dict[int, Any] = {}
            aeads = {s.aead for s in scenarios if s.aead is not None}
            for aead in sorted(aeads if server.key != "roughly" else ()):
                try:
                    sessions_by_aead[aead] = srv.ke_sessions(
                        server.ke_port, self.pki.ca_cert, aead, self.args.sessions
                    )
                except Exception as exc:
                    sessions_by_aead[aead] = exc
            for scenario in scenarios:
                key = (scenario.key, server.key)
                if scenario.ke or key in self.skipped:
                    continue
                if scenario.roughtime:
                    if not server.roughtime_port or roughtime is None:
                        self.skipped[key] = "no Roughtime server"
                        continue
                    try:
                        check = srv.roughtime_preflight(server.roughtime_port, roughtime)
                    except Exception as exc:
                        self.skipped[key] = f"pre-flight failed: {exc}"
                        log(f"{server.label}: {scenario.key} pre-flight failed: {exc}")
                        continue
                    self.request_sets[key] = roughtime
                    self.results.setdefault(scenario.key, {})[server.key] = {"preflight": check}
                    continue
                if scenario.aead is None:
                    request_set = plain
                else:
                    sessions = sessions_by_aead[scenario.aead]
                    if isinstance(sessions, Exception):
                        reason = f"no AEAD {scenario.aead} from NTS-KE ({sessions})"
                        self.skipped[key] = reason
                        log(f"{server.label}: {scenario.key} skipped: {reason}")
                        continue
                    request_set = srv.nts_requests(sessions, scenario.placeholders, count)
                try:
                    check = srv.preflight(server.ntp_port, request_set)
                except Exception as exc:
                    self.skipped[key] = f"pre-flight failed: {exc}"
                    log(f"{server.label}: {scenario.key} pre-flight failed: {exc}")
                    continue
                self.request_sets[key] = request_set
                self.results.setdefault(scenario.key, {})[server.key] = {"preflight": check}

    # -- one measurement window --

    def window(self, server: srv.Server, scenario: Scenario) -> dict[str, Any]:
        args = self.args
        procs = max(1, args.loadgen_procs)
        hard = args.warmup + args.duration + 30
        specs = []
        for i in range(procs):
            if scenario.ke:
                threads = args.ke_threads // procs + (1 if i < args.ke_threads % procs else 0)
                spec: dict[str, Any] = {
                    "mode": "ke",
                    "host": srv.HOST,
                    "port": server.ke_port,
                    "ca": str(self.pki.ca_cert),
                    "aeads": [15],
                    "groups": scenario.groups,
                    "threads": max(1, threads),
                    "max_handshakes": args.max_handshakes // procs,
                    "max_seconds": hard,
                }
            else:
                request_set = self.request_sets[(scenario.key, server.key)]
                inflight = args.inflight // procs + (1 if i < args.inflight % procs else 0)
                spec = {
                    "mode": "udp",
                    "host": srv.HOST,
                    "port": server.roughtime_port if scenario.roughtime else server.ntp_port,
                    "sockets": max(1, args.sockets // procs),
                    "inflight": max(1, inflight),
                    "max_replies": args.max_replies // procs,
                    "max_seconds": hard,
                    "validate_every": 64,
                    "busy_poll": args.busy_poll,
                    **request_set.spec(),
                }
                if args.rate_per_worker and not scenario.roughtime:
                    # Open loop at the same load per NTP process, whatever their number.
                    spec["rate"] = args.rate_per_worker * server.ntp_processes / procs
            specs.append(spec)
        self.window_no += 1
        gens = [
            LoadGen(spec, self.tmp / f"load-{self.window_no}-{i}.json", self.loadgen_cpus)
            for i, spec in enumerate(specs)
        ]
        try:
            for gen in gens:
                gen.wait_ready()
            pids = procfs.tree(server.pid)
            t0 = time.monotonic() + args.warmup
            t1 = t0 + args.duration
            for gen in gens:
                gen.start(t0, t1)
            time.sleep(max(0.0, t0 - time.monotonic()))
            machine0 = procfs.machine_cpu_ticks()
            by_pid0, real0 = procfs.cpu_by_pid(pids), time.monotonic()
            time.sleep(max(0.0, t1 - time.monotonic()))
            by_pid1, real1 = procfs.cpu_by_pid(pids), time.monotonic()
            machine1 = procfs.machine_cpu_ticks()
            if not server.alive():
                raise server.fail("server died during the window")
            late = procfs.tree(server.pid)
            loads = [gen.result(timeout=30.0) for gen in gens]
        finally:
            for gen in gens:
                gen.stop()
        window = real1 - real0
        per_process = {
            pid: (by_pid1[pid][0] - user0, by_pid1[pid][1] - sys0)
            for pid, (user0, sys0) in by_pid0.items()
            if pid in by_pid1
        }
        server_cpu = sum(u + s for u, s in per_process.values())
        server_sys = sum(s for _, s in per_process.values())
        out: dict[str, Any] = {
            "window_s": round(window, 4),
            "server_cpu_s": round(server_cpu, 3),
            "server_sys_share": round(server_sys / server_cpu, 3) if server_cpu else None,
            "server_cpu_by_process": {
                server.role(pid): round(u + s, 3) for pid, (u, s) in per_process.items()
            },
            "server_util": round(server_cpu / window, 3),
            "server_pids": pids,
            "machine": procfs.machine_usage(machine0, machine1),
            "loadgen": loads,
            "loadgen_procs": procs,
        }
        if sorted(late) != sorted(pids):
            out["note"] = f"server process tree changed during the window: {pids} -> {late}"
        lg_cpu = sum(load["cpu_s"] for load in loads)
        lg_elapsed = max(load["elapsed_s"] for load in loads) or window
        out["loadgen_cpu_s"] = round(lg_cpu, 3)
        lg_sys = sum(load.get("cpu_sys_s", 0.0) for load in loads)
        out["loadgen_sys_share"] = round(lg_sys / lg_cpu, 3) if lg_cpu else None
        out["loadgen_util"] = round(lg_cpu / lg_elapsed, 3)
        if scenario.ke:
            done = sum(load["handshakes"] for load in loads)
            errors: dict[str, int] = {}
            for load in loads:
                for k, v in load["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            out["errors"] = errors
            out["tls_group"] = next((ld["tls_group"] for ld in loads if ld["tls_group"]), None)
            out["count"] = done
            rate = done / lg_elapsed
            per = server_cpu / (rate * window) * 1e3 if rate else None
            out["loadgen_per_op"] = round(lg_cpu / done * 1e3, 3) if done else None
        else:
            done = sum(load["replies"] for load in loads)
            out["count"] = done
            out["lost"] = sum(load["lost"] for load in loads)
            out["validation"] = _merge_validation([load["validation"] for load in loads])
            out["mean_recv_batch"] = round(
                done / max(1, sum(load["recv_batches"] for load in loads)), 2
            )
            rate = done / lg_elapsed
            per = server_cpu / (rate * window) * 1e6 if rate else None
            out["loadgen_per_op"] = round(lg_cpu / done * 1e6, 3) if done else None
        out["rate"] = round(rate, 1)
        out["server_per_op"] = round(per, 4) if per is not None else None
        # Softirq/irq ticks on the server's own CPU(s) (pinned runs only): mostly the
        # loopback delivery of its replies, which tick accounting leaves out of its stime.
        if self.server_cpus and done:
            by_cpu = out["machine"]["irq_softirq_s_by_cpu"]
            softirq = sum(by_cpu.get(c, 0.0) for c in self.server_cpus)
            scale = 1e3 if scenario.ke else 1e6
            out["server_cpu_softirq_s"] = round(softirq, 3)
            out["server_per_op_incl_softirq"] = round(
                (server_cpu + softirq) / (rate * window) * scale, 4
            )
        # CPU used by anything else on the machine (other tests, this script): a disturbance.
        out["other_cores"] = round(
            max(
                0.0,
                out["machine"]["busy_cores"]
                - out["machine"]["irq_softirq_cores"]
                - out["server_util"]
                - out["loadgen_util"],
            ),
            3,
        )
        cap = server.ke_processes if scenario.ke else server.ntp_processes
        if scenario.roughtime:
            cap = server.roughtime_processes
        out["bound"] = _bound(out["server_util"], cap, out["loadgen_util"], procs, out["machine"])
        if out["other_cores"] > OTHER_LOAD_LIMIT:
            out["bound"] += f", other load {out['other_cores']:.2f} cores"
        return out

    def measure(
        self, scenario: Scenario, server: srv.Server, windows_left: int, budget_end: float
    ) -> dict[str, Any]:
        """One window, measured again (``--retries``) when other processes took CPU in it,
        as long as the retry leaves time for the ``windows_left`` after it."""
        per_window = self.args.duration + self.args.warmup + 1.5
        result = self.window(server, scenario)
        for attempt in range(self.args.retries):
            if result["other_cores"] <= OTHER_LOAD_LIMIT:
                break
            if time.monotonic() + (windows_left + 1) * per_window > budget_end:
                result["retry_skipped"] = "time budget"
                break
            log(
                f"{scenario.key:8} {server.label}: other load "
                f"{result['other_cores']:.2f} cores, measuring again"
            )
            again = self.window(server, scenario)
            again["retries"] = attempt + 1
            if again["other_cores"] < result["other_cores"]:
                result = again
        return result

    def run(self, scenarios: list[Scenario], budget_end: float) -> None:
        """``--rounds`` times every scenario on every server in turn; each cell reports
        the window with the median server CPU per operation."""
        plan = [
            (sc, sv)
            for sc in scenarios
            for sv in self.servers
            if (sc.key, sv.key) not in self.skipped
        ]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        rounds = self.args.rounds
        for round_no in range(rounds):
            for index, (scenario, server) in enumerate(plan):
                windows_left = len(plan) - index - 1 + (rounds - round_no - 1) * len(plan)
                tag = f" (round {round_no + 1}/{rounds})" if rounds > 1 else ""
                log(f"{scenario.key:8} {server.label}: {self.args.duration:g} s{tag} ...")
                try:
                    result = self.measure(scenario, server, windows_left, budget_end)
                except (KeyboardInterrupt, srv.ServerStartError):
                    raise
                except Exception as exc:
                    log(f"{scenario.key} {server.label} failed: {exc}")
                    result = {"error": str(exc)}
                runs.setdefault((scenario.key, server.key), []).append(result)
                if "rate" in result:
                    log(
                        f"{scenario.key:8} {server.label}: {result['rate']:,.0f}/s, "
                        f"{result['server_per_op']} {scenario.unit}, server "
                        f"{result['server_util']:.2f} core, loadgen "
                        f"{result['loadgen_util']:.2f} core ({result['bound']})"
                    )
                    problems = result.get("validation", {}).get("problems")
                    if problems:
                        log(f"  validation problems: {problems}")
                    if result.get("errors"):
                        log(f"  errors: {result['errors']}")
        for (scenario_key, server_key), reason in self.skipped.items():
            self.results.setdefault(scenario_key, {})[server_key] = {"skipped": reason}
        for (scenario_key, server_key), results in runs.items():
            entry = self.results.setdefault(scenario_key, {}).setdefault(server_key, {})
            good = [r for r in results if r.get("server_per_op") is not None]
            if not good:
                entry.update(results[-1])
                continue
            good.sort(key=lambda r: r["server_per_op"])
            entry.update(good[(len(good) - 1) // 2])  # the median (the lower one of two)
            entry["windows"] = len(results)
            # One list per run (``--runs``), one value per round: ratios pair the windows
            # of one round, which ran minutes apart at most, never windows of two runs.
            entry["server_per_op_by_run"] = [[r.get("server_per_op") for r in results]]
            entry["server_per_op_all"] = [r.get("server_per_op") for r in results]
            entry["rate_all"] = [r.get("rate") for r in results]
        for server in self.servers:
            server.info["memory_at_end"] = procfs.tree_memory(server.pid)

    # -- time quality under load --

    def quality(self, scenarios_run: list[Scenario]) -> None:
        """The offset an NTS client measures against each server, idle and under an
        open-loop load of ``rate`` NTS requests a second (AEAD 15, no placeholder): by
        default half the rate gnomon reached in the nts0-15 window (measured now if that
        scenario was not run), the same load for every server."""
        args = self.args
        scenario = SCENARIO_BY_KEY["nts0-15"]
        rate = args.quality_rate
        if not rate:
            gnomon = next((s for s in self.servers if s.key == "gnomon"), None)
            entry = self.results.get(scenario.key, {}).get("gnomon", {})
            if gnomon is None or ("nts0-15", "gnomon") not in self.request_sets:
                log("time quality: no gnomon nts0-15 requests, so no load to derive; skipped")
                return
            if scenario not in scenarios_run or not entry.get("rate"):
                log("time quality: measuring gnomon's nts0-15 rate first")
                entry = self.window(gnomon, scenario)
            rate = 0.5 * entry["rate"]
        results: dict[str, Any] = {}
        for server in self.servers:
            request_set = self.request_sets.get((scenario.key, server.key))
            if request_set is None:
                results[server.key] = {"skipped": "no nts0-15 requests for this server"}
                continue
            try:
                result = srv.ke_sessions(server.ke_port, self.pki.ca_cert, 15, 1)[0]
            except Exception as exc:
                results[server.key] = {"skipped": f"NTS-KE failed: {exc}"}
                continue
            session = {
                "aead": result.response.aead,
                "c2s": result.c2s.hex(),
                "s2c": result.s2c.hex(),
                "cookies": [c.hex() for c in result.response.cookies],
            }
            entry = results[server.key] = {}
            windows = [
                ("idle", 0.0, partial(self.quality_window, server, request_set, session, 0.0)),
                ("loaded", rate, partial(self.quality_window, server, request_set, session, rate)),
                *[
                    (label, rate, partial(self.quality_window_chrony, server, request_set, rate, x))
                    for label, x in (("chrony-basic", False), ("chrony-xleave", True))
                ],
            ]
            for label, load, measure in windows:
                log(f"quality  {server.label}: {label} ({load:,.0f} requests/s) ...")
                try:
                    entry[label] = measure()
                except (KeyboardInterrupt, srv.ServerStartError):
                    raise
                except Exception as exc:
                    log(f"quality {server.label} {label} failed: {exc}")
                    entry[label] = {"error": str(exc)}
                    continue
                probe = entry[label]["probe"]
                log(
                    f"quality  {server.label}: {label}: median offset "
                    f"{_fmt_us(probe['offset_us']['median'])} µs, delay "
                    f"{_fmt_us(probe['delay_us']['median'])} µs, {probe['samples']} samples"
                    + (f", {probe['interleaved']} interleaved" if "interleaved" in probe else "")
                )
        self.results["quality"] = {"rate": rate, "servers": results}

    def open_loop_spec(
        self, server: srv.Server, request_set: srv.RequestSet, rate: float, hard: float
    ) -> dict[str, Any]:
        """The load of the time-quality windows: ``rate`` requests a second on schedule."""
        args = self.args
        return {
            "mode": "udp",
            "host": srv.HOST,
            "port": server.ntp_port,
            "sockets": args.sockets,
            "inflight": args.inflight,
            "rate": rate,
            "max_replies": args.max_replies,
            "max_seconds": hard,
            "validate_every": 64,
            **request_set.spec(),
        }

    def quality_window_chrony(
        self, server: srv.Server, request_set: srv.RequestSet, rate: float, xleave: bool
    ) -> dict[str, Any]:
        """A chrony client (plain NTP, basic or ``xleave``, a sample every 1/64 s) against
        ``server`` while the open-loop load of the other windows runs."""
        args = self.args
        binary = str(args.chrony_modern)
        if not os.access(binary, os.X_OK):
            binary = str(srv.CHRONY_43)
        duration = args.quality_duration
        hard = args.warmup + duration + 40
        self.window_no += 1
        probe = srv.start_chrony_probe(
            binary,
            self.tmp / f"chrony-client-{self.window_no}",
            server.ntp_port,
            xleave=xleave,
            lifetime=hard + 20,
            cpus=self.loadgen_cpus,
        )
        gen = LoadGen(
            self.open_loop_spec(server, request_set, rate, hard),
            self.tmp / f"quality-{self.window_no}-load.json",
            self.loadgen_cpus,
        )
        try:
            gen.wait_ready()
            pids = procfs.tree(server.pid)
            # chrony's first exchanges (iburst; interleaving starts with the third reply)
            t0 = time.monotonic() + max(args.warmup, 3.0)
            t1 = t0 + duration
            gen.start(t0, t1)
            time.sleep(max(0.0, t0 - time.monotonic()))
            since = time.time() + 1  # the log has whole seconds: none from the warm-up
            by_pid0, real0 = procfs.cpu_by_pid(pids), time.monotonic()
            time.sleep(max(0.0, t1 - time.monotonic()))
            by_pid1, real1 = procfs.cpu_by_pid(pids), time.monotonic()
            until = time.time()
            load = gen.result(timeout=30.0)
        finally:
            gen.stop()
            probe.stop()
        samples = probe.samples(since, until)
        offsets = [x["offset_us"] for x in samples]
        delays = [x["delay_us"] for x in samples]
        server_cpu = sum(
            by_pid1[pid][0] + by_pid1[pid][1] - u0 - s0
            for pid, (u0, s0) in by_pid0.items()
            if pid in by_pid1
        )
        return {
            "rate_asked": rate,
            "rate_answered": round(load["replies"] / load["elapsed_s"], 1),
            "server_util": round(server_cpu / (real1 - real0), 3),
            "client": f"{binary} {'xleave' if xleave else 'basic'}",
            "probe": {
                "samples": len(samples),
                "lost": 0,
                "interleaved": sum(1 for x in samples if "I" in x["mode"]),
                "modes": sorted({x["mode"] for x in samples}),
                "offset_us": {
                    "median": _percentile(offsets, 0.5),
                    "p05": _percentile(offsets, 0.05),
                    "p95": _percentile(offsets, 0.95),
                },
                "delay_us": {
                    "median": _percentile(delays, 0.5),
                    "p05": _percentile(delays, 0.05),
                    "p95": _percentile(delays, 0.95),
                },
            },
        }

    def quality_window(
        self,
        server: srv.Server,
        request_set: srv.RequestSet,
        session: dict[str, Any],
        rate: float,
    ) -> dict[str, Any]:
        args = self.args
        duration = args.quality_duration
        hard = args.warmup + duration + 30
        specs: list[dict[str, Any]] = [
            {
                "mode": "probe",
                "host": srv.HOST,
                "port": server.ntp_port,
                "session": session,
                "interval": args.quality_interval,
                "max_seconds": hard,
            }
        ]
        if rate:
            specs.append(self.open_loop_spec(server, request_set, rate, hard))
        self.window_no += 1
        gens = [
            LoadGen(spec, self.tmp / f"quality-{self.window_no}-{i}.json", self.loadgen_cpus)
            for i, spec in enumerate(specs)
        ]
        try:
            for gen in gens:
                gen.wait_ready()
            pids = procfs.tree(server.pid)
            t0 = time.monotonic() + max(args.warmup, 1.0)
            t1 = t0 + duration
            for gen in gens:
                gen.start(t0, t1)
            time.sleep(max(0.0, t0 - time.monotonic()))
            by_pid0, real0 = procfs.cpu_by_pid(pids), time.monotonic()
            time.sleep(max(0.0, t1 - time.monotonic()))
            by_pid1, real1 = procfs.cpu_by_pid(pids), time.monotonic()
            if not server.alive():
                raise server.fail("server died during the window")
            loads = [gen.result(timeout=30.0) for gen in gens]
        finally:
            for gen in gens:
                gen.stop()
        server_cpu = sum(
            by_pid1[pid][0] + by_pid1[pid][1] - u0 - s0
            for pid, (u0, s0) in by_pid0.items()
            if pid in by_pid1
        )
        out: dict[str, Any] = {
            "rate_asked": rate,
            "server_util": round(server_cpu / (real1 - real0), 3),
            "probe": loads[0],
        }
        if rate:
            load = loads[1]
            out["rate_answered"] = round(load["replies"] / load["elapsed_s"], 1)
            out["load"] = {k: v for k, v in load.items() if k != "validation"}
            out["load_validation"] = load["validation"]
        return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _merge_validation(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "checked": 0,
        "fully_checked": 0,
        "problems": {},
        "reply_sizes": {},
        "strata": {},
    }
    for part in parts:
        merged["checked"] += part["checked"]
        merged["fully_checked"] += part["fully_checked"]
        for name in ("problems", "reply_sizes", "strata"):
            for k, v in part[name].items():
                merged[name][k] = merged[name].get(k, 0) + v
    return merged


def _bound(
    server_util: float, cap: int, lg_util: float, lg_cap: int, machine: dict[str, float]
) -> str:
    """What limited the rate: the server, the load generator, the machine, or neither."""
    if server_util >= 0.85 * cap:
        return "server-bound"
    if lg_util >= 0.85 * lg_cap:
        return "LOADGEN-BOUND"
    if machine.get("idle", 1.0) < 0.1:
        return "machine-bound"
    return "neither saturated"


# --- reporting -----------------------------------------------------------------------------


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"


def _fmt_per(value: float | None, ke: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if ke else f"{value:.2f}"


def _fmt_us(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def quality_table(bench: Bench) -> tuple[list[str], list[list[str]], list[str]]:
    """Rows of the time-quality table and the sentences comparing gnomon with chrony."""
    quality = bench.results.get("quality")
    if not quality:
        return [], [], []
    header = [
        "server",
        "load asked/s",
        "load answered/s",
        "server cores",
        "samples",
        "median offset idle µs",
        "median offset loaded µs",
        "offset loaded p5..p95 µs",
        "median delay idle µs",
        "median delay loaded µs",
    ]
    rows = []
    medians: dict[str, float] = {}
    for server in bench.servers:
        entry = quality["servers"].get(server.key, {})
        if "skipped" in entry:
            rows.append([server.label, *["-"] * (len(header) - 2), entry["skipped"]])
            continue
        idle, loaded = entry.get("idle", {}), entry.get("loaded", {})
        if "probe" not in loaded:
            rows.append([server.label, *["-"] * (len(header) - 2), loaded.get("error", "?")])
            continue
        probe = loaded["probe"]
        idle_probe = idle.get("probe", {"offset_us": {}, "delay_us": {}})
        if probe["offset_us"]["median"] is not None:
            medians[server.key] = probe["offset_us"]["median"]
        rows.append(
            [
                server.label,
                _fmt_rate(loaded["rate_asked"]),
                _fmt_rate(loaded.get("rate_answered")),
                f"{loaded['server_util']:.2f}",
                f"{probe['samples']} ({probe['lost']} lost)",
                _fmt_us(idle_probe["offset_us"].get("median")),
                _fmt_us(probe["offset_us"]["median"]),
                f"{_fmt_us(probe['offset_us']['p05'])}..{_fmt_us(probe['offset_us']['p95'])}",
                _fmt_us(idle_probe["delay_us"].get("median")),
                _fmt_us(probe["delay_us"]["median"]),
            ]
        )
    sentences = [
        f"Time quality: an NTS client (gnomon's Association, AEAD 15, one query every "
        f"{bench.args.quality_interval * 1000:g} ms; T1 read before send, T4 the kernel "
        f"receive timestamp) against each server, idle and while an open-loop load of "
        f"{quality['rate']:,.0f} NTS requests/s (half gnomon's nts0-15 rate) runs; every "
        "server keeps this machine's clock, so the true offset is 0 and what shows is the "
        "asymmetry each server adds."
    ]
    sentences += chrony_client_sentences(bench, quality)
    gnomon = medians.get("gnomon")
    for server in bench.servers:
        if server.key != "gnomon" and gnomon is not None and server.key in medians:
            sentences.append(
                f"Median offset under load, gnomon minus {server.label}: "
                f"{gnomon - medians[server.key]:+.1f} µs."
            )
    return header, rows, sentences


def chrony_client_rows(bench: Bench) -> tuple[list[str], list[list[str]]]:
    """A chrony client (plain NTP, basic and xleave) against each server under the load."""
    quality = bench.results.get("quality") or {}
    header = [
        "server",
        "chrony client",
        "samples (interleaved)",
        "median offset µs",
        "offset p5..p95 µs",
        "median delay µs",
        "delay p5..p95 µs",
    ]
    rows = []
    for server in bench.servers:
        entry = quality.get("servers", {}).get(server.key, {})
        for label in ("chrony-basic", "chrony-xleave"):
            window = entry.get(label)
            if not window:
                continue
            if "probe" not in window:
                rows.append([server.label, label, window.get("error", "?"), "", "", "", ""])
                continue
            got = window["probe"]
            off, dly = got["offset_us"], got["delay_us"]
            digits = 2 if label == "chrony-xleave" else 1  # interleaved: a few tenths of a µs
            rows.append(
                [
                    server.label,
                    label.removeprefix("chrony-"),
                    f"{got['samples']} ({got['interleaved']})",
                    _fmt_us(off["median"], digits),
                    f"{_fmt_us(off['p05'], digits)}..{_fmt_us(off['p95'], digits)}",
                    _fmt_us(dly["median"], digits),
                    f"{_fmt_us(dly['p05'], digits)}..{_fmt_us(dly['p95'], digits)}",
                ]
            )
    return header, rows


def chrony_client_sentences(bench: Bench, quality: dict[str, Any]) -> list[str]:
    """Which time-quality targets hold: median offset within 20 µs of chrony's (each
    mode), and in interleaved mode a 5th-95th percentile spread no wider than chrony's."""
    servers = quality.get("servers", {})
    gnomon = servers.get("gnomon", {})
    found = []
    for server in bench.servers:
        if not server.key.startswith("chrony"):
            continue
        theirs = servers.get(server.key, {})
        for label in ("chrony-basic", "chrony-xleave"):
            mine, other = gnomon.get(label, {}).get("probe"), theirs.get(label, {}).get("probe")
            if not mine or not other or mine["offset_us"]["median"] is None:
                continue
            if other["offset_us"]["median"] is None:
                continue
            gap = mine["offset_us"]["median"] - other["offset_us"]["median"]
            text = (
                f"chrony client, {label.removeprefix('chrony-')}: gnomon's median offset "
                f"minus {server.label}'s {gap:+.1f} µs (target within 20 µs: "
                f"{'holds' if abs(gap) <= 20 else 'misses'})"
            )
            if label == "chrony-xleave":
                spread = mine["offset_us"]["p95"] - mine["offset_us"]["p05"]
                theirs_spread = other["offset_us"]["p95"] - other["offset_us"]["p05"]
                text += (
                    f"; offset p5-p95 spread {spread:.2f} µs against {theirs_spread:.2f} µs "
                    f"(target no wider: {'holds' if spread <= theirs_spread else 'misses'})"
                )
            found.append(text + ".")
    return found


def roughtime_sentences(bench: Bench) -> list[str]:
    """Roughtime: each server's responses/s and CPU per response with their ranges over
    the rounds, and gnomon's ratio to roughly."""
    entries = bench.results.get("roughtime", {})
    parts = []
    for server in bench.servers:
        entry = entries.get(server.key, {})
        if entry.get("server_per_op") is None:
            continue
        pers = [p for p in entry.get("server_per_op_all", [entry["server_per_op"]]) if p]
        rates = [r for r in entry.get("rate_all", [entry["rate"]]) if r]
        parts.append(
            f"{server.label} {entry['rate']:,.0f} responses/s "
            f"({min(rates):,.0f}-{max(rates):,.0f}), {entry['server_per_op']:.1f} µs CPU "
            f"per response ({min(pers):.1f}-{max(pers):.1f}) over {len(pers)} round(s)"
        )
    if not parts:
        return []
    gnomon = entries.get("gnomon", {}).get("server_per_op")
    roughly = entries.get("roughly", {}).get("server_per_op")
    ratio = (
        f"; gnomon/roughly CPU per response {gnomon / roughly:.2f}x" if gnomon and roughly else ""
    )
    return ["Roughtime (median, range over rounds): " + "; ".join(parts) + ratio + "."]


def round_ratios(mine: dict[str, Any], theirs: dict[str, Any]) -> list[list[float]]:
    """Per run, the ratio of CPU per operation in each round both servers measured."""
    found = []
    for a_run, b_run in zip(
        mine.get("server_per_op_by_run", []), theirs.get("server_per_op_by_run", []), strict=False
    ):
        found.append([a / b for a, b in zip(a_run, b_run, strict=False) if a and b])
    return [run for run in found if run]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def fmt_ratio_range(by_run: list[list[float]]) -> str:
    """``1.52x (1.47-1.61)``: median and range over every round of every run; with several
    runs, the range of the runs' medians too."""
    values = [v for run in by_run for v in run]
    if not values:
        return "-"
    text = f"{_median(values):.2f}x"
    if len(values) > 1:
        text += f" ({min(values):.2f}-{max(values):.2f})"
    if len(by_run) > 1:
        medians = [_median(run) for run in by_run]
        text += f", run medians {min(medians):.2f}-{max(medians):.2f}"
    return text


def ratio_span(by_run: list[list[float]]) -> tuple[float, float] | None:
    values = [v for run in by_run for v in run]
    return (min(values), max(values)) if values else None


def build_table(bench: Bench, scenarios: list[Scenario]) -> tuple[list[str], list[list[str]]]:
    servers = bench.servers
    chronys = [s for s in servers if s.key != "gnomon"]
    has_gnomon = any(s.key == "gnomon" for s in servers)
    header = ["scenario"]
    for server in servers:
        header += [f"{server.label} rate/s", f"{server.label} CPU/op"]
        if server.key != "gnomon" and has_gnomon:
            header.append(f"ratio vs {server.label}")
    rows = []
    for scenario in scenarios:
        row = [f"{scenario.label} [{scenario.unit}]"]
        by_server = bench.results.get(scenario.key, {})
        for server in servers:
            entry = by_server.get(server.key, {})
            if "skipped" in entry or "error" in entry:
                row += ["n/a", "n/a"]
            else:
                rate = _fmt_rate(entry.get("rate"))
                if str(entry.get("bound", "")).startswith("LOADGEN-BOUND"):
                    rate += "*"
                row += [rate, _fmt_per(entry.get("server_per_op"), scenario.ke)]
            if server in chronys and has_gnomon:
                row.append(fmt_ratio_range(round_ratios(by_server.get("gnomon", {}), entry)))
        rows.append(row)
    return header, rows


def details_rows(bench: Bench, scenarios: list[Scenario]) -> tuple[list[str], list[list[str]]]:
    header = [
        "scenario",
        "server",
        "rate/s",
        "server CPU/op",
        "server cores",
        "loadgen CPU/op",
        "loadgen cores",
        "other cores",
        "steal",
        "lost",
        "checked (problems)",
        "limit",
    ]
    rows = []
    for scenario in scenarios:
        for server in bench.servers:
            entry = bench.results.get(scenario.key, {}).get(server.key, {})
            if "skipped" in entry or "error" in entry:
                reason = entry.get("skipped") or entry.get("error", "")
                rows.append([scenario.key, server.label, "n/a", *[""] * (len(header) - 4), reason])
                continue
            if "rate" not in entry:
                continue
            validation = entry.get("validation")
            checked = (
                f"{validation['checked']} ({sum(validation['problems'].values())})"
                if validation
                else f"errors: {sum(entry.get('errors', {}).values())}"
            )
            rows.append(
                [
                    scenario.key,
                    server.label,
                    _fmt_rate(entry["rate"]),
                    f"{_fmt_per(entry['server_per_op'], scenario.ke)} {scenario.unit}",
                    f"{entry['server_util']:.2f}",
                    f"{_fmt_per(entry['loadgen_per_op'], scenario.ke)} {scenario.unit}",
                    f"{entry['loadgen_util']:.2f}",
                    f"{entry['other_cores']:.2f}",
                    f"{entry['machine']['steal']:.0%}",
                    str(entry.get("lost", "")),
                    checked,
                    entry["bound"],
                ]
            )
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for row in rows:
        lines.append(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def memory_lines(bench: Bench) -> list[str]:
    lines = []
    for server in bench.servers:
        start = server.info.get("memory_after_start", {})
        end = server.info.get("memory_at_end", {})
        procs = ", ".join(
            f"{server.role(p['pid'])} {p['rss_kib'] / 1024:.1f}/{p.get('pss_kib', 0) / 1024:.1f}"
            for p in end.get("processes", [])
        )
        lines.append(
            f"{server.label}: VmRSS summed over its processes "
            f"{start.get('rss_kib_total', 0) / 1024:.1f} MiB after start, "
            f"{end.get('rss_kib_total', 0) / 1024:.1f} MiB at end (peak "
            f"{end.get('hwm_kib_total', 0) / 1024:.1f} MiB; PSS, shared pages split among users: "
            f"{end.get('pss_kib_total', 0) / 1024:.1f} MiB); VmRSS/PSS per process at end (MiB): "
            f"{procs}"
        )
    return lines


def report(bench: Bench, scenarios: list[Scenario], meta: dict[str, Any]) -> None:
    header, rows = build_table(bench, scenarios)
    d_header, d_rows = details_rows(bench, scenarios)
    machine = meta["machine"]
    machine_line = (
        f"{machine['cpu_model']}, {machine['cpus_online']} CPUs online "
        f"({machine['cpus_usable']} usable), kernel {machine['kernel']}, "
        f"Python {machine['python']}, load average {machine['loadavg_at_start']:.2f} at start"
    )
    settings = meta["settings"]
    pin = (
        f"servers pinned to CPU {settings['server_cpus']}, load generators to "
        f"{settings['loadgen_cpus']}"
        if settings["server_cpus"]
        else "no CPU pinning"
    )
    setup_line = (
        f"{settings['duration_s']:g} s per scenario after {settings['warmup_s']:g} s warm-up"
        + (f", {settings['rounds']} rounds (median shown)" if settings["rounds"] > 1 else "")
        + (f" in each of {settings['runs']} runs" if settings.get("runs", 1) > 1 else "")
        + f"; up to {settings['retries']} retry of a window disturbed by other processes; "
        f"{settings['inflight']} requests in flight over {settings['sockets']} UDP sockets, "
        f"{settings['loadgen_procs']} load-generator process(es); {settings['requests']} "
        f"distinct requests per scenario from {settings['sessions']} NTS-KE sessions; "
        f"NTS-KE: {settings['ke_threads']} concurrent clients, ECDSA P-256 certificate; "
        f"{pin}; gnomon: {settings['gnomon_layout']}; chrony: {settings['chrony_layout']}"
    )
    group_notes = []
    for scenario in scenarios:
        if scenario.ke:
            found = [
                f"{s.label} {bench.results.get(scenario.key, {}).get(s.key, {}).get('tls_group')}"
                for s in bench.servers
            ]
            group_notes.append(f"{scenario.key}: " + ", ".join(found))
    notes = [
        "CPU/op = server CPU (utime+stime of the whole process tree, /proc) in the window "
        "divided by replies (or handshakes) counted in it; ratio = gnomon CPU/op ÷ that "
        "server's CPU/op (below 1: gnomon cheaper), taken in each round from the two "
        "windows of that round: median (range over rounds and runs).",
        "* after a rate: the load generator, not the server, limited that rate "
        "(its CPU/op is still valid).",
        "Details: other cores = CPU used by other processes in the window (a shared "
        "machine: such windows are retried once); limit = which side ran at >= 85% of its "
        "cores (server-bound / LOADGEN-BOUND), or neither saturated (wake-up latency with "
        "64 requests in flight).",
        f"Every NTS request set replays {settings['requests']} requests built from "
        f"{settings['sessions']} NTS-KE sessions: a server that caches per-key AEAD state "
        "(gnomon keeps the AEAD objects of up to 8192 sessions) always hits its cache "
        "here, unlike with many real clients.",
    ]
    if group_notes:
        notes.append(
            "NTS-KE: TLS key-exchange group negotiated, "
            + "; ".join(group_notes)
            + ". The certificate is ECDSA P-256 for every server; the first handshake of "
            "each client process verifies it fully, later ones recognise it (client cost only)."
        )
    notes += roughtime_sentences(bench)
    for server in bench.servers:
        notes += [f"{server.label}: {note}" for note in server.notes]
    for (scenario_key, server_key), reason in bench.skipped.items():
        notes.append(f"{scenario_key} on {server_key}: {reason}")

    q_header, q_rows, q_sentences = quality_table(bench)
    c_header, c_rows = chrony_client_rows(bench)
    quality_text = [text_table(q_header, q_rows), *q_sentences, ""] if q_rows else []
    if c_rows:
        quality_text += [text_table(c_header, c_rows), ""]
    text = [
        "",
        f"Machine: {machine_line}",
        f"Setup: {setup_line}",
        "",
        text_table(header, rows),
        "",
        *quality_text,
        *memory_lines(bench),
        "",
        text_table(d_header, d_rows),
        "",
        *notes,
    ]
    print("\n".join(text))

    out = Path(bench.args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        **meta,
        "scenarios": [{"key": s.key, "label": s.label, "unit": s.unit} for s in scenarios],
        "servers": {
            s.key: {
                "label": s.label,
                "version": s.version,
                "ntp_processes": s.ntp_processes,
                "ke_processes": s.ke_processes,
                "roles": {str(pid): role for pid, role in s.roles.items()},
                "ntp_port": s.ntp_port,
                "ke_port": s.ke_port,
                "notes": s.notes,
                **s.info,
            }
            for s in bench.servers
        },
        "results": bench.results,
        "table": {"header": header, "rows": rows},
    }
    (out / "latest.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    md = [
        f"# gnomon vs chrony — {meta['finished']}",
        "",
        f"**Machine:** {machine_line}",
        "",
        f"**Setup:** {setup_line}",
        "",
        md_table(header, rows),
        "",
        *(
            [
                "**Time quality under load:**",
                "",
                md_table(q_header, q_rows),
                "",
                *([md_table(c_header, c_rows), ""] if c_rows else []),
                *[f"- {sentence}" for sentence in q_sentences],
                "",
            ]
            if q_rows
            else []
        ),
        "**Resident memory:**",
        "",
        *[f"- {line}" for line in memory_lines(bench)],
        "",
        "**Details:**",
        "",
        md_table(d_header, d_rows),
        "",
        *[f"- {note}" for note in notes],
        "",
    ]
    (out / "latest.md").write_text("\n".join(md))
    log(f"wrote {out / 'latest.json'} and {out / 'latest.md'}")


# --- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds per scenario (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each window")
    parser.add_argument(
        "--servers",
        default=None,
        help="comma list: gnomon, chrony (4.3), chrony-4.6 (default: all present)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.key for s in SCENARIOS),
        help=f"comma list among {', '.join(s.key for s in SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--workers",
        help="gnomon serve --workers W: NTP worker processes (default: gnomon's own); "
        "W1,W2,...: one gnomon per count, interleaved in one run (the CPU per reply "
        "against the number of workers), the first as 'gnomon'",
    )
    parser.add_argument(
        "--rate-per-worker",
        type=float,
        help="UDP scenarios in open loop at this many requests/s per NTP process (for the "
        "--workers curve: each worker sees the same load, so CPU per reply compares "
        "workers without saturating the machine; default: closed loop)",
    )
    parser.add_argument(
        "--ke-workers",
        type=int,
        help="gnomon serve --ke-workers K and chrony ntsprocesses K (default: 1 for chrony, "
        "gnomon's own for gnomon)",
    )
    parser.add_argument("--quick", action="store_true", help="1 s per scenario: a smoke test")
    parser.add_argument("--inflight", type=int, default=64, help="UDP requests outstanding")
    parser.add_argument("--sockets", type=int, default=8, help="UDP client sockets (source ports)")
    parser.add_argument("--loadgen-procs", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--busy-poll",
        action="store_true",
        help="load generator polls without sleeping (its CPU use then says nothing)",
    )
    parser.add_argument("--ke-threads", type=int, default=8, help="concurrent NTS-KE clients")
    parser.add_argument("--sessions", type=int, help="NTS-KE sessions per AEAD (default 16)")
    parser.add_argument("--requests", type=int, default=512, help="distinct requests per scenario")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="windows measured again when other processes used CPU in them (default 1)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=240.0,
        help="seconds: no retry that would end the run later than this (default 240)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="run the whole interleaved sequence N times: medians, and ratios as ranges "
        "over rounds (default 3, 1 with --quick)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat everything N times with fresh servers: ratios as ranges over rounds "
        "and runs (default 1)",
    )
    parser.add_argument("--max-replies", type=int, default=20_000_000)
    parser.add_argument("--max-handshakes", type=int, default=20_000)
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin servers and load generators to separate CPUs",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="SRC",
        help="also run the gnomon whose package is in SRC (another checkout's src/, e.g. a "
        "git worktree) as 'gnomon (base)': its ratio column compares two versions in one run",
    )
    parser.add_argument(
        "--chrony-modern",
        default=str(CHRONY_MODERN),
        help="chronyd 4.6 wrapper (used when present)",
    )
    parser.add_argument(
        "--no-quality",
        dest="quality",
        action="store_false",
        help="skip the time-quality measurement (offset seen by an NTS client under load)",
    )
    parser.add_argument(
        "--quality-rate",
        type=float,
        help="NTS requests/s of load during the time-quality windows (default: half "
        "gnomon's nts0-15 rate)",
    )
    parser.add_argument(
        "--quality-duration",
        type=float,
        help="seconds per time-quality window (default: --duration, at least 15 without --quick)",
    )
    parser.add_argument(
        "--quality-interval",
        type=float,
        default=0.02,
        help="seconds between the time-quality client's queries (default 0.02)",
    )
    parser.add_argument("--out", default=str(BENCH / "results"), help="results folder")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 0.5
    if args.sessions is None:
        args.sessions = 4 if args.quick else 16
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if not 0.1 <= args.duration <= 120 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be within 0.1..120 s and --warmup within 0..30 s")
    if args.quality_duration is None:  # percentiles of a few hundred samples move by run
        args.quality_duration = args.duration if args.quick else max(args.duration, 15.0)
    if not 0.1 <= args.quality_duration <= 120 or not 0.001 <= args.quality_interval <= 1:
        parser.error("--quality-duration must be within 0.1..120 s, --quality-interval 1 ms..1 s")
    if args.quality_rate is not None and not 0 < args.quality_rate <= 10_000_000:
        parser.error("--quality-rate must be positive")
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be within 1..10")
    if not 1 <= args.runs <= 10:
        parser.error("--runs must be within 1..10")
    if not 0 <= args.retries <= 3:
        parser.error("--retries must be within 0..3")
    if args.inflight < 1 or args.sockets < 1 or args.ke_threads < 1:
        parser.error("--inflight, --sockets and --ke-threads must be positive")
    args.workers_curve = []
    if args.workers is not None:
        try:
            counts = [int(w) for w in str(args.workers).split(",")]
        except ValueError:
            parser.error("--workers takes a number or a comma list of numbers")
        if not all(0 <= w <= 64 for w in counts) or len(set(counts)) != len(counts):
            parser.error("--workers must be within 0..64, each count once")
        args.workers, args.workers_curve = counts[0], counts[1:]
    if args.ke_workers is not None and not 1 <= args.ke_workers <= 64:
        parser.error("--ke-workers must be within 1..64")
    return args


def merge_runs(bench: Bench, earlier: list[Bench]) -> None:
    """Put the rounds of ``earlier`` runs beside the last run's, per scenario and server
    (the cells keep the last run's median window; the ratios use every run)."""
    for previous in earlier:
        for scenario_key, by_server in previous.results.items():
            for server_key, entry in by_server.items():
                if "server_per_op_by_run" not in entry:
                    continue
                mine = bench.results.get(scenario_key, {}).get(server_key)
                if mine is None or "server_per_op_by_run" not in mine:
                    continue
                mine["server_per_op_by_run"] = [
                    *entry["server_per_op_by_run"],
                    *mine["server_per_op_by_run"],
                ]
                mine["server_per_op_all"] = entry["server_per_op_all"] + mine["server_per_op_all"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = []
    for key in args.scenarios.split(","):
        if key.strip() not in SCENARIO_BY_KEY:
            print(f"unknown scenario {key!r}", file=sys.stderr)
            return 2
        scenarios.append(SCENARIO_BY_KEY[key.strip()])
    modern = Path(args.chrony_modern)
    if args.servers is None:
        wanted = ["gnomon", "chrony-4.3"]
        if modern.exists() and os.access(modern, os.X_OK):
            wanted.append("chrony-4.6")
        if any(s.roughtime for s in scenarios) and os.access(srv.ROUGHLY, os.X_OK):
            wanted.append("roughly")
    else:
        wanted = []
        for name in args.servers.split(","):
            key = SERVER_ALIASES.get(name.strip().lower())
            if key is None:
                print(f"unknown server {name!r}", file=sys.stderr)
                return 2
            if key not in wanted:
                wanted.append(key)
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()  # the servers run from the repository's root
        if not (args.baseline / "gnomon" / "__init__.py").is_file():
            print(f"--baseline {args.baseline}: no gnomon package there", file=sys.stderr)
            return 2
        wanted.append("gnomon-base")
    if "gnomon" in wanted:
        position = wanted.index("gnomon") + 1
        wanted[position:position] = [f"gnomon-w{w}" for w in args.workers_curve]
    if "roughly" in wanted and not os.access(srv.ROUGHLY, os.X_OK):
        print(
            f"roughly not found at {srv.ROUGHLY} (run scripts/install-roughly.sh)",
            file=sys.stderr,
        )
        return 2
    if "chrony-4.6" in wanted and not os.access(modern, os.X_OK):
        print(
            f"chrony 4.6 not found at {modern} (run scripts/install-chrony-modern.sh)",
            file=sys.stderr,
        )
        return 2
    if any(k.startswith("chrony") for k in wanted) and os.geteuid() != 0:
        print("chrony drops privileges (-u nobody): run the benchmark as root", file=sys.stderr)
        return 2

    windows = len(scenarios) * len(wanted) * (1 + args.retries) * args.rounds  # per run
    if args.quality:
        windows += 4 * len(wanted) + 1
    lifetime = windows * (args.duration + args.warmup + 40) + 300  # server self-destruct bound
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    started = time.monotonic()
    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": procfs.machine_info(),
    }
    bench = Bench(args)
    earlier: list[Bench] = []
    try:
        for run_no in range(args.runs):
            if run_no:
                bench.stop_servers()  # a separate run: fresh servers, sessions and requests
                shutil.rmtree(bench.tmp, ignore_errors=True)
                earlier.append(bench)
                bench = Bench(args)
                log(f"run {run_no + 1}/{args.runs}")
            bench.start_servers(wanted, lifetime)
            log("NTS-KE sessions, precomputed requests, pre-flight checks")
            nts015 = SCENARIO_BY_KEY["nts0-15"]
            last = run_no == args.runs - 1
            bench.prepare(
                [*scenarios, nts015]
                if args.quality and last and nts015 not in scenarios
                else scenarios
            )
            bench.run(scenarios, started + args.budget * (run_no + 1))
        merge_runs(bench, earlier)
        if args.quality:
            bench.quality(scenarios)
        meta["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        meta["settings"] = {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "inflight": args.inflight,
            "sockets": args.sockets,
            "loadgen_procs": args.loadgen_procs,
            "requests": args.requests,
            "sessions": args.sessions,
            "ke_threads": args.ke_threads,
            "rounds": args.rounds,
            "runs": args.runs,
            "retries": args.retries,
            "budget_s": args.budget,
            "certificate": "ECDSA P-256 (throwaway CA, gnomon.certs.make_demo_pki)",
            "server_cpus": bench.server_cpus,
            "loadgen_cpus": bench.loadgen_cpus,
            "gnomon_workers_option": args.workers,
            "gnomon_workers_curve": args.workers_curve,
            "gnomon_ke_workers_option": args.ke_workers,
            "gnomon_layout": next(
                (s.info.get("layout") for s in bench.servers if s.key == "gnomon"), "not run"
            ),
            "chrony_layout": next(
                (s.info.get("layout") for s in bench.servers if s.key.startswith("chrony")),
                "not run",
            ),
            "chrony_ntsprocesses": args.ke_workers or 1,
            "quality": args.quality,
            "quality_interval_s": args.quality_interval,
            "quality_duration_s": args.quality_duration,
            "quick": args.quick,
        }
        report(bench, scenarios, meta)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except srv.ServerStartError as exc:
        log(str(exc))
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup short
        for gen in list(LoadGen.live):
            with contextlib.suppress(Exception):
                gen.stop()
        bench.stop_servers()
        shutil.rmtree(bench.tmp, ignore_errors=True)
        log(f"done in {time.monotonic() - started:.0f} s; servers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
