"""What the UDP service tests share besides conftest.py's ``host`` and ``clients``
fixtures: the type of ``clients``, sending, and checking that nothing came back."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

Clients = Callable[[int], list[socket.socket]]


def send(socks: list[socket.socket], payloads: list[bytes], server: socket.socket) -> None:
    """Each client sends its payload to the server (loopback: queued when this returns)."""
    for sock, payload in zip(socks, payloads, strict=True):
        sock.sendto(payload, server.getsockname())


def assert_no_reply(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
