"""Process plumbing shared by the peer harnesses: bounded lifetimes, logs, waits, ports.

Every peer is started as ``timeout -k 5 LIFETIME CMD...`` in its own process group,
with a parent-death signal on the ``timeout`` process: if the test process dies the
peer gets SIGTERM; if the test forgets it, it ends after LIFETIME seconds anyway;
`PeerProcess.stop` ends the whole group, waiting a bounded time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = REPO_ROOT / ".peers"

DEFAULT_LIFETIME = 1800.0
"""Seconds after which a forgotten peer is ended by its `timeout` wrapper."""

START_TIMEOUT = 60.0
"""Seconds a test waits for a process it started to be ready: a gnomon server, a peer, redis.

A bound on waiting, never a timed assertion (the wait ends as soon as the process is
ready); generous because a loaded 2-core machine takes 10 s and more to start a
supervisor and its workers. Every start-up wait uses this one value.
"""

MAKE_PEERS_HINT = "run `make peers` (scripts/install-peers.sh) as root to install the interop peers"


class PeerNotInstalled(AssertionError):
    """A peer binary is missing. An AssertionError on purpose: the test fails, never skips."""


class PeerStartError(AssertionError):
    """A peer did not come up in time; the message carries the tail of its log."""


def require_executable(name: str, *, hint: str = MAKE_PEERS_HINT) -> str:
    """Absolute path of executable `name` (a path or a name on PATH, /usr/sbin and /sbin too)."""
    if os.sep in name:
        if os.access(name, os.X_OK):
            return name
        raise PeerNotInstalled(f"{name} not found or not executable: {hint}")
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        raise PeerNotInstalled(f"`{name}` not found: {hint}")
    return found


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PeerNotInstalled(f"{what} needs root (network namespaces, chrony's privilege drop)")


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


_live: set[PeerProcess] = set()
_live_lock = threading.Lock()


class PeerProcess:
    """A peer process started under `timeout`, in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        extra_logs: Sequence[Path] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.extra_logs = list(extra_logs)
        timeout_bin = require_executable("timeout")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # `timeout` puts itself and the command in a new process group (pgid = its pid)
        # and forwards SIGTERM to the command.
        self.popen = subprocess.Popen(
            [timeout_bin, "-k", "5", f"{lifetime:g}", *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )
        self.pgid = self.popen.pid
        with _live_lock:
            _live.add(self)

    def __repr__(self) -> str:
        return f"<PeerProcess {self.name} pgid={self.pgid} rc={self.popen.poll()}>"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        parts = [f"--- {self.log_path} (last {lines} lines) ---\n{tail(self.log_path, lines)}"]
        for extra in self.extra_logs:
            parts.append(f"--- {extra} (last {lines} lines) ---\n{tail(extra, lines)}")
        return "\n".join(parts)

    def fail(self, message: str) -> PeerStartError:
        """An error carrying `message`, the exit status and the log tails."""
        rc = self.popen.poll()
        state = "still running" if rc is None else f"exited with status {rc}"
        return PeerStartError(f"{self.name}: {message} ({state})\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the group, wait up to `grace` s, then SIGKILL what is left. Idempotent."""
        try:
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.send_signal(signal.SIGTERM)  # timeout forwards it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(grace)
            # Whatever is left in the group (the command if timeout died first, helpers):
            if group_members(self.pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGTERM)
                deadline = time.monotonic() + grace
                while group_members(self.pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if group_members(self.pgid):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pgid, signal.SIGKILL)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(grace)
            return self.popen.returncode
        finally:
            self._log.close()
            with _live_lock:
                _live.discard(self)


@atexit.register
def _stop_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for proc in leftovers:
        with contextlib.suppress(Exception):
            proc.stop(grace=2.0)


def live_processes() -> list[PeerProcess]:
    """Peers started by this process and not stopped yet."""
    with _live_lock:
        return list(_live)


T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.1,
    alive: Callable[[], bool] | None = None,
) -> T | None:
    """Call `probe` until it returns something truthy, at most `timeout` seconds.

    Returns that value, or None on time-out or as soon as `alive()` turns false.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if alive is not None and not alive():
            return None
        now = time.monotonic()
        if now >= deadline:
            return None
        time.sleep(min(interval, deadline - now))


# --- listening sockets, read from /proc/PID/net/* (that process's network namespace) ---

_TCP_LISTEN = "0A"
_UDP_UNCONN = "07"


def _ports(pid: int | str, table: str, state: str) -> set[int]:
    ports: set[int] = set()
    for suffix in ("", "6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}{suffix}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == state:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def tcp_listening(port: int, pid: int | str = "self") -> bool:
    """Whether something listens on TCP `port` in the network namespace of `pid`.

    Reads /proc instead of connecting: NTPsec serves NTS-KE one connection at a time
    with a 1 s pause, so a probing connection would delay the real one.
    """
    return port in _ports(pid, "tcp", _TCP_LISTEN)


def udp_bound(port: int, pid: int | str = "self") -> bool:
    return port in _ports(pid, "udp", _UDP_UNCONN)


def free_port(host: str = "127.0.0.1", *, tcp: bool = True, udp: bool = True) -> int:
    """A port that is free for TCP and/or UDP on `host` right now (in this thread's netns)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as first:
            first.bind((host, 0))
            port: int = first.getsockname()[1]
            if tcp and udp:
                try:
                    with socket.socket(family, socket.SOCK_DGRAM) as second:
                        second.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port on {host}")


LOOPBACK = ("127.0.0.1", "::1")
"""The loopback addresses servers under test listen on, both: ``localhost`` may be either."""


def localhost_addresses() -> set[str]:
    """What ``localhost`` resolves to here (/etc/hosts: ::1, 127.0.0.1 or both, any order).

    Tests never assume which: a client given ``localhost`` may use any of these, so
    servers listen on all of `LOOPBACK` and checks accept any address of this set.
    """
    infos = socket.getaddrinfo("localhost", None, proto=socket.IPPROTO_TCP)
    return {str(info[4][0]) for info in infos}


def free_loopback_port(*, tcp: bool = True, udp: bool = True) -> int:
    """A port free on both 127.0.0.1 and ::1 (for TCP and/or UDP) right now."""
    for _ in range(50):
        port = free_port(LOOPBACK[0], tcp=tcp, udp=udp)
        kinds = [k for k, wanted in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)) if wanted]
        try:
            with contextlib.ExitStack() as stack:
                for kind in kinds:
                    sock = stack.enter_context(socket.socket(socket.AF_INET6, kind))
                    sock.bind((LOOPBACK[1], port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


@contextlib.contextmanager
def running(proc: PeerProcess) -> Iterator[PeerProcess]:
    """Stop `proc` when the block ends, however it ends."""
    try:
        yield proc
    finally:
        proc.stop()
