"""The assembled in-process server: NTP over UDP and certificate renewal on disk."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.client.ke import ake_exchange
from gnomon.errors import CertificateError
from gnomon.proto.nts.ntp import HEADER_LEN, MODE_SERVER, NtpHeader
from gnomon.server.app import Server
from gnomon.tls import TrustStore

from .helpers import LOOPBACK, ManualClock, base_config, plain_request, running_server, udp_ask


async def test_plain_ntp_over_udp(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        before = time.time()
        reply = await asyncio.to_thread(udp_ask, server.bound_ntp_port, plain_request(0xABCDEF))
        after = time.time()
    assert reply is not None and len(reply) == HEADER_LEN
    header = NtpHeader.decode(reply)
    assert header.mode == MODE_SERVER
    assert header.origin_ts == 0xABCDEF
    assert (header.leap, header.stratum) == (3, 16)
    server_time = (header.transmit_ts >> 32) - 2_208_988_800
    assert before - 2 <= server_time <= after + 2


async def test_require_nts_drops_plain_over_udp(pki: DemoPki) -> None:
    async with running_server(base_config(pki, require_nts=True)) as server:
        reply = await asyncio.to_thread(udp_ask, server.bound_ntp_port, plain_request(), 0.3)
        assert reply is None
        assert server.ntp.counters.dropped == 1


async def test_malformed_datagrams_leave_the_service_running(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        port = server.bound_ntp_port
        for junk in (b"", b"\x23", plain_request() + b"\x01\x02\x03", os.urandom(3000)):
            assert await asyncio.to_thread(udp_ask, port, junk, 0.1) is None
        reply = await asyncio.to_thread(udp_ask, port, plain_request())
        assert reply is not None
        assert server.ntp.counters.malformed >= 3
        assert sum(s.errors for s in server.ntp_services) == 0


# --- certificate renewal -----------------------------------------------------------------------


def _install(source: DemoPki, target: Path) -> None:
    """Replace the served files the way a renewal tool does (new file, rename over)."""
    for src, name in ((source.cert_chain, "server.pem"), (source.key, "server.key")):
        temporary = target / f".{name}.new"
        shutil.copyfile(src, temporary)
        os.replace(temporary, target / name)


async def _ke_ok(port: int, ca: Path) -> bool:
    try:
        await ake_exchange(LOOPBACK, port, trust=TrustStore.from_file(ca), timeout=2.0)
    except CertificateError:
        return False
    return True


async def test_certificate_swapped_on_disk_is_picked_up(tmp_path: Path) -> None:
    old = make_demo_pki(tmp_path / "old")
    new = make_demo_pki(tmp_path / "new")
    served = tmp_path / "served"
    served.mkdir()
    _install(old, served)
    config = base_config(old, certificate=served / "server.pem", key=served / "server.key")
    clock = ManualClock()
    async with running_server(config, clock=clock) as server:
        certificates = server.certificates
        assert certificates is not None
        port = server.bound_ke_port
        assert await _ke_ok(port, old.ca_cert)
        assert not await _ke_ok(port, new.ca_cert)
        _install(new, served)
        assert await _ke_ok(port, old.ca_cert)  # files are looked at once per interval
        assert (certificates.checks, certificates.reloads) == (0, 0)
        clock.advance(certificates.interval)
        assert await _ke_ok(port, new.ca_cert)  # the next connection uses the new files
        assert not await _ke_ok(port, old.ca_cert)
        assert (certificates.checks, certificates.reloads) == (1, 1)
        assert certificates.reload_failures == 0


async def _renewal_kept_old(server: Server, old: DemoPki, clock: ManualClock) -> None:
    """After a renewal that cannot load: the check ran, failed, and the old files serve."""
    certificates = server.certificates
    assert certificates is not None
    clock.advance(certificates.interval)
    for _ in range(3):
        assert await _ke_ok(server.bound_ke_port, old.ca_cert)
    assert (certificates.checks, certificates.reload_failures) == (1, 1)
    assert certificates.reloads == 0


async def test_broken_renewal_keeps_the_previous_certificate(tmp_path: Path) -> None:
    old = make_demo_pki(tmp_path / "old")
    other = make_demo_pki(tmp_path / "other")
    served = tmp_path / "served"
    served.mkdir()
    _install(old, served)
    config = base_config(old, certificate=served / "server.pem", key=served / "server.key")
    clock = ManualClock()
    async with running_server(config, clock=clock) as server:
        # a certificate whose key is not (yet) the one beside it
        temporary = served / ".server.pem.new"
        shutil.copyfile(other.cert_chain, temporary)
        os.replace(temporary, served / "server.pem")
        await _renewal_kept_old(server, old, clock)


@pytest.mark.parametrize("garbage", [b"", b"-----BEGIN CERTIFICATE-----\nnope\n"])
async def test_unreadable_renewal_keeps_serving(tmp_path: Path, garbage: bytes) -> None:
    old = make_demo_pki(tmp_path / "old")
    served = tmp_path / "served"
    served.mkdir()
    _install(old, served)
    config = base_config(old, certificate=served / "server.pem", key=served / "server.key")
    clock = ManualClock()
    async with running_server(config, clock=clock) as server:
        (served / "server.pem").write_bytes(garbage)
        await _renewal_kept_old(server, old, clock)
