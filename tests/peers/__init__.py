"""Harness for interop tests against real NTS peers (chrony 4.3, NTPsec 1.2.2) on loopback.

Rules every helper here enforces: peers never touch the system clock (chronyd ``-x``;
NTPsec's ntpd without CAP_SYS_TIME), they talk only over loopback or inside network
namespaces created here, every wait is bounded, and every process started is ended
(context managers, a `timeout` wrapper with a lifetime, a parent-death signal, and an
atexit sweep).  A missing peer raises `PeerNotInstalled`, an AssertionError: tests
fail with "run `make peers`", they never skip.

    from tests.peers import chrony_nts_server, chrony_nts_client

    with chrony_nts_server(tmp_path / "srv", pki) as srv, chrony_nts_client(
        tmp_path / "cli", server_host="localhost", ke_port=srv.ke_port,
        ntp_port=srv.ntp_port, ca=pki.ca_cert,
    ) as cli:
        sample = cli.wait_authenticated(timeout=15)
"""

from .chrony import ChronyClient, ChronyServer, chrony_nts_client, chrony_nts_server
from .clock import ClockGuard, ClockSnapshot, Timex, assert_clock_unchanged, read_adjtimex, snapshot
from .netns import NetNs, netns
from .ntpsec import NtpsecClient, NtpsecServer, ntpsec_nts_client, ntpsec_nts_server
from .proc import (
    LOOPBACK,
    PeerNotInstalled,
    PeerProcess,
    PeerStartError,
    free_loopback_port,
    free_port,
    live_processes,
    localhost_addresses,
    wait_until,
)

__all__ = [
    "LOOPBACK",
    "ChronyClient",
    "ChronyServer",
    "ClockGuard",
    "ClockSnapshot",
    "NetNs",
    "NtpsecClient",
    "NtpsecServer",
    "PeerNotInstalled",
    "PeerProcess",
    "PeerStartError",
    "Timex",
    "assert_clock_unchanged",
    "chrony_nts_client",
    "chrony_nts_server",
    "free_loopback_port",
    "free_port",
    "live_processes",
    "localhost_addresses",
    "netns",
    "ntpsec_nts_client",
    "ntpsec_nts_server",
    "read_adjtimex",
    "snapshot",
    "wait_until",
]
