"""Roughtime server lists (``application/roughtime-server+json``).

``{"servers": [{"name", "version", "publicKeyType": "ed25519", "publicKey":
base64, "addresses": [{"protocol": "udp"|"tcp", "address": "host:port"}]}],
"sources": [...], "reports": url}``. Parsing is lenient where published lists
differ: ``"version"`` may be a number or a string (``"1"``, ``"0x8000000c"``),
may be missing, and entries with another key type are skipped.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ...errors import RoughtimeServerListError

MEDIA_TYPE = "application/roughtime-server+json"
MAX_SERVERS = 256
MAX_ADDRESSES = 16


@dataclass(frozen=True, slots=True)
class ServerAddress:
    protocol: str  # "udp" or "tcp"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerEntry:
    name: str
    public_key: bytes
    addresses: tuple[ServerAddress, ...]
    version: int | None = None  # the version the list names, if any

    def udp(self) -> tuple[ServerAddress, ...]:
        return tuple(a for a in self.addresses if a.protocol == "udp")

    def tcp(self) -> tuple[ServerAddress, ...]:
        return tuple(a for a in self.addresses if a.protocol == "tcp")


@dataclass(frozen=True, slots=True)
class ServerList:
    servers: tuple[ServerEntry, ...]
    sources: tuple[str, ...] = ()
    reports: str | None = None


def split_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` (and ``host`` alone when ``default_port`` is given)."""
    host, port = text, ""
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise RoughtimeServerListError(f"bad address {text!r}")
        host, port = inner, rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise RoughtimeServerListError(f"no host in {text!r}")
    if not port:
        if default_port is None:
            raise RoughtimeServerListError(f"no port in {text!r}")
        return host, default_port
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise RoughtimeServerListError(f"bad port in {text!r}")
    return host, int(port)


def parse_version(value: Any) -> int | None:
    """A list's ``"version"``: an int, a decimal or 0x-hex string, or absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RoughtimeServerListError(f"bad version {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip(), 0)
        except ValueError:
            raise RoughtimeServerListError(f"bad version {value!r}") from None
    else:
        raise RoughtimeServerListError(f"bad version {value!r}")
    if not 0 <= number < 1 << 32:
        raise RoughtimeServerListError(f"bad version {value!r}")
    return number


def _entry(raw: Any, position: int) -> ServerEntry | None:
    if not isinstance(raw, dict):
        raise RoughtimeServerListError(f"server {position} is not an object")
    name = raw.get("name", f"server {position}")
    if not isinstance(name, str):
        raise RoughtimeServerListError(f"server {position}: name is not a string")
    key_type = raw.get("publicKeyType", "ed25519")
    if not isinstance(key_type, str) or key_type.lower() != "ed25519":
        return None  # a key type gnomon cannot verify: skip the server, keep the list
    key_text = raw.get("publicKey")
    if not isinstance(key_text, str):
        raise RoughtimeServerListError(f"{name}: no publicKey")
    public_key = decode_public_key(key_text, name)
    addresses_raw = raw.get("addresses")
    if not isinstance(addresses_raw, list) or not addresses_raw:
        raise RoughtimeServerListError(f"{name}: no addresses")
    if len(addresses_raw) > MAX_ADDRESSES:
        raise RoughtimeServerListError(f"{name}: {len(addresses_raw)} addresses")
    addresses = []
    for address in addresses_raw:
        if not isinstance(address, dict) or not isinstance(address.get("address"), str):
            raise RoughtimeServerListError(f"{name}: bad address entry {address!r}")
        protocol = str(address.get("protocol", "udp")).lower()
        if protocol not in ("udp", "tcp"):
            continue
        host, port = split_address(address["address"])
        addresses.append(ServerAddress(protocol, host, port))
    if not addresses:
        raise RoughtimeServerListError(f"{name}: no UDP or TCP address")
    return ServerEntry(name, public_key, tuple(addresses), parse_version(raw.get("version")))


def decode_public_key(text: str, name: str = "server") -> bytes:
    """A 32-byte Ed25519 key written in base64 (or, as some lists do, hex)."""
    stripped = text.strip()
    try:
        if len(stripped) == 64 and all(c in "0123456789abcdefABCDEF" for c in stripped):
            key = bytes.fromhex(stripped)
        else:
            key = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise RoughtimeServerListError(f"{name}: publicKey is not base64") from None
    if len(key) != 32:
        raise RoughtimeServerListError(f"{name}: publicKey is {len(key)} bytes, not 32")
    return key


def parse_server_list(text: str | bytes) -> ServerList:
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RoughtimeServerListError(f"server list is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("servers"), list):
        raise RoughtimeServerListError('server list has no "servers" array')
    raw_servers = document["servers"]
    if len(raw_servers) > MAX_SERVERS:
        raise RoughtimeServerListError(f"server list of {len(raw_servers)} servers")
    servers = tuple(
        entry for i, raw in enumerate(raw_servers) if (entry := _entry(raw, i)) is not None
    )
    if not servers:
        raise RoughtimeServerListError("server list names no usable server")
    sources = document.get("sources", [])
    reports = document.get("reports")
    return ServerList(
        servers,
        tuple(str(s) for s in sources) if isinstance(sources, list) else (),
        reports if isinstance(reports, str) else None,
    )


def server_list_entry(
    name: str, public_key: bytes, address: str, version: int = 1, protocol: str = "udp"
) -> dict[str, Any]:
    """One ``servers[]`` entry, as ``gnomon roughtime keygen`` prints it."""
    return {
        "name": name,
        "version": version,
        "publicKeyType": "ed25519",
        "publicKey": base64.b64encode(public_key).decode("ascii"),
        "addresses": [{"protocol": protocol, "address": address}],
    }
