"""gnomon's NTS server against real NTS clients: chrony 4.3, chrony 4.6.1 and NTPsec 1.2.2.

gnomon runs as ``python -m gnomon serve --config FILE --ready-file READY`` (a supervisor
with one NTP and one NTS-KE worker), serving its own clock at stratum 10 (``[time]
local_stratum = 10``), under the peers' safety net (`PeerProcess`: bounded lifetime, own
process group, stopped with the test).  The clients never touch the clock (chronyd
``-x``, NTPsec without CAP_SYS_TIME) and everything stays on loopback or in the test's
own network namespace.

chrony 4.6.1 comes from scripts/install-chrony-modern.sh (trixie's build, unpacked into
.peers/chrony-modern); without it these tests fail with "run `make peers`".
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gnomon.certs import DemoPki
from tests.peers import (
    ChronyClient,
    NetNs,
    NtpsecClient,
    PeerNotInstalled,
    PeerProcess,
    chrony_nts_client,
    free_loopback_port,
    localhost_addresses,
    ntpsec_nts_client,
    wait_until,
)
from tests.peers.ke_probe import (
    AEAD,
    COMPLIANT_GCM_SIV_EXPORTER,
    END_OF_MESSAGE,
    NEXT_PROTOCOL,
    RecordingKeServer,
    ke_exchange,
    record,
)
from tests.peers.proc import (
    MAKE_PEERS_HINT,
    PEERS_DIR,
    START_TIMEOUT,
    tcp_listening,
    udp_bound,
)

AES_SIV_CMAC_256 = 15
AES_128_GCM_SIV = 30

CHRONY_MODERN = PEERS_DIR / "chrony-modern"


# --- gnomon's server as a subprocess ------------------------------------------------------


@dataclass
class GnomonServer:
    """A running ``gnomon serve``: its ports, worker pids, log."""

    process: PeerProcess
    ke_port: int
    ntp_port: int
    pids: dict[str, int]
    supervisor: int | None
    config_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def stop(self) -> int | None:
        return self.process.stop()


def gnomon_config(
    workdir: Path,
    pki: DemoPki,
    *,
    ke_port: int,
    ntp_port: int,
    aeads: Sequence[int],
    key_path: Path,
    require_nts: bool = True,
) -> Path:
    path = workdir / "gnomon.toml"
    path.write_text(
        "\n".join(
            [
                "[server]",
                # Both loopback addresses: a client given `localhost` may use either.
                'listen = ["127.0.0.1", "::1"]',
                f"ntp_port = {ntp_port}",
                f"ke_port = {ke_port}",
                f"require_nts = {'true' if require_nts else 'false'}",
                "",
                "[tls]",
                f'certificate = "{pki.cert_chain}"',
                f'key = "{pki.key}"',
                "",
                "[nts]",
                f"aeads = [{', '.join(str(a) for a in aeads)}]",
                "",
                "[keys]",
                f'path = "{key_path}"',
                "",
                "[time]",
                "local_stratum = 10",
                "",
            ]
        )
    )
    return path


def start_gnomon(
    workdir: Path,
    pki: DemoPki,
    *,
    aeads: Sequence[int] = (AES_128_GCM_SIV, AES_SIV_CMAC_256),
    netns: NetNs | None = None,
    ke_port: int | None = None,
    ntp_port: int | None = None,
    key_path: Path | None = None,
    lifetime: float = 300.0,
    require_nts: bool = True,
) -> GnomonServer:
    """Start ``gnomon serve`` (in `netns` if given) and wait for its ready file.

    Free ports are picked (in the namespace) when not given.  The caller stops it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    pick = netns.free_loopback_port if netns is not None else free_loopback_port
    if ke_port is None:
        ke_port = pick(tcp=True, udp=False)
    if ntp_port is None:
        ntp_port = pick(tcp=False, udp=True)
    config = gnomon_config(
        workdir,
        pki,
        ke_port=ke_port,
        ntp_port=ntp_port,
        aeads=aeads,
        key_path=key_path or workdir / "keys.json",
        require_nts=require_nts,
    )
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "gnomon",
        "serve",
        "--config",
        str(config),
        "--ready-file",
        str(ready),
        "--log-level",
        "WARNING",
    ]
    log = workdir / "gnomon.log"
    if netns is not None:
        proc = netns.spawn("gnomon server", cmd, log, lifetime=lifetime)
    else:
        proc = PeerProcess("gnomon server", cmd, log, lifetime=lifetime)
    ns_pid: int | str = netns.pid if netns is not None else "self"

    def read_ready() -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads(ready.read_text())
        except (OSError, ValueError):  # not there yet, or half written
            return None
        # Ready means listening: check the sockets too (from /proc, no connection).
        if tcp_listening(info["ke_port"], ns_pid) and udp_bound(info["ntp_port"], ns_pid):
            return info
        return None

    try:
        info = wait_until(read_ready, START_TIMEOUT, interval=0.05, alive=proc.alive)
        if info is None:
            raise proc.fail(f"no ready file within {START_TIMEOUT:g} s")
    except BaseException:
        proc.stop()
        raise
    assert (info["ke_port"], info["ntp_port"]) == (ke_port, ntp_port), info
    return GnomonServer(
        proc,
        ke_port=info["ke_port"],
        ntp_port=info["ntp_port"],
        pids=dict(info["pids"]),
        supervisor=info.get("supervisor"),
        config_path=config,
    )


