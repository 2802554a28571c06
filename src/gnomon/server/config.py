"""The server's configuration: one TOML file, checked completely at start.

Every problem is reported as one line naming the key or file at fault.
"""

from __future__ import annotations

import ipaddress
import math
import os
import pwd
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, KeProtocolError
from ..proto.acl import Acl
from ..proto.nts.aead import ALGORITHMS
from ..proto.nts.ke import parse_server_name

EXAMPLE = """\
# gnomon server configuration
[server]
role = "both"                # "both", "ke" (NTS-KE), "ntp" (NTP) or "roughtime" (only Roughtime)
listen = ["0.0.0.0", "::"]   # addresses for NTP and NTS-KE
ntp_port = 123
ke_port = 4460
require_nts = false          # true: plain NTP requests are dropped
workers = 1                  # NTP processes sharing the port (SO_REUSEPORT); 0: one process for all
ke_workers = 1               # NTS-KE processes
# user = "gnomon"            # workers drop root for this user once their ports are bound

[tls]
certificate = "/etc/gnomon/fullchain.pem"   # reloaded when it changes
key = "/etc/gnomon/privkey.pem"

[nts]
aeads = [30, 15]             # server preference, among what the client offers
# ntp_server = "ntp1.example.net"   # Server Negotiation record
# ntp_port = 123                    # Port Negotiation record

[keys]
store = "file"                       # "file" (one machine) or "redis" (a fleet)
path = "/var/lib/gnomon/keys.json"   # file store: cookie master keys, mode 0600
rotation_period = 86400              # seconds
keep_old = 7
# redis_url = "redis://10.0.0.5:6379/0"        # redis store: shared seeds
# fleet = "default"                            # one key ring per fleet name
# fleet_secret_file = "/etc/gnomon/fleet.key"  # >= 32 random bytes, same on every server

[time]
# upstream = "127.0.0.1:123"   # where stratum and leap come from (e.g. local chronyd)
# local_stratum = 10           # serve without an upstream: only if you mean it
hold = 300                     # seconds without upstream before going unsynchronised

[ke]
timeout = 5.0
max_connections = 256

[roughtime]                  # Roughtime (RFC 10049) over UDP, beside NTS
enabled = false
port = 2002
# listen = ["0.0.0.0", "::"]                      # default: server.listen
long_term_key = "/etc/gnomon/roughtime.key"       # gnomon roughtime keygen; mode 0600
# delegations = "/etc/gnomon/roughtime-online.json"  # instead: long-term key kept offline
delegation_period = 86400    # long_term_key: each online key is delegated for this long (s)
min_radius = 1               # seconds; 3 at least when [time] has no upstream (no leap seconds)
max_batch = 64               # requests answered with one signature at most
max_wait = 0.001             # seconds a request may wait for others to share its signature
workers = 1                  # Roughtime processes sharing the port
rate_limit = false           # per client address (/32, /64), as limits.ntp_rate_*
rate_interval = 1.0
rate_burst = 16
# local_clock_radius = 10    # demos and tests only: answer from the local clock unsynchronised

[metrics]
# listen = "127.0.0.1:9123"  # Prometheus /metrics (and `gnomon status`); off when unset

[limits]
allow = []                   # CIDR networks served (empty: everyone not denied)
deny = []                    # CIDR networks never served, for NTP and NTS-KE
ntp_rate_limit = false       # per client address (/32, /64): RATE kisses past the limit
ntp_rate_interval = 2.0      # seconds per request once the burst is spent
ntp_rate_burst = 16
ntp_rate_max_clients = 65536 # address prefixes tracked per NTP worker (bounds memory)
ke_rate_interval = 6.0       # NTS-KE connections: one per 6 s per address after a burst
ke_rate_burst = 20
"""


