"""``gnomon sync``: correct the system clock once from a quorum of sources (like ``chronyd -q``).

The offset comes from :class:`gnomon.Clock` (several NTS and Roughtime sources,
selection, bootstrap of certificate checks when the clock is wrong). What to do
with it is :func:`plan`: nothing when the clock is already within the error
bound, a slew (``adjtimex`` ``ADJ_OFFSET_SINGLESHOT``, the kernel's ``adjtime``:
the clock runs at most 500 ppm faster or slower until the offset is gone, never
backwards) when the offset is small, a step (``ADJ_SETOFFSET``) only with
``--step`` or when the clock is before a sane minimum (and then only forwards),
and never a step on a single source's word. The clock-setting adapter is
injected, so tests never touch the real clock.

Exit status: 0 in sync or corrected (or, with ``--dry-run``, it would be),
1 no agreement, 2 bad usage, 3 correction refused (needs ``--step``),
4 the system refused the adjustment (no CAP_SYS_TIME).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ._timex import TimexStruct, adjtimex_function
from .errors import GnomonError

if TYPE_CHECKING:
    from .client.clock import ClockStatus

SLEW_LIMIT = 0.128  # seconds; larger offsets need a step (ntpd's step threshold)
EXIT_OK, EXIT_NO_AGREEMENT, EXIT_USAGE, EXIT_REFUSED, EXIT_NOT_PERMITTED = 0, 1, 2, 3, 4


class ClockAdjustError(GnomonError):
    """The system refused to adjust its clock."""


class ClockAdjuster(Protocol):
    """What ``gnomon sync`` needs to change the system clock."""

    def slew(self, offset: float) -> None:
        """Make the clock gain ``offset`` seconds gradually (negative: lose)."""

    def step(self, offset: float) -> None:
        """Move the clock by ``offset`` seconds at once."""


# --- the kernel's clock, through adjtimex(2) -----------------------------------------

_ADJ_SETOFFSET = 0x0100
_ADJ_NANO = 0x2000
_ADJ_OFFSET_SINGLESHOT = 0x8001
_NS = 1_000_000_000


class KernelClock:
    """The real system clock (Linux). Needs CAP_SYS_TIME; without it, a clear error."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise ClockAdjustError("gnomon sync can set the clock on Linux only")
        self._adjtimex = adjtimex_function()

    def _call(self, tx: TimexStruct, what: str) -> None:
        if self._adjtimex(ctypes.byref(tx)) < 0:
            code = ctypes.get_errno()
            if code == errno.EPERM:
                raise ClockAdjustError(
                    f"not permitted to {what} the system clock (needs root or CAP_SYS_TIME)"
                )
            raise ClockAdjustError(f"cannot {what} the system clock: {os.strerror(code)}")

    def slew(self, offset: float) -> None:
        tx = TimexStruct()
        tx.modes = _ADJ_OFFSET_SINGLESHOT  # adjtime(): microseconds, no PLL state touched
        tx.offset = round(offset * 1e6)
        self._call(tx, "slew")

    def step(self, offset: float) -> None:
        tx = TimexStruct()
        tx.modes = _ADJ_SETOFFSET | _ADJ_NANO  # relative: no race with the clock moving on
        seconds, nanoseconds = divmod(round(offset * _NS), _NS)
        tx.time.tv_sec = seconds
        tx.time.tv_usec = nanoseconds  # nanoseconds under ADJ_NANO, always >= 0
        self._call(tx, "step")


# --- what to do --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    action: str  # "none", "slew", "step" or "refuse"
    offset: float  # true time minus the system clock, seconds
    error: float  # the agreement's error bound, seconds
    reason: str

    def describe(self) -> str:
        amount = _seconds(self.offset)
        if self.action == "none":
            return f"none: offset {amount} is within the error bound ±{_seconds(self.error)}"
        if self.action in ("slew", "step"):
            return f"{self.action} {amount} ({self.reason})"
        return f"refused: {self.reason}"


def plan(
    offset: float,
    error: float,
    agreeing: int,
    *,
    allow_step: bool,
    before_minimum: bool,
    slew_limit: float = SLEW_LIMIT,
) -> Plan:
    """The correction for ``offset`` (true minus system time) known within ``error``."""
    if abs(offset) <= error:
        return Plan("none", offset, error, "within the error bound")
    if abs(offset) <= slew_limit:
        return Plan("slew", offset, error, f"at most {slew_limit * 1e3:g} ms: slewed")
    if agreeing < 2:
        return Plan("refuse", offset, error, "a step needs at least two agreeing sources")
    if offset < 0 and not allow_step:
        return Plan(
            "refuse",
            offset,
            error,
            f"the clock is {_seconds(-offset)} ahead: moving it back needs --step",
        )
    if allow_step:
        return Plan("step", offset, error, "--step")
    if before_minimum:
        return Plan("step", offset, error, "the clock was before the sane minimum")
    return Plan(
        "refuse",
        offset,
        error,
        f"offset {_seconds(offset)} is beyond the {slew_limit * 1e3:g} ms slew limit: use --step",
    )


def _seconds(value: float) -> str:
    magnitude = abs(value)
    if magnitude < 1:
        return f"{value * 1e3:+.3f} ms"
    return f"{value:+.3f} s"


# --- the command ---------------------------------------------------------------------------


