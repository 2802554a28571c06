"""Private network namespaces for peers that need fixed ports (NTPsec: 123 and 4460).

`netns()` creates a namespace with only `lo` (up), held by a `sleep` process that a
test can point `nsenter -t PID -n` at.  Nothing in it can reach any other host: it
has no interface but its own loopback.

    with netns(tmp_path) as ns:
        server = ns.spawn("gnomon", ["gnomon", "serve", ...], tmp_path / "gnomon.log")
        ns.run(["ss", "-lntu"])
        with ns.entered():          # sockets created here live in the namespace
            sock = socket.create_connection(("127.0.0.1", 4460), timeout=2)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import proc
from .proc import PeerProcess, PeerStartError, require_executable, require_root

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            text = Path(task.path, "children").read_text()
            found.extend(int(c) for c in text.split())
    return found


class NetNs:
    """A network namespace held by a `sleep` process; see `netns()`."""

    def __init__(self, holder: PeerProcess, pid: int) -> None:
        self.holder = holder
        self.pid = pid
        self._nsenter = require_executable("nsenter")

    def __repr__(self) -> str:
        return f"<NetNs pid={self.pid}>"

    def prefix(self) -> list[str]:
        """argv prefix that runs a command in this namespace (`nsenter -t PID -n`)."""
        return [self._nsenter, "-t", str(self.pid), "-n", "--"]

    def command(self, cmd: Sequence[str]) -> list[str]:
        return [*self.prefix(), *cmd]

    def run(
        self, cmd: Sequence[str], *, timeout: float = 30.0, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run` inside the namespace (bounded by `timeout`)."""
        return subprocess.run(self.command(cmd), timeout=timeout, **kw)

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen` inside the namespace; the caller must end it."""
        return subprocess.Popen(self.command(cmd), **kw)

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        **kw: Any,
    ) -> PeerProcess:
        """Start a long-running process in the namespace with the peers' safety net
        (bounded lifetime, own process group, killed with the test); end it with `.stop()`."""
        return PeerProcess(name, self.command(cmd), log_path, **kw)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switch the calling thread into the namespace for the block.

        Sockets created inside keep living in the namespace after the block. The
        namespace is per thread: other threads (executors) are not affected.
        """
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)

    def tcp_listening(self, port: int) -> bool:
        return proc.tcp_listening(port, self.pid)

    def udp_bound(self, port: int) -> bool:
        return proc.udp_bound(port, self.pid)

    def free_port(self, host: str = "127.0.0.1", *, tcp: bool = True, udp: bool = True) -> int:
        with self.entered():
            return proc.free_port(host, tcp=tcp, udp=udp)

    def free_loopback_port(self, *, tcp: bool = True, udp: bool = True) -> int:
        """A port free on both 127.0.0.1 and ::1 inside the namespace."""
        with self.entered():
            return proc.free_loopback_port(tcp=tcp, udp=udp)

    def close(self) -> None:
        self.holder.stop()


def _netns_id(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


@contextlib.contextmanager
def netns(workdir: Path, *, lifetime: float = proc.DEFAULT_LIFETIME) -> Iterator[NetNs]:
    """A fresh network namespace with `lo` up, for the duration of the block."""
    require_root("a network namespace")
    unshare = require_executable("unshare")
    ip = require_executable("ip")
    sleep = require_executable("sleep")
    script = f'"{ip}" link set lo up && exec "{sleep}" {lifetime:g}'
    holder = PeerProcess(
        "netns",
        [unshare, "--net", "--", "sh", "-c", script],
        workdir / "netns.log",
        lifetime=lifetime + 5,
    )
    try:
        ours = _netns_id("self")

        def ready() -> int | None:
            for child in _children(holder.pgid):
                with contextlib.suppress(OSError):
                    if (
                        Path(f"/proc/{child}/comm").read_text().strip() == "sleep"
                        and _netns_id(child) != ours
                    ):
                        return child
            return None

        pid = proc.wait_until(ready, 10.0, interval=0.01, alive=holder.alive)
        if pid is None:
            raise holder.fail("network namespace did not come up within 10 s")
        ns = NetNs(holder, pid)
        yield ns
    finally:
        holder.stop()


__all__ = ["NetNs", "PeerStartError", "netns"]
