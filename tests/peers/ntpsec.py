"""NTPsec 1.2.2 (Debian bookworm's ``ntpsec``, unpacked into .peers/ntpsec by `make peers`).

NTPsec is never installed (it conflicts with chrony); its ntpd runs from the unpacked
tree, always inside a private network namespace (`netns.netns`) and always under
``setpriv --bounding-set -sys_time --inh-caps -sys_time``: even with ``disable ntp``
and ``disable kernel`` it calls ntp_adjtime at start-up (the log then shows
"ntp_adjtime: Operation not permitted", which is the point).

Surprises worth knowing (all seen with 1.2.2):

* Ports are hard-coded: NTP on 123, NTS-KE on 4460, and the NTS-KE listener binds the
  wildcard address; hence the namespace.  As a client it also binds port 123
  (``interface listen 127.0.0.1`` plus "listen and drop" wildcard sockets), and it
  has no per-server NTP port option: it sends NTP to the port of the server's Port
  Negotiation record, else 123.  A server under test that shares the client's
  namespace must therefore use another NTP port and announce it (record 7).
* ``ntpq`` gets no answer at all (it times out) unless the configuration has
  ``restrict 127.0.0.1``; both harnesses add it.  ntpq is Python: it runs with
  ``PYTHONPATH`` into the unpacked dist-packages, and `make peers` links
  ``libntpc.so`` next to ``ntp/ntpc.py`` where it looks first.
* As a server it accepts AEAD 15, 16, 17, and answers 15 even to a request that only
  offered 30 (an AEAD the client never offered).  A *critical* record 1024 makes it
  close the connection without any answer; a non-critical one is ignored.  Cookies
  are 104 bytes with AEAD 15 (136 with 16).  It serves NTS-KE one connection at a
  time, about 1 s each.
* As a client it offers only AEAD 15, in a *non-critical* AEAD record, and checks the
  certificate against the name or IP address of the ``server`` line (IP SANs work).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gnomon.certs import DemoPki

from .netns import NetNs
from .netns import netns as new_netns
from .proc import (
    DEFAULT_LIFETIME,
    MAKE_PEERS_HINT,
    PEERS_DIR,
    START_TIMEOUT,
    PeerNotInstalled,
    PeerProcess,
    require_executable,
    require_root,
    wait_until,
)

NTPSEC_ROOT = PEERS_DIR / "ntpsec"
NTPD = NTPSEC_ROOT / "usr" / "sbin" / "ntpd"
NTPQ = NTPSEC_ROOT / "usr" / "bin" / "ntpq"
NTPSEC_PYTHONPATH = NTPSEC_ROOT / "usr" / "lib" / "python3" / "dist-packages"
NTP_PORT = 123
KE_PORT = 4460


def _require_ntpsec() -> tuple[str, str]:
    require_root("NTPsec's ntpd in a network namespace")
    for path in (NTPD, NTPQ, NTPSEC_PYTHONPATH / "ntp" / "libntpc.so"):
        if not path.exists():
            raise PeerNotInstalled(f"NTPsec not unpacked ({path} missing): {MAKE_PEERS_HINT}")
    return require_executable("setpriv"), str(NTPD)


def _ntpd_command(conf: Path, log: Path, pidfile: Path) -> list[str]:
    setpriv, ntpd = _require_ntpsec()
    return [
        setpriv,
        "--bounding-set",
        "-sys_time",
        "--inh-caps",
        "-sys_time",
        ntpd,
        "-n",
        "-c",
        str(conf),
        "-l",
        str(log),
        "-p",
        str(pidfile),
    ]


_VAR = re.compile(r'([A-Za-z_][\w.]*)=("[^"]*"|[^,\s]*)')


def parse_vars(text: str) -> dict[str, str]:
    """ntpq ``rv``/``pstats`` output (``name=value, ...``) into a dict."""
    return {k: v.strip('"') for k, v in _VAR.findall(text)}


_ASSOC_COLUMNS = (
    "ind",
    "assid",
    "status",
    "conf",
    "reach",
    "auth",
    "condition",
    "last_event",
    "cnt",
)


def parse_associations(text: str) -> list[dict[str, str]]:
    """Rows of ``ntpq -c associations``: ind, assid, status, conf, reach, auth, condition..."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[0].isdigit():
            rows.append(dict(zip(_ASSOC_COLUMNS, fields, strict=False)))
    return rows


