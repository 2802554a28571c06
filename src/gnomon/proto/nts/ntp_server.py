"""The NTP side of an NTS server without I/O: a request datagram in, the reply out.

:class:`NtpResponder` answers one datagram at a time with the current cookie
keys from a :class:`~.cookie.CookieCodec` the caller may swap at any time (key
rotation), and the time-source state as a :class:`TimeSource` value.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import AuthenticationError, NtpFormatError
from .aead import TAG_LENGTH, Aead
from .cookie import RANDOM_LEN, CookieCodec, split_plaintext
from .fields import (
    EF_NTS_COOKIE_PLACEHOLDER,
    MIN_UNIQUE_ID_LEN,
    AuthenticatorAppender,
    AuthenticatorOpener,
    authenticator_appender,
    authenticator_opener,
    parse_encrypted_fields,
)
from .ke import (
    MAX_COOKIES,
)
from .ntp import (
    HEADER,
    HEADER_LEN,
    LEAP_UNSYNCHRONIZED,
    MODE_CLIENT,
    MODE_SERVER,
)
from .scan import scan_fields

NTSN = b"NTSN"


@dataclass(frozen=True, slots=True)
class TimeSource:
    """What the server says about its own clock in every response.

    The default is honest ignorance: leap 3 (unsynchronised), stratum 16.
    """

    leap: int = LEAP_UNSYNCHRONIZED
    stratum: int = 16
    precision: int = -20
    root_delay: int = 0  # NTP short format
    root_dispersion: int = 0
    reference_id: bytes = b"\x00\x00\x00\x00"
    reference_ts: int = 0  # NTP timestamp


@dataclass
class NtpCounters:
    plain: int = 0
    nts: int = 0
    nak: int = 0
    malformed: int = 0
    dropped: int = 0  # well-formed but not answered (wrong mode, NTS required...)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


# leap/version/mode, stratum, poll, precision..reference timestamp (packed once), origin,
# receive and transmit timestamps
_REPLY_HEAD = struct.Struct("!BBB21s8sQQ")
_pack_reply_head = _REPLY_HEAD.pack
_NS = 1_000_000_000
_NTP_EPOCH = 2_208_988_800 << 32  # 1900 to 1970, in NTP's 32.32 fixed point
_MASK64 = (1 << 64) - 1
_EVEN64 = _MASK64 - 1  # a transmit timestamp's lowest bit is 0, a receive timestamp's 1
_MAX_TX_UPDATE = 1 << 32  # a kernel transmit timestamp within 1 s of the daemon's
INTERLEAVED_TABLE = 16384  # replies whose transmit timestamps are kept (interleaved mode)
_SESSION_LIMIT = 8192


def _ntp_time(unix_ns: int) -> int:
    """Unix ns to a 64-bit NTP timestamp (era dropped); one division, exact like
    :func:`.ntp.unix_ns_to_ntp`: seconds << 32 + (ns << 32) // 10**9."""
    return ((unix_ns << 32) // _NS + _NTP_EPOCH) & _MASK64


# What the responder keeps per cookie plaintext (AEAD id, C2S, S2C): the C2S key's
# authenticator opener (requests are checked with it), the S2C key's appender, the reply
# nonce's length and the length of the smallest reply (header, authenticator with its nonce
# and tag; no uid).
_Session = tuple[AuthenticatorOpener, AuthenticatorAppender, int, int]


def _new_session(plain: bytes) -> _Session | None:
    """The AEAD objects for a cookie's plaintext; None if it names no usable AEAD.

    Building a cipher costs more than using it (AESSIV: ~2.4 µs) and a client
    sends many requests under the same keys, so sessions are cached.
    """
    keys = split_plaintext(plain)
    if keys is None:
        return None
    aead_id, c2s, s2c = keys
    s2c_aead = Aead(aead_id, s2c)
    nonce_len = s2c_aead.algorithm.nonce_length
    return (
        authenticator_opener(Aead(aead_id, c2s)),
        authenticator_appender(s2c_aead),
        nonce_len,
        HEADER_LEN + 8 + nonce_len + TAG_LENGTH,
    )


class NtpResponder:
    """Answers NTP client requests, plain or NTS-protected.

    ``respond(data, receive_ns, clock)`` returns the reply bytes or None to
    drop. ``clock()`` gives the transmit timestamp (Unix ns); it is read as
    late as possible, after the cookies are sealed and just before the final
    authenticator, so the server's own work is not counted as network delay.
    A reply is never longer than its request (no amplification).

    This is the per-packet path, written for CPU per reply (bench/README.md,
    "Profile"). The rules come from where the client takes them too: the
    fields are located in place by :func:`.scan.scan_fields` (offsets, no
    objects), the request's authenticator is opened and the reply's appended by
    the closures :mod:`.fields` builds per key (kept per cookie plaintext), the
    cookie's plaintext is checked by :func:`.cookie.split_plaintext`. Nothing
    is built but the reply, its length (and so how many cookies fit: no
    amplification) is computed before anything is sealed, and one BLAKE2b call
    in the cookie codec gives the reply's nonce with the new cookies' nonces,
    so answering makes no system call (the UDP loop sends replies in batches).

    ``seed`` (:data:`~.cookie.RANDOM_LEN` random bytes, from the adapter) starts
    the 128-bit counter that gives each reply the never-repeated input of its
    cookie and nonce PRF. A responder must not be shared across a fork: each
    process builds its own with a seed of its own.
    """

    def __init__(
        self,
        codec: CookieCodec,
        time_source: TimeSource | None = None,
        *,
        seed: bytes,
        require_nts: bool = False,
        interleaved_table: int = INTERLEAVED_TABLE,
    ) -> None:
        if len(seed) != RANDOM_LEN:
            raise ValueError(f"the responder's seed is {RANDOM_LEN} random bytes")
        self.codec = codec
        self._next_unique = itertools.count(int.from_bytes(seed, "big") >> 1).__next__
        self.require_nts = require_nts
        self.counters = NtpCounters()
        self._sessions: dict[bytes, _Session] = {}
        self.time_source = time_source or TimeSource()
        self.interleaved_table = interleaved_table
        self._transmits: dict[int, int] = {}  # receive timestamp sent -> transmit timestamp
        self.tx_key = 0
        """Set by :meth:`respond` to the receive timestamp of a reply whose transmit time
        the adapter should report with :meth:`update_transmit` (0: none wanted); the
        adapter clears it."""
        self.interleaved = 0  # replies sent in interleaved mode

    @property
    def time_source(self) -> TimeSource:
        return self._time_source

    @time_source.setter
    def time_source(self, source: TimeSource) -> None:
        self._time_source = source
        # Everything from precision to the reference timestamp, packed once.
        self._static = HEADER.pack(
            0,
            0,
            0,
            source.precision,
            source.root_delay,
            source.root_dispersion,
            source.reference_id,
            source.reference_ts,
            0,
            0,
            0,
        )[3:24]
        self._first = source.leap << 6 | MODE_SERVER
        self._stratum = source.stratum

    def _plain_reply(self, data: bytes, receive_ns: int, clock: Callable[[], int]) -> bytes:
        receive = ((receive_ns << 32) // _NS + _NTP_EPOCH) & _MASK64 | 1
        transmit = ((clock() << 32) // _NS + _NTP_EPOCH) & _EVEN64
        if data[31] & 1 and data[0] & 0x38 == 0x20 and data[32:40] != data[40:48]:
            origin, transmit = self._interleave(data, receive, transmit)
        else:
            origin = data[40:48]
        return _pack_reply_head(
            self._first | (data[0] & 0x38),
            self._stratum,
            data[2],
            self._static,
            origin,
            receive,
            transmit,
        )

    def _interleave(self, data: bytes, receive: int, transmit: int) -> tuple[bytes, int]:
        """Origin and transmit fields for a request that may be interleaved.

        draft-ietf-ntp-interleaved-modes, as chrony's server does it: the receive
        timestamps this server sends have their lowest bit set and its transmit
        timestamps clear, so a version 4 request whose origin has the bit set (and whose
        receive and transmit fields differ) names the receive timestamp of an earlier
        reply. If that reply's transmit time is kept, this reply carries it (taken by the
        kernel after the reply left, where the adapter could) with the request's receive
        field as origin, and the entry is spent. Either way this reply's own transmit
        time is kept for the next request, in a table of ``interleaved_table`` replies
        (the oldest forgotten first). Only clients that ask pay for the table: the first
        interleaved reply to a new client is its third.
        """
        table = self._transmits
        if not self.interleaved_table:
            return data[40:48], transmit
        previous = table.pop(int.from_bytes(data[24:32]), 0)
        if len(table) >= self.interleaved_table:
            del table[next(iter(table))]
        table[receive] = transmit
        self.tx_key = receive
        if previous:
            self.interleaved += 1
            return data[32:40], previous
        return data[40:48], transmit

    def update_transmit(self, key: int, transmit_ns: int) -> None:
        """The kernel's transmit time (Unix ns) of the reply whose receive timestamp is
        ``key`` (its :attr:`tx_key`); kept if it is no earlier than the transmit timestamp
        the reply carries, and less than a second later."""
        kept = self._transmits.get(key)
        if kept is None:
            return
        kernel = ((transmit_ns << 32) // _NS + _NTP_EPOCH) & _EVEN64
        if (kernel - kept) & _MASK64 < _MAX_TX_UPDATE:
            self._transmits[key] = kernel

    def respond(self, data: bytes, receive_ns: int, clock: Callable[[], int]) -> bytes | None:
        length = len(data)
        if length < HEADER_LEN:
            self.counters.malformed += 1
            return None
        first = data[0]
        if first & 7 != MODE_CLIENT or not 0x08 <= first & 0x38 <= 0x20:
            self.counters.dropped += 1  # not a client request of NTP versions 1-4
            return None
        if length == HEADER_LEN:
            if self.require_nts:
                self.counters.dropped += 1
                return None
            self.counters.plain += 1
            return self._plain_reply(data, receive_ns, clock)
        problem, _, uid_at, uid_end, cookie_at, cookie_end, auth_at, auth_end, placeholders = (
            scan_fields(data, HEADER_LEN)
        )
        if problem:
            self.counters.malformed += 1
            return None
        if auth_at < 0:
            if cookie_at >= 0 or uid_at >= 0 or self.require_nts:
                self.counters.dropped += 1
                return None
            self.counters.plain += 1  # unknown extensions: answer the header only
            return self._plain_reply(data, receive_ns, clock)
        if uid_at < 0 or uid_end - uid_at - 4 < MIN_UNIQUE_ID_LEN or cookie_at < 0:
            self.counters.malformed += 1
            return None

        # NTS (RFC 8915 5.7). The cookie: an unknown key id costs no crypto.
        codec = self.codec
        plain = codec.open_raw(data[cookie_at + 4 : cookie_end])
        if plain is None:
            return self._nak(data, uid_at, uid_end, receive_ns, clock())
        session = self._sessions.get(plain)
        if session is None:
            session = _new_session(plain)
            if session is None:
                return self._nak(data, uid_at, uid_end, receive_ns, clock())
            if len(self._sessions) >= _SESSION_LIMIT:
                self._sessions.clear()
            self._sessions[plain] = session
        open_authenticator, append_authenticator, reply_nonce_len, smallest_reply = session
        try:
            plaintext = open_authenticator(data, auth_at, auth_end)
        except AuthenticationError:
            return self._nak(data, uid_at, uid_end, receive_ns, clock())
        # One cookie, plus one per placeholder no shorter than the cookie; we also insist
        # on equal length, and on what fits in the request's length (no amplification).
        cookie_field_len = cookie_end - cookie_at
        room = length - smallest_reply - (uid_end - uid_at)
        if placeholders is None and not plaintext:
            if room >= cookie_field_len:
                count = 1
            elif room >= 0:
                count = 0
            else:
                self.counters.dropped += 1
                return None
        else:
            wanted = placeholders.count(cookie_field_len) if placeholders else 0
            if plaintext:
                try:
                    encrypted = parse_encrypted_fields(plaintext)
                except NtpFormatError:
                    return self._nak(data, uid_at, uid_end, receive_ns, clock())
                wanted += sum(
                    1
                    for ef in encrypted
                    if ef.type == EF_NTS_COOKIE_PLACEHOLDER and len(ef.body) + 4 == cookie_field_len
                )
            if room < 0:
                self.counters.dropped += 1
                return None
            count = min(1 + wanted, MAX_COOKIES, room // cookie_field_len)
        unique = self._next_unique().to_bytes(16, "big")
        nonce, fields = codec.seal_reply(plain, count, reply_nonce_len, unique)
        receive = ((receive_ns << 32) // _NS + _NTP_EPOCH) & _MASK64 | 1
        transmit = ((clock() << 32) // _NS + _NTP_EPOCH) & _EVEN64  # as late as possible
        if data[31] & 1 and first & 0x38 == 0x20 and data[32:40] != data[40:48]:
            origin, transmit = self._interleave(data, receive, transmit)
        else:
            origin = data[40:48]
        head = (
            _pack_reply_head(
                self._first | (first & 0x38),
                self._stratum,
                data[2],
                self._static,
                origin,
                receive,
                transmit,
            )
            + data[uid_at:uid_end]
        )
        self.counters.nts += 1
        return append_authenticator(nonce, fields, head)

    def _nak(
        self, data: bytes, uid_at: int, uid_end: int, receive_ns: int, transmit_ns: int
    ) -> bytes:
        """RFC 8915 5.7: kiss code NTSN, the unique id echoed, no authenticator."""
        self.counters.nak += 1
        header = HEADER.pack(
            LEAP_UNSYNCHRONIZED << 6 | (data[0] & 0x38) | MODE_SERVER,
            0,
            data[2] if data[2] < 128 else data[2] - 256,
            self._time_source.precision,
            0,
            0,
            NTSN,
            0,
            int.from_bytes(data[40:48]),
            _ntp_time(receive_ns),
            _ntp_time(transmit_ns),
        )
        return header + data[uid_at:uid_end]
