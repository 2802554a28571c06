"""The ``gnomon`` command: ``gnomon query`` and ``gnomon serve``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from .client.session import Result, Session, parse_server
from .errors import GnomonError
from .proto.nts.aead import ALGORITHMS
from .proto.nts.client import DEFAULT_AEADS


def _aead_list(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of AEAD ids: {text!r}") from None
    unknown = [i for i in ids if i not in ALGORITHMS]
    if unknown:
        known = ", ".join(str(i) for i in ALGORITHMS)
        raise argparse.ArgumentTypeError(f"unsupported AEAD {unknown[0]} (known: {known})")
    return ids


def _format_table(rows: list[tuple[str, Result | GnomonError]]) -> str:
    header = ("SERVER", "ADDRESS", "OFFSET", "DELAY", "STRATUM", "LEAP", "AEAD", "COOKIES", "AUTH")
    lines = [header]
    for spec, outcome in rows:
        if isinstance(outcome, Result):
            lines.append(
                (
                    spec,
                    f"{outcome.address}:{outcome.port}",
                    f"{outcome.offset * 1e3:+.3f} ms",
                    f"{outcome.delay * 1e3:.3f} ms",
                    str(outcome.stratum),
                    str(outcome.leap),
                    outcome.aead_name.removeprefix("AEAD_"),
                    str(outcome.cookies_left),
                    "yes (NTS)" if outcome.authenticated else "NO",
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


async def _run_queries(
    session: Session, servers: list[str], count: int
) -> list[tuple[str, Result | GnomonError]]:
    async def one(spec: str) -> list[tuple[str, Result | GnomonError]]:
        host, port = parse_server(spec)
        outcomes: list[tuple[str, Result | GnomonError]] = []
        for _ in range(count):
            try:
                outcomes.append((spec, await session.aquery(host, port)))
            except GnomonError as exc:
                outcomes.append((spec, exc))
                break
        return outcomes

    results = await asyncio.gather(*(one(spec) for spec in servers))
    return [row for rows in results for row in rows]


def cmd_query(args: argparse.Namespace) -> int:
    try:
        for spec in args.servers:
            parse_server(spec)
        session = Session(
            ca_file=args.ca, aeads=args.aead, timeout=args.timeout, state_file=args.state
        )
        rows = asyncio.run(_run_queries(session, args.servers, args.count))
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
        print(_format_table(rows))
    failures = [outcome for _, outcome in rows if not isinstance(outcome, Result)]
    for failure in failures:
        print(f"gnomon: {failure}", file=sys.stderr)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gnomon", description="Secure network time (NTS, RFC 8915)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    query = commands.add_parser("query", help="authenticated time from NTS servers")
    query.add_argument(
        "servers", nargs="+", metavar="HOST[:PORT]", help="NTS-KE server (port 4460 by default)"
    )
    query.add_argument("--ca", metavar="FILE", help="trust this CA file instead of the system CAs")
    query.add_argument(
        "--count", type=int, default=1, metavar="N", help="queries per server (default 1)"
    )
    query.add_argument("--json", action="store_true", help="print JSON")
    query.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per step (default 5)"
    )
    query.add_argument(
        "--aead",
        type=_aead_list,
        default=DEFAULT_AEADS,
        metavar="IDS",
        help="AEAD ids to offer, in order (default 30,15)",
    )
    query.add_argument("--state", metavar="FILE", help="keep keys and cookies in FILE between runs")
    query.set_defaults(handler=cmd_query)

    from .server.cli import add_server_commands

    add_server_commands(commands)

    from .roughtime_cli import add_roughtime_command

    add_roughtime_command(commands)

    from .sync import add_sync_command

    add_sync_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "count", 1) < 1:
        print("gnomon: --count must be at least 1", file=sys.stderr)
        return 2
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
