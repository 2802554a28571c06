"""The server side without I/O: admit requests, answer a batch with one signature per version.

:meth:`RoughtimeServer.parse_request` does no signature work and never
raises: a datagram is either a :class:`Request` or a :class:`DropReason` to
count. :meth:`RoughtimeServer.respond` answers a batch: the requests of each
version get one Merkle tree and one Ed25519 signature, so a batch of 64 costs
one signature (or two with both versions), not 64.

The online private key signs responses; the long-term key appears only as
its public half (for SRV) and through the delegation certificates, which can
be made offline (:func:`.delegation.delegate`).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ...errors import RoughtimeError, RoughtimeFormatError
from . import message as m
from .client import MAX_VERSIONS, REQUEST_SIZE, server_id
from .delegation import Delegation, parse_certificate, parse_dele
from .merkle import build_tree, leaf_hash
from .versions import RULES, SERVER_VERSIONS, version_name

MAX_REQUEST = m.FRAME_HEADER + m.MAX_MESSAGE


class DropReason(enum.Enum):
    """Why a datagram gets no answer (each counted by the server's metrics)."""

    too_short = "too_short"  # under 1024 bytes: answering would amplify
    too_long = "too_long"
    malformed = "malformed"  # framing, tags, offsets, NONC or TYPE wrong
    unknown_server = "unknown_server"  # SRV names another server's key
    no_common_version = "no_common_version"  # no offered version this server speaks


@dataclass(frozen=True, slots=True)
class Request:
    """An admitted request: the datagram (the Merkle leaf covers all of it) and what to answer."""

    packet: bytes
    version: int
    nonce: bytes

    @property
    def size(self) -> int:
        """The largest response this request may get."""
        return len(self.packet)


_TYPE_REQUEST = m.u32(0)
_TYPE_RESPONSE = m.u32(1)
_RESPONSE_TAGS = (m.SIG, m.NONC, m.TYPE, m.PATH, m.SREP, m.CERT, m.INDX)  # sorted


@dataclass(frozen=True, slots=True)
class _Family:
    version: int
    rules_context: bytes
    cert: bytes
    ver: bytes
    vers: bytes


class RoughtimeServer:
    """Answers Roughtime requests for one long-term key with a delegated online key."""

    def __init__(
        self,
        long_term_public_key: bytes,
        online_key: Ed25519PrivateKey,
        certificates: Mapping[int, bytes] | Delegation,
        versions: Sequence[int] = SERVER_VERSIONS,
    ) -> None:
        if len(long_term_public_key) != 32:
            raise RoughtimeError("a long-term public key is 32 bytes")
        certs = (
            certificates.certificates()
            if isinstance(certificates, Delegation)
            else dict(certificates)
        )
        self.long_term_public_key = bytes(long_term_public_key)
        self.online_key = online_key
        self.srv = server_id(self.long_term_public_key)
        self.versions = tuple(versions)
        if not self.versions:
            raise RoughtimeError("a server needs at least one version")
        online_public = online_key.public_key().public_bytes_raw()
        vers = b"".join(m.u32(v) for v in sorted(self.versions))
        self._families: dict[int, _Family] = {}
        windows: set[tuple[int, int]] = set()
        for version in self.versions:
            rules = RULES.get(version)
            if rules is None or not rules.version_in_srep:
                raise RoughtimeError(f"a gnomon server cannot answer {version_name(version)}")
            cert = certs.get(version)
            if cert is None:
                raise RoughtimeError(f"no delegation certificate for {version_name(version)}")
            try:
                _, _, dele = parse_certificate(cert)
                pubk, mint, maxt = parse_dele(dele)
            except RoughtimeFormatError as exc:
                raise RoughtimeError(
                    f"bad certificate for {version_name(version)}: {exc}"
                ) from None
            if pubk != online_public:
                raise RoughtimeError(
                    f"the certificate for {version_name(version)} delegates another online key"
                )
            windows.add((mint, maxt))
            self._families[version] = _Family(
                version, rules.response_context, cert, m.u32(version), vers
            )
        self.mint = max(w[0] for w in windows)
        self.maxt = min(w[1] for w in windows)

    def covers(self, unix_seconds: int) -> bool:
        """True while every certificate's window holds ``unix_seconds`` (else rotate keys)."""
        return self.mint <= unix_seconds <= self.maxt

    # --- admission (no signature work) ---------------------------------------

    def parse_request(self, datagram: bytes | bytearray | memoryview) -> Request | DropReason:
        """A :class:`Request` to answer or why to drop ``datagram``. Never raises."""
        if not isinstance(datagram, bytes):  # a view into a receive buffer: keep a copy
            datagram = bytes(datagram)
        size = len(datagram)
        if size < REQUEST_SIZE:
            return DropReason.too_short
        if size > MAX_REQUEST:
            return DropReason.too_long
        try:
            request = m.decode_packet(datagram)
            nonce = request.get(m.NONC)
            kind = request.get(m.TYPE)
            offered = m.u32_list(request.get(m.VER, b""), MAX_VERSIONS, m.VER)
        except (RoughtimeFormatError, struct.error, ValueError):
            return DropReason.malformed
        if nonce is None or len(nonce) != 32 or (kind is not None and kind != _TYPE_REQUEST):
            return DropReason.malformed
        srv = request.get(m.SRV)
        if srv is not None and srv != self.srv:
            return DropReason.unknown_server
        for version in self.versions:
            if version in offered:
                return Request(datagram, version, nonce)
        return DropReason.no_common_version

    # --- answers ---------------------------------------------------------------

    def respond(self, requests: Sequence[Request], midpoint: int, radius: int) -> list[bytes]:
        """One response per request, in order; one tree and one signature per version.

        ``midpoint`` is Unix seconds, ``radius`` seconds (at least 1). An entry
        is ``b""`` (send nothing) in the one case where a response would be
        larger than its request: a batch so large its path does not fit.
        """
        if radius < 1 or radius >= 1 << 32:
            raise RoughtimeError(f"radius {radius} s is outside 1..2^32-1")
        if not self.covers(midpoint):
            raise RoughtimeError(
                f"midpoint {midpoint} is outside the delegation window {self.mint}..{self.maxt}"
            )
        out: list[bytes] = [b""] * len(requests)
        groups: dict[int, list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(request.version, []).append(position)
        midp = m.u64(midpoint)
        radi = m.u32(radius)
        for version, positions in groups.items():
            family = self._families.get(version)
            if family is None:
                raise RoughtimeError(f"request for {version_name(version)}, not served")
            leaves = [leaf_hash(requests[p].packet) for p in positions]
            root, paths = build_tree(leaves)
            srep = m.encode(
                {m.VER: family.ver, m.RADI: radi, m.MIDP: midp, m.VERS: family.vers, m.ROOT: root}
            )
            signature = self.online_key.sign(family.rules_context + srep)
            # Every response of the group has the same value sizes: one header for all.
            path_size = len(paths[0])
            head = m.header(_RESPONSE_TAGS, (64, 32, 4, path_size, len(srep), len(family.cert), 4))
            shared_tail = srep + family.cert
            length = len(head) + 64 + 32 + 4 + path_size + len(shared_tail) + 4
            frame_head = m.MAGIC + m.u32(length)
            for leaf_index, (position, path) in enumerate(zip(positions, paths, strict=True)):
                request = requests[position]
                response = b"".join(
                    (
                        frame_head,
                        head,
                        signature,
                        request.nonce,
                        _TYPE_RESPONSE,
                        path,
                        shared_tail,
                        m.u32(leaf_index),
                    )
                )
                if len(response) <= request.size:
                    out[position] = response
        return out
