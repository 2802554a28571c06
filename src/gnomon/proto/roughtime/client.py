"""The client side without I/O: build a request, check a response, every rule in one place.

The nonce comes in as an argument (random, or chained from the previous
server's response, see :mod:`.chain`). :func:`verify_response` returns a
:class:`Reply` only when every check passes:

frame and message format; TYPE = 1 when present (required for version 1);
the nonce echoed; the version named by the response offered by the request
(and listed in VERS); the delegation signed by the long-term key; MINT <=
MIDP <= MAXT; the Merkle path from the request's leaf to ROOT with no INDX
bits left over; SREP signed by the delegated key; RADI not 0; and the
response no larger than the request (a server never amplifies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...errors import RoughtimeFormatError, RoughtimeVerificationError, RoughtimeVersionError
from . import message as m
from .delegation import parse_certificate, parse_dele, verify_delegation, verify_signature
from .merkle import digest, leaf_hash, root_from_path
from .versions import CLIENT_VERSIONS, GOOGLE, RULES, Rules, version_name

REQUEST_SIZE = 1024  # datagram bytes; a server drops less (the padding trap: datagram, not message)
MAX_VERSIONS = 32  # entries in VER or VERS
MAX_RESPONSE = 4096  # bytes; nothing legitimate is near this (and never above the request)


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A request as sent, with what checking its response needs."""

    packet: bytes
    nonce: bytes
    versions: tuple[int, ...]
    server_key: bytes | None = None  # the long-term key named by SRV, if any


@dataclass(frozen=True, slots=True)
class Reply:
    """A verified response: the server's time interval and everything a report needs."""

    version: int
    midpoint: int  # Unix seconds
    radius: int  # seconds (never 0)
    mint: int  # the delegation's window, Unix seconds
    maxt: int
    online_public: bytes
    request: bytes = field(repr=False)  # the request packet as sent
    response: bytes = field(repr=False)  # the response packet as received
    midpoint_us: int = field(repr=False)  # the same in µs (Google-Roughtime has µs precision)
    radius_us: int = field(repr=False)

    @property
    def earliest(self) -> int:
        return self.midpoint - self.radius

    @property
    def latest(self) -> int:
        return self.midpoint + self.radius

    @property
    def version_name(self) -> str:
        return version_name(self.version)


def server_id(public_key: bytes) -> bytes:
    """The SRV value naming a server by its long-term key: H(0xff || key)."""
    return digest(b"\xff" + public_key)


def build_request(
    nonce: bytes,
    versions: Sequence[int] = CLIENT_VERSIONS,
    server_key: bytes | None = None,
    size: int = REQUEST_SIZE,
) -> ClientRequest:
    """A request padded with ZZZZ to at least ``size`` bytes of datagram.

    ``versions=(GOOGLE,)`` builds a Google-Roughtime request (64-byte nonce,
    ``PAD\\xff``, no framing); Google cannot be offered with other versions.
    """
    offered = tuple(sorted(set(versions)))
    if not offered or len(offered) > MAX_VERSIONS:
        raise ValueError(f"offer 1 to {MAX_VERSIONS} versions")
    if GOOGLE in offered:
        if offered != (GOOGLE,):
            raise ValueError("Google-Roughtime cannot be offered with other versions")
        if len(nonce) != 64:
            raise ValueError("a Google-Roughtime nonce is 64 bytes")
        body = {m.NONC: nonce}
        pad = max(0, size - len(m.encode({**body, m.PAD_GOOGLE: b""})))
        packet = m.encode({**body, m.PAD_GOOGLE: bytes(pad & ~3)})
        return ClientRequest(packet, nonce, offered, server_key)
    if len(nonce) != 32:
        raise ValueError("a Roughtime nonce is 32 bytes")
    values = {
        m.VER: b"".join(m.u32(v) for v in offered),
        m.NONC: nonce,
        m.TYPE: m.u32(0),
    }
    if server_key is not None:
        values[m.SRV] = server_id(server_key)
    bare = m.FRAME_HEADER + len(m.encode({**values, m.ZZZZ: b""}))
    values[m.ZZZZ] = bytes(max(0, (size - bare + 3) & ~3))
    return ClientRequest(m.frame(m.encode(values)), nonce, offered, server_key)


