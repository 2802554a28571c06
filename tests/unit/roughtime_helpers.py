"""Shared pieces of the Roughtime unit tests: the copied vectors and a server in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.proto.roughtime import RoughtimeServer, delegate

DATA = Path(__file__).resolve().parent.parent / "data" / "roughtime"

# The public interop key pair of roughly's captures (IETF interop harness; tests only).
INTEROP_PUBLIC = "Ixu7gqjJ9TU6IxsO8wxZxAFT5te6FcZZQq5vXFl35JE="
INTEROP_SEED = "BuXi3Chpe7Nj3gCXavLUIoGbxngyrWVa3pYIHswbzbU="

MIDPOINT = 1_800_000_000


def vector(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def key_pair(seed: int) -> tuple[Ed25519PrivateKey, bytes]:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return private, private.public_key().public_bytes_raw()


def make_server(
    versions: tuple[int, ...] = (1, 0x8000000C), seed: int = 1
) -> tuple[RoughtimeServer, bytes]:
    long_term, long_term_public = key_pair(seed)
    online, online_public = key_pair(seed + 100)
    delegation = delegate(long_term, online_public, MIDPOINT - 86400, MIDPOINT + 86400, versions)
    return RoughtimeServer(long_term_public, online, delegation, versions), long_term_public