class _Ntpd:
    def __init__(self, proc: PeerProcess, ns: NetNs, workdir: Path) -> None:
        self.process = proc
        self.netns = ns
        self.workdir = workdir
        self.pidfile = workdir / "ntpd.pid"

    @property
    def pid(self) -> int:
        """ntpd's own pid (from its pidfile)."""
        return int(self.pidfile.read_text().strip())

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def run_in_netns(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `cmd` in ntpd's network namespace (``nsenter -t PID -n``), bounded (30 s)."""
        return self.netns.run(cmd, **kw)

    def ntpq(self, *commands: str, timeout: float = 10.0, check: bool = True) -> str:
        """``ntpq -n -c CMD... 127.0.0.1`` in the namespace; returns its output."""
        args = [sys.executable, str(NTPQ), "-n", "-c", "timeout 500"]
        for command in commands:
            args += ["-c", command]
        args.append("127.0.0.1")
        result = self.netns.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PYTHONPATH": str(NTPSEC_PYTHONPATH), "PATH": "/usr/bin:/bin"},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ntpq {commands} failed ({result.returncode}): {result.stdout}{result.stderr}"
            )
        return str(result.stdout) + str(result.stderr)

    def stop(self) -> None:
        self.process.stop()


class NtpsecServer(_Ntpd):
    """NTPsec ntpd serving NTS on 127.0.0.1 (KE 4460, NTP 123) in its own namespace."""

    host = "127.0.0.1"
    ntp_port = NTP_PORT
    ke_port = KE_PORT

    def __repr__(self) -> str:
        return f"<NtpsecServer netns={self.netns.pid}>"


@contextlib.contextmanager
def ntpsec_nts_server(
    workdir: Path,
    pki: DemoPki,
    *,
    netns: NetNs | None = None,
    extra_config: Sequence[str] = (),
    lifetime: float = DEFAULT_LIFETIME,
) -> Iterator[NtpsecServer]:
    """NTPsec as an NTS server (orphan stratum 10) in a network namespace.

    The namespace is `netns` if given (so a client under test can share it), else a
    fresh one closed with the server.  Clients reach it as ``localhost:4460`` (or
    127.0.0.1 / ::1) from inside: `NtpsecServer.run_in_netns`, ``.netns.spawn``,
    ``.netns.entered()``.  Yields once the KE port listens (not connecting to it).
    """
    _require_ntpsec()
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        ns = netns if netns is not None else stack.enter_context(new_netns(workdir))
        conf = workdir / "ntp.conf"
        stats = workdir / "stats"
        stats.mkdir(exist_ok=True)
        conf.write_text(
            "\n".join(
                [
                    "# NTPsec NTS server for gnomon interop tests (no right to set the clock)",
                    "nts enable",
                    f"nts cert {pki.cert_chain}",
                    f"nts key {pki.key}",
                    f"nts cookie {workdir / 'nts-cookie-keys'}",
                    "disable ntp",
                    "disable kernel",
                    "tos orphan 10 orphanwait 1",
                    "interface listen lo",
                    "restrict 127.0.0.1",
                    "restrict ::1",
                    f"statsdir {stats}/",
                    *extra_config,
                ]
            )
            + "\n"
        )
        log = workdir / "ntpd.log"
        (workdir / "ntpd.pid").unlink(missing_ok=True)
        cmd = _ntpd_command(conf, log, workdir / "ntpd.pid")
        proc = ns.spawn(
            "NTPsec NTS server", cmd, workdir / "ntpd.out", lifetime=lifetime, extra_logs=[log]
        )
        server = NtpsecServer(proc, ns, workdir)
        stack.callback(server.stop)

        def up() -> bool:
            return ns.tcp_listening(KE_PORT) and ns.udp_bound(NTP_PORT) and server.pidfile.exists()

        if not wait_until(up, START_TIMEOUT, interval=0.05, alive=proc.alive):
            raise proc.fail(f"NTS-KE port 4460 not listening within {START_TIMEOUT:g} s")
        # Until orphan mode starts (orphanwait 1 s) it answers unsynchronized, stratum 0.
        sysvars: dict[str, str] = {}

        def orphan() -> bool:
            nonlocal sysvars
            sysvars = parse_vars(server.ntpq("rv 0 stratum,leap", check=False, timeout=5))
            return sysvars.get("stratum") == "10" and sysvars.get("leap") in ("00", "0")

        if not wait_until(orphan, START_TIMEOUT, interval=0.2, alive=proc.alive):
            raise proc.fail(f"not serving stratum 10 within {START_TIMEOUT:g} s: {sysvars}")
        yield server


