"""The exceptions gnomon raises. Every failure a caller can meet is one of these."""

from __future__ import annotations


class GnomonError(Exception):
    """Base class of every error gnomon raises on purpose."""


class ProtocolError(GnomonError):
    """Bytes from the network (or a file) do not follow the protocol."""


class NtpFormatError(ProtocolError):
    """An NTP packet or extension field is malformed (RFC 5905, RFC 7822)."""


class KeProtocolError(ProtocolError):
    """An NTS-KE message is malformed or breaks a rule of RFC 8915 section 4."""


class KeServerError(GnomonError):
    """The NTS-KE server answered with an Error record (RFC 8915 section 4.1.3)."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        names = {0: "unrecognized critical record", 1: "bad request", 2: "internal server error"}
        super().__init__(
            message or f"NTS-KE server sent error {code} ({names.get(code, 'unknown')})"
        )


class NegotiationError(GnomonError):
    """Client and server share no protocol or AEAD algorithm."""


class AuthenticationError(ProtocolError):
    """A packet's NTS authenticator (or a cookie) does not verify."""


class NtsNakError(GnomonError):
    """The server answered with an NTS NAK (kiss code NTSN, RFC 8915 section 5.7)."""


KISS_CODES = {
    "INIT": "server is not synchronised yet",
    "STEP": "server is stepping its clock",
    "RATE": "server asks to query it less often (rate limit)",
    "DENY": "server denies access",
    "RSTR": "server refuses access (restricted)",
    "AUTH": "server rejects the authentication",
    "CRYP": "server rejects the cryptographic authentication",
    "NKEY": "server does not know the key",
    "AUTO": "server rejects the Autokey sequence",
    "BCST": "server is in broadcast mode",
    "DROP": "server dropped the association",
    "MCST": "server is in multicast mode",
    "RMOT": "server is being altered remotely",
    "NTSN": "server could not use the NTS cookie (NTS NAK)",
}
"""What the kiss codes of RFC 5905 section 7.4 (and RFC 8915's NTSN) mean for a client."""


class KissOfDeathError(GnomonError):
    """The server answered with a kiss-o'-death packet (RFC 5905 section 7.4).

    `code` is the four-letter kiss code, `authenticated` whether the packet carried
    a valid NTS authenticator (only then did the server really say it).
    """

    def __init__(self, code: str, *, authenticated: bool = True) -> None:
        self.code = code
        self.authenticated = authenticated
        meaning = KISS_CODES.get(code, "server refuses to give the time")
        how = "authenticated with NTS" if authenticated else "NOT authenticated"
        super().__init__(f"{meaning} (kiss-o'-death {code!r}, {how})")


class ResponseMismatchError(ProtocolError):
    """A response does not belong to the outstanding request (unique id or origin)."""


class NoCookiesError(GnomonError):
    """The session has no cookie left and needs a new NTS-KE exchange."""


class TlsError(GnomonError):
    """The TLS connection to the NTS-KE server failed."""


class CertificateError(TlsError):
    """The server's certificate is not trusted for the name asked for."""


class QueryTimeoutError(GnomonError, TimeoutError):
    """A network step did not finish within its time limit."""


class ConfigError(GnomonError):
    """A configuration file or option is invalid."""


class RoughtimeError(GnomonError):
    """A Roughtime exchange failed (RFC 10049)."""


class RoughtimeFormatError(RoughtimeError, ProtocolError):
    """A Roughtime message or packet is malformed (framing, tags, offsets, sizes)."""


class RoughtimeVerificationError(RoughtimeError, ProtocolError):
    """A well-formed Roughtime response fails a check: signature, nonce, Merkle path, times.

    Servers may send such responses on purpose ("greasing"): a client retries
    and never reports them as malfeasance.
    """


class RoughtimeVersionError(RoughtimeVerificationError):
    """The response names a version the request did not offer (or none gnomon speaks)."""


class RoughtimeServerListError(RoughtimeError, ConfigError):
    """A Roughtime server list (application/roughtime-server+json) is invalid."""


class NoMajorityError(GnomonError):
    """Too few sources agree for a time to be trusted: no time rather than a guess."""

    def __init__(self, message: str, *, sources: tuple[str, ...] = (), needed: int = 0) -> None:
        super().__init__(message)
        self.sources = sources  # the sources that answered
        self.needed = needed  # how many had to agree
