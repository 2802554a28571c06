"""TLS 1.3 for NTS-KE through pyOpenSSL, driven over memory BIOs.

:class:`TlsEngine` holds an OpenSSL connection that never touches a socket:
the caller moves bytes between it and the network. The same engine serves
the blocking client, the asyncio client and the server. CPython's ``ssl``
module cannot be used: NTS needs the TLS exporter (RFC 5705/8446), which it
does not expose.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import threading
import warnings
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL

from .errors import CertificateError, TlsError

ALPN_NTSKE = b"ntske/1"
_BIO_READ_SIZE = 65536
_RECORD_SIZE = 16384  # the most plaintext one TLS record carries


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


def load_certificates(data: bytes) -> tuple[list[x509.Certificate], int]:
    """The PEM certificates in `data`, one by one, and how many could not be parsed.

    A system bundle holds certificates cryptography frowns upon: Debian's has nine
    root CAs (Go Daddy, Starfield, SECOM, ...) whose serial number is zero or
    negative, which RFC 5280 forbids; cryptography parses them with a deprecation
    warning.  They are kept, and the warning never reaches the user.  A certificate
    that does not parse at all is skipped, and the others are kept: one bad entry
    must not cost every CA.
    """
    certificates: list[x509.Certificate] = []
    skipped = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for match in _PEM_CERTIFICATE.finditer(data):
            try:
                certificates.append(x509.load_pem_x509_certificate(match.group(0)))
            except ValueError:
                skipped += 1
    return certificates, skipped


class TrustStore:
    """Trust anchors for verifying NTS-KE servers, loaded once and reused."""

    def __init__(self, certificates: list[x509.Certificate], source: str, skipped: int = 0) -> None:
        if not certificates:
            raise CertificateError(f"no CA certificate found in {source}")
        self.source = source
        self.skipped = skipped  # certificates of the source that do not parse, left out
        self._store = Store(certificates)
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for certificate in certificates:
            self._by_subject.setdefault(certificate.subject, []).append(certificate)

    @classmethod
    def from_pem(cls, data: bytes, source: str) -> TrustStore:
        certificates, skipped = load_certificates(data)
        if not certificates:
            raise CertificateError(f"CA file {source} holds no valid PEM certificate")
        return cls(certificates, source, skipped)

    @classmethod
    def from_file(cls, path: str | Path) -> TrustStore:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise CertificateError(f"cannot read CA file {path}: {exc.strerror}") from None
        return cls.from_pem(data, str(path))

    _system: TrustStore | None = None
    _system_lock = threading.Lock()

    @classmethod
    def system(cls) -> TrustStore:
        """The operating system's CA bundle (cached for the process)."""
        with cls._system_lock:
            if cls._system is None:
                import ssl  # only where the bundle is: a --ca query never imports it

                paths = ssl.get_default_verify_paths()
                candidates = [
                    paths.cafile,
                    paths.openssl_cafile,
                    "/etc/ssl/certs/ca-certificates.crt",
                ]
                for candidate in candidates:
                    if candidate and Path(candidate).is_file():
                        cls._system = cls.from_file(candidate)
                        break
                else:
                    raise CertificateError("no system CA bundle found; pass a CA file")
            return cls._system

    def verify(self, chain: list[x509.Certificate], host: str, now: datetime | None = None) -> None:
        """Check that ``chain`` (leaf first) is valid for ``host`` right now."""
        if not chain:
            raise CertificateError(f"{host} sent no certificate")
        subject = IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else DNSName(host)
        when = now or datetime.now(UTC)
        builder = PolicyBuilder().store(self._store).time(when)
        try:
            builder.build_server_verifier(subject).verify(chain[0], chain[1:])
        except VerificationError as exc:
            reason = self.explain(chain, host, when)
            raise CertificateError(
                f"certificate of {host} not trusted: {reason} (verifier: {exc})"
            ) from None

    def explain(self, chain: list[x509.Certificate], host: str, now: datetime) -> str:
        """Why `chain` fails for `host`, in the terms a user acts on.

        The verifier says only what it ran into ("candidates exhausted: ..."); this
        names the certificate at fault and the first reason among: outside its
        validity period, issued for other names, issued by a CA not trusted here.
        """
        for certificate in chain:
            if now < certificate.not_valid_before_utc:
                return (
                    f"{_name(certificate)} is not valid before "
                    f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
                )
            if now > certificate.not_valid_after_utc:
                return (
                    f"{_name(certificate)} expired on "
                    f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
                )
        names = _san_names(chain[0])
        if names is not None and not any(_name_matches(n, host) for n in names):
            shown = ", ".join(names) or "no name"
            return f"name mismatch: {_name(chain[0])} is for {shown}, not {host}"
        if not any(self._signed_by_trusted_ca(c) for c in chain):
            top = chain[-1]
            return (
                f"unknown issuer: {_name(top)} is issued by {top.issuer.rfc4514_string()!r}, "
                f"and no CA trusted here signed it ({self.source})"
            )
        return f"the chain of {_name(chain[0])} does not verify"

    def _signed_by_trusted_ca(self, certificate: x509.Certificate) -> bool:
        """A trusted CA of the right name whose key made `certificate`'s signature."""
        for ca in self._by_subject.get(certificate.issuer, []):
            try:
                certificate.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False


