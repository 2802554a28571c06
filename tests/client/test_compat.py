"""gnomon.compat: ntplib's client API over NTS, against gnomon servers on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.compat import (
    NTP,
    NTPClient,
    NTPException,
    NTPStats,
    leap_to_text,
    mode_to_text,
    ntp_to_system_time,
    ref_id_to_text,
    stratum_to_text,
    system_to_ntp_time,
)
from gnomon.errors import GnomonError
from tests.client.servers import NtsServers

# ntplib 0.4.0's NTPStats: the attributes of NTPPacket plus NTPStats' own (read from its source)
NTPLIB_ATTRIBUTES = {
    "leap",
    "version",
    "mode",
    "stratum",
    "poll",
    "precision",
    "root_delay",
    "root_dispersion",
    "ref_id",
    "ref_timestamp",
    "orig_timestamp",
    "recv_timestamp",
    "tx_timestamp",
    "dest_timestamp",
    "offset",
    "delay",
    "tx_time",
    "recv_time",
    "orig_time",
    "ref_time",
    "dest_time",
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NtsServers]:
    pki: DemoPki = make_demo_pki(tmp_path_factory.mktemp("pki"), days=1)
    with NtsServers(pki, lies=[0, 3600]) as running:
        yield running


def test_request_has_ntplibs_attributes_and_consistent_values(servers: NtsServers) -> None:
    client = NTPClient(ca_file=servers.pki.ca_cert)
    before = time.time()
    response = client.request("127.0.0.1", version=3, port=servers.ke_ports[0], timeout=5)
    after = time.time()
    assert isinstance(response, NTPStats)
    assert set(dir(response)) >= NTPLIB_ATTRIBUTES
    assert response.authenticated is True
    assert abs(response.offset) < 0.01  # the server serves this machine's clock
    assert 0 <= response.delay < 0.5
    assert before - 0.01 <= response.tx_time <= after + 0.01
    assert response.orig_time <= response.dest_time
    assert response.recv_time <= response.tx_time
    # ntplib's own formulas over the timestamps give the same offset and delay
    ntplib_offset = (
        (response.recv_timestamp - response.orig_timestamp)
        + (response.tx_timestamp - response.dest_timestamp)
    ) / 2
    ntplib_delay = (response.dest_timestamp - response.orig_timestamp) - (
        response.tx_timestamp - response.recv_timestamp
    )
    assert ntplib_offset == pytest.approx(response.offset, abs=2e-6)
    assert ntplib_delay == pytest.approx(response.delay, abs=2e-6)
    assert (response.mode, response.version, response.stratum, response.leap) == (4, 4, 10, 0)
    assert ref_id_to_text(response.ref_id, response.stratum) == "127.127.1.1"
    assert response.ref_time == -NTP.NTP_DELTA  # not kept: documented


def test_an_hour_off_server_shows_in_offset(servers: NtsServers) -> None:
    response = NTPClient(ca_file=servers.pki.ca_cert).request("127.0.0.1", port=servers.ke_ports[1])
    assert response.offset == pytest.approx(3600, abs=0.01)


def test_the_client_keeps_cookies_between_requests(servers: NtsServers) -> None:
    client = NTPClient(ca_file=servers.pki.ca_cert)
    first = client.request("127.0.0.1", port=servers.ke_ports[0])
    second = client.request("127.0.0.1", port=servers.ke_ports[0])
    assert first.result.key_exchange is True
    assert second.result.key_exchange is False


def test_failures_are_ntp_exceptions(servers: NtsServers) -> None:
    with pytest.raises(NTPException) as info:
        NTPClient().request("127.0.0.1", port=servers.ke_ports[0], timeout=2)  # system CAs
    assert isinstance(info.value, GnomonError)
    assert "not trusted" in str(info.value)
    with pytest.raises(NTPException):
        NTPClient().request("127.0.0.1", port="no-such-service")


def test_helpers_match_ntplib() -> None:
    assert NTP.NTP_DELTA == 2208988800
    assert ntp_to_system_time(system_to_ntp_time(1.5)) == 1.5
    assert leap_to_text(3) == "unknown (clock unsynchronized)"
    assert mode_to_text(4) == "server"
    assert stratum_to_text(1) == "primary reference (1)"
    assert stratum_to_text(3) == "secondary reference (3)"
    assert stratum_to_text(16) == "unsynchronized (16)"
    assert ref_id_to_text(0x47505300, 1) == "Global Position System"
    assert ref_id_to_text(0x7F7F0101, 3) == "127.127.1.1"
    with pytest.raises(NTPException):
        leap_to_text(7)
    with pytest.raises(NTPException):
        stratum_to_text(17)
