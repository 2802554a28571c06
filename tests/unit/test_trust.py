"""CA loading that never lets a library warning out, and certificate errors a user can act on."""

from __future__ import annotations

import base64
import datetime as dt
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.errors import CertificateError, KissOfDeathError
from gnomon.tls import TrustStore, load_certificates


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), names=("localhost", "127.0.0.1"))


def _chain(pki: DemoPki) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pki.cert_chain.read_bytes())


def _negative_serial(pem: bytes) -> bytes:
    """`pem` with the sign bit of its serial number set (its signature no longer matches)."""
    der = bytearray(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))
    at = der.index(b"\xa0\x03\x02\x01\x02\x02") + 6  # version [0] v3, then the serial INTEGER
    der[at + 1] |= 0x80
    body = base64.encodebytes(bytes(der)).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def test_a_bundle_with_a_negative_serial_loads_quietly_and_keeps_every_ca(pki: DemoPki) -> None:
    good = pki.ca_cert.read_bytes()
    negative = _negative_serial(good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the test
        x509_warns = False
        try:
            x509.load_pem_x509_certificate(negative)
        except Warning:
            x509_warns = True
        assert x509_warns, "cryptography no longer warns: this test exercises nothing"
        certificates, skipped = load_certificates(good + negative + b"junk" + good)
    assert len(certificates) == 3 and skipped == 0


def test_a_certificate_that_does_not_parse_is_skipped_and_the_others_kept(pki: DemoPki) -> None:
    good = pki.ca_cert.read_bytes()
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    store = TrustStore.from_pem(broken + good, "bundle.pem")
    assert store.skipped == 1
    store.verify(_chain(pki), "localhost")


def test_system_bundle_loads_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        certificates, skipped = load_certificates(Path(TrustStore.system().source).read_bytes())
    assert len(certificates) >= 50 and skipped == 0


def test_unknown_issuer_is_named(pki: DemoPki, tmp_path: Path) -> None:
    other = make_demo_pki(tmp_path / "other")
    with pytest.raises(CertificateError) as info:
        TrustStore.from_file(other.ca_cert).verify(_chain(pki), "localhost")
    text = str(info.value)
    assert text.startswith("certificate of localhost not trusted: unknown issuer: ")
    assert "certificate 'CN=localhost,O=gnomon demo' is issued by 'CN=" in text
    assert str(other.ca_cert) in text and "(verifier: " in text


def test_expired_and_not_yet_valid_are_named(pki: DemoPki) -> None:
    store = TrustStore.from_file(pki.ca_cert)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(CertificateError, match=r"not trusted: certificate '.*' expired on \d{4}-"):
        store.verify(_chain(pki), "localhost", now=later)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    with pytest.raises(CertificateError, match=r"is not valid before \d{4}-"):
        store.verify(_chain(pki), "localhost", now=earlier)


@pytest.mark.parametrize("host", ["::1", "other.example"])
def test_name_mismatch_lists_the_names_of_the_certificate(pki: DemoPki, host: str) -> None:
    with pytest.raises(CertificateError) as info:
        TrustStore.from_file(pki.ca_cert).verify(_chain(pki), host)
    expected = f"certificate 'CN=localhost,O=gnomon demo' is for localhost, 127.0.0.1, not {host}"
    assert f"not trusted: name mismatch: {expected} (verifier: " in str(info.value)


def test_kiss_init_says_the_server_is_not_synchronised_and_whether_authenticated() -> None:
    assert str(KissOfDeathError("INIT")) == (
        "server is not synchronised yet (kiss-o'-death 'INIT', authenticated with NTS)"
    )
    assert "NOT authenticated" in str(KissOfDeathError("RATE", authenticated=False))
    assert KissOfDeathError("ABCD").code == "ABCD"
