"""Roughtime (RFC 10049) without I/O: the tag-value codec and framing, the rules of each
version, requests and every response check, Merkle trees, delegation certificates, the
batched server responder, chained queries with malfeasance reports, and server lists.

Nonces, times and randomness come in as arguments. See :mod:`.versions` for the
version-1 context spelling a gnomon server signs with, and why.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ClientRequest, Reply, build_request, server_id, verify_response
    from .delegation import Delegation, delegate
    from .server import DropReason, Request, RoughtimeServer
    from .versions import DRAFT_08, DRAFT_11, DRAFT_12, GOOGLE, VERSION_1

# Imported on first use: a process that needs only a constant (the server's configuration
# reads DEFAULT_PORT from .versions) loads no hashing or signing code.
_FROM = {
    **dict.fromkeys(
        ("ClientRequest", "Reply", "build_request", "server_id", "verify_response"), "client"
    ),
    **dict.fromkeys(("Delegation", "delegate"), "delegation"),
    **dict.fromkeys(("DropReason", "Request", "RoughtimeServer"), "server"),
    **dict.fromkeys(("DRAFT_08", "DRAFT_11", "DRAFT_12", "GOOGLE", "VERSION_1"), "versions"),
}


def __getattr__(name: str) -> Any:
    module = _FROM.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DRAFT_08",
    "DRAFT_11",
    "DRAFT_12",
    "GOOGLE",
    "VERSION_1",
    "ClientRequest",
    "Delegation",
    "DropReason",
    "Reply",
    "Request",
    "RoughtimeServer",
    "build_request",
    "delegate",
    "server_id",
    "verify_response",
]
