"""gnomon: secure network time (NTS, RFC 8915) for Python.

>>> import gnomon
>>> result = gnomon.query("time.cloudflare.com")
>>> print(result.offset, result.authenticated)
"""

from __future__ import annotations

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
    RoughtimeError,
    RoughtimeFormatError,
    RoughtimeServerListError,
    RoughtimeVerificationError,
    RoughtimeVersionError,
    TlsError,
)

TYPE_CHECKING = False  # `typing` itself is not imported: `gnomon --help` starts faster
if TYPE_CHECKING:
    from typing import Any

    from .client.clock import Clock, ClockStatus, TrustedTime
    from .client.roughtime import (
        ChainResult,
        RoughtimeClient,
        RoughtimeResult,
        aquery_roughtime,
        query_roughtime,
    )
    from .client.session import Result, Session, aquery, query

__version__ = "0.1.0"

# The client's names load on first use, so that importing any gnomon module (a server
# worker unpickling its configuration, say) does not import the client and pyOpenSSL.
_LAZY = {
    "Clock": "clock",
    "ClockStatus": "clock",
    "TrustedTime": "clock",
    "ChainResult": "roughtime",
    "RoughtimeClient": "roughtime",
    "RoughtimeResult": "roughtime",
    "aquery_roughtime": "roughtime",
    "query_roughtime": "roughtime",
    "Result": "session",
    "Session": "session",
    "aquery": "session",
    "query": "session",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gnomon' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".client.{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AuthenticationError",
    "CertificateError",
    "ChainResult",
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
    "RoughtimeClient",
    "RoughtimeError",
    "RoughtimeFormatError",
    "RoughtimeResult",
    "RoughtimeServerListError",
    "RoughtimeVerificationError",
    "RoughtimeVersionError",
    "Session",
    "TlsError",
    "TrustedTime",
    "aquery",
    "aquery_roughtime",
    "query",
    "query_roughtime",
]
