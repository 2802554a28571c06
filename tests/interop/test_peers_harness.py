"""The interop harness itself: real peers start, authenticate each other, and stop.

These tests pin down what the reference peers speak (documented in tests/peers/chrony.py
and tests/peers/ntpsec.py), so that gnomon's interop tests can rely on it.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from tests.peers import (
    NetNs,
    PeerNotInstalled,
    PeerStartError,
    chrony_nts_client,
    chrony_nts_server,
    localhost_addresses,
    ntpsec_nts_client,
    ntpsec_nts_server,
)
from tests.peers.clock import (
    STA_UNSYNC,
    ClockGuard,
    ClockSnapshot,
    Timex,
    assert_clock_unchanged,
    read_adjtimex,
    snapshot,
)
from tests.peers.ke_probe import (
    COMPLIANT_GCM_SIV_EXPORTER,
    ERROR,
    KeResult,
    RecordingKeServer,
    ke_exchange,
    record,
)

AES_SIV_CMAC_256 = 15
AES_SIV_CMAC_384 = 16
AES_128_GCM_SIV = 30


# --- chrony <-> chrony on loopback --------------------------------------------------------


@pytest.mark.interop
@pytest.mark.localhost
def test_chrony_client_gets_authenticated_samples_from_chrony_server(
    tmp_path: Path, demo_pki: DemoPki
) -> None:
    with (
        chrony_nts_server(tmp_path / "server", demo_pki) as server,
        chrony_nts_client(
            tmp_path / "client",
            server_host="localhost",
            ke_port=server.ke_port,
            ntp_port=server.ntp_port,
            ca=demo_pki.ca_cert,
        ) as client,
    ):
        sample = client.wait_authenticated(timeout=15)
        assert sample["authenticated"] is True
        assert sample["stratum"] == 10
        assert abs(sample["offset"]) < 0.01
        assert sample["remote_address"] in localhost_addresses()
        assert sample["remote_port"] == server.ntp_port  # from Port Negotiation
        assert sample["aead"] == AES_SIV_CMAC_256
        assert sample["key_length"] == 256
        assert sample["cookie_length"] == 100
        assert sample["cookies"] >= 1
        stats = server.serverstats()
        assert int(stats.get("NTS-KE connections accepted", "1")) >= 1
        assert int(stats.get("Authenticated NTP packets", "1")) >= 1
        assert server.pid > 0 and client.pid > 0
    for log in (server.log_path, client.log_path):
        assert "Disabled control of system clock" in log.read_text()  # -x


@pytest.mark.interop
def test_chrony_accepts_an_rsa_demo_pki(tmp_path: Path) -> None:
    pki = make_demo_pki(tmp_path / "pki", key_type="rsa-2048")
    with (
        chrony_nts_server(tmp_path / "server", pki) as server,
        chrony_nts_client(
            tmp_path / "client",
            server_host="127.0.0.1",  # the IP SAN this time
            ke_port=server.ke_port,
            ntp_port=server.ntp_port,
            ca=pki.ca_cert,
        ) as client,
    ):
        assert client.wait_authenticated(timeout=15)["aead"] == AES_SIV_CMAC_256


@pytest.mark.interop
def test_chrony_server_speaks_only_aes_siv_cmac_256_and_not_record_1024(
    tmp_path: Path, demo_pki: DemoPki
) -> None:
    with chrony_nts_server(tmp_path / "server", demo_pki) as server:

        def ke(aeads: list[int], extra: bytes = b"") -> KeResult:
            return ke_exchange(
                server.host, server.ke_port, demo_pki.ca_cert, aeads=aeads, extra=extra
            )

        r = ke(aeads=[AES_128_GCM_SIV, AES_SIV_CMAC_256])
        assert r.tls_version == "TLSv1.3" and r.alpn == b"ntske/1"
        assert r.aead == [AES_SIV_CMAC_256]
        assert len(r.cookies) == 8 and {len(c) for c in r.cookies} == {100}
        assert r.port == server.ntp_port
        # Only AES-128-GCM-SIV offered: an empty AEAD record, no error, no cookies.
        r = ke(aeads=[AES_128_GCM_SIV])
        assert r.aead == [] and r.errors == [] and r.cookies == []
        # Record 1024 unknown: ignored when non-critical, Error 0 when critical.
        r = ke(aeads=[AES_128_GCM_SIV], extra=record(COMPLIANT_GCM_SIV_EXPORTER, critical=False))
        assert r.of_type(COMPLIANT_GCM_SIV_EXPORTER) == [] and r.aead == []
        r = ke(aeads=[AES_SIV_CMAC_256], extra=record(COMPLIANT_GCM_SIV_EXPORTER, critical=True))
        assert r.errors == [0] and r.of_type(ERROR)


@pytest.mark.interop
@pytest.mark.localhost
def test_chrony_client_offers_only_aes_siv_cmac_256(tmp_path: Path, demo_pki: DemoPki) -> None:
    with (
        RecordingKeServer(demo_pki.cert_chain, demo_pki.key) as recorder,
        chrony_nts_client(
            tmp_path / "client",
            server_host="localhost",
            ke_port=recorder.port,
            ntp_port=9,  # never reached: the recorder gives no cookies
            ca=demo_pki.ca_cert,
        ),
    ):
        request = recorder.wait(timeout=10)
    assert recorder.alpn_offered == [b"ntske/1"]
    by_type = {r.type: r for r in request}
    assert by_type[1].critical and by_type[1].u16s() == [0]
    assert by_type[4].critical and by_type[4].u16s() == [AES_SIV_CMAC_256]
    assert COMPLIANT_GCM_SIV_EXPORTER not in by_type
    assert request[-1].type == 0 and request[-1].critical


# --- NTPsec ---------------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.localhost
def test_ntpsec_client_in_netns_authenticates_with_chrony_server(
    tmp_path: Path, demo_pki: DemoPki, peer_netns: NetNs
) -> None:
    # NTPsec's client binds 127.0.0.1:123 in the namespace and sends NTP to the port
    # of the Port Negotiation record: the server must use another port and say so.
    with chrony_nts_server(tmp_path / "server", demo_pki, netns=peer_netns) as server:
        assert server.ntp_port != 123
        with ntpsec_nts_client(
            tmp_path / "client",
            netns=peer_netns,
            ca=demo_pki.ca_cert,
            server="localhost",
            ke_port=server.ke_port,
        ) as client:
            assoc = client.wait_authenticated(timeout=20)
    assert assoc["reach"] == "yes" and assoc["auth"] == "ok"
    assert assoc["srcadr"] in localhost_addresses()
    assert assoc["srcport"] == server.ntp_port
    assert assoc["stratum"] == 10
    assert assoc["ntscookies"] >= 1
    assert abs(assoc["offset"]) < 0.01


@pytest.mark.interop
@pytest.mark.localhost
def test_chrony_client_authenticates_with_ntpsec_server_in_its_netns(
    tmp_path: Path, demo_pki: DemoPki
) -> None:
    with ntpsec_nts_server(tmp_path / "ntpsec", demo_pki) as server:
        assert server.pid > 0
        # Its namespace has nothing but loopback.
        out = server.run_in_netns(["ip", "-o", "link"], capture_output=True, text=True)
        assert [line.split(":")[1].strip() for line in out.stdout.splitlines()] == ["lo"]
        with chrony_nts_client(
            tmp_path / "client",
            server_host="localhost",
            ke_port=server.ke_port,
            ntp_port=server.ntp_port,
            ca=demo_pki.ca_cert,
            netns=server.netns,
        ) as client:
            sample = client.wait_authenticated(timeout=20)
        assert sample["aead"] == AES_SIV_CMAC_256
        assert sample["cookie_length"] == 104
        assert sample["remote_port"] == 123
        assert sample["stratum"] == 10
    # ntpd tried to adjust the clock at start-up and was refused (no CAP_SYS_TIME).
    assert "ntp_adjtime: Operation not permitted" in (tmp_path / "ntpsec" / "ntpd.log").read_text()


@pytest.mark.interop
def test_ntpsec_server_aead_choice(tmp_path: Path, demo_pki: DemoPki) -> None:
    with ntpsec_nts_server(tmp_path / "ntpsec", demo_pki) as server, server.netns.entered():
        # NTPsec serves NTS-KE one connection at a time.
        r = ke_exchange("127.0.0.1", 4460, demo_pki.ca_cert, aeads=[AES_SIV_CMAC_384])
        assert r.aead == [AES_SIV_CMAC_384] and {len(c) for c in r.cookies} == {136}
        assert r.port is None  # NTP on the default port, 123
        # Offered only AES-128-GCM-SIV, it answers AES-SIV-CMAC-256 anyway.
        r = ke_exchange("127.0.0.1", 4460, demo_pki.ca_cert, aeads=[AES_128_GCM_SIV])
        assert r.aead == [AES_SIV_CMAC_256] and {len(c) for c in r.cookies} == {104}


# --- harness behaviour ----------------------------------------------------------------------


@pytest.mark.interop
def test_peer_start_failure_shows_the_log(tmp_path: Path, demo_pki: DemoPki) -> None:
    with (
        pytest.raises(PeerStartError, match=r"(?s)not listening.*Invalid directive"),
        chrony_nts_server(tmp_path / "server", demo_pki, extra_config=["no-such-directive 1"]),
    ):
        pass


def test_missing_peer_fails_instead_of_skipping(tmp_path: Path, demo_pki: DemoPki) -> None:
    with (
        pytest.raises(PeerNotInstalled, match="make peers"),
        chrony_nts_server(tmp_path / "server", demo_pki, chronyd_bin="/nonexistent/chronyd"),
    ):
        pass
    assert issubclass(PeerNotInstalled, AssertionError)  # a failure, never a skip


def test_peer_netns_has_only_loopback(peer_netns: NetNs) -> None:
    out = peer_netns.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    assert {line.split()[1] for line in out.stdout.splitlines()} == {"lo"}
    with peer_netns.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 123))  # free in a fresh namespace, whatever the host runs
        assert peer_netns.udp_bound(123)
    with pytest.raises(subprocess.TimeoutExpired):
        peer_netns.run(["sleep", "5"], timeout=0.2)


def test_adjtimex_read_is_a_plain_tuple_and_stable() -> None:
    tx = read_adjtimex()
    assert isinstance(tx, tuple) and isinstance(tx, Timex)
    assert 0 <= tx.state <= 5
    assert tx.tick > 0
    a, b = snapshot(), snapshot()
    assert a.changes(b) == []
    with ClockGuard() as guard:
        pass
    assert guard.before is not None


def test_clock_changes_are_reported() -> None:
    before = snapshot()
    tx = before.timex
    moved = ClockSnapshot(tx._replace(freq=tx.freq + 65536, status=tx.status ^ STA_UNSYNC), 0)
    changes = before.changes(moved, step_tolerance_ns=10**18)
    assert any(c.startswith("freq:") for c in changes)
    assert any(c.startswith("status:") for c in changes)
    stepped = ClockSnapshot(tx, before.realtime_minus_monotonic_ns + 2_000_000)
    assert [c for c in before.changes(stepped) if "stepped" in c]
    with pytest.raises(AssertionError, match="freq"):
        assert_clock_unchanged(before, moved)
