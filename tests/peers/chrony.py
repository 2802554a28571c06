"""chrony 4.3 (Debian bookworm's ``chrony`` package) as an NTS server and as an NTS client.

The package is never installed (that would remove systemd-timesyncd): scripts/install-peers.sh
unpacks it into .peers/chrony/, and `CHRONYD`/`CHRONYC` are its binaries there.

Always ``chronyd -x -d -u USER -f CONF``: ``-x`` never touches the system clock, ``-d``
stays in the foreground, ``-u`` names the user chronyd drops to (`CHRONY_USER`, an
existing unprivileged account: no ``_chrony`` user is created).  Everything it opens
after that (certificate, key, NTS dump folder, command socket folder) lives in a private
runtime folder under /tmp owned by that user with mode 0750 (chronyd refuses a
command-socket folder others can enter; pytest's ``tmp_path`` is not reachable by
that user at all).  The configuration and the log stay in the caller's workdir.

What Debian's chrony 4.3 speaks (built with nettle 3.8.1 and GnuTLS 3.7.9; measured
with `tests.peers.ke_probe` and a recording NTS-KE server, asserted in
tests/interop/test_peers_harness.py):

* **AEAD as server: only 15 (AES-SIV-CMAC-256).**  A request offering only 30
  (AES-128-GCM-SIV), or only 16/17/31, gets an *empty* AEAD Algorithm Negotiation
  record (and no Error record, no cookies).  AES-128-GCM-SIV arrived in chrony 4.4.
* **AEAD as client: offers only 15**, in a critical AEAD record (next protocol 0,
  critical), so it prefers 15 because it knows nothing else.
* **Record 1024 (compliant AES-128-GCM-SIV exporter context): not understood.**  The
  server ignores it when non-critical and answers Error 0 (Unrecognized Critical
  Record) when it is critical; the client never sends it.
* The server sends NTPv4 Port Negotiation (record 7) whenever its NTP ``port`` is not
  123, and Server Negotiation (6) only with ``ntsntpserver``; 8 cookies of 100 bytes.
* The client takes the NTP port from a Port Negotiation record over its own
  ``port`` option; ``chronyc authdata`` shows the AEAD id (``Type`` 15), ``KLen`` 256,
  cookies held and their length (100 with a chrony server).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gnomon.certs import DemoPki

from .netns import NetNs
from .proc import (
    DEFAULT_LIFETIME,
    PEERS_DIR,
    START_TIMEOUT,
    PeerNotInstalled,
    PeerProcess,
    free_loopback_port,
    require_executable,
    require_root,
    tcp_listening,
    udp_bound,
    wait_until,
)

CHRONYD = PEERS_DIR / "chrony" / "usr" / "sbin" / "chronyd"
CHRONYC = PEERS_DIR / "chrony" / "usr" / "bin" / "chronyc"
CHRONY_USER = "nobody"
"""The user chronyd drops to: present on every Debian system (base-passwd)."""
_AUTHDATA_COLUMNS = (
    "Name/IP address",
    "Mode",
    "KeyID",
    "Type",
    "KLen",
    "Last",
    "Atmp",
    "NAK",
    "Cook",
    "CLen",
)


def _binaries(chronyd_bin: str | None, chronyc_bin: str | None) -> tuple[str, str]:
    chronyd = require_executable(chronyd_bin or str(CHRONYD))
    chronyc = require_executable(chronyc_bin or str(CHRONYC))
    require_root("chronyd")
    _user()
    return chronyd, chronyc


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(CHRONY_USER)
    except KeyError:
        raise PeerNotInstalled(f"user {CHRONY_USER} missing: chronyd drops to it") from None


def _runtime_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    user = _user()
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, 0o750)
    return path


def _install(src: Path, dst: Path, mode: int) -> None:
    shutil.copyfile(src, dst)
    user = _user()
    os.chown(dst, user.pw_uid, user.pw_gid)
    os.chmod(dst, mode)


class _Chronyd:
    """Common part of `ChronyServer` and `ChronyClient`."""

    name = "chronyd"

    def __init__(self, proc: PeerProcess, runtime: Path, conf: Path, chronyc_bin: str) -> None:
        self.process = proc
        self.runtime_dir = runtime
        self.conf_path = conf
        self.socket_path = runtime / "chronyd.sock"
        self._chronyc = chronyc_bin

    @property
    def pid(self) -> int:
        """chronyd's own pid (from its pidfile; the Popen pid is the `timeout` wrapper)."""
        return int((self.runtime_dir / "chronyd.pid").read_text().strip())

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def chronyc(self, *args: str, timeout: float = 5.0, check: bool = True) -> str:
        """Run ``chronyc -h SOCKET -n ARGS...`` and return its standard output."""
        result = subprocess.run(
            [self._chronyc, "-h", str(self.socket_path), "-n", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"chronyc {' '.join(args)} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )
        return result.stdout

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


class ChronyServer(_Chronyd):
    """A running chronyd NTS server: `host`, `ntp_port`, `ke_port`, `pid`, `chronyc()`."""

    def __init__(
        self,
        proc: PeerProcess,
        runtime: Path,
        conf: Path,
        chronyc_bin: str,
        *,
        host: str,
        ntp_port: int,
        ke_port: int,
        netns: NetNs | None,
    ) -> None:
        _Chronyd.__init__(self, proc, runtime, conf, chronyc_bin)
        self.host = host
        self.ntp_port = ntp_port
        self.ke_port = ke_port
        self.netns = netns

    def __repr__(self) -> str:
        return f"<ChronyServer {self.host} ntp={self.ntp_port} ke={self.ke_port}>"

    def serverstats(self) -> dict[str, str]:
        return parse_report(self.chronyc("serverstats"))


def parse_report(text: str) -> dict[str, str]:
    """``Key name  : value`` lines of a chronyc report into a dict (keys as printed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def _start(
    what: str,
    workdir: Path,
    config_lines: list[str],
    runtime: Path,
    chronyd: str,
    netns: NetNs | None,
    lifetime: float,
) -> PeerProcess:
    conf = workdir / "chrony.conf"
    conf.write_text("\n".join(config_lines) + "\n")
    cmd = [chronyd, "-x", "-d", "-u", CHRONY_USER, "-f", str(conf)]
    log = workdir / "chronyd.log"
    if netns is not None:
        return netns.spawn(what, cmd, log, lifetime=lifetime)
    return PeerProcess(what, cmd, log, lifetime=lifetime)


def _loopback_binds(host: str) -> list[str]:
    addr = ipaddress.ip_address(host)
    v4 = host if addr.version == 4 else "127.0.0.1"
    v6 = host if addr.version == 6 else "::1"
    # One bindaddress per family, or chronyd listens on that family's wildcard.
    return [f"bindaddress {v4}", f"bindaddress {v6}"]


@contextlib.contextmanager
def chrony_nts_server(
    workdir: Path,
    pki: DemoPki,
    *,
    host: str = "127.0.0.1",
    ntp_port: int | None = None,
    ke_port: int | None = None,
    netns: NetNs | None = None,
    ntsprocesses: int = 1,
    extra_config: Sequence[str] = (),
    lifetime: float = DEFAULT_LIFETIME,
    chronyd_bin: str | None = None,
    chronyc_bin: str | None = None,
) -> Iterator[ChronyServer]:
    """chronyd serving NTS (stratum 10, no upstream) on loopback `host`.

    Free ports are picked when `ntp_port`/`ke_port` are None.  With `netns`, chronyd
    runs inside that namespace (ports are then picked there).  Yields once the NTS-KE
    port listens; raises `PeerStartError` with the log tail if it does not within 10 s.
    `chronyd_bin`/`chronyc_bin` select another build (default: Debian's, unpacked).
    """
    chronyd, chronyc = _binaries(chronyd_bin, chronyc_bin)
    workdir.mkdir(parents=True, exist_ok=True)
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"peers stay on loopback; {host} is not")
    # chronyd binds both loopback addresses (`_loopback_binds`): ports free on both.
    pick = netns.free_loopback_port if netns is not None else free_loopback_port
    if ntp_port is None:
        ntp_port = pick(tcp=False, udp=True)
    if ke_port is None:
        ke_port = pick(tcp=True, udp=False)
    runtime = _runtime_dir("gnomon-chrony-srv-")
    try:
        _install(pki.cert_chain, runtime / "server.pem", 0o644)
        _install(pki.key, runtime / "server.key", 0o600)
        lines = [
            "# chrony NTS server for gnomon interop tests (never touches the clock: -x)",
            f"port {ntp_port}",
            f"ntsport {ke_port}",
            *_loopback_binds(host),
            "allow 127.0.0.0/8",
            "allow ::1",
            "local stratum 10",
            f"ntsservercert {runtime / 'server.pem'}",
            f"ntsserverkey {runtime / 'server.key'}",
            f"ntsdumpdir {runtime}",
            f"ntsprocesses {ntsprocesses}",
            "cmdport 0",
            f"bindcmdaddress {runtime / 'chronyd.sock'}",
            f"pidfile {runtime / 'chronyd.pid'}",
            *extra_config,
        ]
        proc = _start("chronyd NTS server", workdir, lines, runtime, chronyd, netns, lifetime)
    except BaseException:
        shutil.rmtree(runtime, ignore_errors=True)
        raise
    server = ChronyServer(
        proc,
        runtime,
        workdir / "chrony.conf",
        chronyc,
        host=host,
        ntp_port=ntp_port,
        ke_port=ke_port,
        netns=netns,
    )
    try:
        ns_pid: int | str = netns.pid if netns is not None else "self"

        def up() -> bool:
            return (
                tcp_listening(ke_port, ns_pid)
                and udp_bound(ntp_port, ns_pid)
                and server.socket_path.exists()
                and (runtime / "chronyd.pid").exists()
            )

        if not wait_until(up, START_TIMEOUT, interval=0.05, alive=proc.alive):
            raise proc.fail(
                f"NTS-KE port {host}:{ke_port} not listening within {START_TIMEOUT:g} s"
            )
        yield server
    finally:
        server.stop()


class ChronyClient(_Chronyd):
    """A running chronyd NTS client: `pid`, `chronyc()`, `wait_authenticated()`."""

    def __init__(
        self,
        proc: PeerProcess,
        runtime: Path,
        conf: Path,
        chronyc_bin: str,
        *,
        server_host: str,
        ke_port: int,
        ntp_port: int,
    ) -> None:
        _Chronyd.__init__(self, proc, runtime, conf, chronyc_bin)
        self.server_host = server_host
        self.ke_port = ke_port
        self.ntp_port = ntp_port
        self.samples: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<ChronyClient of {self.server_host} ke={self.ke_port} ntp={self.ntp_port}>"

    def ntpdata(self) -> dict[str, str]:
        return parse_report(self.chronyc("ntpdata"))

    def authdata(self) -> dict[str, str]:
        """``chronyc -c authdata`` of the (single) source, keyed by the report's column names."""
        rows = [r for r in self.chronyc("-c", "authdata").splitlines() if r.strip()]
        if not rows:
            return {}
        return dict(zip(_AUTHDATA_COLUMNS, rows[0].split(","), strict=False))

    def wait_authenticated(self, timeout: float = 15.0) -> dict[str, Any]:
        """Poll ``chronyc ntpdata`` until a valid authenticated reply was received.

        Returns the parsed sample::

            {"authenticated": True, "offset": float s, "peer_delay": float s,
             "stratum": int, "leap": str, "remote_address": str, "remote_port": int,
             "total_rx": int, "total_valid_rx": int,
             "aead": int (15), "key_length": int bits, "cookies": int,
             "cookie_length": int, "naks": int, "ke_attempts": int,
             "ntpdata": {...raw...}, "authdata": {...raw...}}

        Raises AssertionError with the last reports and the log if it never happens.
        """
        last: dict[str, str] = {}

        def probe() -> dict[str, Any] | None:
            nonlocal last
            result = subprocess.run(
                [self._chronyc, "-h", str(self.socket_path), "-n", "ntpdata"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if result.returncode != 0:
                return None
            last = parse_report(result.stdout)
            if last.get("Authenticated") != "Yes" or int(last.get("Total valid RX", "0")) < 1:
                return None
            return self._sample(last)

        sample = wait_until(probe, timeout, interval=0.2, alive=self.process.alive)
        if sample is None:
            auth = ""
            with contextlib.suppress(Exception):
                auth = self.chronyc("authdata", check=False)
            raise AssertionError(
                f"chrony client got no authenticated reply from {self.server_host} "
                f"(ke {self.ke_port}, ntp {self.ntp_port}) within {timeout:g} s\n"
                f"ntpdata: {last}\nauthdata:\n{auth}\n{self.log_tail()}"
            )
        self.samples.append(sample)
        return sample

    def _sample(self, nd: dict[str, str]) -> dict[str, Any]:
        ad = self.authdata()

        def num(text: str | None) -> float:
            return float((text or "nan").split()[0])

        return {
            "authenticated": True,
            "offset": num(nd.get("Offset")),
            "peer_delay": num(nd.get("Peer delay")),
            "stratum": int(nd.get("Stratum", "0")),
            "leap": nd.get("Leap status", ""),
            "remote_address": nd.get("Remote address", "").split()[0],
            "remote_port": int(nd.get("Remote port", "0")),
            "total_rx": int(nd.get("Total RX", "0")),
            "total_valid_rx": int(nd.get("Total valid RX", "0")),
            "aead": int(ad.get("Type", "0") or 0),
            "key_length": int(ad.get("KLen", "0") or 0),
            "cookies": int(ad.get("Cook", "0") or 0),
            "cookie_length": int(ad.get("CLen", "0") or 0),
            "naks": int(ad.get("NAK", "0") or 0),
            "ke_attempts": int(ad.get("Atmp", "0") or 0),
            "ntpdata": nd,
            "authdata": ad,
        }


@contextlib.contextmanager
def chrony_nts_client(
    workdir: Path,
    *,
    server_host: str,
    ke_port: int,
    ntp_port: int,
    ca: Path,
    netns: NetNs | None = None,
    extra_config: Sequence[str] = (),
    extra_server_options: str = "",
    lifetime: float = DEFAULT_LIFETIME,
    chronyd_bin: str | None = None,
    chronyc_bin: str | None = None,
    nts: bool = True,
) -> Iterator[ChronyClient]:
    """chronyd as an NTS client of one server, polling every 0.25 s, clock untouched.
    With ``nts=False``, a plain NTP client of ``ntp_port`` (``ke_port`` unused).

    `server_host` is both the address and the name checked against the certificate
    (``localhost`` or an IP address of the SAN).  The NTP port the client uses is the
    server's Port Negotiation record if it sends one, else `ntp_port`.
    """
    chronyd, chronyc = _binaries(chronyd_bin, chronyc_bin)
    workdir.mkdir(parents=True, exist_ok=True)
    runtime = _runtime_dir("gnomon-chrony-cli-")
    try:
        _install(ca, runtime / "ca.pem", 0o644)
        security = f"nts ntsport {ke_port} " if nts else ""
        server = (
            f"server {server_host} port {ntp_port} {security}"
            f"iburst minpoll -2 maxpoll -2 {extra_server_options}"
        ).rstrip()
        nts_lines = [
            f"ntstrustedcerts {runtime / 'ca.pem'}",
            "nosystemcert",
            "authselectmode require",
        ]
        lines = [
            "# chrony NTS client for gnomon interop tests (never touches the clock: -x)",
            server,
            *(nts_lines if nts else []),
            "port 0",
            "cmdport 0",
            f"bindcmdaddress {runtime / 'chronyd.sock'}",
            f"pidfile {runtime / 'chronyd.pid'}",
            *extra_config,
        ]
        proc = _start("chronyd NTS client", workdir, lines, runtime, chronyd, netns, lifetime)
    except BaseException:
        shutil.rmtree(runtime, ignore_errors=True)
        raise
    client = ChronyClient(
        proc,
        runtime,
        workdir / "chrony.conf",
        chronyc,
        server_host=server_host,
        ke_port=ke_port,
        ntp_port=ntp_port,
    )
    try:
        if not wait_until(
            client.socket_path.exists, START_TIMEOUT, interval=0.05, alive=proc.alive
        ):
            raise proc.fail(f"command socket not created within {START_TIMEOUT:g} s")
        yield client
    finally:
        client.stop()
