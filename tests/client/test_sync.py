"""``gnomon sync`` against gnomon servers on loopback. The real clock is never touched:
the adjuster is a recorder, the system clock's reading is injected, and the real
adjtimex adapter runs only in a subprocess without CAP_SYS_TIME."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.cli import build_parser
from gnomon.sync import EXIT_NO_AGREEMENT, EXIT_NOT_PERMITTED, EXIT_REFUSED, cmd_sync, plan
from tests.client.servers import LiveRoughtime, NtsServers
from tests.peers.clock import assert_clock_unchanged, snapshot

NS = 1_000_000_000
YEAR = 365 * 24 * 3600 * NS


@pytest.fixture(autouse=True)
def clock_untouched() -> Iterator[None]:
    """Every test here leaves the kernel clock state (read-only adjtimex) as it found it."""
    before = snapshot()
    yield
    assert_clock_unchanged(before)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def slew(self, offset: float) -> None:
        self.calls.append(("slew", offset))

    def step(self, offset: float) -> None:
        self.calls.append(("step", offset))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), days=1)


@pytest.fixture(scope="module")
def servers(pki: DemoPki) -> Iterator[NtsServers]:
    with NtsServers(pki, lies=[0, 0, 0, 3600]) as running:
        yield running


@pytest.fixture(scope="module")
def ahead(pki: DemoPki) -> Iterator[NtsServers]:
    """Three servers that agree the time is an hour later than this machine's clock."""
    with NtsServers(pki, lies=[3600, 3600, 3600]) as running:
        yield running


def run(
    argv: list[str], *, shift_ns: int = 0, adjuster: Recorder | None = None
) -> tuple[int, str, Recorder]:
    args = build_parser().parse_args(["sync", *argv])
    recorder = adjuster or Recorder()
    out = io.StringIO()
    code = cmd_sync(
        args, adjuster=recorder, system_clock=lambda: time.time_ns() + shift_ns, out=out
    )
    return code, out.getvalue(), recorder


def test_plan_rules() -> None:
    assert plan(0.001, 0.002, 3, allow_step=False, before_minimum=False).action == "none"
    assert plan(0.05, 0.002, 1, allow_step=False, before_minimum=False).action == "slew"
    assert plan(-0.05, 0.002, 3, allow_step=False, before_minimum=False).action == "slew"
    assert plan(5.0, 0.002, 3, allow_step=False, before_minimum=False).action == "refuse"
    assert plan(5.0, 0.002, 3, allow_step=True, before_minimum=False).action == "step"
    assert plan(5.0, 0.002, 3, allow_step=False, before_minimum=True).action == "step"
    assert plan(-5.0, 0.002, 3, allow_step=False, before_minimum=True).action == "refuse"
    assert plan(-5.0, 0.002, 3, allow_step=True, before_minimum=False).action == "step"
    one = plan(5.0, 0.002, 1, allow_step=True, before_minimum=True)
    assert one.action == "refuse" and "two agreeing sources" in one.reason


def test_dry_run_reports_sources_agreement_and_the_liar(servers: NtsServers) -> None:
    code, out, recorder = run([*servers.urls, "--dry-run", "--json"])
    assert code == 0
    document = json.loads(out)
    liar = servers.urls[3].split("?")[0]
    states = {s["name"]: s["state"] for s in document["status"]["sources"]}
    assert states.pop(liar) == "falseticker"
    assert set(states.values()) == {"agreed"}
    assert document["action"]["action"] == "none"  # the servers serve this very clock
    assert document["dry_run"] is True and document["applied"] is False
    assert recorder.calls == []


def test_the_command_line_reports_the_same(servers: NtsServers) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gnomon", "sync", "--dry-run", *servers.urls],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    liar = servers.urls[3].split("?")[0]
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].split() == ["SOURCE", "KIND", "STATE", "OFFSET", "ERROR"], out
    row = next(line for line in lines if line.startswith(liar))
    assert row.split()[2] == "falseticker", out
    assert row.split()[3].startswith("+3600"), out
    assert any(line.startswith("agreement: 3 of 4 sources (quorum 3)") for line in lines), out
    assert f"falsetickers: {liar}" in out
    assert any(line.startswith("action: none") for line in lines), out


def test_a_small_offset_is_slewed(servers: NtsServers) -> None:
    code, out, recorder = run(servers.urls[:3], shift_ns=-50_000_000)
    assert code == 0, out
    ((action, amount),) = recorder.calls
    assert action == "slew"
    assert amount == pytest.approx(0.05, abs=0.005)
    assert "action: slew +" in out and "(done)" in out


