"""A worker process: ``python -P -m gnomon.server.worker FD``, started by the supervisor.

A worker is a fresh interpreter that imports this module, then what its role serves
with, and nothing else: an NTP worker loads no TLS stack, no HTTP server, no client,
no Redis client unless keys live in Redis. Not multiprocessing's ``spawn``: that runs
the parent's ``__main__`` (gnomon's CLI) again in every child and keeps a
resource-tracker interpreter beside them. Not ``fork``: each child would carry in
``sys.modules`` (and share, until written, in memory) all the supervisor imported,
pyOpenSSL and prometheus_client included.

FD is one end of a socket pair (a :class:`multiprocessing.connection.Connection`):
the supervisor sends ``(config, role, index, log_level, log_format, feed_fd)`` on it
and the worker answers ``(role, pid, ke_port, ntp_port)`` once serving, or
``("error", line)``. ``feed_fd``, when not None, is where renewed certificates come.
"""

from __future__ import annotations

import os
import signal
import sys

from ..errors import GnomonError
from .logs import configure_logging
from .proctitle import set_process_title

TYPE_CHECKING = False  # typing is not imported at run time
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from typing import Protocol

    from .app import Server
    from .config import ServerConfig

    class ReadySink(Protocol):
        @property
        def closed(self) -> bool: ...

        def send(self, obj: object) -> None: ...

        def close(self) -> None: ...


def keep_out_unused(config: ServerConfig, role: str) -> None:
    """Make the TLS stack unimportable where nothing uses it.

    asyncio imports :mod:`ssl` when it can (libssl and libcrypto: about 5 MiB per
    process), though only TLS connections use it; NTP and Roughtime workers open
    none (the upstream poller is plain NTP). A Redis key store may use TLS, and
    prometheus_client (the workers' counters, with ``[metrics]``) imports it.
    """
    if role != "ke" and config.key_store != "redis" and config.metrics_listen is None:
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # import ssl: ImportError


def event_loop_factory(role: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a worker of ``role`` runs (None: asyncio's default, epoll).

    NTP and Roughtime workers watch a few UDP sockets with ``poll(2)``. An epoll
    instance stays registered on its sockets' wait queues while the worker runs, so
    every datagram the worker sends calls epoll back twice from inside the kernel's
    send path (write space, and for an interleaved reply the error-queue report of its
    transmit timestamp), between the transmit timestamp and the wire: 0.6 µs more on
    every interleaved exchange a chrony client measured over loopback, and the tail
    of its delay twice as long (bench/README.md, "Interleaved mode"). ``poll`` waits
    on the sockets only while the worker sleeps, as chrony's ``select`` does. The
    NTS-KE worker keeps epoll: it holds many TLS connections at once.
    """
    import asyncio
    import selectors

    if role == "ke" or not hasattr(selectors, "PollSelector"):
        return None
    return lambda: asyncio.SelectorEventLoop(selectors.PollSelector())


def serve(
    config: ServerConfig,
    role: str,
    index: int,
    ready: ReadySink,
    log_level: int,
    log_format: str,
    certificate_feed: Connection | None = None,
) -> None:
    """Serve ``role`` until SIGTERM; ``ready`` hears the bound ports, or an error line."""
    short = {"roughtime": "rt"}.get(role, role)  # top shows 15 bytes
    set_process_title(f"gnomon: {role} worker {index}", f"gnomon-{short}-{index}")
    configure_logging(log_level, log_format, role)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    keep_out_unused(config, role)

    import asyncio

    from .app import Server

    def on_ready(server: Server) -> None:
        ready.send((role, os.getpid(), server.bound_ke_port, server.bound_ntp_port))
        ready.close()

    try:
        server = Server(
            config,
            ready=on_ready,
            roles=frozenset({role}),
            reuse_port=True,
            certificate_feed=certificate_feed,
        )
        with asyncio.Runner(loop_factory=event_loop_factory(role)) as runner:
            runner.run(server.run())
    except (GnomonError, OSError) as exc:
        if ready.closed:
            raise
        ready.send(("error", str(exc)))  # the supervisor says it in one line
        sys.exit(2)


def main() -> None:
    from multiprocessing.connection import Connection

    control = Connection(int(sys.argv[1]))
    config, role, index, log_level, log_format, feed_fd = control.recv()
    feed = None if feed_fd is None else Connection(feed_fd, writable=False)
    serve(config, role, index, control, log_level, log_format, feed)


if __name__ == "__main__":
    main()
