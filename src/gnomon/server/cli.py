"""``gnomon serve`` and ``gnomon check-config``.

Only argparse at import time: `gnomon --help` and `gnomon query` build this part of
the parser too, so each command imports what it needs in its handler.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError, GnomonError

TYPE_CHECKING = False  # typing itself is not imported at start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from .config import ServerConfig

DEMO_ROUGHTIME_RADIUS = 10  # seconds; the demo's clock is the machine's, unverified


def add_server_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run an NTS server (NTS-KE and NTP)")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="serve on loopback with a throwaway CA and certificate (no config needed)",
    )
    # Checked as the settings they replace (config.override), with the table's ranges.
    serve.add_argument("--ke-port", type=int, help="replaces server.ke_port")
    serve.add_argument("--ntp-port", type=int, help="replaces server.ntp_port")
    serve.add_argument("--roughtime-port", type=int, help="replaces roughtime.port")
    serve.add_argument(
        "--ready-file", metavar="FILE", help="write bound ports as JSON here once serving"
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="NTP worker processes sharing the port, 0: one process does everything "
        "(replaces server.workers)",
    )
    serve.add_argument("--ke-workers", type=int, help="replaces server.ke_workers")
    serve.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="json: one object a line"
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    serve.set_defaults(handler=cmd_serve)

    status = commands.add_parser("status", help="summarise a running server's metrics")
    status.add_argument(
        "--url",
        default="http://127.0.0.1:9123/metrics",
        help="the server's metrics endpoint ([metrics] listen)",
    )
    status.set_defaults(handler=cmd_status)

    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", nargs="?", help="the file (prints an example when omitted)")
    check.set_defaults(handler=cmd_check_config)


def cmd_status(args: argparse.Namespace) -> int:
    from .status import fetch_metrics, summarize

    try:
        print(summarize(fetch_metrics(args.url)))
    except GnomonError as exc:
        print(f"gnomon: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import EXAMPLE, check_files, load_config
    from .secretfiles import read_fleet_secret

    if args.file is None:
        print(EXAMPLE, end="")
        return 0
    try:
        config = load_config(args.file)
        from .certificates import load_server_context
        from .keys import FileKeyStore
        from .ports import check_addresses

        check_files(config)
        check_addresses(config)  # not the ports: a running server may hold them

        if config.role in ("both", "ke"):
            assert config.certificate is not None and config.key is not None
            load_server_context(config.certificate, config.key)
        if config.roughtime:
            from .roughtime_role import check_roughtime_keys

            check_roughtime_keys(config)
        if config.key_store == "file" and config.key_path is not None:
            FileKeyStore(config.key_path, user=config.user)
        if config.key_store == "redis":
            assert config.fleet_secret_file is not None
            read_fleet_secret(config.fleet_secret_file, user=config.user)
    except GnomonError as exc:
        print(f"gnomon: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0


# command-line options that replace a setting: (option, ServerConfig attribute)
_OVERRIDES = (
    ("--ke-port", "ke_port"),
    ("--ntp-port", "ntp_port"),
    ("--roughtime-port", "roughtime_port"),
    ("--workers", "workers"),
    ("--ke-workers", "ke_workers"),
)


def _demo_config(directory: Path) -> ServerConfig:
    from ..certs import make_demo_pki
    from .config import ServerConfig
    from .roughtime_keys import demo_long_term_key

    pki = make_demo_pki(directory)
    return ServerConfig(
        listen=("127.0.0.1", "::1"),
        ntp_port=11123,
        ke_port=14460,
        certificate=pki.cert_chain,
        key=pki.key,
        local_stratum=None,
        # Roughtime from the local clock with a wide radius: no upstream vouches for it.
        roughtime=True,
        roughtime_port=12002,
        roughtime_long_term_key=demo_long_term_key(directory),
        roughtime_local_clock_radius=DEMO_ROUGHTIME_RADIUS,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import base64
    import json
    import logging
    import tempfile
    from pathlib import Path

    from .config import load_config, override
    from .logs import configure_logging

    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    configure_logging(level, args.log_format)
    try:
        with tempfile.TemporaryDirectory(prefix="gnomon-demo-") as scratch:
            if args.demo:
                config = _demo_config(Path(scratch))
            elif args.config:
                config = load_config(args.config)
            else:
                raise ConfigError("give --config FILE, or --demo for a loopback demonstration")
            for flag, attribute in _OVERRIDES:
                value = getattr(args, attribute)
                if value is not None:  # checked as the setting it replaces
                    config = override(config, flag, **{attribute: value})

            def ready(info: dict[str, object]) -> None:
                if config.roughtime:
                    from .roughtime_role import check_roughtime_keys

                    public = base64.b64encode(check_roughtime_keys(config)).decode()
                    info["roughtime_public_key"] = public
                if args.demo:
                    ca = info["ca"] = str(Path(scratch) / "ca.pem")
                    print(
                        "gnomon demo server on 127.0.0.1 and ::1 "
                        f"(NTS-KE port {info['ke_port']}, NTP port {info['ntp_port']}, "
                        f"Roughtime port {info['roughtime_port']}).\n"
                        f"Query it:  gnomon query --ca {ca} localhost:{info['ke_port']}\n"
                        f"           gnomon roughtime 127.0.0.1:{info['roughtime_port']} "
                        f"--key {info['roughtime_public_key']}\n"
                        f"(Roughtime answers from this machine's clock with a radius of "
                        f"{DEMO_ROUGHTIME_RADIUS} s: a demo, no upstream vouches for it)",
                        flush=True,
                    )
                if args.ready_file:
                    Path(args.ready_file).write_text(json.dumps(info))

            run_server(config, ready, level, args.log_format)
    except (GnomonError, OSError, RuntimeError) as exc:
        print(f"gnomon: {exc}", file=sys.stderr)
        return 2
    return 0


def run_server(
    config: ServerConfig,
    ready: Callable[[dict[str, object]], None],
    level: int,
    log_format: str = "text",
) -> None:
    """One process for everything (workers = 0), else a supervisor and its workers."""
    from .config import check_files
    from .ports import check_ports
    from .proctitle import set_process_title

    check_files(config)
    check_ports(config)  # here, where one line can name the setting at fault
    if config.workers == 0:
        import asyncio

        from .app import Server

        def single(server: Server) -> None:
            info: dict[str, object] = {
                "ke_port": server.bound_ke_port,
                "ntp_port": server.bound_ntp_port,
                "roughtime_port": server.roughtime.bound_port if server.roughtime else None,
                "pids": {"all": os.getpid()},
            }
            ready(info)

        asyncio.run(Server(config, ready=single).run())
        return
    from .certificates import load_server_context
    from .keystores import check_key_store
    from .supervisor import Supervisor

    # Workers start in fresh processes: find bad files here, where one line can say so.
    if config.role in ("both", "ke"):
        assert config.certificate is not None and config.key is not None
        load_server_context(config.certificate, config.key)
    if config.user is not None and config.key_store == "file" and config.key_path is not None:
        import pwd

        folder = config.key_path.parent
        if folder.stat().st_uid != pwd.getpwnam(config.user).pw_uid:
            raise ConfigError(f"{folder} (keys.path) must belong to server.user {config.user!r}")
    if config.roughtime:
        from .roughtime_role import check_roughtime_keys

        check_roughtime_keys(config)
    check_key_store(config)

    set_process_title("gnomon: supervisor", "gnomon-super")
    Supervisor(
        config,
        ntp_workers=config.workers if config.role in ("both", "ntp") else 0,
        ke_workers=config.ke_workers if config.role in ("both", "ke") else 0,
        roughtime_workers=config.roughtime_workers if config.roughtime else 0,
        log_level=level,
        log_format=log_format,
        on_ready=ready,
    ).run()