@contextlib.contextmanager
def gnomon_server(workdir: Path, pki: DemoPki, **kw: Any) -> Iterator[GnomonServer]:
    server = start_gnomon(workdir, pki, **kw)
    try:
        yield server
    finally:
        server.stop()


def chrony_modern() -> tuple[str, str]:
    """chronyd and chronyc of chrony 4.6.1; fails (never skips) when they are missing."""
    bins = (CHRONY_MODERN / "chronyd", CHRONY_MODERN / "chronyc")
    for path in bins:
        if not path.is_file():
            raise PeerNotInstalled(
                f"chrony 4.6.1 missing ({path}): {MAKE_PEERS_HINT} "
                "(scripts/install-chrony-modern.sh)"
            )
    return str(bins[0]), str(bins[1])


def wait_sample(
    client: ChronyClient,
    until: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
) -> dict[str, Any]:
    """Poll chronyc until a sample (ntpdata + authdata) satisfies `until`."""
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        last = client._sample(client.ntpdata())  # the harness's ntpdata + authdata parser
        return last if until(last) else None

    sample = wait_until(probe, timeout, interval=0.25, alive=client.process.alive)
    if sample is None:
        shown = {k: v for k, v in last.items() if k not in ("ntpdata", "authdata")}
        raise AssertionError(
            f"chrony: {what} not seen within {timeout:g} s; last sample {shown}\n"
            f"{client.log_tail()}"
        )
    return sample


def ke_sessions(sample: dict[str, Any]) -> int:
    """NTS-KE sessions chrony established with the source (``KeyID`` of ``authdata``)."""
    return int(sample["authdata"].get("KeyID", "-1"))


def assert_good_sample(
    sample: dict[str, Any], server: GnomonServer, aead: int, *, sessions: int = 1
) -> None:
    shown = f"{sample['authdata']} {sample['ntpdata']}"
    assert sample["authenticated"] is True, shown
    assert sample["aead"] == aead, shown
    assert sample["key_length"] == (256 if aead == AES_SIV_CMAC_256 else 128), shown
    assert sample["stratum"] == 10, shown
    assert sample["leap"] == "Normal", shown
    assert abs(sample["offset"]) < 0.01, shown
    assert sample["remote_address"] in localhost_addresses(), shown
    assert sample["remote_port"] == server.ntp_port, shown
    assert sample["naks"] == 0, shown
    # chronyc authdata: KeyID counts the NTS-KE sessions established with the source,
    # Atmp the attempts since the last one that succeeded.
    assert ke_sessions(sample) == sessions, shown
    assert sample["ke_attempts"] == 0, shown