@dataclass(frozen=True)
class ServerConfig:
    role: str = "both"
    listen: tuple[str, ...] = ("0.0.0.0", "::")  # as EXAMPLE shows: every address
    ntp_port: int = 123
    ke_port: int = 4460
    require_nts: bool = False
    workers: int = 1
    ke_workers: int = 1
    user: str | None = None
    certificate: Path | None = None
    key: Path | None = None
    aeads: tuple[int, ...] = (30, 15)
    advertised_server: str | None = None
    advertised_port: int | None = None
    key_path: Path | None = None
    rotation_period: int = 86_400
    keep_old: int = 7
    key_store: str = "file"
    redis_url: str | None = None
    fleet: str = "default"
    fleet_secret_file: Path | None = None
    upstream: str | None = None
    local_stratum: int | None = None
    hold: float = 300.0
    ke_timeout: float = 5.0
    ke_max_connections: int = 256
    metrics_listen: str | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    ntp_rate_limit: bool = False
    ntp_rate_interval: float = 2.0
    ntp_rate_burst: int = 16
    ntp_rate_max_clients: int = 65_536
    ke_rate_interval: float = 6.0
    ke_rate_burst: int = 20
    roughtime: bool = False
    roughtime_port: int = 2002
    roughtime_listen: tuple[str, ...] | None = None  # None: listen
    roughtime_long_term_key: Path | None = None
    roughtime_delegations: Path | None = None
    roughtime_delegation_period: int = 86_400
    roughtime_min_radius: int = 1
    roughtime_max_batch: int = 64
    roughtime_max_wait: float = 0.001
    roughtime_workers: int = 1
    roughtime_rate_limit: bool = False
    roughtime_rate_interval: float = 1.0
    roughtime_rate_burst: int = 16
    roughtime_local_clock_radius: int | None = None

    @property
    def roughtime_addresses(self) -> tuple[str, ...]:
        return self.roughtime_listen if self.roughtime_listen is not None else self.listen


_SCHEMA: dict[str, dict[str, tuple[str, type | tuple[type, ...]]]] = {
    "server": {
        "role": ("role", str),
        "listen": ("listen", list),
        "ntp_port": ("ntp_port", int),
        "ke_port": ("ke_port", int),
        "require_nts": ("require_nts", bool),
        "workers": ("workers", int),
        "ke_workers": ("ke_workers", int),
        "user": ("user", str),
    },
    "tls": {"certificate": ("certificate", str), "key": ("key", str)},
    "nts": {
        "aeads": ("aeads", list),
        "ntp_server": ("advertised_server", str),
        "ntp_port": ("advertised_port", int),
    },
    "keys": {
        "path": ("key_path", str),
        "rotation_period": ("rotation_period", int),
        "keep_old": ("keep_old", int),
        "store": ("key_store", str),
        "redis_url": ("redis_url", str),
        "fleet": ("fleet", str),
        "fleet_secret_file": ("fleet_secret_file", str),
    },
    "time": {
        "upstream": ("upstream", str),
        "local_stratum": ("local_stratum", int),
        "hold": ("hold", (int, float)),
    },
    "ke": {"timeout": ("ke_timeout", (int, float)), "max_connections": ("ke_max_connections", int)},
    "roughtime": {
        "enabled": ("roughtime", bool),
        "port": ("roughtime_port", int),
        "listen": ("roughtime_listen", list),
        "long_term_key": ("roughtime_long_term_key", str),
        "delegations": ("roughtime_delegations", str),
        "delegation_period": ("roughtime_delegation_period", int),
        "min_radius": ("roughtime_min_radius", int),
        "max_batch": ("roughtime_max_batch", int),
        "max_wait": ("roughtime_max_wait", (int, float)),
        "workers": ("roughtime_workers", int),
        "rate_limit": ("roughtime_rate_limit", bool),
        "rate_interval": ("roughtime_rate_interval", (int, float)),
        "rate_burst": ("roughtime_rate_burst", int),
        "local_clock_radius": ("roughtime_local_clock_radius", int),
    },
    "metrics": {"listen": ("metrics_listen", str)},
    "limits": {
        "allow": ("allow", list),
        "deny": ("deny", list),
        "ntp_rate_limit": ("ntp_rate_limit", bool),
        "ntp_rate_interval": ("ntp_rate_interval", (int, float)),
        "ntp_rate_burst": ("ntp_rate_burst", int),
        "ntp_rate_max_clients": ("ntp_rate_max_clients", int),
        "ke_rate_interval": ("ke_rate_interval", (int, float)),
        "ke_rate_burst": ("ke_rate_burst", int),
    },
}


