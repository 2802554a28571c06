"""Roughtime (RFC 10049) without I/O: the tag-value codec and framing, the rules of each
version, requests and every response check, Merkle trees, delegation certificates, the
batched server responder, chained queries with malfeasance reports, and server lists.

Nonces, times and randomness come in as arguments. See :mod:`.versions` for the
version-1 context spelling a gnomon server signs with, and why.
"""

from .client import ClientRequest, Reply, build_request, server_id, verify_response
from .delegation import Delegation, delegate
from .server import DropReason, Request, RoughtimeServer
from .versions import DRAFT_08, DRAFT_11, DRAFT_12, GOOGLE, VERSION_1

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