# --- chrony 4.3 ------------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.localhost
def test_chrony_43_authenticates_and_keeps_going_on_refilled_cookies(
    tmp_path: Path, demo_pki: DemoPki
) -> None:
    with (
        gnomon_server(tmp_path / "gnomon", demo_pki) as server,
        chrony_nts_client(
            tmp_path / "chrony",
            server_host="localhost",
            ke_port=server.ke_port,
            ntp_port=9,  # wrong on purpose: the Port Negotiation record must fix it
            ca=demo_pki.ca_cert,
        ) as client,
    ):
        first = client.wait_authenticated(timeout=15)
        assert_good_sample(first, server, AES_SIV_CMAC_256)
        assert first["cookies"] == 8
        # One cookie per request, one new cookie per reply: 10+ valid replies on the
        # 8 cookies of one NTS-KE means gnomon's cookies are refilled and accepted.
        later = wait_sample(client, lambda s: s["total_valid_rx"] >= 10, 10, "10 valid replies")
        assert_good_sample(later, server, AES_SIV_CMAC_256)
        assert later["total_valid_rx"] == later["total_rx"], later["ntpdata"]
        assert later["cookies"] >= 7, later["authdata"]
        print(f"chrony 4.3: {later['authdata']} offset {later['offset'] * 1e6:.0f} us")


# --- chrony 4.6.1 ----------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize(
    ("aeads", "expected"),
    [
        ((AES_128_GCM_SIV, AES_SIV_CMAC_256), AES_128_GCM_SIV),
        ((AES_SIV_CMAC_256,), AES_SIV_CMAC_256),
    ],
    ids=["gnomon-30-15", "gnomon-15"],
)
@pytest.mark.localhost
def test_chrony_46_negotiates_the_aead(
    tmp_path: Path, demo_pki: DemoPki, aeads: tuple[int, ...], expected: int
) -> None:
    chronyd, chronyc = chrony_modern()
    with (
        gnomon_server(tmp_path / "gnomon", demo_pki, aeads=aeads) as server,
        chrony_nts_client(
            tmp_path / "chrony",
            server_host="localhost",
            ke_port=server.ke_port,
            ntp_port=9,
            ca=demo_pki.ca_cert,
            chronyd_bin=chronyd,
            chronyc_bin=chronyc,
        ) as client,
    ):
        sample = client.wait_authenticated(timeout=15)
        assert_good_sample(sample, server, expected)
        later = wait_sample(client, lambda s: s["total_valid_rx"] >= 3, 5, "3 valid replies")
        assert_good_sample(later, server, expected)
        print(f"chrony 4.6.1 with gnomon {aeads}: {later['authdata']}")


