"""A throwaway PKI for demos and tests: one CA and one NTS-KE server certificate.

`make_demo_pki` writes a self-signed CA and a server leaf signed by it, both shaped
to pass strict verifiers: `cryptography`'s `PolicyBuilder` (RFC 5280 + CA/B rules),
OpenSSL (NTPsec, pyOpenSSL) and GnuTLS (chrony).  Nothing here is fit for a real
deployment: the CA key is thrown away and the validity is short.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KEY_TYPES", "DemoPki", "make_demo_pki"]

KEY_TYPES = ("ecdsa-p256", "rsa-2048")

_BACKDATE = _dt.timedelta(minutes=5)

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class DemoPki:
    """Files of a demo PKI, all PEM."""

    directory: Path
    ca_cert: Path
    """The throwaway CA certificate: the trust anchor a client is given."""
    cert_chain: Path
    """The server leaf certificate (the CA is the only issuer: nothing else needed)."""
    key: Path
    """The server private key, PKCS#8, unencrypted, mode 0600."""


def _new_key(key_type: str) -> _PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or any(c.isspace() or c == "/" for c in name):
        raise ValueError(f"not a DNS name or IP address: {name!r}")
    return x509.DNSName(name.lower().rstrip("."))


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the start (never world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o600)  # in case the umask was stricter: keep exactly 0600
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def make_demo_pki(
    directory: Path,
    names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    *,
    days: int = 30,
    key_type: str = "ecdsa-p256",
) -> DemoPki:
    """Create a CA and a server certificate for `names` in `directory`.

    Writes ``ca.pem``, ``server.pem`` (the leaf) and ``server.key`` (PKCS#8, 0600)
    and returns their paths.  `names` are DNS names or IP addresses (v4 or v6); each
    goes into the leaf's subjectAltName, and the first is also its common name.
    `key_type` is ``"ecdsa-p256"`` (default) or ``"rsa-2048"``; the CA and the leaf
    use the same type.  Both certificates start `_BACKDATE` (5 minutes) in the past,
    to tolerate a peer whose clock is slightly behind, and end after `days` days.
    """
    if not names:
        raise ValueError("at least one name is needed")
    if days < 1:
        raise ValueError("days must be at least 1")
    sans = [_general_name(n) for n in names]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    not_before = now - _BACKDATE
    not_after = now + _dt.timedelta(days=days)

    ca_key = _new_key(key_type)
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gnomon demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, "gnomon demo CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after + _BACKDATE)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = _new_key(key_type)
    leaf_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gnomon demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
        ]
    )
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(leaf_name)
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange is gone in TLS 1.3, so digitalSignature is enough.
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = DemoPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        cert_chain=directory / "server.pem",
        key=directory / "server.key",
    )
    _write_public(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(pki.cert_chain, leaf_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        pki.key,
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return pki
