"""Several server processes on shared ports, supervised.

NTP workers each bind their own UDP socket to the same port with
``SO_REUSEPORT``: the kernel spreads clients across them by address hash,
so replies/s grow with the number of cores. NTS-KE runs in processes of its
own, so TLS handshakes never delay an NTP reply. The supervisor restarts a
worker that dies; the others keep answering meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ServerConfig
from .metrics import MULTIPROC_ENV, mark_worker_dead, prepare_multiprocess_dir, serve_metrics
from .ports import reserve_ports

if TYPE_CHECKING:  # imported where the certificates are watched: not without NTS-KE
    from .certificates import CertificateSource

log = logging.getLogger("gnomon.supervisor")

RESTART_DELAY = 0.5


class WorkerProcess:
    """A worker interpreter (``python -P -m gnomon.server.worker FD``) and its pidfd."""

    def __init__(self, control_fd: int, pass_fds: tuple[int, ...]) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # this very gnomon
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}
        flags: list[str] = getattr(subprocess, "_args_from_interpreter_flags", list)()
        self.popen = subprocess.Popen(
            [sys.executable, *flags, "-P", "-m", "gnomon.server.worker", str(control_fd)],
            pass_fds=pass_fds,
            env=env,
        )
        self.pid: int | None = self.popen.pid
        self.sentinel = os.pidfd_open(self.popen.pid)  # readable once the process ends

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        if not self.is_alive() and self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


@dataclass
class _Worker:
    role: str
    index: int
    process: WorkerProcess | None = None
    started: float = 0.0
    feed: multiprocessing.connection.Connection | None = None  # renewed certificates


def run_user(config: ServerConfig) -> tuple[int, int] | None:
    """(uid, gid) of ``server.user`` when this process is root and will hand files over."""
    if config.user is None or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(config.user)
    return entry.pw_uid, entry.pw_gid


class Supervisor:
    """Starts ``ntp_workers`` NTP, ``ke_workers`` NTS-KE and ``roughtime_workers``
    Roughtime processes and keeps them alive."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        ntp_workers: int = 1,
        ke_workers: int = 1,
        roughtime_workers: int = 0,
        log_level: int = logging.INFO,
        log_format: str = "text",
        on_ready: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        self.config = config
        self.log_level = log_level
        self.log_format = log_format
        self.on_ready = on_ready
        # NTS-KE first: a client NAKed by a fresh NTP worker must find KE listening.
        self.workers = [_Worker("ke", i) for i in range(ke_workers)]
        self.workers += [_Worker("ntp", i) for i in range(ntp_workers)]
        self.workers += [_Worker("roughtime", i) for i in range(roughtime_workers)]
        self._stopping = False
        self.restarts = 0
        self.certificates: CertificateSource | None = None
        """Watched here, where a key only root may read can be read; renewals go to the
        NTS-KE workers over a pipe each, so they work after the workers dropped root."""

    def _start(self, worker: _Worker, timeout: float = 30.0) -> tuple[int, int]:
        if worker.process is not None:
            worker.process.join(0)  # reaped already: closes its pidfd
        control, child_end = multiprocessing.connection.Pipe()
        feed_reader: multiprocessing.connection.Connection | None = None
        if worker.feed is not None:
            worker.feed.close()
            worker.feed = None
        if worker.role == "ke" and self.certificates is not None:
            feed_reader, worker.feed = multiprocessing.connection.Pipe(duplex=False)
        fds = (child_end.fileno(),) + (() if feed_reader is None else (feed_reader.fileno(),))
        try:
            process = WorkerProcess(child_end.fileno(), fds)
        finally:
            child_end.close()
            if feed_reader is not None:
                feed_reader.close()
        worker.process = process
        worker.started = time.monotonic()
        receiver = control
        try:
            control.send(
                (
                    self.config,
                    worker.role,
                    worker.index,
                    self.log_level,
                    self.log_format,
                    None if feed_reader is None else fds[1],
                )
            )
        except OSError:
            control.close()
            raise RuntimeError(f"{worker.role} worker {worker.index} died at start") from None
        if not receiver.poll(timeout):
            raise RuntimeError(f"{worker.role} worker {worker.index} did not start")
        try:
            message = receiver.recv()
        except EOFError:
            raise RuntimeError(f"{worker.role} worker {worker.index} died at start") from None
        finally:
            receiver.close()
        if message[0] == "error":
            raise RuntimeError(f"{worker.role} worker {worker.index}: {message[1]}")
        _, _, ke_port, ntp_port = message
        return ke_port, ntp_port

    def run(self) -> None:
        with contextlib.ExitStack() as cleanup:
            config = self.config
            if (
                config.key_path is None
                and config.key_store == "file"
                and config.role != "roughtime"
            ):
                # Workers must share cookie keys; without a configured file they live
                # in a private temporary one and die with this supervisor.
                scratch = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="gnomon-keys-"))
                owner = run_user(self.config)
                if owner is not None:
                    os.chown(scratch, *owner)  # the workers write it after dropping root
                self.config = replace(self.config, key_path=Path(scratch) / "keys.json")
                log.warning("no keys.path configured: cookies will not survive a restart")
            self._run()

    def _run(self) -> None:
        self.config, held = reserve_ports(self.config)
        if any(w.role == "ke" for w in self.workers):
            from .certificates import CertificateSource

            assert self.config.certificate is not None and self.config.key is not None
            self.certificates = CertificateSource(self.config.certificate, self.config.key)
        stop_metrics: Callable[[], None] | None = None
        if self.config.metrics_listen is not None:
            # Before any worker starts, so every process writes to the same folder.
            scratch = tempfile.mkdtemp(prefix="gnomon-metrics-")
            prepare_multiprocess_dir(scratch, run_user(self.config))
            stop_metrics = serve_metrics(self.config.metrics_listen, multiprocess=True)
        try:
            self._run_workers(held)
        finally:
            if stop_metrics is not None:
                stop_metrics()
                shutil.rmtree(os.environ.pop(MULTIPROC_ENV, ""), ignore_errors=True)

    def _run_workers(self, held: list[socket.socket]) -> None:
        stop_reader, stop_writer = socket.socketpair()
        stop_writer.setblocking(False)

        def request_stop(signum: int, frame: object) -> None:
            with contextlib.suppress(OSError):
                stop_writer.send(b"x")

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for worker in self.workers:
                self._start(worker)
            for sock in held:
                sock.close()  # the workers hold the ports now
            info: dict[str, object] = {
                "ke_port": self.config.ke_port,
                "ntp_port": self.config.ntp_port,
                "roughtime_port": self.config.roughtime_port if self.config.roughtime else None,
                "pids": {f"{w.role}-{w.index}": w.process.pid for w in self.workers if w.process},
                "supervisor": os.getpid(),
            }
            log.info("%d worker processes serving", len(self.workers))
            if self.on_ready is not None:
                self.on_ready(info)
            self._watch(stop_reader)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._stop_all()
            stop_reader.close()
            stop_writer.close()

    def _watch(self, stop_reader: socket.socket) -> None:
        while True:
            sentinels: list[int] = [w.process.sentinel for w in self.workers if w.process]
            ready = multiprocessing.connection.wait([*sentinels, stop_reader], timeout=1.0)
            if stop_reader in ready:
                return
            self._hand_over_certificates()
            for worker in self.workers:
                process = worker.process
                if process is not None and not process.is_alive():
                    log.warning(
                        "%s worker %d (pid %s) exited with %s; restarting",
                        worker.role,
                        worker.index,
                        process.pid,
                        process.exitcode,
                    )
                    if time.monotonic() - worker.started < RESTART_DELAY:
                        time.sleep(RESTART_DELAY)  # no busy loop on a worker that cannot start
                    self.restarts += 1
                    if process.pid is not None:
                        mark_worker_dead(process.pid)
                    try:
                        self._start(worker)
                    except RuntimeError as exc:
                        log.error("%s", exc)

    def _hand_over_certificates(self) -> None:
        """Send a renewed certificate and key (read here, as root) to the NTS-KE workers."""
        source = self.certificates
        if source is None:
            return
        reloads = source.reloads
        source.context()  # reads the files if they changed; logs a broken renewal
        if source.reloads == reloads:
            return
        for worker in self.workers:
            if worker.feed is not None:
                try:
                    worker.feed.send(source.pem)
                except OSError as exc:  # a worker that just died: its successor reads the files
                    log.warning("ke worker %d: renewal not sent: %s", worker.index, exc)

    def _stop_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + 10
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join(max(0.1, deadline - time.monotonic()))
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join(1)