@pytest.mark.interop
@pytest.mark.localhost
def test_chrony_46_request_gets_aes_128_gcm_siv_and_record_1024_from_gnomon(
    tmp_path: Path, demo_pki: DemoPki
) -> None:
    """What chrony 4.6.1 asks for, and what gnomon answers to exactly that request.

    chrony derives the AES-128-GCM-SIV keys from the compliant exporter context only
    when the server echoes record 1024; authenticating with AEAD 30 (test above)
    therefore means both sides used the compliant context.
    """
    chronyd, chronyc = chrony_modern()
    with (
        RecordingKeServer(demo_pki.cert_chain, demo_pki.key) as recorder,
        chrony_nts_client(
            tmp_path / "chrony",
            server_host="localhost",
            ke_port=recorder.port,
            ntp_port=9,  # never reached: the recorder gives no cookies
            ca=demo_pki.ca_cert,
            chronyd_bin=chronyd,
            chronyc_bin=chronyc,
        ),
    ):
        request = recorder.wait(timeout=10)
    by_type = {r.type: r for r in request}
    assert by_type[AEAD].critical and by_type[AEAD].u16s() == [AES_128_GCM_SIV, AES_SIV_CMAC_256]
    assert not by_type[COMPLIANT_GCM_SIV_EXPORTER].critical  # offered, not demanded
    assert request[-1].type == END_OF_MESSAGE
    extra = b"".join(
        record(r.type, r.body, critical=r.critical)
        for r in request
        if r.type not in (NEXT_PROTOCOL, AEAD, END_OF_MESSAGE)
    )
    offered = by_type[AEAD].u16s()
    for aeads, chosen, echoed in (
        ((AES_128_GCM_SIV, AES_SIV_CMAC_256), AES_128_GCM_SIV, True),
        ((AES_SIV_CMAC_256,), AES_SIV_CMAC_256, False),
    ):
        with gnomon_server(tmp_path / f"gnomon-{chosen}", demo_pki, aeads=aeads) as server:
            answer = ke_exchange(
                "127.0.0.1", server.ke_port, demo_pki.ca_cert, aeads=offered, extra=extra
            )
        assert answer.errors == [], answer.records
        assert answer.aead == [chosen], answer.records
        assert bool(answer.of_type(COMPLIANT_GCM_SIV_EXPORTER)) is echoed, answer.records
        assert len(answer.cookies) == 8, answer.records
        assert answer.port == server.ntp_port, answer.records


# --- NTPsec ----------------------------------------------------------------------------------


def ntpsec_nts_counters(client: NtpsecClient) -> dict[str, int]:
    """``ntpq -c nts``: ``NTS client sends``, ``NTS client recvs good``, ... as ints."""
    counters: dict[str, int] = {}
    for line in client.ntpq("nts", check=False).splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip().isdigit():
            counters[key.strip()] = int(value)
    return counters


@pytest.mark.interop
@pytest.mark.localhost
def test_ntpsec_authenticates_with_gnomon_in_its_netns(
    tmp_path: Path, demo_pki: DemoPki, peer_netns: NetNs
) -> None:
    with gnomon_server(tmp_path / "gnomon", demo_pki, netns=peer_netns) as server:
        # NTPsec takes 127.0.0.1:123 and knows no per-server NTP port: gnomon must use
        # another one and announce it (Port Negotiation); its NTS-KE port is not 4460.
        assert server.ntp_port != 123 and server.ke_port != 4460
        with ntpsec_nts_client(
            tmp_path / "ntpsec",
            netns=peer_netns,
            ca=demo_pki.ca_cert,
            server="localhost",
            ke_port=server.ke_port,
        ) as client:
            assoc = client.wait_authenticated(timeout=20)
            shown = {k: v for k, v in assoc.items() if k != "vars"}
            assert assoc["reach"] == "yes" and assoc["auth"] == "ok", shown
            assert assoc["srcadr"] in localhost_addresses(), shown
            assert assoc["srcport"] == server.ntp_port, shown
            assert assoc["stratum"] == 10, shown
            assert assoc["ntscookies"] == 8, shown
            assert abs(assoc["offset"]) < 0.01, shown
            # NTPsec sends at most one request per ~2 s: 9 good replies on the cookies
            # of a single NTS-KE take ~20 s, and show its cookies are refilled.
            last: dict[str, int] = {}

            def nine_good() -> bool:
                nonlocal last
                last = ntpsec_nts_counters(client)
                return last.get("NTS client recvs good", 0) >= 9

            assert wait_until(nine_good, 30, interval=0.5, alive=client.process.alive), (
                f"{last}\n{client.log_tail()}"
            )
            assert last["NTS KE client probes good"] == 1, last
            assert last["NTS KE client probes bad"] == 0, last
            assert last["NTS client recvs w error"] == 0, last
            assoc = client.wait_authenticated(timeout=5)
            assert assoc["ntscookies"] == 8, assoc
            print(f"NTPsec: {last}")


# --- restart ---------------------------------------------------------------------------------


