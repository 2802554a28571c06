"""The NTS client's state machines, without I/O.

``KeExchange`` turns an NTS-KE conversation into a :class:`~.ke.KeResponse`;
``Association`` holds the keys and cookie jar that come out of it, builds
NTP requests and validates the responses. The I/O layer supplies the bytes,
the TLS exporter, the local clock readings and the random values of each request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from ..._frozen import Frozen
from ...errors import (
    AuthenticationError,
    KissOfDeathError,
    NoCookiesError,
    NtpFormatError,
    NtsNakError,
    ResponseMismatchError,
)
from .aead import AES_128_GCM_SIV, AES_SIV_CMAC_256, Aead, Exporter, derive_keys
from .fields import (
    EF_NTS_COOKIE,
    EF_NTS_COOKIE_PLACEHOLDER,
    EF_UNIQUE_IDENTIFIER,
    authenticator_appender,
    authenticator_opener,
    locate_nts_fields,
    parse_encrypted_fields,
)
from .limits import MAX_COOKIE_LEN, MAX_COOKIES, MIN_COOKIE_LEN
from .ntp import (
    MAX_PACKET_LEN,
    MODE_CLIENT,
    MODE_SERVER,
    NtpHeader,
    encode_extension_field,
    ntp_to_unix_ns,
    short_to_seconds,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .ke import KeResponse

DEFAULT_AEADS: tuple[int, ...] = (AES_128_GCM_SIV, AES_SIV_CMAC_256)
"""AES-128-GCM-SIV first: smaller cookies, so requests stay short (as chrony does)."""

NTS_NAK = "NTSN"


class KeExchange:
    """One NTS-KE request and its response.

    >>> exchange = KeExchange()
    >>> request = exchange.request()            # send this in one TLS write
    >>> response = exchange.receive_data(data)  # None until End of Message
    """

    def __init__(
        self,
        aeads: Sequence[int] = DEFAULT_AEADS,
        *,
        server: str | None = None,
        port: int | None = None,
    ) -> None:
        from .ke import RecordStream, build_request  # the KE record code: only for KE

        self.aeads = tuple(aeads)
        self._request = build_request(self.aeads, server=server, port=port)
        self._stream = RecordStream()

    def request(self) -> bytes:
        return self._request

    def receive_data(self, data: bytes) -> KeResponse | None:
        from .ke import parse_response

        records = self._stream.feed(data)
        return None if records is None else parse_response(records, self.aeads)

    def connection_closed(self) -> None:
        """The server closed the connection; an error unless the message was complete."""
        if not self._stream.complete:
            from ...errors import KeProtocolError

            raise KeProtocolError("server closed the connection before End of Message")


def keys_from_response(response: KeResponse, exporter: Exporter) -> tuple[bytes, bytes]:
    """The (C2S, S2C) keys for a response, using the context the server expects.

    For AES-128-GCM-SIV a server that did not echo record 1024 is taken to use
    chrony's original context (AEAD 15 in place of 30).
    """
    compliant = response.aead != AES_128_GCM_SIV or response.compliant_gcm_siv
    return derive_keys(exporter, response.aead, compliant=compliant)


class PendingRequest(Frozen):
    """What is needed to match and check the response to one request."""

    __slots__ = __match_args__ = ("unique_id", "transmit_ts", "placeholders")
    unique_id: bytes
    transmit_ts: int  # the value sent as transmit timestamp, echoed as origin
    placeholders: int

    def __init__(self, unique_id: bytes, transmit_ts: int, placeholders: int) -> None:
        object.__setattr__(self, "unique_id", unique_id)
        object.__setattr__(self, "transmit_ts", transmit_ts)
        object.__setattr__(self, "placeholders", placeholders)


class Sample(Frozen):
    """One authenticated exchange, times in nanoseconds (offset: server - local)."""

    __slots__ = __match_args__ = (
        "offset_ns",
        "delay_ns",
        "leap",
        "version",
        "stratum",
        "poll",
        "precision",
        "reference_id",
        "root_delay",
        "root_dispersion",
        "receive_ns",
        "transmit_ns",
        "new_cookies",
    )
    offset_ns: int
    delay_ns: int
    leap: int
    version: int
    stratum: int
    poll: int
    precision: int
    reference_id: bytes
    root_delay: float
    root_dispersion: float
    receive_ns: int
    transmit_ns: int
    new_cookies: int

    def __init__(
        self,
        offset_ns: int,
        delay_ns: int,
        leap: int,
        version: int,
        stratum: int,
        poll: int,
        precision: int,
        reference_id: bytes,
        root_delay: float,
        root_dispersion: float,
        receive_ns: int,
        transmit_ns: int,
        new_cookies: int,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "offset_ns", offset_ns)
        set_field(self, "delay_ns", delay_ns)
        set_field(self, "leap", leap)
        set_field(self, "version", version)
        set_field(self, "stratum", stratum)
        set_field(self, "poll", poll)
        set_field(self, "precision", precision)
        set_field(self, "reference_id", reference_id)
        set_field(self, "root_delay", root_delay)
        set_field(self, "root_dispersion", root_dispersion)
        set_field(self, "receive_ns", receive_ns)
        set_field(self, "transmit_ns", transmit_ns)
        set_field(self, "new_cookies", new_cookies)


def compute_offset_delay(t1: int, t2: int, t3: int, t4: int) -> tuple[int, int]:
    """RFC 5905 section 8: offset = ((T2 - T1) + (T3 - T4)) / 2, delay = (T4 - T1) - (T3 - T2)."""
    return ((t2 - t1) + (t3 - t4)) // 2, (t4 - t1) - (t3 - t2)


class Association:
    """Keys and cookies for one NTS server, and the NTP exchanges that use them.

    Every request spends one cookie and asks, with placeholders, for enough
    new ones to bring the jar back to eight. Cookies are taken only from the
    encrypted part of an authenticated response.
    """

    def __init__(self, aead_id: int, c2s: bytes, s2c: bytes, cookies: Iterable[bytes]) -> None:
        self.aead_id = aead_id
        self.c2s = c2s
        self.s2c = s2c
        self._append_authenticator = authenticator_appender(Aead(aead_id, c2s))
        self._open_authenticator = authenticator_opener(Aead(aead_id, s2c))
        self._cookies: deque[bytes] = deque(maxlen=MAX_COOKIES)
        self._cookies.extend(cookies)

    @property
    def cookies(self) -> tuple[bytes, ...]:
        return tuple(self._cookies)

    @property
    def cookie_count(self) -> int:
        return len(self._cookies)

    def build_request(
        self, *, unique_id: bytes, nonce: bytes, transmit_ts: int
    ) -> tuple[bytes, PendingRequest]:
        """An authenticated NTP request and the state to check its response with.

        ``unique_id`` (:data:`~.fields.UNIQUE_ID_LEN` bytes), ``nonce`` (the
        AEAD's ``nonce_length``) and ``transmit_ts`` are random and fresh for
        each request (the caller draws them): the client keeps its send time to itself
        (as RFC 9109's privacy advice suggests) and only uses the echoed
        transmit timestamp to match the response.
        """
        if not self._cookies:
            raise NoCookiesError("no cookie left; a new NTS-KE exchange is needed")
        cookie = self._cookies.popleft()
        placeholders = MAX_COOKIES - 1 - len(self._cookies)
        header = NtpHeader(mode=MODE_CLIENT, transmit_ts=transmit_ts).encode()
        unauthenticated = b"".join(
            [
                header,
                encode_extension_field(EF_UNIQUE_IDENTIFIER, unique_id),
                encode_extension_field(EF_NTS_COOKIE, cookie),
                *(
                    encode_extension_field(EF_NTS_COOKIE_PLACEHOLDER, bytes(len(cookie)))
                    for _ in range(placeholders)
                ),
            ]
        )
        packet = self._append_authenticator(nonce, b"", unauthenticated)
        return packet, PendingRequest(unique_id, transmit_ts, placeholders)

    def process_response(
        self, data: bytes, pending: PendingRequest, *, sent_ns: int, received_ns: int
    ) -> Sample:
        """Validate a response and return the sample it gives.

        Raises ResponseMismatchError for a packet that is not the answer to
        ``pending`` (keep waiting), NtsNakError for an NTS NAK (unauthenticated
        by design: it costs only the cookie already spent), AuthenticationError
        or NtpFormatError for a forged or broken answer, KissOfDeathError for
        an authenticated kiss-o'-death.
        """
        if len(data) > MAX_PACKET_LEN:
            raise NtpFormatError(f"NTP packet of {len(data)} bytes is too long")
        header = NtpHeader.decode(data)
        fields = locate_nts_fields(data)
        if header.mode != MODE_SERVER:
            raise ResponseMismatchError(f"packet of mode {header.mode}, not a server response")
        if header.origin_ts != pending.transmit_ts:
            raise ResponseMismatchError("origin timestamp does not match the request")
        if fields.unique_id != pending.unique_id:
            raise ResponseMismatchError("unique identifier does not match the request")
        if fields.authenticator_offset is None or fields.authenticator_end is None:
            if header.kiss_code == NTS_NAK:
                raise NtsNakError("server sent an NTS NAK: it could not use the cookie")
            raise AuthenticationError("response carries no NTS authenticator")
        plaintext = self._open_authenticator(
            data, fields.authenticator_offset, fields.authenticator_end
        )
        new_cookies = [
            ef.body for ef in parse_encrypted_fields(plaintext) if ef.type == EF_NTS_COOKIE
        ]
        if header.kiss_code is not None:
            raise KissOfDeathError(header.kiss_code)
        if header.transmit_ts == 0 or header.receive_ts == 0:
            raise NtpFormatError("server left a timestamp zero")
        if not 1 <= header.version <= 4:
            raise NtpFormatError(f"NTP version {header.version}")
        accepted = 0
        for cookie in new_cookies[: pending.placeholders + 1]:
            if MIN_COOKIE_LEN <= len(cookie) <= MAX_COOKIE_LEN and len(self._cookies) < MAX_COOKIES:
                self._cookies.append(cookie)
                accepted += 1
        t2 = ntp_to_unix_ns(header.receive_ts, sent_ns)
        t3 = ntp_to_unix_ns(header.transmit_ts, sent_ns)
        offset, delay = compute_offset_delay(sent_ns, t2, t3, received_ns)
        return Sample(
            offset_ns=offset,
            delay_ns=delay,
            leap=header.leap,
            version=header.version,
            stratum=header.stratum,
            poll=header.poll,
            precision=header.precision,
            reference_id=header.reference_id,
            root_delay=short_to_seconds(header.root_delay),
            root_dispersion=short_to_seconds(header.root_dispersion),
            receive_ns=t2,
            transmit_ns=t3,
            new_cookies=accepted,
        )