def response_version(request: ClientRequest, response: m.Message, srep: m.Message) -> Rules:
    """The rules of the version the response names, which the request must have offered."""
    if request.versions == (GOOGLE,):
        return RULES[GOOGLE]
    named = {response.u32(m.VER)} if m.VER in response else set()
    if m.VER in srep:
        named.add(srep.u32(m.VER))
    if len(named) != 1:
        raise RoughtimeFormatError(
            "response names no version" if not named else "response names two versions"
        )
    version = named.pop()
    rules = RULES.get(version)
    if version not in request.versions:
        raise RoughtimeVersionError(f"response uses version {version_name(version)}, not offered")
    if rules is None or rules.version == GOOGLE:
        raise RoughtimeVersionError(f"response uses version {version_name(version)}, unsupported")
    if rules.version_in_srep:
        if m.VER not in srep:
            raise RoughtimeFormatError("VER is not inside SREP")
        listed = srep.u32_list(m.VERS, MAX_VERSIONS)
        if version not in listed:
            raise RoughtimeVerificationError("the chosen version is not in the server's VERS")
    return rules


def verify_response(request: ClientRequest, packet: bytes, public_key: bytes) -> Reply:
    """Check ``packet`` against ``request`` and the server's long-term ``public_key``.

    Raises :class:`RoughtimeFormatError` (malformed), :class:`RoughtimeVersionError`
    or :class:`RoughtimeVerificationError` (a check failed); nothing else.
    """
    if len(packet) > len(request.packet) or len(packet) > MAX_RESPONSE:
        raise RoughtimeFormatError(
            f"response of {len(packet)} bytes is larger than the {len(request.packet)}-byte request"
        )
    google = request.versions == (GOOGLE,)
    response = m.decode(packet) if google else m.decode_packet(packet)
    srep_raw = response.require(m.SREP)
    srep = m.decode(srep_raw)
    rules = response_version(request, response, srep)

    if m.TYPE in response:
        if response.u32(m.TYPE) != 1:
            raise RoughtimeFormatError("TYPE is not 1 (response)")
    elif rules.version_in_srep and rules.version == 1:
        raise RoughtimeFormatError("version 1 response without TYPE")
    if response.require(m.NONC, rules.nonce_size) != request.nonce:
        raise RoughtimeVerificationError("response nonce does not match the request")

    signature, dele_raw, dele = parse_certificate(response.require(m.CERT))
    online_public, mint, maxt = parse_dele(dele)
    root = srep.require(m.ROOT, rules.hash_size)
    midpoint = srep.u64(m.MIDP)
    radius = srep.u32(m.RADI)
    index = response.u32(m.INDX)
    path = response.require(m.PATH)
    response_signature = response.require(m.SIG, 64)

    verify_delegation(public_key, signature, dele_raw, rules)
    if not mint <= midpoint <= maxt:
        raise RoughtimeVerificationError(
            f"midpoint {midpoint} outside the delegation's window {mint}..{maxt}"
        )
    leaf_input = request.packet if rules.leaf_is_packet else request.nonce
    leaf = leaf_hash(leaf_input, rules.hash_size)
    if root_from_path(leaf, index, path, rules.hash_size) != root:
        raise RoughtimeVerificationError("Merkle path does not lead to ROOT")
    verify_signature(
        online_public, response_signature, rules.response_contexts, srep_raw, "response"
    )
    if radius == 0:
        raise RoughtimeVerificationError("RADI is 0")

    if rules.microseconds:
        midpoint_us, radius_us = midpoint, radius
        seconds = midpoint // 1_000_000
        # floor of the midpoint loses under a second: widen the radius to keep the interval
        radius_s = math.ceil(radius / 1_000_000) + 1
        mint, maxt = mint // 1_000_000, maxt // 1_000_000
    else:
        midpoint_us, radius_us = midpoint * 1_000_000, radius * 1_000_000
        seconds, radius_s = midpoint, radius
    return Reply(
        version=rules.version,
        midpoint=seconds,
        radius=radius_s,
        mint=mint,
        maxt=maxt,
        online_public=online_public,
        request=request.packet,
        response=bytes(packet),
        midpoint_us=midpoint_us,
        radius_us=radius_us,
    )


def parse_client_request(packet: bytes) -> ClientRequest:
    """A :class:`ClientRequest` for a request packet captured or read from a report.

    A framed packet must list its versions in VER; an unframed one is Google-Roughtime.
    """
    if packet[:8] == m.MAGIC:
        message = m.decode_packet(packet)
        versions = message.u32_list(m.VER, MAX_VERSIONS)
        nonce = message.require(m.NONC, 32)
    else:
        message = m.decode(packet)
        versions = (GOOGLE,)
        nonce = message.require(m.NONC, 64)
    return ClientRequest(bytes(packet), nonce, tuple(versions))