def _check_port(name: str, value: int, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError(f"{name}: {value} is not a port number")


def parse_config(text: str, source: str = "config") -> ServerConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, body in document.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {section} must be a table")
        for key, value in body.items():
            spec = _SCHEMA[section].get(key)
            if spec is None:
                raise ConfigError(f"{source}: unknown key {section}.{key}")
            attribute, kind = spec
            if isinstance(value, bool) and kind is not bool:
                raise ConfigError(f"{source}: {section}.{key} has the wrong type")
            if not isinstance(value, kind):
                raise ConfigError(f"{source}: {section}.{key} has the wrong type")
            values[attribute] = value
    return validate(values, source)


def validate(values: dict[str, Any], source: str = "config") -> ServerConfig:
    for section, keys in _SCHEMA.items():
        for key, (attribute, kind) in keys.items():
            value = values.get(attribute)
            if kind == (int, float) and isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{source}: {section}.{key} must be a finite number")
    for name, attribute in (("server.listen", "listen"), ("roughtime.listen", "roughtime_listen")):
        if attribute in values:
            listen = values[attribute]
            if not listen:
                raise ConfigError(f"{source}: {name} is empty")
            for address in listen:
                if not isinstance(address, str):
                    raise ConfigError(f"{source}: {name}: {address!r} is not an IP address")
                try:
                    ipaddress.ip_address(address)
                except (ValueError, TypeError):
                    raise ConfigError(
                        f"{source}: {name}: {address!r} is not an IP address"
                    ) from None
            values[attribute] = tuple(listen)
    for name, attribute in (("server.ntp_port", "ntp_port"), ("server.ke_port", "ke_port")):
        if attribute in values:
            _check_port(f"{source}: {name}", values[attribute], allow_zero=True)
    if "advertised_port" in values:
        _check_port(f"{source}: nts.ntp_port", values["advertised_port"])
    if "aeads" in values:
        aeads = values["aeads"]
        bad = [a for a in aeads if not isinstance(a, int) or a not in ALGORITHMS]
        if not aeads or bad:
            raise ConfigError(f"{source}: nts.aeads must list ids among {sorted(ALGORITHMS)}")
        values["aeads"] = tuple(aeads)
    _validate_roughtime(values, source)
    for attribute in (
        "certificate",
        "key",
        "key_path",
        "fleet_secret_file",
        "roughtime_long_term_key",
        "roughtime_delegations",
    ):
        if attribute in values:
            values[attribute] = Path(values[attribute])
    if values.get("rotation_period", 86_400) < 10:
        raise ConfigError(f"{source}: keys.rotation_period must be at least 10 seconds")
    if not 0 <= values.get("keep_old", 7) <= 1000:
        raise ConfigError(f"{source}: keys.keep_old must be between 0 and 1000")
    stratum = values.get("local_stratum")
    if stratum is not None and not 1 <= stratum <= 15:
        raise ConfigError(f"{source}: time.local_stratum must be between 1 and 15")
    if values.get("metrics_listen") is not None:
        try:
            split_host_port(values["metrics_listen"], 9123)
        except ValueError as exc:
            raise ConfigError(f"{source}: metrics.listen: {exc}") from None
    advertised = values.get("advertised_server")
    if advertised is not None:
        try:
            parse_server_name(advertised.encode("ascii"))
        except (UnicodeEncodeError, KeProtocolError):
            raise ConfigError(
                f"{source}: nts.ntp_server: {advertised!r} is not a host name or IP address"
            ) from None
    upstream = values.get("upstream")
    if upstream is not None:
        try:
            split_host_port(upstream, 123)
        except ValueError as exc:
            raise ConfigError(f"{source}: time.upstream: {exc}") from None
    if values.get("hold", 1) <= 0:
        raise ConfigError(f"{source}: time.hold must be positive")
    if not 0 <= values.get("workers", 1) <= 256:
        raise ConfigError(f"{source}: server.workers must be between 0 and 256")
    if not 1 <= values.get("ke_workers", 1) <= 256:
        raise ConfigError(f"{source}: server.ke_workers must be between 1 and 256")
    if values.get("ke_timeout", 1) <= 0:
        raise ConfigError(f"{source}: ke.timeout must be positive")
    if values.get("ke_max_connections", 1) < 1:
        raise ConfigError(f"{source}: ke.max_connections must be at least 1")
    for name in ("allow", "deny"):
        if name in values:
            try:
                Acl(**{name: values[name]})
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{source}: limits.{name}: {exc}") from None
            values[name] = tuple(values[name])
    for name in ("ntp_rate_interval", "ke_rate_interval"):
        if values.get(name, 1) <= 0:
            raise ConfigError(f"{source}: limits.{name} must be positive")
    for name in ("ntp_rate_burst", "ke_rate_burst"):
        if values.get(name, 1) < 1:
            raise ConfigError(f"{source}: limits.{name} must be at least 1")
    if not 2 <= values.get("ntp_rate_max_clients", 2) <= 1 << 24:
        raise ConfigError(f"{source}: limits.ntp_rate_max_clients must be between 2 and 16777216")
    if values.get("user") is not None:
        try:
            pwd.getpwnam(values["user"])
        except KeyError:
            raise ConfigError(f"{source}: server.user: no user {values['user']!r}") from None
    if values.get("role", "both") not in ("both", "ke", "ntp", "roughtime"):
        raise ConfigError(f'{source}: server.role must be "both", "ke", "ntp" or "roughtime"')
    if values.get("role") == "roughtime":
        values["roughtime"] = True
    if values.get("key_store", "file") not in ("file", "redis"):
        raise ConfigError(f'{source}: keys.store must be "file" or "redis"')
    config = ServerConfig(**values)
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
    if config.key_store == "redis":
        if config.redis_url is None or config.fleet_secret_file is None:
            raise ConfigError(
                f'{source}: keys.store = "redis" needs keys.redis_url and keys.fleet_secret_file'
            )
        if not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"{source}: keys.redis_url: {config.redis_url!r} is not a redis:// URL"
            )
        if not config.fleet or " " in config.fleet:
            raise ConfigError(f"{source}: keys.fleet must be a name without spaces")
    return config


def _validate_roughtime(values: dict[str, Any], source: str) -> None:
    """The [roughtime] values that have a range."""
    if "roughtime_port" in values:
        _check_port(f"{source}: roughtime.port", values["roughtime_port"], allow_zero=True)
    bounds = {
        "roughtime_delegation_period": ("delegation_period", 600, 366 * 86400),
        "roughtime_min_radius": ("min_radius", 1, 86400),
        "roughtime_max_batch": ("max_batch", 1, 1024),
        "roughtime_workers": ("workers", 1, 256),
        "roughtime_rate_burst": ("rate_burst", 1, 1 << 20),
        "roughtime_local_clock_radius": ("local_clock_radius", 1, 86400),
    }
    for attribute, (name, low, high) in bounds.items():
        if attribute in values and not low <= values[attribute] <= high:
            raise ConfigError(f"{source}: roughtime.{name} must be between {low} and {high}")
    if not 0 <= values.get("roughtime_max_wait", 0) <= 1:
        raise ConfigError(f"{source}: roughtime.max_wait must be between 0 and 1 second")
    if values.get("roughtime_rate_interval", 1) <= 0:
        raise ConfigError(f"{source}: roughtime.rate_interval must be positive")


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
