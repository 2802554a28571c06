"""Abuse controls on NTS-KE: allow/deny lists and the per-address connection rate."""

from __future__ import annotations

from gnomon import Session
from gnomon.certs import DemoPki
from gnomon.errors import GnomonError

from .helpers import LOOPBACK, base_config, running_server


async def _ke_works(port: int, pki: DemoPki) -> bool:
    try:
        await Session(ca_file=pki.ca_cert, timeout=2.0).aquery(LOOPBACK, port)
    except GnomonError:
        return False
    return True


async def test_denied_network_gets_no_handshake(pki: DemoPki) -> None:
    async with running_server(base_config(pki, deny=("127.0.0.0/8",))) as server:
        assert not await _ke_works(server.bound_ke_port, pki)
        assert server.ke_service is not None and server.ke_service.denied >= 1


async def test_allow_list_without_the_client(pki: DemoPki) -> None:
    async with running_server(base_config(pki, allow=("192.0.2.0/24",))) as server:
        assert not await _ke_works(server.bound_ke_port, pki)
    async with running_server(base_config(pki, allow=("127.0.0.1/32",))) as server:
        assert await _ke_works(server.bound_ke_port, pki)


async def test_ke_rate_limit_per_address(pki: DemoPki) -> None:
    config = base_config(pki, ke_rate_burst=2, ke_rate_interval=3600.0)
    async with running_server(config) as server:
        outcomes = [await _ke_works(server.bound_ke_port, pki) for _ in range(4)]
        assert outcomes == [True, True, False, False]
        assert server.ke_service is not None and server.ke_service.rate_limited == 2
