"""Interleaved mode (draft-ietf-ntp-interleaved-modes) with chrony's ``xleave`` client:
gnomon's NTP worker answers a client that asks with the kernel transmit timestamp of its
previous reply, for plain NTP and NTS (issue 15 item 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gnomon.certs import DemoPki
from tests.interop.test_server_interop import chrony_modern, gnomon_server
from tests.peers import chrony_nts_client, wait_until

pytestmark = pytest.mark.interop


def _interleaved_samples(client: Any, count: int, timeout: float) -> dict[str, str]:
    """``chronyc ntpdata`` once the last sample was interleaved and ``count`` valid
    replies came in."""
    last: dict[str, str] = {}

    def probe() -> dict[str, str] | None:
        nonlocal last
        last = client.ntpdata()
        valid = int(last.get("Total valid RX", "0"))
        return last if last.get("Interleaved") == "Yes" and valid >= count else None

    found = wait_until(probe, timeout, interval=0.25, alive=client.process.alive)
    assert found is not None, f"no interleaved sample: {last}\n{client.log_tail()}"
    return found


@pytest.mark.parametrize("nts", [False, True], ids=["plain", "nts"])
@pytest.mark.parametrize("chrony", ["4.3", "4.6"])
def test_chrony_xleave_client_gets_interleaved_replies(
    tmp_path: Path, demo_pki: DemoPki, nts: bool, chrony: str
) -> None:
    bins: dict[str, str] = {}
    if chrony == "4.6":
        bins = dict(zip(("chronyd_bin", "chronyc_bin"), chrony_modern(), strict=True))
    with (
        gnomon_server(tmp_path / "gnomon", demo_pki, require_nts=nts) as server,
        chrony_nts_client(
            tmp_path / "chrony",
            server_host="localhost",
            ke_port=server.ke_port,
            ntp_port=server.ntp_port,
            ca=demo_pki.ca_cert,
            extra_server_options="xleave",
            nts=nts,
            **bins,
        ) as client,
    ):
        data = _interleaved_samples(client, 6, 20)
        assert data.get("Mode") == "Server", data
        assert data.get("Authenticated") == ("Yes" if nts else "No"), data
        assert abs(float(data["Offset"].split()[0])) < 0.01, data
        assert float(data["Peer delay"].split()[0]) < 0.01, data
        print(f"chrony {chrony} {'NTS' if nts else 'plain'} xleave: {data}")
