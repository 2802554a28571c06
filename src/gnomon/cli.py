"""The ``gnomon`` command: ``gnomon query``, and the server's ``serve``, ``status``, ...

Start-up time is part of the interface: only argparse is imported up front, and each
subcommand imports what it needs inside its handler (``gnomon --help`` loads no
cryptography; a query answered from the cookies of a ``--state`` file loads no TLS).
A new subcommand follows the same pattern: an ``add_*_command(commands)`` function in
its own module (``add_parser``, ``set_defaults(handler=...)``, imports inside the
handler), and one line in ``_COMMANDS`` below so that ``gnomon --help`` lists it
without importing that module.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .errors import GnomonError
from .hostport import join_host_port

TYPE_CHECKING = False  # typing itself is not imported at start-up
if TYPE_CHECKING:
    from typing import Any

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


# Subcommands defined elsewhere: name -> (its one-line help, the function registering it).
# `gnomon --help` lists them from here without importing their modules; the module of
# the command being run (all of them, for build_parser() without argv) is imported and
# registers the real parser.  tests/unit/test_cli.py checks these help lines are the
# registered ones.  A new subcommand: one line here, its module registers the rest.
_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("run an NTS server (NTS-KE and NTP)", "server.cli:add_server_commands"),
    "status": ("summarise a running server's metrics", "server.cli:add_server_commands"),
    "check-config": (
        "validate a configuration file and exit",
        "server.cli:add_server_commands",
    ),
    "roughtime": (
        "signed rough time (Roughtime, RFC 10049): query, chain, keygen, delegate",
        "roughtime_cli:add_roughtime_command",
    ),
    "sync": (
        "correct the system clock once from a quorum of NTS/Roughtime sources",
        "sync:add_sync_command",
    ),
}


def _register(commands: argparse._SubParsersAction[argparse.ArgumentParser], where: str) -> None:
    import importlib

    module, _, function = where.partition(":")
    getattr(importlib.import_module(f".{module}", __package__), function)(commands)


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` runs (the first word not an option), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil (and with it
    bz2, lzma and zlib): $COLUMNS, else the terminal's width, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own; it makes one per ``add_argument``, and would import shutil."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with :class:`_HelpFormatter`; subcommands' parsers are of this
    class too (argparse makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given `argv`, only the module of the command it runs is imported."""
    parser: argparse.ArgumentParser = _Parser(
        prog="gnomon", description="Secure network time (NTS, RFC 8915)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_query_command(commands)
    chosen = None if argv is None else _COMMANDS.get(_chosen(argv) or "", ("", ""))[1]
    for name, (help_text, where) in _COMMANDS.items():
        if name in commands.choices:
            continue  # registered along with another command of its module
        if argv is None or where == chosen:
            _register(commands, where)
        else:
            commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
