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
import functools
import hashlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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


class Request(NamedTuple):
    """An admitted request: its Merkle leaf (over the whole datagram), what to answer, and
    its size (the largest response it may get). A tuple: made once per datagram, and
    :data:`_new_request` makes one without a Python call."""

    leaf: bytes
    version: int
    nonce: bytes
    size: int


_new_request: Callable[[tuple[bytes, int, bytes, int]], Request] = functools.partial(
    tuple.__new__, Request
)

_TYPE_REQUEST = m.u32(0)
_TYPE_RESPONSE = m.u32(1)
_RESPONSE_TAGS = (m.SIG, m.NONC, m.TYPE, m.PATH, m.SREP, m.CERT, m.INDX)  # sorted
_LEAF_PREFIX = b"\x00"
_sha512 = hashlib.sha512


class _Layout(NamedTuple):
    """Where a request with one common header keeps its values (positions in the datagram)."""

    ver: int
    versions: Callable[[Any, int], tuple[int, ...]]  # reads VER's entries at ``ver``
    srv: int  # -1: no SRV
    nonce: int
    type: int  # -1: no TYPE


# The fast path of parse_request: the headers common clients send, each with the layout
# it implies. A request is VER, NONC, ZZZZ, with SRV and TYPE or not; VER holds 1 to
# MAX_VERSIONS entries. Such a header (count, offsets, tags) fixes every offset, so its
# whole check is the table lookup: tags sorted and unique, offsets multiples of four and
# ascending by construction, NONC 32 bytes, TYPE 4, and every value ends before the
# least size admitted. What the datagram must still show is the framing (magic, its
# length, a multiple of four), TYPE 0, our SRV and a version we speak;
# a datagram that does not is decided by the general decoder, which holds every rule.
_FRAME = struct.Struct("<8sII")  # magic, length, tag count


def _layouts() -> dict[bytes, _Layout]:
    """Header bytes (count, offsets, tags) -> layout, for every common request shape."""
    table: dict[bytes, _Layout] = {}
    for srv in (False, True):
        for kind in (False, True):
            tags = [m.VER, *([m.SRV] if srv else []), m.NONC, *([m.TYPE] if kind else []), m.ZZZZ]
            for entries in range(1, MAX_VERSIONS + 1):
                sizes = {m.VER: 4 * entries, m.SRV: 32, m.NONC: 32, m.TYPE: 4}
                starts, position = {}, 0
                for t in tags[:-1]:
                    starts[t] = position
                    position += sizes[t]
                base = m.FRAME_HEADER + 8 * len(tags)
                # The padding starts at most 248 bytes in: any admitted size holds it all.
                assert base + position <= REQUEST_SIZE
                table[m.header(tags, [sizes[t] for t in tags[:-1]] + [0])] = _Layout(
                    base,
                    struct.Struct(f"<{entries}I").unpack_from,
                    base + starts[m.SRV] if srv else -1,
                    base + starts[m.NONC],
                    base + starts[m.TYPE] if kind else -1,
                )
    return table


_LAYOUTS = _layouts()


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
        """A :class:`Request` to answer or why to drop ``datagram``. Never raises.

        The common request shapes are read by position from one ``unpack_from``
        (see ``_LAYOUTS``); any other datagram goes to :meth:`_parse_general`,
        which decides it by the codec's rules. The fast path never drops: it
        answers only what the general path would answer, the same way.
        """
        size = len(datagram)
        if size < REQUEST_SIZE:
            return DropReason.too_short
        if size > MAX_REQUEST:
            return DropReason.too_long
        # A view into a receive buffer: copied once (the general path then needs no copy).
        packet = datagram if isinstance(datagram, bytes) else bytes(datagram)
        magic, length, count = _FRAME.unpack_from(packet)
        # A key matches only a header that starts with its own count (at most 5 tags).
        layout = _LAYOUTS.get(packet[12 : 12 + 8 * count])
        if layout is None or magic != m.MAGIC or length != size - m.FRAME_HEADER or size & 3:
            return self._parse_general(packet)
        ver, versions, srv, nonce, kind = layout
        if (kind >= 0 and packet[kind : kind + 4] != _TYPE_REQUEST) or (
            srv >= 0 and packet[srv : srv + 32] != self.srv
        ):
            return self._parse_general(packet)
        offered = versions(packet, ver)
        for version in self.versions:
            if version in offered:
                return _new_request(
                    (
                        _sha512(_LEAF_PREFIX + packet).digest()[:32],
                        version,
                        packet[nonce : nonce + 32],
                        size,
                    )
                )
        return DropReason.no_common_version

    def _parse_general(self, datagram: bytes | bytearray | memoryview) -> Request | DropReason:
        """:meth:`parse_request` by the codec: any request shape, every rule checked there."""
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
                return Request(leaf_hash(datagram), version, nonce, size)
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
        midp = m.u64(midpoint)
        radi = m.u32(radius)
        if len({request.version for request in requests}) < 2:  # the common case
            return self._answer(requests, midp, radi)
        out: list[bytes] = [b""] * len(requests)
        groups: dict[int, list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(request.version, []).append(position)
        for positions in groups.values():
            answers = self._answer([requests[p] for p in positions], midp, radi)
            for position, answer in zip(positions, answers, strict=True):
                out[position] = answer
        return out

    def _answer(self, requests: Sequence[Request], midp: bytes, radi: bytes) -> list[bytes]:
        """The responses to requests of one version: one tree, one signature, one template.

        Every response of the group has the same shape (the paths have one length), so
        everything but NONC, PATH and INDX is built once and each response is one join.
        """
        if not requests:
            return []
        version = requests[0].version
        family = self._families.get(version)
        if family is None:
            raise RoughtimeError(f"request for {version_name(version)}, not served")
        root, paths = build_tree([request.leaf for request in requests])
        srep = m.encode(
            {m.VER: family.ver, m.RADI: radi, m.MIDP: midp, m.VERS: family.vers, m.ROOT: root}
        )
        signature = self.online_key.sign(family.rules_context + srep)
        path_size = len(paths[0])
        sizes = (64, 32, 4, path_size, len(srep), len(family.cert), 4)
        head = m.header(_RESPONSE_TAGS, sizes)
        length = len(head) + sum(sizes)
        prefix = b"".join((m.MAGIC, m.u32(length), head, signature))
        tail = srep + family.cert
        join = b"".join
        responses = [
            join((prefix, request.nonce, _TYPE_RESPONSE, path, tail, index))
            for request, path, index in zip(requests, paths, _indexes(len(requests)), strict=False)
        ]
        if min(request.size for request in requests) < m.FRAME_HEADER + length:
            # Only a batch so large its path does not fit: that request gets nothing.
            for position, request in enumerate(requests):
                if request.size < m.FRAME_HEADER + length:
                    responses[position] = b""
        return responses


_INDEXES: list[bytes] = []


def _indexes(count: int) -> list[bytes]:
    """INDX values 0 to ``count - 1`` (uint32 LE), made once for the largest batch yet."""
    if len(_INDEXES) < count:
        _INDEXES[:] = [m.u32(i) for i in range(count)]
    return _INDEXES
