"""A gnomon RoughtimeServer on loopback (UDP and TCP threads) for the client tests."""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from gnomon.proto.roughtime import Request, RoughtimeServer
from gnomon.proto.roughtime import message as m


class LoopbackServer:
    """Answers on 127.0.0.1 with ``server``; ``grease`` first answers get a broken signature.

    ``udp=False`` leaves the UDP port closed (ICMP unreachable) so clients fall back to TCP.
    """

    def __init__(
        self,
        server: RoughtimeServer,
        midpoint: int,
        radius: int = 3,
        *,
        grease: int = 0,
        udp: bool = True,
        tcp: bool = False,
        silent: bool = False,
    ) -> None:
        self.server = server
        self.midpoint = midpoint
        self.radius = radius
        self.grease = grease
        self.silent = silent
        self.received = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp_sock.bind(("127.0.0.1", 0))
        self.port = self.tcp_sock.getsockname()[1]
        self.udp_sock: socket.socket | None = None
        if udp:
            self.udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp_sock.bind(("127.0.0.1", self.port))
            self.udp_sock.settimeout(0.1)
            self._threads.append(threading.Thread(target=self._serve_udp, daemon=True))
        if tcp:
            self.tcp_sock.listen(8)
            self.tcp_sock.settimeout(0.1)
            self._threads.append(threading.Thread(target=self._serve_tcp, daemon=True))
        for thread in self._threads:
            thread.start()

    def answer(self, datagram: bytes) -> bytes | None:
        self.received += 1
        if self.silent:
            return None
        request = self.server.parse_request(datagram)
        if not isinstance(request, Request):
            return None
        response = self.server.respond([request], self.midpoint, self.radius)[0]
        if self.grease > 0:
            self.grease -= 1
            broken = bytearray(response)
            broken[m.FRAME_HEADER + 8 * 7 + 3] ^= 0xFF  # inside SIG
            return bytes(broken)
        return response

    def _serve_udp(self) -> None:
        assert self.udp_sock is not None
        while not self._stop.is_set():
            try:
                data, peer = self.udp_sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            response = self.answer(data)
            if response:
                self.udp_sock.sendto(response, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp_sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    head = conn.recv(m.FRAME_HEADER, socket.MSG_WAITALL)
                    body = conn.recv(m.frame_length(head), socket.MSG_WAITALL)
                except (OSError, ValueError, Exception):
                    continue
                response = self.answer(head + body)
                if response:
                    conn.sendall(response)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self.tcp_sock.close()
        if self.udp_sock is not None:
            self.udp_sock.close()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
