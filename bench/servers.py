"""The servers under test, started on loopback only, and the NTS material to load them with.

Each server runs as ``timeout -k 5 LIFETIME CMD`` (``timeout`` puts itself and
the server in a new process group; a parent-death signal on it ends the
server if the benchmark dies), bound to 127.0.0.1 (chrony also to ::1, so its
NTS-KE never listens on the IPv6 wildcard). chrony always runs as
``chronyd -x -d -u nobody -f CONF``: it never touches the clock, and drops to an
existing unprivileged user (chrony is unpacked by scripts/install-peers.sh, not
installed, so there is no ``_chrony`` user).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import procfs

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CHRONY_43 = REPO / ".peers" / "chrony" / "usr" / "sbin" / "chronyd"  # unpacked, not installed
CHRONY_USER = "nobody"  # the user chronyd drops to (-u)

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def child_setup(cpus: Sequence[int] | None) -> Callable[[], None]:
    """A preexec_fn: SIGTERM when the parent dies; CPU affinity if asked."""

    def setup() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def free_port() -> int:
    """A port free for TCP and UDP on 127.0.0.1 and ::1 right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind((HOST, 0))
            port: int = first.getsockname()[1]
            try:
                for family, kind, host in (
                    (socket.AF_INET, socket.SOCK_DGRAM, HOST),
                    (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
                    (socket.AF_INET6, socket.SOCK_DGRAM, "::1"),
                ):
                    with socket.socket(family, kind) as other:
                        if family == socket.AF_INET6:
                            other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on loopback")


def _listening(pid: int, port: int, table: str, state: str) -> bool:
    for suffix in ("", "6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}{suffix}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == state
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                return True
    return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


class ServerStartError(RuntimeError):
    pass


@dataclass
class Server:
    """One running server under ``timeout``; ``pid`` is the server itself."""

    key: str  # "gnomon", "chrony-4.3", "chrony-4.6"
    label: str
    version: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ntp_port: int = 0
    ke_port: int = 0
    pid: int = 0
    ntp_processes: int = 1  # processes answering NTP (the CPU they can use at most)
    ke_processes: int = 1  # processes doing NTS-KE
    roughtime_port: int = 0  # 0: no Roughtime
    roughtime_processes: int = 1
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)  # pid -> what it does

    def role(self, pid: int) -> str:
        if pid in self.roles:
            return self.roles[pid]
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"resource_tracker" in cmdline:
            return "multiprocessing resource tracker"
        return f"{procfs.comm(pid)} (pid {pid})"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def fail(self, message: str) -> ServerStartError:
        rc = self.popen.poll()
        state = "running" if rc is None else f"exited with status {rc}"
        return ServerStartError(
            f"{self.label}: {message} ({state})\n--- {self.log_path} ---\n{tail(self.log_path)}"
        )

    def find_pid(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = procfs.children_of(self.popen.pid)
            if children:
                self.pid = children[0]
                return self.pid
            if not self.alive():
                break
            time.sleep(0.05)
        raise self.fail("server process did not appear")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (timeout forwards it to its group), then SIGKILL what is left. Idempotent."""
        pgid = self.popen.pid  # timeout leads its own process group
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)

        def members() -> list[int]:
            found = []
            for pid in procfs.parent_map():
                with contextlib.suppress(OSError):
                    if os.getpgid(pid) == pgid:
                        found.append(pid)
            return found

        if members():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while members() and time.monotonic() < deadline:
                time.sleep(0.05)
            if members():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)


def _spawn(
    argv: Sequence[str],
    log_path: Path,
    lifetime: float,
    cpus: Sequence[int] | None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    timeout_bin = shutil.which("timeout") or "/usr/bin/timeout"
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [timeout_bin, "-k", "5", f"{lifetime:g}", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup(cpus),
            cwd=cwd,
            env=env,
        )


# --- gnomon --------------------------------------------------------------------------------


def gnomon_serve_options() -> set[str]:
    """The long options ``gnomon serve --help`` lists (``--workers`` came with issue 4)."""
    out = subprocess.run(
        [sys.executable, "-m", "gnomon", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return set(re.findall(r"(--[a-z][a-z-]*)", out.stdout))


def gnomon_version() -> str:
    import gnomon

    return str(getattr(gnomon, "__version__", "?"))


def start_gnomon(
    directory: Path,
    cert: Path,
    key: Path,
    *,
    workers: int | None,
    ke_workers: int | None,
    options: set[str],
    lifetime: float,
    cpus: Sequence[int] | None,
    source: Path | None = None,
) -> Server:
    """gnomon with its own defaults, except ``--workers``/``--ke-workers`` when given
    (and supported: otherwise a note says what ran instead). With ``source`` (the
    ``src`` folder of another checkout) that version runs instead, as "gnomon-base"."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gnomon.toml"
    config.write_text(
        "[server]\n"
        f'listen = ["{HOST}"]\n'
        "ntp_port = 0\n"
        "ke_port = 0\n"
        "[tls]\n"
        f'certificate = "{cert}"\n'
        f'key = "{key}"\n'
        "[nts]\n"
        "aeads = [30, 15]\n"
        "[time]\n"
        "local_stratum = 10\n"
        # The load comes from one address: NTS-KE rate limiting (on by default in gnomon,
        # off in chrony) would refuse most handshakes. NTP rate limiting is off by default.
        "[limits]\n"
        "ke_rate_interval = 0.000001\n"
        "ke_rate_burst = 1000000\n"
    )
    baseline_roughtime = source is not None and (source / "gnomon/server/roughtime.py").is_file()
    if "--roughtime-port" in options and (source is None or baseline_roughtime):
        # Roughtime too (a worker of its own, idle in the NTS scenarios), with the same
        # long-term key as roughly's server in this run (a baseline's too, if it has one).
        from gnomon.server.roughtime_keys import write_long_term_key

        key_file = directory / "roughtime.key"
        write_long_term_key(key_file, roughtime_long_term_key())
        with config.open("a") as handle:
            handle.write(f'[roughtime]\nenabled = true\nport = 0\nlong_term_key = "{key_file}"\n')
    ready = directory / "ready.json"
    argv = [
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
    notes = []
    for option, value in (("--workers", workers), ("--ke-workers", ke_workers)):
        if value is None:
            continue
        if option in options:
            argv += [option, str(value)]
        else:
            notes.append(f"{option} {value} asked, but this gnomon has no {option}: not passed")
    log_path = directory / "gnomon.log"
    env = None
    if source is not None:
        env = {**os.environ, "PYTHONPATH": str(source)}
        notes.append(f"baseline: gnomon from {source}")
    server = Server(
        key="gnomon" if source is None else "gnomon-base",
        label="gnomon" if source is None else "gnomon (base)",
        version=gnomon_version(),
        popen=_spawn(argv, log_path, lifetime, cpus, cwd=REPO, env=env),
        log_path=log_path,
        notes=notes,
    )
    server.info["argv"] = argv
    deadline = time.monotonic() + 60
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if ready.exists():
            with contextlib.suppress(ValueError):
                info = json.loads(ready.read_text())
                server.ntp_port, server.ke_port = int(info["ntp_port"]), int(info["ke_port"])
                break
        if not server.alive():
            raise server.fail("exited before it was ready")
        time.sleep(0.05)
    else:
        raise server.fail("no ready file within 60 s")
    server.find_pid()
    server.info["ready"] = info
    roles = {int(pid): role for role, pid in dict(info.get("pids", {})).items()}
    roles[int(info.get("supervisor", server.pid))] = (
        "supervisor" if "supervisor" in info else "server (single process)"
    )
    server.roles = roles
    ntp = sum(1 for role in roles.values() if role.startswith("ntp"))
    ke = sum(1 for role in roles.values() if role.startswith("ke"))
    roughtime = sum(1 for role in roles.values() if role.startswith("roughtime"))
    server.ntp_processes = max(1, ntp)
    server.ke_processes = max(1, ke)
    server.roughtime_processes = max(1, roughtime)
    server.roughtime_port = int(info.get("roughtime_port") or 0)
    server.info["layout"] = (
        f"supervisor + {ntp} NTP worker(s) + {ke} NTS-KE worker(s)"
        + (f" + {roughtime} Roughtime worker(s)" if roughtime else "")
        if "supervisor" in info
        else "one process for NTP and NTS-KE"
    )
    return server


# --- chrony --------------------------------------------------------------------------------


def chrony_version(binary: str) -> str | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=15, check=False
        )
    except OSError:
        return None
    match = re.search(r"version (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else None


def start_chrony(
    key: str,
    binary: str,
    directory: Path,
    cert: Path,
    cert_key: Path,
    *,
    processes: int,
    lifetime: float,
    cpus: Sequence[int] | None,
) -> Server:
    version = chrony_version(binary) or "?"
    user = pwd.getpwnam(CHRONY_USER)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nts").mkdir(exist_ok=True)
    own_cert, own_key = directory / "server.pem", directory / "server.key"
    shutil.copyfile(cert, own_cert)
    shutil.copyfile(cert_key, own_key)
    os.chmod(own_key, 0o600)
    for path in (directory, directory / "nts", own_cert, own_key):
        os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(directory, 0o700)
    ntp_port, ke_port = free_port(), free_port()
    while ke_port == ntp_port:
        ke_port = free_port()
    conf = directory / "chrony.conf"
    conf.write_text(
        f"port {ntp_port}\n"
        f"ntsport {ke_port}\n"
        "bindaddress 127.0.0.1\n"
        "bindaddress ::1\n"
        "allow 127.0.0.1\n"
        "local stratum 10\n"
        f"ntsservercert {own_cert}\n"
        f"ntsserverkey {own_key}\n"
        f"ntsdumpdir {directory / 'nts'}\n"
        f"ntsprocesses {processes}\n"
        "cmdport 0\n"
        f"bindcmdaddress {directory / 'chronyd.sock'}\n"
        f"pidfile {directory / 'chronyd.pid'}\n"
    )
    log_path = directory.parent / f"{key}.log"
    server = Server(
        key=key,
        label=f"chrony {version}",
        version=version,
        popen=_spawn(
            [binary, "-x", "-d", "-u", CHRONY_USER, "-f", str(conf)], log_path, lifetime, cpus
        ),
        log_path=log_path,
        ntp_port=ntp_port,
        ke_port=ke_port,
        ke_processes=processes,
    )
    server.info["binary"] = binary
    server.info["layout"] = f"main process (NTP) + {processes} NTS-KE helper(s)"
    server.find_pid()
    server.roles[server.pid] = "main (NTP)"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _listening(server.pid, ke_port, "tcp", "0A") and _listening(
            server.pid, ntp_port, "udp", "07"
        ):
            break
        if not server.alive():
            raise server.fail("exited before it was ready")
        time.sleep(0.05)
    else:
        raise server.fail("NTP and NTS-KE ports not bound within 20 s")
    for pid in procfs.tree(server.pid)[1:]:
        server.roles[pid] = "NTS-KE helper"
    return server


# --- roughly (Roughtime) ---------------------------------------------------------------------

ROUGHLY = REPO / ".peers" / "roughly" / "bin" / "roughly"
# One long-term key for both Roughtime servers of a run (requests name it in SRV).
_ROUGHTIME_SEED = bytes(range(100, 132))


def roughtime_long_term_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(_ROUGHTIME_SEED)


def roughtime_public_key() -> bytes:
    return bytes(roughtime_long_term_key().public_key().public_bytes_raw())


def roughly_version() -> str:
    python = ROUGHLY.parent / "python"
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('roughly'))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return out.stdout.strip() or "?"


def start_roughly(directory: Path, *, lifetime: float, cpus: Sequence[int] | None) -> Server:
    """roughly's Roughtime server (one asyncio process, batches of 5 ms) on 127.0.0.1."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    version = roughly_version()
    env = {**os.environ, "ROUGHLY_PRIVATE_KEY": base64.b64encode(_ROUGHTIME_SEED).decode()}
    argv = [str(ROUGHLY), "server", "run", "--host", HOST, "--port", str(port), "--no-grease"]
    log_path = directory / "roughly.log"
    server = Server(
        key="roughly",
        label=f"roughly {version}",
        version=version,
        popen=_spawn(argv, log_path, lifetime, cpus, env=env),
        log_path=log_path,
        roughtime_port=port,
    )
    server.info["argv"] = argv
    server.info["layout"] = "one asyncio process (Roughtime only)"
    server.find_pid()
    server.roles[server.pid] = "roughly server"
    deadline = time.monotonic() + 30
    while not _listening(server.pid, port, "udp", "07"):
        if not server.alive():
            raise server.fail("exited before it was ready")
        if time.monotonic() > deadline:
            raise server.fail("UDP port not bound within 30 s")
        time.sleep(0.05)
    return server


def roughtime_requests(count: int) -> RequestSet:
    """``count`` 1024-byte requests offering versions 1 and 0x8000000c, naming the run's
    long-term key in SRV."""
    from gnomon.proto.roughtime.client import build_request
    from gnomon.proto.roughtime.versions import DRAFT_12, VERSION_1

    public = roughtime_public_key()
    requests = []
    for _ in range(count):
        request = build_request(os.urandom(32), (VERSION_1, DRAFT_12), server_key=public)
        requests.append({"packet": request.packet.hex(), "nonce": request.nonce.hex()})
    return RequestSet(requests, [], len(bytes.fromhex(requests[0]["packet"])), "roughtime")


def roughtime_preflight(port: int, request_set: RequestSet, samples: int = 4) -> dict[str, Any]:
    """A few requests one by one, each response verified fully; raises on a bad one."""
    from gnomon.proto.roughtime.client import ClientRequest, verify_response
    from gnomon.proto.roughtime.versions import DRAFT_12, VERSION_1

    public = roughtime_public_key()
    seen: dict[str, Any] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect((HOST, port))
        for request in request_set.requests[:samples]:
            packet = bytes.fromhex(request["packet"])
            sent = ClientRequest(packet, bytes.fromhex(request["nonce"]), (VERSION_1, DRAFT_12))
            reply = b""
            for _ in range(3):
                sock.send(packet)
                try:
                    reply = sock.recv(4096)
                    break
                except TimeoutError:
                    continue
            if not reply:
                raise RuntimeError("no Roughtime response within 3 tries of 2 s")
            verified = verify_response(sent, reply, public)
            seen = {
                "version": f"0x{verified.version:08x}",
                "radius_s": verified.radius,
                "response_bytes": len(reply),
                "request_bytes": len(packet),
            }
    return seen


# --- NTS material: sessions, precomputed requests, a pre-flight check ---------------------


@dataclass
class RequestSet:
    """What a load generator needs for one scenario against one server."""

    requests: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    packet_len: int
    kind: str = "ntp"  # or "roughtime": how the load generator checks replies

    def spec(self) -> dict[str, Any]:
        spec = {"requests": self.requests, "sessions": self.sessions, "kind": self.kind}
        if self.kind == "roughtime":
            spec["public_key"] = roughtime_public_key().hex()
        return spec


def ke_sessions(port: int, ca: Path, aead: int, count: int, timeout: float = 5.0) -> list[Any]:
    """``count`` NTS-KE exchanges offering only ``aead``; raises if the server refuses it."""
    from gnomon.client.ke import ke_exchange
    from gnomon.tls import TrustStore

    trust = TrustStore.from_file(ca)
    results = []
    for _ in range(count):
        result = ke_exchange(HOST, port, trust=trust, aeads=(aead,), timeout=timeout)
        if result.response.aead != aead:
            raise RuntimeError(f"server chose AEAD {result.response.aead}, not {aead}")
        if not result.response.cookies:
            raise RuntimeError("NTS-KE response without cookies")
        results.append(result)
    return results


def plain_requests(count: int) -> RequestSet:
    from gnomon.proto.nts.ntp import MODE_CLIENT, NtpHeader

    requests = []
    for _ in range(count):
        ts = int.from_bytes(os.urandom(8)) | 1
        packet = NtpHeader(mode=MODE_CLIENT, transmit_ts=ts).encode()
        requests.append({"packet": packet.hex(), "ts": ts, "placeholders": 0})
    return RequestSet(requests, [], 48)


def nts_requests(sessions: list[Any], placeholders: int, count: int) -> RequestSet:
    """``count`` requests spread over the sessions and their cookies, each asking for
    ``placeholders`` extra cookies (Association sends 8 - jar size placeholders)."""
    from gnomon.client.ntp import fresh_request
    from gnomon.proto.nts.client import Association
    from gnomon.proto.nts.ke import MAX_COOKIES

    requests: list[dict[str, Any]] = []
    for i in range(count):
        index = i % len(sessions)
        result = sessions[index]
        cookies = result.response.cookies
        cookie = cookies[(i // len(sessions)) % len(cookies)]
        jar = [cookie] * (MAX_COOKIES - placeholders)
        association = Association(result.response.aead, result.c2s, result.s2c, jar)
        packet, pending = fresh_request(association)
        assert pending.placeholders == placeholders, pending
        requests.append(
            {
                "packet": packet.hex(),
                "ts": pending.transmit_ts,
                "uid": pending.unique_id.hex(),
                "placeholders": placeholders,
                "session": index,
            }
        )
    session_specs = [
        {"aead": r.response.aead, "c2s": r.c2s.hex(), "s2c": r.s2c.hex()} for r in sessions
    ]
    return RequestSet(requests, session_specs, len(bytes.fromhex(requests[0]["packet"])))


def preflight(port: int, request_set: RequestSet, samples: int = 4) -> dict[str, Any]:
    """Send a few requests one by one and check the replies fully; raises on a bad one."""
    from gnomon.proto.nts.client import Association, PendingRequest
    from gnomon.proto.nts.ntp import NtpHeader

    sessions = [
        Association(s["aead"], bytes.fromhex(s["c2s"]), bytes.fromhex(s["s2c"]), [])
        for s in request_set.sessions
    ]
    seen: dict[str, Any] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect((HOST, port))
        for request in request_set.requests[:samples]:
            packet = bytes.fromhex(request["packet"])
            reply = b""
            for _ in range(3):
                sock.send(packet)
                try:
                    reply = sock.recv(4096)
                    break
                except TimeoutError:
                    continue
            if not reply:
                raise RuntimeError("no reply to a request within 3 tries of 2 s")
            header = NtpHeader.decode(reply)
            if header.mode != 4 or header.origin_ts != request["ts"]:
                raise RuntimeError(f"reply does not match the request: {header}")
            if header.leap == 3 or header.stratum in (0, 16):
                raise RuntimeError(
                    f"server answers unsynchronised/kiss: leap {header.leap} "
                    f"stratum {header.stratum} refid {header.reference_id!r}"
                )
            if request.get("uid"):
                pending = PendingRequest(
                    bytes.fromhex(request["uid"]), request["ts"], request["placeholders"]
                )
                now = time.time_ns()
                sample = sessions[request["session"]].process_response(
                    reply, pending, sent_ns=now, received_ns=now
                )
                seen["new_cookies"] = sample.new_cookies
            seen["reply_len"] = len(reply)
            seen["stratum"] = header.stratum
    seen["request_len"] = request_set.packet_len
    return seen


# --- a chrony client measuring time quality ---------------------------------------------------


@dataclass
class ChronyProbe:
    """``chronyd -x`` as a plain NTP client of one server, polling every 1/64 s, basic or
    interleaved (``xleave``), every sample in its measurements log. Never touches the
    clock (-x); drops to ``nobody``."""

    popen: subprocess.Popen[bytes]
    directory: Path
    xleave: bool

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def samples(self, since: float, until: float) -> list[dict[str, Any]]:
        """Samples logged from Unix time ``since`` to ``until`` (whole seconds): offset
        and peer delay in µs, chrony's mode (``4B`` basic, ``4I`` interleaved)."""
        import calendar

        found = []
        try:
            lines = (self.directory / "measurements.log").read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            parts = line.split()
            if len(parts) < 18 or not parts[0][:4].isdigit():
                continue  # headers and separators
            stamp = calendar.timegm(time.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S"))
            if not int(since) <= stamp <= until:
                continue
            try:
                offset, delay = float(parts[11]), float(parts[12])
            except ValueError:
                continue
            found.append({"offset_us": offset * 1e6, "delay_us": delay * 1e6, "mode": parts[17]})
        return found


def start_chrony_probe(
    binary: str,
    directory: Path,
    port: int,
    *,
    xleave: bool,
    lifetime: float,
    cpus: Sequence[int] | None,
) -> ChronyProbe:
    user = pwd.getpwnam(CHRONY_USER)
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, user.pw_uid, user.pw_gid)
    conf = directory / "chrony.conf"
    conf.write_text(
        f"server {HOST} port {port} iburst minpoll -6 maxpoll -6"
        + (" xleave" if xleave else "")
        + "\n"
        "port 0\n"
        "cmdport 0\n"
        f"pidfile {directory / 'chronyd.pid'}\n"
        f"logdir {directory}\n"
        "log measurements\n"
    )
    popen = _spawn(
        [binary, "-x", "-d", "-u", CHRONY_USER, "-f", str(conf)],
        directory.parent / f"{directory.name}.log",
        lifetime,
        cpus,
    )
    return ChronyProbe(popen, directory, xleave)