def test_dry_run_changes_nothing(servers: NtsServers) -> None:
    code, out, recorder = run([*servers.urls[:3], "--dry-run"], shift_ns=-50_000_000)
    assert code == 0
    assert recorder.calls == []
    assert "dry run: nothing changed" in out


def test_a_clock_ahead_is_not_moved_back_without_step(servers: NtsServers) -> None:
    code, out, recorder = run(servers.urls[:3], shift_ns=3600 * NS)
    assert code == EXIT_REFUSED
    assert recorder.calls == []
    assert "moving it back needs --step" in out
    code, out, recorder = run([*servers.urls[:3], "--step"], shift_ns=3600 * NS)
    assert code == 0
    ((action, amount),) = recorder.calls
    assert action == "step" and amount == pytest.approx(-3600, abs=0.01)


def test_a_large_forward_offset_needs_step(ahead: NtsServers) -> None:
    code, out, recorder = run(ahead.urls)
    assert code == EXIT_REFUSED and recorder.calls == []
    assert "use --step" in out
    code, _, recorder = run([*ahead.urls, "--step"])
    assert code == 0
    ((action, amount),) = recorder.calls
    assert action == "step" and amount == pytest.approx(3600, abs=0.01)


def test_never_a_step_on_one_sources_word(ahead: NtsServers) -> None:
    code, out, recorder = run([ahead.urls[0], "--min-agree", "1", "--step"])
    assert code == EXIT_REFUSED and recorder.calls == []
    assert "two agreeing sources" in out


def test_no_agreement_exits_1_and_changes_nothing(servers: NtsServers) -> None:
    code, out, recorder = run([servers.urls[0], servers.urls[3], "--json"])
    assert code == EXIT_NO_AGREEMENT
    assert recorder.calls == []
    assert json.loads(out)["action"] is None


def test_a_clock_before_the_sane_minimum_is_stepped_forward_via_roughtime(
    servers: NtsServers,
) -> None:
    rough = [LiveRoughtime(11), LiveRoughtime(12), LiveRoughtime(13)]
    try:
        code, out, recorder = run(
            # three of each: a quorum (4 of 6) needs NTS, so the step is NTS-precise
            [*(r.url for r in rough), *servers.urls[:3]],
            shift_ns=-30 * YEAR,
        )
    finally:
        for server in rough:
            server.close()
    assert code == 0, out
    ((action, amount),) = recorder.calls
    assert action == "step" and amount == pytest.approx(30 * YEAR / NS, abs=0.05)
    assert "certificates checked at roughtime time" in out
    assert "before the sane minimum" in out


def test_usage_errors() -> None:
    assert run([])[0] == 2
    assert run(["http://x"])[0] == 2


# --- the real adapter, without the right to set the clock ------------------------------

CHILD = """
import sys
caps = next(l for l in open('/proc/self/status') if l.startswith('CapEff:'))
if int(caps.split()[1], 16) & (1 << 25):
    sys.exit(99)  # CAP_SYS_TIME still there: never call the adapter
from gnomon.sync import ClockAdjustError, KernelClock
for name, amount in (("slew", 0.001), ("step", 0.001)):
    try:
        getattr(KernelClock(), name)(amount)
    except ClockAdjustError as exc:
        print(exc)
    else:
        sys.exit(98)
if len(sys.argv) > 1:
    from gnomon.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def without_sys_time(*argv: str) -> subprocess.CompletedProcess[str]:
    drop: list[str] = []
    if os.geteuid() == 0:  # others have no CAP_SYS_TIME to drop (the child checks)
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed to drop CAP_SYS_TIME"
        drop = [setpriv, "--bounding-set", "-sys_time", "--inh-caps", "-sys_time"]
    return subprocess.run(
        [*drop, sys.executable, "-c", CHILD, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_the_kernel_adapter_says_not_permitted_and_leaves_the_clock_alone(
    ahead: NtsServers,
) -> None:
    result = without_sys_time("sync", "--step", *ahead.urls)  # clock_untouched checks
    assert result.returncode == EXIT_NOT_PERMITTED, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0] == "not permitted to slew the system clock (needs root or CAP_SYS_TIME)"
    assert lines[1] == "not permitted to step the system clock (needs root or CAP_SYS_TIME)"
    assert "gnomon sync: not permitted to step the system clock" in result.stderr
    assert "Traceback" not in result.stderr
