"""gnomon.certs.make_demo_pki: certificates strict verifiers accept, key kept private."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import crypto

from gnomon.certs import DemoPki, make_demo_pki

KEY_TYPES = ["ecdsa-p256", "rsa-2048"]


def load(pki: DemoPki) -> tuple[x509.Certificate, x509.Certificate]:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(pki.cert_chain.read_bytes())
    return ca, leaf


def verify(pki: DemoPki, subject: x509.DNSName | x509.IPAddress) -> list[x509.Certificate]:
    ca, leaf = load(pki)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
    return verifier.verify(leaf, [])


@pytest.fixture(scope="module", params=KEY_TYPES)
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), key_type=request.param)


@pytest.mark.parametrize(
    "subject",
    [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
    ids=["localhost", "127.0.0.1", "::1"],
)
def test_strict_verifier_accepts_the_default_names(
    pki: DemoPki, subject: x509.DNSName | x509.IPAddress
) -> None:
    chain = verify(pki, subject)
    ca, leaf = load(pki)
    assert chain == [leaf, ca]


@pytest.mark.parametrize(
    "subject",
    [
        x509.DNSName("example.com"),
        x509.DNSName("localhost.localdomain"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.2")),
        x509.IPAddress(ipaddress.ip_address("::2")),
    ],
    ids=str,
)
def test_strict_verifier_rejects_other_names(
    pki: DemoPki, subject: x509.DNSName | x509.IPAddress
) -> None:
    with pytest.raises(VerificationError):
        verify(pki, subject)


def test_verifier_rejects_a_leaf_from_another_ca(tmp_path: Path) -> None:
    one = make_demo_pki(tmp_path / "one")
    two = make_demo_pki(tmp_path / "two")
    ca_one, _ = load(one)
    _, leaf_two = load(two)
    verifier = (
        PolicyBuilder().store(Store([ca_one])).build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(VerificationError):
        verifier.verify(leaf_two, [])


def test_files_and_key(pki: DemoPki) -> None:
    assert pki.ca_cert.parent == pki.cert_chain.parent == pki.key.parent == pki.directory
    assert stat.S_IMODE(pki.key.stat().st_mode) == 0o600
    pem = pki.key.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(pem, None)
    _, leaf = load(pki)
    assert key.public_key() == leaf.public_key()
    assert pki.cert_chain.read_bytes().count(b"BEGIN CERTIFICATE") == 1


def test_key_types(tmp_path: Path) -> None:
    ec_pki = make_demo_pki(tmp_path / "ec")
    rsa_pki = make_demo_pki(tmp_path / "rsa", key_type="rsa-2048")
    ec_key = load(ec_pki)[1].public_key()
    rsa_key = load(rsa_pki)[1].public_key()
    assert isinstance(ec_key, ec.EllipticCurvePublicKey)
    assert isinstance(ec_key.curve, ec.SECP256R1)
    assert isinstance(rsa_key, rsa.RSAPublicKey) and rsa_key.key_size == 2048
    with pytest.raises(ValueError, match="key type"):
        make_demo_pki(tmp_path / "bad", key_type="dsa")
    with pytest.raises(ValueError):
        make_demo_pki(tmp_path / "none", names=())


def test_ca_and_leaf_extensions(pki: DemoPki) -> None:
    ca, leaf = load(pki)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ca_ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ca_ku.critical and ca_ku.value.key_cert_sign and ca_ku.value.crl_sign
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert leaf.issuer == ca.subject


def test_validity_starts_in_the_past(tmp_path: Path) -> None:
    pki = make_demo_pki(tmp_path, days=3)
    now = dt.datetime.now(dt.UTC)
    for cert in load(pki):
        assert cert.not_valid_before_utc <= now - dt.timedelta(minutes=1)
    leaf = load(pki)[1]
    assert dt.timedelta(days=2.9) < leaf.not_valid_after_utc - now <= dt.timedelta(days=3)


def test_custom_names(tmp_path: Path) -> None:
    pki = make_demo_pki(tmp_path, ["ntp.example.test", "192.0.2.7", "2001:db8::7"])
    for subject in (
        x509.DNSName("ntp.example.test"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::7")),
    ):
        verify(pki, subject)
    with pytest.raises(VerificationError):
        verify(pki, x509.DNSName("localhost"))


def test_openssl_accepts_the_chain(pki: DemoPki) -> None:
    ca, leaf = load(pki)
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(ca))
    crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf)).verify_certificate()


def test_regenerating_replaces_the_files(tmp_path: Path) -> None:
    first = make_demo_pki(tmp_path)
    old_ca = first.ca_cert.read_bytes()
    second = make_demo_pki(tmp_path)
    assert second == first
    assert second.ca_cert.read_bytes() != old_ca
    assert stat.S_IMODE(second.key.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem", "server.key", "server.pem"]
