"""Server addresses as people write them: one parser and one printer for every command.

``host``, ``host:port``, ``[v6]``, ``[v6]:port``, a bare IPv6 address (``::1``) or an
IPv4 address, with the protocol's default port when none is given.  The library
(:func:`gnomon.query`, :class:`gnomon.Session`), ``aquery_many`` and the CLI all go
through :func:`split_server`; addresses are printed back with :func:`join_host_port`
(``[::1]:4460``, never ``::1:4460``).  No I/O and no import beyond the standard library.
"""

from __future__ import annotations

NTS_KE_PORT = 4460
"""RFC 8915 section 4: the NTS-KE port."""


def split_host_port(spec: str, default_port: int | None) -> tuple[str, int | None]:
    """``(host, port)`` from a server form; port is `default_port` when none is written.

    Raises ValueError with a one-line reason for anything else (an empty host, a port
    that is not 1-65535 in plain digits, text after ``]``).
    """
    port = ""
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket:
            raise ValueError(f"{spec!r}: no closing ']'")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{spec!r}: unexpected text after ']'")
        if rest == ":":
            raise ValueError(f"{spec!r}: empty port")
        port = rest[1:]
        if ":" not in host:
            raise ValueError(f"{spec!r}: brackets are for IPv6 addresses")
    elif spec.count(":") == 1:
        host, port = spec.split(":")
        if not port:
            raise ValueError(f"{spec!r}: empty port")
    else:
        host = spec  # a name, an IPv4 address or a bare IPv6 address (two colons or more)
    if not host or host.strip() != host:
        raise ValueError(f"{spec!r}: no host" if not host else f"{spec!r}: spaces in the host")
    if not port:
        return host, default_port
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r}: port must be a number from 1 to 65535")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets: ``[::1]:4460``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def lookup_name(host: str) -> str | bytes:
    """`host` as given to ``getaddrinfo``: an ASCII name as bytes, which is what the
    IDNA codec would make of it (importing that codec costs a query ~2 ms); a
    malformed ASCII name then fails as unresolvable rather than as a UnicodeError."""
    return host.encode("ascii") if host.isascii() else host