def restart_under_chrony(
    tmp_path: Path,
    pki: DemoPki,
    *,
    same_keys: bool,
    after: Callable[[dict[str, Any], dict[str, Any]], bool],
) -> tuple[dict[str, Any], dict[str, Any], GnomonServer]:
    """chrony 4.3 authenticates with gnomon, gnomon restarts on the same ports (with the
    same key file or a fresh one).  Returns chrony's sample before the restart, the first
    one after it for which ``after(before, sample)`` holds, and the (stopped) server."""
    server = start_gnomon(tmp_path / "gnomon-1", pki, key_path=tmp_path / "keys-1.json")
    try:
        with chrony_nts_client(
            tmp_path / "chrony",
            server_host="localhost",
            ke_port=server.ke_port,
            ntp_port=9,
            ca=pki.ca_cert,
        ) as client:
            before = wait_sample(client, lambda s: s["total_valid_rx"] >= 2, 15, "2 valid replies")
            assert_good_sample(before, server, AES_SIV_CMAC_256)
            first_supervisor = server.supervisor
            # chrony polls every 0.25 s and spends a cookie on every request: a restart
            # slower than 2 s (a loaded machine) would use up all 8 unanswered, and its
            # next NTS-KE, refused while gnomon is down, is retried only after 16 s.  A
            # real client polls every 64 s or more; `chronyc offline` models that.
            assert "200 OK" in client.chronyc("offline")
            server.stop()
            stopped_at = time.monotonic()
            server = start_gnomon(
                tmp_path / "gnomon-2",
                pki,
                key_path=tmp_path / ("keys-1.json" if same_keys else "keys-2.json"),
                ke_port=server.ke_port,
                ntp_port=server.ntp_port,
            )
            restart_s = time.monotonic() - stopped_at
            assert server.supervisor != first_supervisor  # really a new server process
            assert "200 OK" in client.chronyc("online")
            sample = wait_sample(
                client, lambda s: after(before, s), 10, "the expected state after the restart"
            )
            print(f"gnomon restarted in {restart_s:.2f} s; chrony after: {sample['authdata']}")
            return before, sample, server
    finally:
        server.stop()


@pytest.mark.interop
@pytest.mark.localhost
def test_chrony_keeps_its_cookies_across_a_gnomon_restart(
    tmp_path: Path, demo_pki: DemoPki
) -> None:
    # Ten more valid replies after the restart, all on cookies of the first NTS-KE
    # (KeyID 1) and never a NAK: the new process opens cookies the old one made.
    _, after, server = restart_under_chrony(
        tmp_path,
        demo_pki,
        same_keys=True,
        after=lambda before, s: s["total_valid_rx"] >= before["total_valid_rx"] + 10,
    )
    assert_good_sample(after, server, AES_SIV_CMAC_256)
    assert after["total_valid_rx"] == after["total_rx"], after["ntpdata"]  # no NAK came


@pytest.mark.interop
@pytest.mark.localhost
def test_chrony_redoes_nts_ke_after_a_nak_from_gnomon_restarted_with_new_keys(
    tmp_path: Path, demo_pki: DemoPki
) -> None:
    # The control experiment: with a fresh key file the old cookies are useless, gnomon
    # answers them with an NTS NAK, and chrony establishes a second NTS-KE session.
    _, after, server = restart_under_chrony(
        tmp_path,
        demo_pki,
        same_keys=False,
        after=lambda before, s: (
            ke_sessions(s) == 2 and s["total_valid_rx"] >= before["total_valid_rx"] + 3
        ),
    )
    assert_good_sample(after, server, AES_SIV_CMAC_256, sessions=2)
    assert after["cookies"] >= 7, after["authdata"]
    # Exactly one reply was received but not valid: the NAK (chrony counts it in RX).
    assert after["total_rx"] - after["total_valid_rx"] == 1, after["ntpdata"]


def test_missing_chrony_46_fails_with_make_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHRONY_MODERN", Path("/nonexistent/chrony"))
    with pytest.raises(PeerNotInstalled, match="make peers"):
        chrony_modern()
