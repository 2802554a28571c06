"""``gnomon roughtime``: query one server or a chained list, make keys and delegations.

    gnomon roughtime HOST[:PORT] --key BASE64 [--json] [--timeout S]
    gnomon roughtime --list SERVERS.json [--report FILE] [--json]
    gnomon roughtime keygen --out KEYFILE [--name NAME] [--address HOST:PORT]
    gnomon roughtime delegate --key KEYFILE --out FILE [--days D] [--count N]

Exit status: 0 time verified (and, for a list, every server agrees); 1 a
server failed (no verified answer); 2 bad usage or input; 3 the servers of a
list disagree (the report is written when ``--report`` is given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import GnomonError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCONSISTENT = 3

COMMAND_HELP = "signed rough time (Roughtime, RFC 10049): query, chain, keygen, delegate"


def add_roughtime_command(commands: Any) -> None:
    """Register ``gnomon roughtime`` on the top-level subparsers (imports stay lazy)."""
    parser = commands.add_parser(
        "roughtime",
        help=COMMAND_HELP,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    configure_parser(parser)
    parser.set_defaults(handler=run)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        metavar="HOST[:PORT] | keygen | delegate",
        help="a server to query (port 2002 by default), or an action",
    )
    query = parser.add_argument_group("querying")
    query.add_argument("--key", metavar="BASE64", help="the server's long-term public key")
    query.add_argument("--list", metavar="FILE", help="query a server list as a chain (twice)")
    query.add_argument("--report", metavar="FILE", help="write the malfeasance report here")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="per request (default 2)"
    )
    query.add_argument(
        "--attempts", type=int, default=3, metavar="N", help="requests per address (default 3)"
    )
    query.add_argument("--tcp", action="store_true", help="query over TCP instead of UDP")
    query.add_argument(
        "--versions",
        type=_version_list,
        metavar="LIST",
        help="versions to offer, e.g. 1,0x8000000c (default 1,0x8000000c,0x8000000b,0x80000008; "
        "google alone for Google-Roughtime)",
    )
    keys = parser.add_argument_group("keygen and delegate")
    keys.add_argument("--out", metavar="FILE", help="file to write (mode 0600)")
    keys.add_argument("--force", action="store_true", help="replace an existing --out file")
    keys.add_argument("--name", help="keygen: the server's name in the printed list entry")
    keys.add_argument(
        "--address", metavar="HOST:PORT", help="keygen: the address in the printed list entry"
    )
    keys.add_argument(
        "--days", type=float, default=7.0, metavar="D", help="delegate: days per online key"
    )
    keys.add_argument(
        "--count", type=int, default=8, metavar="N", help="delegate: consecutive keys to sign"
    )
    keys.add_argument(
        "--overlap",
        type=float,
        default=1.0,
        metavar="D",
        help="delegate: days each key stays valid after the next begins (default 1)",
    )
    keys.add_argument(
        "--start",
        type=int,
        metavar="UNIX",
        help="delegate: MINT of the first key (default: now, less one hour)",
    )


def _version_list(text: str) -> tuple[int, ...]:
    from .proto.roughtime.versions import GOOGLE, RULES

    try:
        versions = tuple(
            GOOGLE if part.strip().lower() == "google" else int(part, 0) for part in text.split(",")
        )
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of versions: {text!r}") from None
    unknown = [v for v in versions if v not in RULES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unsupported version 0x{unknown[0]:08x}")
    if GOOGLE in versions and len(versions) > 1:
        raise argparse.ArgumentTypeError("google cannot be offered with other versions")
    return versions


def run(args: argparse.Namespace) -> int:
    try:
        if args.target == "keygen":
            return cmd_keygen(args)
        if args.target == "delegate":
            return cmd_delegate(args)
        if args.list:
            if args.target:
                return _usage("give HOST[:PORT] or --list, not both")
            return cmd_chain(args)
        if not args.target:
            return _usage("give HOST[:PORT] --key BASE64, --list FILE, keygen or delegate")
        return cmd_query(args)
    except GnomonError as exc:
        print(f"gnomon: {exc}", file=sys.stderr)
        return EXIT_USAGE if _is_input_error(exc) else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gnomon roughtime", description=COMMAND_HELP)
    configure_parser(parser)
    return run(parser.parse_args(argv))


def _usage(message: str) -> int:
    print(f"gnomon roughtime: {message}", file=sys.stderr)
    return EXIT_USAGE


def _is_input_error(exc: GnomonError) -> bool:
    from .errors import ConfigError, RoughtimeServerListError

    return isinstance(exc, ConfigError | RoughtimeServerListError)


def _time(unix: int) -> str:
    try:
        return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"@{unix}"


# --- queries ----------------------------------------------------------------------


def cmd_query(args: argparse.Namespace) -> int:
    from .client.roughtime import RoughtimeClient
    from .proto.roughtime.serverlist import decode_public_key, split_address
    from .proto.roughtime.versions import CLIENT_VERSIONS, DEFAULT_PORT

    if not args.key:
        return _usage("--key BASE64 is needed to verify the server")
    if args.attempts < 1:
        return _usage("--attempts must be at least 1")
    host, port = split_address(args.target, DEFAULT_PORT)
    key = decode_public_key(args.key, "--key")
    client = RoughtimeClient(timeout=args.timeout, attempts=args.attempts)
    result = client.query(
        host,
        port,
        public_key=key,
        protocol="tcp" if args.tcp else "udp",
        versions=args.versions or CLIENT_VERSIONS,
    )
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(
            f"{result.server}  {_time(result.midpoint)} ± {result.radius} s  "
            f"(midpoint {result.midpoint}, {result.version_name}, {result.protocol} "
            f"{result.address}:{result.port}, delay {result.delay * 1e3:.1f} ms)"
        )
    return EXIT_OK


def cmd_chain(args: argparse.Namespace) -> int:
    from .client.roughtime import RoughtimeClient
    from .proto.roughtime.serverlist import parse_server_list

    if args.attempts < 1:
        return _usage("--attempts must be at least 1")
    try:
        text = Path(args.list).read_text()
    except OSError as exc:
        return _usage(f"cannot read {args.list}: {exc.strerror}")
    servers = parse_server_list(text).servers
    client = RoughtimeClient(timeout=args.timeout, attempts=args.attempts)
    chain = client.query_chain(servers)
    report_written = False
    if chain.report is not None and args.report:
        Path(args.report).write_text(chain.report + "\n")
        report_written = True
    if args.json:
        print(
            json.dumps(
                {
                    "consistent": chain.consistent,
                    "interval": list(chain.interval) if chain.interval else None,
                    "results": [r.as_dict() for r in chain.results],
                    "failures": [
                        {"server": f.server, "error": str(f.error)} for f in chain.failures
                    ],
                    "disagreeing": list(chain.disagreeing),
                    "suspects": list(chain.suspects),
                    "report": args.report if report_written else None,
                },
                indent=2,
            )
        )
    else:
        for result in chain.results:
            print(
                f"{result.server:24}  {_time(result.midpoint)} ± {result.radius} s  "
                f"({result.version_name}, {result.protocol}, {result.delay * 1e3:.1f} ms)"
            )
        for failure in chain.failures:
            print(f"{failure.server:24}  no verified answer: {failure.error}")
        if chain.consistent:
            if chain.interval is not None:
                low, high = chain.interval
                print(f"agreed: {_time(low)} .. {_time(high)} ({low}..{high})")
            else:
                print("no common interval (radii do not overlap, but no pair proves a lie)")
        else:
            print(
                "servers DISAGREE: "
                + ", ".join(chain.disagreeing)
                + (f"; likely liar: {', '.join(chain.suspects)}" if chain.suspects else "")
            )
            if report_written:
                print(f"malfeasance report written to {args.report}")
            else:
                print("give --report FILE to save the malfeasance report")
    for failure in chain.failures:
        print(f"gnomon: {failure.server}: {failure.error}", file=sys.stderr)
    if not chain.consistent:
        return EXIT_INCONSISTENT
    return EXIT_FAILED if chain.failures else EXIT_OK


# --- keys -------------------------------------------------------------------------


def _output(args: argparse.Namespace, action: str) -> Path | str:
    """The ``--out`` path to write, or why not (never replaces a file without ``--force``)."""
    if not args.out:
        return f"{action} needs --out FILE"
    path = Path(args.out)
    if path.exists() and not args.force:
        return f"{args.out} exists (give --force to replace it)"
    return path


def cmd_keygen(args: argparse.Namespace) -> int:
    """A new long-term key in the file the server reads (server/roughtime_keys.py)."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .proto.roughtime.serverlist import server_list_entry
    from .server.roughtime_keys import public_key_of, write_long_term_key

    path = _output(args, "keygen")
    if isinstance(path, str):
        return _usage(path)
    key = Ed25519PrivateKey.generate()
    write_long_term_key(path, key)
    public = public_key_of(key)
    entry = server_list_entry(
        args.name or "my-roughtime-server", public, args.address or "roughtime.example.net:2002"
    )
    print(f"long-term key written to {path} (mode 0600); keep it offline if you can")
    print(f"public key: {base64.b64encode(public).decode()}")
    print("server list entry:")
    print(json.dumps(entry, indent=2))
    return EXIT_OK


def cmd_delegate(args: argparse.Namespace) -> int:
    """Online keys for consecutive windows, signed now by the (offline) long-term key."""
    from .server.roughtime_keys import (
        make_online_keys,
        public_key_of,
        read_long_term_key,
        write_online_keys,
    )

    if not args.key:
        return _usage("delegate needs --key KEYFILE (the long-term key)")
    path = _output(args, "delegate")
    if isinstance(path, str):
        return _usage(path)
    if args.count < 1 or args.days <= 0 or args.overlap < 0:
        return _usage("--count >= 1, --days > 0 and --overlap >= 0")
    long_term = read_long_term_key(Path(args.key))
    start = args.start if args.start is not None else int(time.time()) - 3600
    keys = make_online_keys(
        long_term, start, args.count, int(args.days * 86400), int(args.overlap * 86400)
    )
    write_online_keys(path, public_key_of(long_term), keys)
    end = max(key.delegation.maxt for key in keys)
    print(f"{args.count} delegations written to {path} (mode 0600; it holds online private keys)")
    print(f"valid {_time(start)} .. {_time(end)}; sign more before the end")
    return EXIT_OK
