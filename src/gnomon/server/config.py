"""The server's configuration: one TOML file, checked completely at start.

Every setting is one field of :class:`ServerConfig`, declared with :func:`setting`
(section, key, default, doc line, range): ``settings.py`` turns those rows into the
example configuration, the schema, the range checks and the command-line checks, and
says how to add a section. Every problem is reported as one line naming the key or
file at fault.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import stat
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, KeProtocolError
from ..proto.acl import Acl
from ..proto.nts.aead import ALGORITHMS
from ..proto.nts.ke import parse_server_name
from ..proto.roughtime.versions import DEFAULT_PORT
from .settings import SettingsTable, setting


def _ip_addresses(addresses: Sequence[str]) -> None:
    if not addresses:
        raise ValueError("the list is empty")
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address") from None


def _aeads(ids: Sequence[int]) -> None:
    if not ids or any(i not in ALGORITHMS for i in ids):
        raise ValueError(f"must list ids among {sorted(ALGORITHMS)}")


def _host_name(name: str) -> None:
    try:
        parse_server_name(name.encode("ascii"))
    except (UnicodeEncodeError, KeProtocolError):
        raise ValueError(f"{name!r} is not a host name or IP address") from None


def _user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no user {name!r}") from None


def _redis_url(url: str) -> None:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{url!r} is not a redis:// URL")


def _fleet(name: str) -> None:
    if not name or " " in name:
        raise ValueError("must be a name without spaces")


def _upstream(spec: str) -> None:
    split_host_port(spec, 123)


def _metrics_listen(spec: str) -> None:
    split_host_port(spec, 9123)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    # [server]
    role: str = setting(
        "server",
        "role",
        "both",
        '"both", "ke" (NTS-KE), "ntp" (NTP) or "roughtime" (only Roughtime)',
        choices=("both", "ke", "ntp", "roughtime"),
    )
    listen: tuple[str, ...] = setting(
        "server", "listen", ("0.0.0.0", "::"), "addresses for NTP and NTS-KE", check=_ip_addresses
    )
    ntp_port: int = setting(
        "server", "ntp_port", 123, "NTP over UDP; 0: any free port", minimum=0, maximum=65535
    )
    ke_port: int = setting("server", "ke_port", 4460, "NTS-KE over TCP", minimum=0, maximum=65535)
    require_nts: bool = setting(
        "server", "require_nts", False, "true: plain NTP requests are dropped"
    )
    workers: int = setting(
        "server",
        "workers",
        1,
        "NTP processes sharing the port (SO_REUSEPORT); 0: one process for all",
        minimum=0,
        maximum=256,
    )
    ke_workers: int = setting("server", "ke_workers", 1, "NTS-KE processes", minimum=1, maximum=256)
    user: str | None = setting(
        "server",
        "user",
        None,
        "workers drop root for this user once their ports are bound",
        example="gnomon",
        check=_user,
    )
    # [tls]
    certificate: Path | None = setting(
        "tls",
        "certificate",
        None,
        "reloaded when it changes",
        example="/etc/gnomon/fullchain.pem",
        shown=True,
    )
    key: Path | None = setting("tls", "key", None, example="/etc/gnomon/privkey.pem", shown=True)
    # [nts]
    aeads: tuple[int, ...] = setting(
        "nts", "aeads", (30, 15), "server preference, among what the client offers", check=_aeads
    )
    advertised_server: str | None = setting(
        "nts",
        "ntp_server",
        None,
        "Server Negotiation record",
        example="ntp1.example.net",
        check=_host_name,
    )
    advertised_port: int | None = setting(
        "nts", "ntp_port", None, "Port Negotiation record", example=123, minimum=1, maximum=65535
    )
    # [keys]
    key_store: str = setting(
        "keys",
        "store",
        "file",
        '"file" (one machine) or "redis" (a fleet)',
        choices=("file", "redis"),
    )
    key_path: Path | None = setting(
        "keys",
        "path",
        None,
        "file store: cookie master keys, mode 0600",
        example="/var/lib/gnomon/keys.json",
        shown=True,
    )
    rotation_period: int = setting(
        "keys", "rotation_period", 86_400, "seconds", minimum=10, unit="seconds"
    )
    keep_old: int = setting(
        "keys", "keep_old", 7, "old keys still accepted", minimum=0, maximum=1000
    )
    redis_url: str | None = setting(
        "keys",
        "redis_url",
        None,
        "redis store: shared seeds",
        example="redis://10.0.0.5:6379/0",
        check=_redis_url,
    )
    fleet: str = setting(
        "keys", "fleet", "default", "one key ring per fleet name", shown=False, check=_fleet
    )
    fleet_secret_file: Path | None = setting(
        "keys",
        "fleet_secret_file",
        None,
        ">= 32 random bytes, same on every server",
        example="/etc/gnomon/fleet.key",
    )
    # [time]
    upstream: str | None = setting(
        "time",
        "upstream",
        None,
        "where stratum and leap come from (e.g. local chronyd)",
        example="127.0.0.1:123",
        check=_upstream,
    )
    local_stratum: int | None = setting(
        "time",
        "local_stratum",
        None,
        "serve without an upstream: only if you mean it",
        example=10,
        minimum=1,
        maximum=15,
    )
    hold: float = setting(
        "time",
        "hold",
        300.0,
        "seconds without upstream before going unsynchronised",
        positive=True,
        unit="seconds",
    )
    # [ke]
    ke_timeout: float = setting(
        "ke",
        "timeout",
        5.0,
        "seconds for a connection's handshake and request",
        positive=True,
        unit="seconds",
    )
    ke_max_connections: int = setting(
        "ke", "max_connections", 256, "open NTS-KE connections per worker", minimum=1
    )
    # [roughtime]
    roughtime: bool = setting("roughtime", "enabled", False)
    roughtime_port: int = setting("roughtime", "port", DEFAULT_PORT, minimum=0, maximum=65535)
    roughtime_listen: tuple[str, ...] | None = setting(
        "roughtime",
        "listen",
        None,
        "default: server.listen",
        example=("0.0.0.0", "::"),
        check=_ip_addresses,
    )
    roughtime_long_term_key: Path | None = setting(
        "roughtime",
        "long_term_key",
        None,
        "gnomon roughtime keygen; mode 0600",
        example="/etc/gnomon/roughtime.key",
        shown=True,
    )
    roughtime_delegations: Path | None = setting(
        "roughtime",
        "delegations",
        None,
        "instead: long-term key kept offline",
        example="/etc/gnomon/roughtime-online.json",
    )
    roughtime_delegation_period: int = setting(
        "roughtime",
        "delegation_period",
        86_400,
        "long_term_key: each online key is delegated for this long (s)",
        minimum=600,
        maximum=366 * 86400,
        unit="seconds",
    )
    roughtime_min_radius: int = setting(
        "roughtime",
        "min_radius",
        1,
        "seconds; 3 at least when [time] has no upstream (no leap seconds)",
        minimum=1,
        maximum=86400,
    )
    roughtime_max_batch: int = setting(
        "roughtime",
        "max_batch",
        64,
        "requests answered with one signature at most",
        minimum=1,
        maximum=1024,
    )
    roughtime_max_wait: float = setting(
        "roughtime",
        "max_wait",
        0.001,
        "seconds a request may wait for others to share its signature",
        minimum=0,
        maximum=1,
        unit="second",
    )
    roughtime_workers: int = setting(
        "roughtime", "workers", 1, "Roughtime processes sharing the port", minimum=1, maximum=256
    )
    roughtime_rate_limit: bool = setting(
        "roughtime", "rate_limit", False, "per client address (/32, /64), as limits.ntp_rate_*"
    )
    roughtime_rate_interval: float = setting(
        "roughtime", "rate_interval", 1.0, positive=True, unit="seconds"
    )
    roughtime_rate_burst: int = setting("roughtime", "rate_burst", 16, minimum=1, maximum=1 << 20)
    roughtime_local_clock_radius: int | None = setting(
        "roughtime",
        "local_clock_radius",
        None,
        "demos and tests only: answer from the local clock unsynchronised",
        example=10,
        minimum=1,
        maximum=86400,
    )
    # [metrics]
    metrics_listen: str | None = setting(
        "metrics",
        "listen",
        None,
        "Prometheus /metrics (and `gnomon status`); off when unset",
        example="127.0.0.1:9123",
        check=_metrics_listen,
    )
    # [limits]
    allow: tuple[str, ...] = setting(
        "limits",
        "allow",
        (),
        "CIDR networks served (empty: everyone not denied)",
        check=lambda v: Acl(allow=v),
    )
    deny: tuple[str, ...] = setting(
        "limits",
        "deny",
        (),
        "CIDR networks never served, for NTP and NTS-KE",
        check=lambda v: Acl(deny=v),
    )
    ntp_rate_limit: bool = setting(
        "limits",
        "ntp_rate_limit",
        False,
        "per client address (/32, /64): RATE kisses past the limit",
    )
    ntp_rate_interval: float = setting(
        "limits",
        "ntp_rate_interval",
        2.0,
        "seconds per request once the burst is spent",
        positive=True,
        unit="seconds",
    )
    ntp_rate_burst: int = setting("limits", "ntp_rate_burst", 16, minimum=1)
    ntp_rate_max_clients: int = setting(
        "limits",
        "ntp_rate_max_clients",
        65_536,
        "address prefixes tracked per NTP worker (bounds memory)",
        minimum=2,
        maximum=1 << 24,
    )
    ke_rate_interval: float = setting(
        "limits",
        "ke_rate_interval",
        6.0,
        "NTS-KE connections: one per 6 s per address after a burst",
        positive=True,
        unit="seconds",
    )
    ke_rate_burst: int = setting("limits", "ke_rate_burst", 20, minimum=1)

    @property
    def roughtime_addresses(self) -> tuple[str, ...]:
        return self.roughtime_listen if self.roughtime_listen is not None else self.listen


SETTINGS = SettingsTable(
    ServerConfig, sections={"roughtime": "Roughtime (RFC 10049) over UDP, beside NTS"}
)
EXAMPLE = SETTINGS.example("gnomon server configuration")


def _check_together(config: ServerConfig, source: str) -> ServerConfig:
    """The rules that tie several settings together."""
    if config.role == "roughtime" and not config.roughtime:
        config = replace(config, roughtime=True)
    if config.roughtime and (config.roughtime_long_term_key is None) == (
        config.roughtime_delegations is None
    ):
        raise ConfigError(f"{source}: [roughtime] needs long_term_key or delegations (one of them)")
    if config.role in ("both", "ke") and (config.certificate is None or config.key is None):
        raise ConfigError(f"{source}: tls.certificate and tls.key are required for NTS-KE")
    if config.role == "ke" and config.advertised_server is None:
        raise ConfigError(
            f'{source}: nts.ntp_server is required with server.role = "ke" '
            "(clients must learn where NTP is served)"
        )
    if config.key_store == "redis" and (
        config.redis_url is None or config.fleet_secret_file is None
    ):
        raise ConfigError(
            f'{source}: keys.store = "redis" needs keys.redis_url and keys.fleet_secret_file'
        )
    return config


def parse_config(text: str, source: str = "config") -> ServerConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return _check_together(ServerConfig(**SETTINGS.parse(document, source)), source)


def override(config: ServerConfig, source: str, **changes: Any) -> ServerConfig:
    """``config`` with ``changes`` (attribute names), checked like the file's values;
    ``source`` names where they came from (``--workers``)."""
    checked = SETTINGS.check_attributes(changes, source)
    return _check_together(replace(config, **checked), source)


def split_host_port(spec: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address; ValueError if bad."""
    host, port = spec, ""
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{spec!r} is not host:port")
        port = rest[1:]
    elif spec.count(":") == 1:
        host, port = spec.split(":")
    if not host or (port and not (port.isascii() and port.isdigit())):
        raise ValueError(f"{spec!r} is not host:port")
    number = int(port) if port else default_port
    if not 0 < number < 65536:
        raise ValueError(f"{spec!r} has no valid port")
    return host, number


def load_config(path: str | Path) -> ServerConfig:
    path = Path(path)
    _check_regular(path, "config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start} is not valid)"
        ) from None
    return parse_config(text, str(path))


def _check_regular(path: Path, what: str) -> None:
    """A path that exists must be a regular file: reading a FIFO would hang."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the reader says so in its own words
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} {path} is not a regular file")


def check_files(config: ServerConfig) -> None:
    """Every configured file that exists is a regular file (a FIFO would hang the server)."""
    for what, path in (
        ("tls.certificate", config.certificate),
        ("tls.key", config.key),
        ("keys.path", config.key_path),
        ("keys.fleet_secret_file", config.fleet_secret_file),
        ("roughtime.long_term_key", config.roughtime_long_term_key),
        ("roughtime.delegations", config.roughtime_delegations),
    ):
        if path is not None:
            _check_regular(path, what)
