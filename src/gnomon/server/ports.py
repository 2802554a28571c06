"""The configured addresses and ports, bound once before any worker starts.

A port in use, an address that is not on this host or a port below 1024
without the right to bind it is found here, in the process that reads the
configuration, and reported in one line naming the setting; workers then
bind the same addresses themselves (``SO_REUSEPORT``).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from dataclasses import replace

from ..errors import ConfigError
from .config import ServerConfig

_SERVICES = (
    # (port attribute, setting, socket type, what, role)
    ("ntp_port", "server.ntp_port", socket.SOCK_DGRAM, "NTP (UDP)", "ntp"),
    ("ke_port", "server.ke_port", socket.SOCK_STREAM, "NTS-KE (TCP)", "ke"),
    ("roughtime_port", "roughtime.port", socket.SOCK_DGRAM, "Roughtime (UDP)", "roughtime"),
)


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this host's"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if exc.errno == errno.EAFNOSUPPORT:
        return "this host does not support that address family"
    return exc.strerror or str(exc)


def bind(host: str, port: int, kind: int, *, reuse_port: bool) -> socket.socket:
    """A socket bound as the workers bind theirs; OSError if the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _services(config: ServerConfig) -> list[tuple[str, str, int, str, tuple[str, ...]]]:
    """(port attribute, settings to name, socket type, what, addresses) of each service."""
    services: list[tuple[str, str, int, str, tuple[str, ...]]] = []
    for attribute, setting, kind, what, role in _SERVICES:
        if role == "roughtime":
            if config.roughtime:
                listen = "roughtime.listen" if config.roughtime_listen else "server.listen"
                services.append(
                    (attribute, f"{listen}, {setting}", kind, what, config.roughtime_addresses)
                )
        elif config.role in ("both", role):
            services.append((attribute, f"server.listen, {setting}", kind, what, config.listen))
    return services


def _bind_or_explain(
    host: str, port: int, kind: int, settings: str, what: str, *, reuse_port: bool
) -> socket.socket:
    try:
        return bind(host, port, kind, reuse_port=reuse_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve {what} on {host} port {port} ({settings}): {_why(exc)}"
        ) from None


def check_ports(config: ServerConfig) -> None:
    """Bind and release every configured address and port (port 0: any port, which
    still shows whether the address is this host's); ConfigError naming the setting
    when one cannot be had. Without ``SO_REUSEPORT``, so that another server already
    on the port (even another gnomon) is found too."""
    for attribute, settings, kind, what, addresses in _services(config):
        port = getattr(config, attribute)
        for host in addresses:
            _bind_or_explain(host, port, kind, settings, what, reuse_port=False).close()


def check_addresses(config: ServerConfig) -> None:
    """Every listen address is one of this host's (what check-config can know while
    another server may hold the ports): binds port 0 of each, ConfigError if not."""
    checked = set()
    for _, settings, kind, what, addresses in _services(config):
        for host in addresses:
            if host not in checked:  # one family check per address
                checked.add(host)
                listen = settings.split(",")[0]
                _bind_or_explain(host, 0, kind, listen, what, reuse_port=False).close()


def reserve_ports(config: ServerConfig) -> tuple[ServerConfig, list[socket.socket]]:
    """Resolve port 0 to real ports every worker can share (``SO_REUSEPORT``): the
    configuration with those ports, and the sockets holding them until the workers
    have bound theirs."""
    held: list[socket.socket] = []
    ports = {a: getattr(config, a) for a in ("ntp_port", "ke_port", "roughtime_port")}
    try:
        for attribute, settings, kind, what, addresses in _services(config):
            if ports[attribute] != 0:
                continue
            for host in addresses:
                port = ports[attribute]
                sock = _bind_or_explain(host, port, kind, settings, what, reuse_port=True)
                held.append(sock)
                ports[attribute] = sock.getsockname()[1]
    except BaseException:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return replace(config, **ports), held