def _name(certificate: x509.Certificate) -> str:
    return f"certificate {certificate.subject.rfc4514_string()!r}"


def _name_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.partition(".")[2] == pattern[2:] and "." in pattern[2:]
    if _is_ip(host) and _is_ip(pattern):
        return ipaddress.ip_address(host) == ipaddress.ip_address(pattern)
    return pattern == host


def _san_names(certificate: x509.Certificate) -> list[str] | None:
    """DNS names and IP addresses of the subjectAltName; None if it has none."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    addresses = [str(ip) for ip in san.get_values_for_type(IPAddress)]
    return [*san.get_values_for_type(DNSName), *addresses]


def client_context() -> SSL.Context:
    """A TLS 1.3-only client context offering ALPN ``ntske/1``.

    Certificates are checked by :class:`TrustStore` once the handshake is
    done (chain, validity and host name in one strict verifier), so OpenSSL
    itself is asked to verify nothing.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_alpn_protos([ALPN_NTSKE])
    context.set_verify(SSL.VERIFY_NONE)
    return context


class TlsEngine:
    """One TLS connection over memory BIOs.

    Feed what arrives from the peer with :meth:`receive`, send what
    :meth:`outgoing` returns. ``handshake()`` reports when the handshake is
    complete; ``read()`` then returns decrypted application data.
    """

    def __init__(self, context: SSL.Context, *, server_side: bool, server_name: str | None = None):
        self.conn = SSL.Connection(context, None)
        if server_side:
            self.conn.set_accept_state()
        else:
            if server_name and not _is_ip(server_name):
                self.conn.set_tlsext_host_name(server_name.encode("idna"))
            self.conn.set_connect_state()
        self.closed = False

    def receive(self, data: bytes) -> None:
        if data:
            self.conn.bio_write(data)

    def outgoing(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self.conn.bio_read(_BIO_READ_SIZE)
            except SSL.WantReadError:
                break
            if len(chunk) < _BIO_READ_SIZE:  # a memory BIO gives all it holds: drained
                if not chunks:
                    return chunk
                chunks.append(chunk)
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete."""
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise TlsError(f"TLS handshake failed: {_describe(exc)}") from None
        return True

    def write(self, data: bytes) -> None:
        try:
            self.conn.sendall(data)
        except SSL.Error as exc:
            raise TlsError(f"TLS write failed: {_describe(exc)}") from None

    def read(self) -> bytes:
        """All application data decrypted so far (b"" if none; sets ``closed``)."""
        chunks = []
        while True:
            try:
                chunk = self.conn.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed = True
                break
            except SSL.Error as exc:
                raise TlsError(f"TLS read failed: {_describe(exc)}") from None
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def read_record(self) -> bytes:
        """The application data of the next TLS record, b"" if none is complete yet.

        Sets ``closed`` on a close_notify. For a reader that can tell when it has
        enough (one NTS-KE message), without the failing read that ends :meth:`read`.
        """
        try:
            return self.conn.recv(_RECORD_SIZE)
        except SSL.WantReadError:
            return b""
        except SSL.ZeroReturnError:
            self.closed = True
            return b""
        except SSL.Error as exc:
            raise TlsError(f"TLS read failed: {_describe(exc)}") from None

    def close(self) -> None:
        """Queue a close_notify alert."""
        with contextlib.suppress(SSL.Error):
            self.conn.shutdown()

    @property
    def alpn(self) -> bytes | None:
        protocol = self.conn.get_alpn_proto_negotiated()
        return protocol or None

    @property
    def version(self) -> str:
        return str(self.conn.get_protocol_version_name())

    def peer_chain(self) -> list[x509.Certificate]:
        return list(self.conn.get_peer_cert_chain(as_cryptography=True) or [])

    def export(self, label: bytes, length: int, context: bytes) -> bytes:
        return bytes(self.conn.export_keying_material(label, length, context))


def _describe(exc: SSL.Error) -> str:
    parts: list[str] = []
    for arg in exc.args:
        if isinstance(arg, list):
            parts.extend(str(item[-1]) for item in arg if isinstance(item, tuple) and item)
        else:
            parts.append(str(arg))
    return "; ".join(p for p in parts if p) or exc.__class__.__name__
