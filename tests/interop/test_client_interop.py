"""gnomon's client against real NTS servers: chrony 4.3, chrony 4.6 and NTPsec.

Every test starts its peer on loopback (NTPsec in a private network namespace)
with a throwaway CA; the clock guard checks no peer touched the system clock.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import gnomon
from gnomon.certs import DemoPki, make_demo_pki
from tests.peers import ChronyServer, NtpsecServer, chrony_nts_server, ntpsec_nts_server

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
MODERN_CHRONYD = REPO / ".peers" / "chrony-modern" / "chronyd"
MODERN_CHRONYC = REPO / ".peers" / "chrony-modern" / "chronyc"


def _modern_binaries() -> dict[str, str]:
    for binary in (MODERN_CHRONYD, MODERN_CHRONYC):
        if not binary.exists():
            raise AssertionError(f"{binary} is missing: run `make peers` (chrony 4.6 for AEAD 30)")
    return {"chronyd_bin": str(MODERN_CHRONYD), "chronyc_bin": str(MODERN_CHRONYC)}


@pytest.fixture
def chrony43(tmp_path: Path, demo_pki: DemoPki) -> Iterator[ChronyServer]:
    with chrony_nts_server(tmp_path / "chrony43", demo_pki) as server:
        yield server


@pytest.fixture
def chrony46(tmp_path: Path, demo_pki: DemoPki) -> Iterator[ChronyServer]:
    with chrony_nts_server(tmp_path / "chrony46", demo_pki, **_modern_binaries()) as server:
        yield server


@pytest.fixture
def ntpsec(tmp_path: Path, demo_pki: DemoPki) -> Iterator[NtpsecServer]:
    with ntpsec_nts_server(tmp_path / "ntpsec", demo_pki) as server:
        yield server


def _check(result: gnomon.Result, aead: int, ntp_port: int) -> None:
    assert result.authenticated
    assert result.aead == aead
    assert result.port == ntp_port  # learnt from the Port Negotiation record (or 123)
    assert result.stratum == 10 and result.synchronized
    assert abs(result.offset) < 0.01, result  # same machine, same clock
    assert 0 <= result.delay < 0.5
    assert result.cookies_left == 8


def _cli(*args: str, netns_run: object = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gnomon", "query", *args]
    if netns_run is not None:
        return netns_run(command, capture_output=True, text=True, timeout=60)  # type: ignore[operator, no-any-return]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


# --- chrony 4.3 (Debian 12): AEAD 15 ------------------------------------------------------


@pytest.mark.localhost
def test_query_and_session_reuse_against_chrony(chrony43: ChronyServer, demo_pki: DemoPki) -> None:
    session = gnomon.Session(ca_file=demo_pki.ca_cert, aeads=(15,))
    first = session.query("localhost", chrony43.ke_port)
    _check(first, 15, chrony43.ntp_port)
    assert first.key_exchange
    second = session.query("localhost", chrony43.ke_port)
    _check(second, 15, chrony43.ntp_port)
    assert not second.key_exchange, "the second query must reuse a cookie, not redo NTS-KE"
    assert session.key_exchanges == 1


def test_module_level_query_against_chrony(chrony43: ChronyServer, demo_pki: DemoPki) -> None:
    result = gnomon.query("127.0.0.1", chrony43.ke_port, ca_file=demo_pki.ca_cert)
    _check(result, 15, chrony43.ntp_port)  # chrony 4.3 answers our default offer (30, 15) with 15


@pytest.mark.localhost
def test_aquery_against_chrony(chrony43: ChronyServer, demo_pki: DemoPki) -> None:
    async def run() -> tuple[gnomon.Result, gnomon.Result]:
        session = gnomon.Session(ca_file=demo_pki.ca_cert, aeads=(15,))
        first = await session.aquery("localhost", chrony43.ke_port)
        return first, await gnomon.aquery("localhost", chrony43.ke_port, session=session)

    first, second = asyncio.run(run())
    _check(first, 15, chrony43.ntp_port)
    _check(second, 15, chrony43.ntp_port)
    assert first.key_exchange and not second.key_exchange


@pytest.mark.localhost
def test_cli_against_chrony(chrony43: ChronyServer, demo_pki: DemoPki) -> None:
    done = _cli(
        "--ca", str(demo_pki.ca_cert), "--count", "2", "--json", f"localhost:{chrony43.ke_port}"
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["authenticated"] for row in rows] == [True, True]
    assert [row["key_exchange"] for row in rows] == [True, False]
    assert {row["aead"] for row in rows} == {15}
    table = _cli("--ca", str(demo_pki.ca_cert), f"localhost:{chrony43.ke_port}")
    assert (
        table.returncode == 0 and "yes (NTS)" in table.stdout and "AES_SIV_CMAC_256" in table.stdout
    )


@pytest.mark.localhost
def test_wrong_ca_fails_clearly(chrony43: ChronyServer, tmp_path: Path) -> None:
    other = make_demo_pki(tmp_path / "other")
    with pytest.raises(gnomon.CertificateError, match="not trusted"):
        gnomon.Session(ca_file=other.ca_cert).query("localhost", chrony43.ke_port)
    done = _cli("--ca", str(other.ca_cert), f"localhost:{chrony43.ke_port}")
    assert done.returncode != 0
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("gnomon: certificate of localhost not trusted")
    )


@pytest.mark.localhost
def test_name_not_in_certificate_fails(tmp_path: Path) -> None:
    only_localhost = make_demo_pki(tmp_path / "pki", names=("localhost",))
    with chrony_nts_server(tmp_path / "chrony", only_localhost) as server:
        session = gnomon.Session(ca_file=only_localhost.ca_cert)
        assert session.query("localhost", server.ke_port).authenticated
        with pytest.raises(gnomon.CertificateError, match=r"127\.0\.0\.1"):
            session.query("127.0.0.1", server.ke_port)


@pytest.mark.localhost
def test_no_common_aead_is_reported(chrony43: ChronyServer, demo_pki: DemoPki) -> None:
    with pytest.raises(gnomon.NegotiationError, match="none of the offered AEAD"):
        gnomon.Session(ca_file=demo_pki.ca_cert, aeads=(30,)).query("localhost", chrony43.ke_port)
    done = _cli("--ca", str(demo_pki.ca_cert), "--aead", "30", f"localhost:{chrony43.ke_port}")
    assert done.returncode != 0 and "none of the offered AEAD" in done.stderr


@pytest.mark.localhost
def test_session_file_skips_key_exchange_after_restart(
    chrony43: ChronyServer, demo_pki: DemoPki, tmp_path: Path
) -> None:
    state = tmp_path / "state" / "session.json"
    first = gnomon.Session(ca_file=demo_pki.ca_cert, state_file=state).query(
        "localhost", chrony43.ke_port
    )
    assert first.key_exchange
    assert state.stat().st_mode & 0o777 == 0o600
    reborn = gnomon.Session(ca_file=demo_pki.ca_cert, state_file=state)
    second = reborn.query("localhost", chrony43.ke_port)
    _check(second, first.aead, chrony43.ntp_port)
    assert not second.key_exchange and reborn.key_exchanges == 0


@pytest.mark.localhost
def test_nak_after_server_key_change_recovers_with_new_key_exchange(
    tmp_path: Path, demo_pki: DemoPki
) -> None:
    session = gnomon.Session(ca_file=demo_pki.ca_cert, aeads=(15,))
    with chrony_nts_server(tmp_path / "before", demo_pki) as server:
        ke_port, ntp_port = server.ke_port, server.ntp_port
        assert session.query("localhost", ke_port).key_exchange
    # Same ports, fresh server keys: the cookies we hold are now worthless.
    with chrony_nts_server(tmp_path / "after", demo_pki, ke_port=ke_port, ntp_port=ntp_port):
        result = session.query("localhost", ke_port)
        _check(result, 15, ntp_port)
        assert result.key_exchange, "after the NAK the session must run NTS-KE again"
        assert session.key_exchanges == 2


@pytest.mark.localhost
def test_several_servers_at_once(tmp_path: Path, demo_pki: DemoPki) -> None:
    with (
        chrony_nts_server(tmp_path / "a", demo_pki) as a,
        chrony_nts_server(tmp_path / "b", demo_pki) as b,
    ):
        session = gnomon.Session(ca_file=demo_pki.ca_cert)
        results = session.query_many(
            [f"localhost:{a.ke_port}", f"[::1]:{b.ke_port}", "localhost:1"]
        )
        assert isinstance(results[0], gnomon.Result) and results[0].port == a.ntp_port
        assert isinstance(results[1], gnomon.Result) and results[1].port == b.ntp_port
        assert isinstance(results[2], gnomon.GnomonError)  # nothing listens on port 1


# --- chrony 4.6 (Debian 13, unpacked): AEAD 30 and record 1024 ---------------------------


@pytest.mark.localhost
def test_aead_30_against_chrony_4_6(chrony46: ChronyServer, demo_pki: DemoPki) -> None:
    session = gnomon.Session(ca_file=demo_pki.ca_cert, aeads=(30,))
    first = session.query("localhost", chrony46.ke_port)
    _check(first, 30, chrony46.ntp_port)
    second = asyncio.run(session.aquery("localhost", chrony46.ke_port))
    _check(second, 30, chrony46.ntp_port)
    assert not second.key_exchange
    done = _cli(
        "--ca", str(demo_pki.ca_cert), "--aead", "30", "--json", f"localhost:{chrony46.ke_port}"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["aead"] == 30


@pytest.mark.localhost
def test_default_offer_gets_aead_30_and_15_still_works_on_chrony_4_6(
    chrony46: ChronyServer, demo_pki: DemoPki
) -> None:
    assert gnomon.Session(ca_file=demo_pki.ca_cert).query("localhost", chrony46.ke_port).aead == 30
    _check(
        gnomon.Session(ca_file=demo_pki.ca_cert, aeads=(15,)).query("localhost", chrony46.ke_port),
        15,
        chrony46.ntp_port,
    )


# --- NTPsec 1.2.2, in its own network namespace ------------------------------------------


@pytest.mark.localhost
def test_query_aquery_and_cli_against_ntpsec(ntpsec: NtpsecServer, demo_pki: DemoPki) -> None:
    with ntpsec.netns.entered():
        session = gnomon.Session(ca_file=demo_pki.ca_cert, aeads=(15,))
        first = session.query("localhost", ntpsec.ke_port)
        second = asyncio.run(session.aquery("localhost", ntpsec.ke_port))
        assert session.key_exchanges == 1
    for result in (first, second):
        assert result.authenticated and result.aead == 15 and result.port == 123
        assert result.stratum == 10 and abs(result.offset) < 0.01
    assert not second.key_exchange
    done = _cli(
        "--ca",
        str(demo_pki.ca_cert),
        "--json",
        f"localhost:{ntpsec.ke_port}",
        netns_run=ntpsec.run_in_netns,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["authenticated"] is True


@pytest.mark.localhost
def test_wrong_ca_against_ntpsec(ntpsec: NtpsecServer, tmp_path: Path) -> None:
    other = make_demo_pki(tmp_path / "other")
    with ntpsec.netns.entered(), pytest.raises(gnomon.CertificateError, match="not trusted"):
        gnomon.Session(ca_file=other.ca_cert).query("localhost", ntpsec.ke_port)