class NtpsecClient(_Ntpd):
    """NTPsec ntpd as an NTS client of one server, in a namespace."""

    def __init__(self, proc: PeerProcess, ns: NetNs, workdir: Path, server: str) -> None:
        super().__init__(proc, ns, workdir)
        self.server = server

    def __repr__(self) -> str:
        return f"<NtpsecClient of {self.server} netns={self.netns.pid}>"

    def associations(self) -> list[dict[str, str]]:
        return parse_associations(self.ntpq("associations", check=False))

    def wait_authenticated(self, timeout: float = 20.0) -> dict[str, Any]:
        """Poll ``ntpq -c associations`` until the association shows reach yes, auth ok.

        Returns the association row merged with its peer variables (``rv ASSID``)::

            {"assid": "17767", "reach": "yes", "auth": "ok", "condition": ...,
             "srcadr": "127.0.0.1", "srcport": 11123, "stratum": 10,
             "offset": float seconds, "delay": float seconds, "ntscookies": 8,
             "vars": {...all peer variables...}}

        Raises AssertionError with the last output and the log if it never happens.
        """
        last = ""

        def probe() -> dict[str, str] | None:
            nonlocal last
            last = self.ntpq("associations", check=False, timeout=5)
            for row in parse_associations(last):
                if row.get("reach") == "yes" and row.get("auth") == "ok":
                    return row
            return None

        row = wait_until(probe, timeout, interval=0.25, alive=self.process.alive)
        if row is None:
            raise AssertionError(
                f"NTPsec client got no authenticated association with {self.server} "
                f"within {timeout:g} s\nntpq associations:\n{last}\n{self.log_tail()}"
            )
        peer = parse_vars(self.ntpq(f"rv {row['assid']}", check=False))

        def num(key: str, scale: float = 1.0) -> float:
            try:
                return float(peer[key]) * scale
            except (KeyError, ValueError):
                return float("nan")

        def integer(key: str) -> int:
            try:
                return int(peer[key])
            except (KeyError, ValueError):
                return -1

        return {
            **row,
            "srcadr": peer.get("srcadr", ""),
            "srcport": integer("srcport"),
            "stratum": integer("stratum"),
            "offset": num("offset", 1e-3),  # ntpq prints milliseconds
            "delay": num("delay", 1e-3),
            "ntscookies": integer("ntscookies"),
            "vars": peer,
        }


def _host_port(host: str, port: int) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    return f"{host}:{port}"


@contextlib.contextmanager
def ntpsec_nts_client(
    workdir: Path,
    *,
    netns: NetNs,
    ca: Path,
    server: str = "localhost",
    ke_port: int = KE_PORT,
    minpoll: int = 0,
    extra_server_options: str = "",
    extra_config: Sequence[str] = (),
    lifetime: float = DEFAULT_LIFETIME,
) -> Iterator[NtpsecClient]:
    """NTPsec as an NTS client of ``server:ke_port`` inside namespace `netns`.

    It binds 127.0.0.1:123 there, so start the server under test in the same
    namespace (``netns.spawn(...)`` or `chrony_nts_server(..., netns=netns)`) on an
    NTP port other than 123, announced by Port Negotiation.  `server` is the name or
    address checked against the certificate.  Polls every 2**minpoll s.
    """
    _require_ntpsec()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "ntp.conf"
    stats = workdir / "stats"
    stats.mkdir(exist_ok=True)
    conf.write_text(
        "\n".join(
            [
                "# NTPsec NTS client for gnomon interop tests (no right to set the clock)",
                f"server {_host_port(server, ke_port)} nts ca {ca} iburst "
                f"minpoll {minpoll} maxpoll {minpoll} {extra_server_options}".rstrip(),
                "disable ntp",
                "disable kernel",
                "interface listen 127.0.0.1",
                "restrict 127.0.0.1",
                f"statsdir {stats}/",
                *extra_config,
            ]
        )
        + "\n"
    )
    log = workdir / "ntpd.log"
    (workdir / "ntpd.pid").unlink(missing_ok=True)
    cmd = _ntpd_command(conf, log, workdir / "ntpd.pid")
    proc = netns.spawn(
        "NTPsec NTS client", cmd, workdir / "ntpd.out", lifetime=lifetime, extra_logs=[log]
    )
    client = NtpsecClient(proc, netns, workdir, _host_port(server, ke_port))
    try:
        if not wait_until(
            lambda: client.pidfile.exists() and netns.udp_bound(NTP_PORT),
            START_TIMEOUT,
            interval=0.05,
            alive=proc.alive,
        ):
            raise proc.fail(f"ntpd did not bind port 123 within {START_TIMEOUT:g} s")
        yield client
    finally:
        client.stop()
