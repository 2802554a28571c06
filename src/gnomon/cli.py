"""The ``gnomon`` command: ``gnomon query``, and the server's ``serve``, ``status``, ...

Start-up time is part of the interface: only argparse is imported up front, and each
subcommand imports what it needs inside its handler (``gnomon --help`` loads no
cryptography; a query answered from the cookies of a ``--state`` file loads no TLS).
A new subcommand follows the same pattern: ``add_parser`` in :func:`build_parser` (or
an ``add_*_commands`` function of its package), ``set_defaults(handler=...)``, and the
imports inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import GnomonError
from .hostport import join_host_port

TYPE_CHECKING = False  # typing itself is not imported at start-up
if TYPE_CHECKING:
    from .client.session import Result, Session

DEFAULT_AEADS_HELP = "30,15"
"""What ``--aead`` defaults to, as --help shows it (tests check it is DEFAULT_AEADS)."""


def _aead_list(text: str) -> tuple[int, ...]:
    from .proto.nts.aead import ALGORITHMS

    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of AEAD ids: {text!r}") from None
    unknown = [i for i in ids if i not in ALGORITHMS]
    if unknown:
        known = ", ".join(str(i) for i in ALGORITHMS)
        raise argparse.ArgumentTypeError(f"unsupported AEAD {unknown[0]} (known: {known})")
    return ids


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _auth_cell(outcome: Result) -> str:
    return "yes (NTS)" if outcome.authenticated else "NO"


def format_table(rows: list[tuple[str, Result | GnomonError]]) -> str:
    """The table ``gnomon query`` prints; IPv6 addresses as ``[::1]:4460``."""
    from .client.session import Result

    header = ("SERVER", "ADDRESS", "OFFSET", "DELAY", "STRATUM", "LEAP", "AEAD", "COOKIES", "AUTH")
    lines = [header]
    for spec, outcome in rows:
        if isinstance(outcome, Result):
            lines.append(
                (
                    spec,
                    join_host_port(outcome.address, outcome.port),
                    f"{outcome.offset * 1e3:+.3f} ms",
                    f"{outcome.delay * 1e3:.3f} ms",
                    str(outcome.stratum),
                    str(outcome.leap),
                    outcome.aead_name.removeprefix("AEAD_"),
                    str(outcome.cookies_left),
                    _auth_cell(outcome),
                )
            )
        else:
            lines.append((spec, "-", "-", "-", "-", "-", "-", "-", f"error: {outcome}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + "  "
        + line[-1]
        for line in lines
    )


def _query_one(session: Session, spec: str, count: int) -> list[tuple[str, Result | GnomonError]]:
    outcomes: list[tuple[str, Result | GnomonError]] = []
    for _ in range(count):
        try:
            outcomes.append((spec, session.query(spec)))
        except GnomonError as exc:
            outcomes.append((spec, exc))
            break
    return outcomes


def _query_all(
    session: Session, servers: list[str], count: int
) -> list[tuple[str, Result | GnomonError]]:
    """One server: the blocking client (no event loop to start); several: all at once."""
    if len(servers) == 1:
        return _query_one(session, servers[0], count)
    import asyncio

    async def one(spec: str) -> list[tuple[str, Result | GnomonError]]:
        outcomes: list[tuple[str, Result | GnomonError]] = []
        for _ in range(count):
            try:
                outcomes.append((spec, await session.aquery(spec)))
            except GnomonError as exc:
                outcomes.append((spec, exc))
                break
        return outcomes

    async def every() -> list[list[tuple[str, Result | GnomonError]]]:
        return list(await asyncio.gather(*(one(spec) for spec in servers)))

    return [row for rows in asyncio.run(every()) for row in rows]


def cmd_query(args: argparse.Namespace) -> int:
    import json

    from .client.session import Result, Session, parse_server

    try:
        for spec in args.servers:
            parse_server(spec)
        options = {} if args.aead is None else {"aeads": args.aead}
        session = Session(ca_file=args.ca, timeout=args.timeout, state_file=args.state, **options)
        rows = _query_all(session, args.servers, args.count)
    except GnomonError as exc:
        print(f"gnomon: {exc}", file=sys.stderr)
        return 2
    if args.json:
        document = [
            {"query": spec, **outcome.as_dict()}
            if isinstance(outcome, Result)
            else {"query": spec, "error": str(outcome), "error_type": type(outcome).__name__}
            for spec, outcome in rows
        ]
        print(json.dumps(document, indent=2))
    else:
        print(format_table(rows))
    failures = [outcome for _, outcome in rows if not isinstance(outcome, Result)]
    for failure in failures:
        print(f"gnomon: {failure}", file=sys.stderr)
    return 1 if failures else 0


def add_query_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = commands.add_parser("query", help="authenticated time from NTS servers")
    query.add_argument(
        "servers",
        nargs="+",
        metavar="SERVER",
        help="NTS-KE server: HOST, HOST:PORT, [IPv6]:PORT or an address (port 4460 by default)",
    )
    query.add_argument("--ca", metavar="FILE", help="trust this CA file instead of the system CAs")
    query.add_argument(
        "--count", type=_positive_int, default=1, metavar="N", help="queries per server (default 1)"
    )
    query.add_argument("--json", action="store_true", help="print JSON")
    query.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per step (default 5)"
    )
    query.add_argument(
        "--aead",
        type=_aead_list,
        default=None,
        metavar="IDS",
        help=f"AEAD ids to offer, in order (default {DEFAULT_AEADS_HELP})",
    )
    query.add_argument("--state", metavar="FILE", help="keep keys and cookies in FILE between runs")
    query.set_defaults(handler=cmd_query)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gnomon", description="Secure network time (NTS, RFC 8915)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_query_command(commands)

    from .server.cli import add_server_commands

    add_server_commands(commands)

    from .roughtime_cli import add_roughtime_command

    add_roughtime_command(commands)

    from .sync import add_sync_command

    add_sync_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
