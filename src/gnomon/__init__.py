"""gnomon: secure network time (NTS, RFC 8915) for Python.

>>> import gnomon
>>> result = gnomon.query("time.cloudflare.com")
>>> print(result.offset, result.authenticated)
"""

from .client.clock import Clock, ClockStatus, TrustedTime
from .client.session import Result, Session, aquery, query
from .errors import (
    AuthenticationError,
    CertificateError,
    ConfigError,
    GnomonError,
    KeProtocolError,
    KeServerError,
    KissOfDeathError,
    NegotiationError,
    NoCookiesError,
    NoMajorityError,
    NtpFormatError,
    NtsNakError,
    ProtocolError,
    QueryTimeoutError,
    ResponseMismatchError,
    TlsError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CertificateError",
    "Clock",
    "ClockStatus",
    "ConfigError",
    "GnomonError",
    "KeProtocolError",
    "KeServerError",
    "KissOfDeathError",
    "NegotiationError",
    "NoCookiesError",
    "NoMajorityError",
    "NtpFormatError",
    "NtsNakError",
    "ProtocolError",
    "QueryTimeoutError",
    "ResponseMismatchError",
    "Result",
    "Session",
    "TlsError",
    "TrustedTime",
    "aquery",
    "query",
]