def add_sync_command(commands: Any) -> None:
    """Register ``gnomon sync`` (argparse subparsers); the work is imported when it runs."""
    sync = commands.add_parser(
        "sync",
        help="correct the system clock once from a quorum of NTS/Roughtime sources",
        description="Correct the system clock once from a quorum of sources (like chronyd -q).",
    )
    sync.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="nts://HOST[:PORT][?ca=FILE] or roughtime://HOST[:PORT]?key=BASE64",
    )
    sync.add_argument("--config", metavar="FILE", help="TOML file with sources = [...]")
    sync.add_argument("--ca", metavar="FILE", help="CA file for NTS sources that name none")
    sync.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    sync.add_argument(
        "--step", action="store_true", help="step the clock when the offset is too large to slew"
    )
    sync.add_argument("--json", action="store_true", help="print JSON")
    sync.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per source (default 5)"
    )
    sync.add_argument(
        "--min-agree",
        type=int,
        default=None,
        metavar="N",
        help="sources that must agree (default 2, or the config's; a step always needs 2)",
    )
    sync.add_argument(
        "--trust-system-clock",
        choices=("auto", "yes", "no"),
        default="auto",
        help="check NTS certificates at the system clock's time (default: auto)",
    )
    sync.add_argument("--state-dir", metavar="DIR", help="keep NTS cookies and the last agreement")
    sync.set_defaults(handler=cmd_sync)


def cmd_sync(
    args: argparse.Namespace,
    *,
    adjuster: ClockAdjuster | None = None,
    system_clock: Callable[[], int] = time.time_ns,
    out: Any = None,
) -> int:
    out = out or sys.stdout
    from .client.clock import Clock
    from .errors import NoMajorityError
    from .proto.select import Policy

    if not args.sources and not args.config:
        print("gnomon sync: name sources or --config FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.sources and args.config:
        print("gnomon sync: sources or --config, not both", file=sys.stderr)
        return EXIT_USAGE
    trust = {"auto": None, "yes": True, "no": False}[args.trust_system_clock]
    try:
        policy = Policy(min_agree=args.min_agree) if args.min_agree is not None else None
        clock = Clock(
            args.config or args.sources,
            policy=policy,
            timeout=args.timeout,
            ca_file=args.ca,
            state_dir=args.state_dir,
            trust_system_clock=trust,
            system_clock=system_clock,
        )
    except (GnomonError, ValueError) as exc:
        print(f"gnomon sync: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        clock.refresh()
    except NoMajorityError:
        pass
    except GnomonError as exc:
        print(f"gnomon sync: {exc}", file=sys.stderr)
        return EXIT_NO_AGREEMENT
    status = clock.status()
    if status.offset is None or status.error is None:
        _report(args, out, status, None, applied=False, problem=status.last_refresh_error)
        print(f"gnomon sync: no agreement: {status.last_refresh_error}", file=sys.stderr)
        return EXIT_NO_AGREEMENT
    before_minimum = datetime.fromtimestamp(system_clock() / 1e9, UTC) < clock.sane_minimum
    offset = clock.offset()  # fresh: the monotonic clock has moved on since the refresh
    decision = plan(
        offset,
        clock.now().error,
        len(status.agreed),
        allow_step=args.step,
        before_minimum=before_minimum,
    )
    code = EXIT_REFUSED if decision.action == "refuse" else EXIT_OK
    problem = None
    applied = False
    if decision.action in ("slew", "step") and not args.dry_run:
        try:
            real = adjuster or KernelClock()
            if decision.action == "slew":
                real.slew(clock.offset())
            else:
                real.step(clock.offset())
            applied = True
        except ClockAdjustError as exc:
            problem = str(exc)
            code = EXIT_NOT_PERMITTED
    _report(args, out, status, decision, applied=applied, problem=problem)
    if problem:
        print(f"gnomon sync: {problem}", file=sys.stderr)
    return code


def _report(
    args: argparse.Namespace,
    out: Any,
    status: ClockStatus,
    decision: Plan | None,
    *,
    applied: bool,
    problem: str | None,
) -> None:
    if args.json:
        document = {
            "status": status.as_dict(),
            "action": asdict(decision) if decision is not None else None,
            "dry_run": bool(args.dry_run),
            "applied": applied,
            "error": problem,
        }
        print(json.dumps(document, indent=2), file=out)
        return
    header = ("SOURCE", "KIND", "STATE", "OFFSET", "ERROR")
    rows = [header]
    for source in status.sources:
        rows.append(
            (
                source.name,
                source.kind,
                source.state,
                _seconds(source.offset) if source.offset is not None else "-",
                f"±{_seconds(source.error)[1:]}" if source.error is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)), file=out
        )
    for source in status.sources:
        if source.message:
            print(f"  {source.name}: {source.message}", file=out)
    if status.offset is not None and status.error is not None:
        agreed = len(status.agreed)
        line = (
            f"agreement: {agreed} of {len(status.sources)} sources (quorum {status.quorum}), "
            f"offset {_seconds(status.offset)} ±{_seconds(status.error)[1:]}, "
            f"certificates checked at {status.verify_time} time"
        )
        if status.falsetickers:
            line += f"; falsetickers: {', '.join(status.falsetickers)}"
        print(line, file=out)
    else:
        print(f"agreement: none ({status.last_refresh_error})", file=out)
    if decision is not None:
        suffix = (
            " (dry run: nothing changed)"
            if args.dry_run
            and decision.action
            in (
                "slew",
                "step",
            )
            else ""
        )
        if applied:
            suffix = " (done)"
        print(f"action: {decision.describe()}{suffix}", file=out)
