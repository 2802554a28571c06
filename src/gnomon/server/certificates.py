"""The server's TLS context, rebuilt when the certificate or key file changes.

Operators renew certificates (ACME every 60-90 days) without restarting:
new connections pick up the new files; connections under way keep the old
context. A broken renewal keeps the previous context and logs why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from OpenSSL import SSL

from ..errors import ConfigError
from ..tls import ALPN_NTSKE

log = logging.getLogger("gnomon.tls")

TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
_OP_PRIORITIZE_CHACHA = 0x00200000  # SSL_OP_PRIORITIZE_CHACHA; pyOpenSSL has no name for it


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
    if ALPN_NTSKE not in offered:
        # A fatal no_application_protocol alert (RFC 7301 3.2), not a handshake without ALPN.
        raise SSL.Error("client does not offer ALPN ntske/1")
    return ALPN_NTSKE


def read_pem_files(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    """The bytes of the certificate and key files; ConfigError naming the one unreadable."""
    try:
        cert_pem = cert_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read certificate file {cert_path}: {exc.strerror}") from None
    try:
        key_pem = key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {key_path}: {exc.strerror}") from None
    return cert_pem, key_pem


def load_server_context(cert_path: Path, key_path: Path) -> tuple[SSL.Context, datetime]:
    """A TLS 1.3-only server context and the leaf's expiry; ConfigError on any problem."""
    return server_context(*read_pem_files(cert_path, key_path), cert_path, key_path)


def server_context(
    cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path
) -> tuple[SSL.Context, datetime]:
    """:func:`load_server_context` from the files' bytes (the paths name them in errors)."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(f"certificate file {cert_path} holds no valid PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"key file {key_path} holds no valid unencrypted PEM private key"
        ) from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigError(f"key file {key_path}: unsupported key type")
    leaf = chain[0]
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(f"key file {key_path} does not match certificate {cert_path}")
    expiry = leaf.not_valid_after_utc
    if expiry <= datetime.now(UTC):
        log.warning("certificate %s expired on %s", cert_path, expiry.isoformat())
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate(leaf)
    for extra in chain[1:]:
        context.add_extra_chain_cert(extra)
    context.use_privatekey(key)
    context.check_privatekey()
    context.set_alpn_select_callback(_select_alpn)
    # NTS-KE clients do not resume TLS sessions (a client runs NTS-KE again only when its
    # cookies are gone, often much later), so TLS 1.3 session tickets are pure cost: OpenSSL
    # issues two per handshake by default, each a serialised and encrypted session.
    # pyOpenSSL has no SSL_CTX_set_num_tickets; with SSL_OP_NO_TICKET OpenSSL issues
    # stateful tickets instead (a session ID, no encryption), and with the session cache
    # off there is nothing kept and nothing any ticket could resume.
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # The server's choice of cipher suite: AES-128-GCM (SHA-256 key schedule) before
    # AES-256-GCM (SHA-384), about 20 µs less per handshake. 128-bit is the security level
    # of everything else here (P-256 or X25519 certificates and key shares, the NTS AEADs'
    # 128-bit keys). A client that puts ChaCha20 first (no AES hardware) gets ChaCha20.
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE | _OP_PRIORITIZE_CHACHA)
    return context, expiry


class CertificateSource:
    """The current server context; files are checked at most once per ``interval``.

    ``clock`` gives monotonic seconds (tests pass a fake one to trigger the next check
    without waiting). ``checks``, ``reloads`` and ``reload_failures`` count what happened.
    With ``watch=False`` the files are read once and renewals come through
    :meth:`install` (a worker that dropped root, fed by its supervisor, which can read a
    key only root may read); :attr:`pem` is the pair of file contents in force.
    """

    def __init__(
        self,
        cert_path: str | Path,
        key_path: str | Path,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        watch: bool = True,
    ):
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.interval = interval
        self.clock = clock
        self.watch = watch
        self.pem = read_pem_files(self.cert_path, self.key_path)
        self._context, self.expiry = server_context(*self.pem, self.cert_path, self.key_path)
        self._stamp = self._file_stamp()
        self._checked = clock()
        self.checks = 0
        self.reloads = 0
        self.reload_failures = 0

    def _file_stamp(self) -> tuple[float, ...]:
        try:
            return tuple(
                value
                for p in (self.cert_path, self.key_path)
                for value in (p.stat().st_mtime, p.stat().st_size, p.stat().st_ino)
            )
        except OSError:
            return ()

    def context(self) -> SSL.Context:
        now = self.clock()
        if self.watch and now - self._checked >= self.interval:
            self._checked = now
            self.checks += 1
            stamp = self._file_stamp()
            if stamp and stamp != self._stamp:
                try:
                    pem = read_pem_files(self.cert_path, self.key_path)
                except ConfigError as exc:
                    self.reload_failures += 1
                    log.error("certificate not reloaded, keeping the previous one: %s", exc)
                else:
                    self.install(*pem)
                self._stamp = stamp
        return self._context

    def install(self, cert_pem: bytes, key_pem: bytes) -> bool:
        """Use these file contents from now on, if they make a valid context."""
        try:
            self._context, self.expiry = server_context(
                cert_pem, key_pem, self.cert_path, self.key_path
            )
        except ConfigError as exc:
            self.reload_failures += 1
            log.error("certificate not reloaded, keeping the previous one: %s", exc)
            return False
        self.pem = (cert_pem, key_pem)
        self.reloads += 1
        log.info("certificate reloaded from %s", self.cert_path)
        return True
