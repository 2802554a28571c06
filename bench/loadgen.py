"""Load generators for bench/run.py, run as separate processes.

    python bench/loadgen.py SPEC.json

The spec (JSON, written by run.py) says what to send where. The protocol
with the parent is three lines: this process prints ``READY`` once it is set
up, reads ``T0 T1`` (CLOCK_MONOTONIC seconds, shared by every process on the
machine), loads the server from then until T1, counting only what completes
in [T0, T1), prints one JSON line with its results and exits. Every loop is
bounded in time (``max_seconds`` from start) and in count (``max_replies``,
``max_handshakes``), whatever the parent does.

``udp`` mode: precomputed NTP requests replayed over non-blocking UDP sockets
with ``sendmmsg``/``recvmmsg`` (through ctypes), keeping ``inflight`` requests
outstanding; each reply received is answered by one new request on the same
socket. Every ``validate_every``-th receive batch is checked: mode 4, origin
timestamp equal to the transmit timestamp of a request sent, and one reply of
the batch fully (for NTS: unique identifier and authenticator, with
gnomon's client).

``udp`` mode with ``rate``: open loop instead, ``rate`` requests a second
whatever comes back (the load for the time-quality measurement).

``ke`` mode: ``threads`` client threads, each running full NTS-KE exchanges
(TCP connect, TLS 1.3 handshake, KE request and response) one after another.

``probe`` mode: one NTS client querying every ``interval`` seconds, reporting the
offset and delay it measures (median, 5th and 95th percentiles).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

MSG_DONTWAIT = 0x40
SLOT = 2048  # receive buffer per datagram
EPOLLIN = select.EPOLLIN


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sys_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


# --- ctypes plumbing for sendmmsg / recvmmsg ---------------------------------------------


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


MMSG_SIZE = ctypes.sizeof(_MMsgHdr)


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    libc.sendmmsg.restype = ctypes.c_int
    libc.recvmmsg.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    libc.recvmmsg.restype = ctypes.c_int
    return libc


class _SendRing:
    """All requests in one buffer, with an mmsghdr array of twice their number, so that
    any run of up to ``len(requests)`` consecutive requests (wrapping) is one pointer."""

    def __init__(self, packets: list[bytes]) -> None:
        self.count = len(packets)
        blob = b"".join(packets)
        self.buffer = ctypes.create_string_buffer(blob, len(blob) or 1)
        base = ctypes.addressof(self.buffer)
        offsets, offset = [], 0
        for packet in packets:
            offsets.append(offset)
            offset += len(packet)
        n = 2 * self.count
        self.iov = (_IoVec * n)()
        self.msgs = (_MMsgHdr * n)()
        for i in range(n):
            j = i % self.count
            self.iov[i].iov_base = base + offsets[j]
            self.iov[i].iov_len = len(packets[j])
            self.msgs[i].msg_hdr.msg_iov = ctypes.addressof(self.iov[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.base = ctypes.addressof(self.msgs)
        self.cursor = 0

    def pointer(self) -> int:
        return self.base + self.cursor * MMSG_SIZE

    def advance(self, n: int) -> None:
        self.cursor = (self.cursor + n) % self.count


class _RecvArray:
    def __init__(self, size: int) -> None:
        self.size = size
        self.buffer = ctypes.create_string_buffer(size * SLOT)
        self.base_buffer = ctypes.addressof(self.buffer)
        self.iov = (_IoVec * size)()
        self.msgs = (_MMsgHdr * size)()
        for i in range(size):
            self.iov[i].iov_base = self.base_buffer + i * SLOT
            self.iov[i].iov_len = SLOT
            self.msgs[i].msg_hdr.msg_iov = ctypes.addressof(self.iov[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.base = ctypes.addressof(self.msgs)

    def datagram(self, i: int) -> bytes:
        return ctypes.string_at(self.base_buffer + i * SLOT, self.msgs[i].msg_len)


# --- reply validation ----------------------------------------------------------------------


class _Validator:
    def __init__(self, spec: dict[str, Any]) -> None:
        from gnomon.proto.nts.client import Association, PendingRequest

        self.by_origin: dict[bytes, int] = {}
        self.requests = spec["requests"]
        self.pending = []
        for i, request in enumerate(self.requests):
            ts = int(request["ts"])
            self.by_origin[ts.to_bytes(8, "big")] = i
            uid = request.get("uid")
            self.pending.append(
                PendingRequest(bytes.fromhex(uid), ts, int(request["placeholders"]))
                if uid
                else None
            )
        self.sessions = [
            Association(s["aead"], bytes.fromhex(s["c2s"]), bytes.fromhex(s["s2c"]), [])
            for s in spec.get("sessions", [])
        ]
        self.expect_stratum = spec.get("expect_stratum")
        self.checked = 0
        self.full_checked = 0
        self.problems: Counter[str] = Counter()
        self.sizes: Counter[int] = Counter()
        self.strata: Counter[int] = Counter()

    def check_batch(self, recv: _RecvArray, n: int) -> None:
        for i in range(n):
            data = recv.datagram(i)
            self.checked += 1
            self.sizes[len(data)] += 1
            if len(data) < 48 or data[0] & 7 != 4:
                self.problems["not a server-mode reply"] += 1
                continue
            index = self.by_origin.get(data[24:32])
            if index is None:
                self.problems["origin matches no request"] += 1
                continue
            self.strata[data[1]] += 1
            if i == 0:
                self._full(data, index)

    def _full(self, data: bytes, index: int) -> None:
        self.full_checked += 1
        request = self.requests[index]
        pending = self.pending[index]
        if pending is None:  # plain NTP
            leap = data[0] >> 6
            if leap == 3 or data[1] in (0, 16):
                self.problems["plain reply unsynchronised or kiss"] += 1
            return
        session = self.sessions[int(request["session"])]
        now = time.time_ns()
        try:
            session.process_response(data, pending, sent_ns=now, received_ns=now)
        except Exception as exc:  # any failure is a finding, never a crash
            self.problems[f"NTS reply rejected: {type(exc).__name__}: {exc}"] += 1
            return
        # The jar fills up to eight cookies and then ignores new ones: nothing to empty.

    def report(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "fully_checked": self.full_checked,
            "problems": dict(self.problems),
            "reply_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
            "strata": {str(k): v for k, v in sorted(self.strata.items())},
        }


class _RoughtimeValidator:
    """Roughtime responses: every checked one matched to its request by nonce and no
    larger than it; the first of each checked batch verified fully (signatures, path)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from gnomon.proto.roughtime.client import ClientRequest
        from gnomon.proto.roughtime.versions import DRAFT_12, VERSION_1

        self.public_key = bytes.fromhex(spec["public_key"])
        self.by_nonce = {}
        for request in spec["requests"]:
            packet, nonce = bytes.fromhex(request["packet"]), bytes.fromhex(request["nonce"])
            self.by_nonce[nonce] = ClientRequest(packet, nonce, (VERSION_1, DRAFT_12))
        self.checked = 0
        self.full_checked = 0
        self.problems: Counter[str] = Counter()
        self.sizes: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()

    def check_batch(self, recv: _RecvArray, n: int) -> None:
        from gnomon.proto.roughtime.client import verify_response
        from gnomon.proto.roughtime.message import NONC, decode, unframe

        for i in range(n):
            data = recv.datagram(i)
            self.checked += 1
            self.sizes[len(data)] += 1
            try:
                nonce = decode(unframe(data))[NONC]
            except Exception:
                self.problems["not a Roughtime response"] += 1
                continue
            request = self.by_nonce.get(nonce)
            if request is None:
                self.problems["nonce matches no request"] += 1
                continue
            if len(data) > len(request.packet):
                self.problems["response larger than its request"] += 1
            if i == 0:
                self.full_checked += 1
                try:
                    reply = verify_response(request, data, self.public_key)
                except Exception as exc:  # any failure is a finding, never a crash
                    self.problems[f"rejected: {type(exc).__name__}: {exc}"] += 1
                    continue
                self.versions[reply.version] += 1

    def report(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "fully_checked": self.full_checked,
            "problems": dict(self.problems),
            "reply_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
            "strata": {f"version 0x{k:08x}": v for k, v in sorted(self.versions.items())},
        }


# --- UDP load ------------------------------------------------------------------------------


def run_udp(spec: dict[str, Any], t0: float, t1: float, hard_end: float) -> dict[str, Any]:
    libc = _libc()
    sendmmsg, recvmmsg = libc.sendmmsg, libc.recvmmsg
    packets = [bytes.fromhex(r["packet"]) for r in spec["requests"]]
    ring = _SendRing(packets)
    n_sockets = max(1, int(spec["sockets"]))
    inflight = max(n_sockets, int(spec["inflight"]))
    windows = [
        inflight // n_sockets + (1 if i < inflight % n_sockets else 0) for i in range(n_sockets)
    ]
    recv = _RecvArray(max(windows) * 2)
    validator = _RoughtimeValidator(spec) if spec.get("kind") == "roughtime" else _Validator(spec)
    validate_every = max(1, int(spec.get("validate_every", 64)))
    max_replies = int(spec["max_replies"])
    loss_timeout = float(spec.get("loss_timeout", 0.2))

    family = socket.AF_INET6 if ":" in spec["host"] else socket.AF_INET
    sockets, outstanding, last_rx, window_of = {}, {}, {}, {}
    epoll = select.epoll()
    try:
        for i in range(n_sockets):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect((spec["host"], int(spec["port"])))
            sock.setblocking(False)
            fd = sock.fileno()
            sockets[fd] = sock
            outstanding[fd] = 0
            window_of[fd] = windows[i]
            epoll.register(fd, EPOLLIN)

        sent = replies = lost = batches = send_errors = 0
        count_at_t0 = sent_at_t0 = lost_at_t0 = batches_at_t0 = 0
        cpu_t0 = start_t0 = sys_t0 = 0.0
        measuring = False

        def send(fd: int, n: int) -> int:
            nonlocal send_errors
            if n <= 0:
                return 0
            done = sendmmsg(fd, ring.pointer(), n, 0)
            if done < 0:
                send_errors += 1
                return 0
            ring.advance(done)
            outstanding[fd] += done
            return int(done)

        rate = float(spec.get("rate") or 0.0)  # > 0: open loop, this many requests a second
        fds = list(sockets)
        now = time.monotonic()
        paced_start, next_fd = now, 0
        if not rate:
            for fd in sockets:
                sent += send(fd, window_of[fd])
                last_rx[fd] = now
        next_loss_check = now + loss_timeout
        poll = epoll.poll
        poll_timeout = 0.0 if spec.get("busy_poll") else (0.0005 if rate else 0.05)
        monotonic = time.monotonic
        while True:
            now = monotonic()
            if not measuring and now >= t0:
                measuring = True
                start_t0, cpu_t0, sys_t0 = now, _cpu_self(), _sys_self()
                count_at_t0, sent_at_t0, lost_at_t0, batches_at_t0 = replies, sent, lost, batches
            if now >= t1 or now >= hard_end or replies >= max_replies:
                break
            if rate:
                # Open loop: whatever is due by now, a few requests per socket in turn,
                # whether or not replies came back.
                due = min(int((now - paced_start) * rate) - sent, ring.count)
                while due > 0:
                    burst = min(due, 4)
                    done = send(fds[next_fd], burst)
                    next_fd = (next_fd + 1) % len(fds)
                    due -= burst
                    sent += done
                    if not done:
                        break
            for fd, _ in poll(poll_timeout):
                n = recvmmsg(fd, recv.base, recv.size, MSG_DONTWAIT, None)
                if n <= 0:
                    continue
                replies += n
                batches += 1
                outstanding[fd] = max(0, outstanding[fd] - n)
                if batches % validate_every == 0:
                    validator.check_batch(recv, n)
                if not rate:
                    sent += send(fd, window_of[fd] - outstanding[fd])
                last_rx[fd] = now
            if rate:
                continue
            if now >= next_loss_check:
                next_loss_check = now + loss_timeout / 4
                for fd in sockets:
                    if outstanding[fd] and now - last_rx[fd] > loss_timeout:
                        lost += outstanding[fd]  # the rest of this window is gone
                        outstanding[fd] = 0
                        sent += send(fd, window_of[fd])
                        last_rx[fd] = now
        end = monotonic()
        cpu = _cpu_self() - cpu_t0
        cpu_sys = _sys_self() - sys_t0
        elapsed = end - start_t0 if measuring else 0.0
        window_replies = replies - count_at_t0 if measuring else 0
        window_batches = batches - batches_at_t0 if measuring else 0
        return {
            "mode": "udp",
            "elapsed_s": elapsed,
            "replies": window_replies,
            "sent": sent - sent_at_t0 if measuring else 0,
            "lost": lost - lost_at_t0 if measuring else 0,
            "cpu_s": cpu if measuring else 0.0,
            "cpu_sys_s": cpu_sys if measuring else 0.0,
            "recv_batches": window_batches,
            "mean_batch": window_replies / window_batches if window_batches else 0.0,
            "send_errors": send_errors,
            "rate_asked": rate or None,
            "total_replies": replies,
            "sockets": n_sockets,
            "inflight": inflight,
            "validation": validator.report(),
        }
    finally:
        epoll.close()
        for sock in sockets.values():
            sock.close()


# --- time-quality probe --------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_probe(spec: dict[str, Any], t0: float, t1: float, hard_end: float) -> dict[str, Any]:
    """One NTS client doing what a real one does, every ``interval`` seconds: a request
    built by gnomon's Association, its reply checked, offset and delay computed (RFC 5905)
    from T1 read just before ``send`` and T4 the kernel receive timestamp. The server
    runs on this machine's clock, so the true offset is zero: what is measured is the
    asymmetry the server adds (its T2 and T3 against the wire), under whatever load the
    other load generators put on it."""
    from gnomon._os import SO_TIMESTAMPNS
    from gnomon._os import TIMESPEC as _TIMESPEC
    from gnomon._os import TIMESTAMP_ANCILLARY_SPACE as _ANCILLARY_SPACE
    from gnomon.client.ntp import fresh_request
    from gnomon.errors import ResponseMismatchError
    from gnomon.proto.nts.client import Association

    session = spec["session"]
    initial = [bytes.fromhex(c) for c in session["cookies"]]
    association = Association(
        int(session["aead"]), bytes.fromhex(session["c2s"]), bytes.fromhex(session["s2c"]), initial
    )
    interval = float(spec.get("interval", 0.02))
    timeout = float(spec.get("timeout", 0.25))
    family = socket.AF_INET6 if ":" in spec["host"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    offsets: list[float] = []
    delays: list[float] = []
    lost = sent = 0
    errors: Counter[str] = Counter()
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.connect((spec["host"], int(spec["port"])))
        sock.setblocking(False)
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= t1 or now >= hard_end:
                break
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            if association.cookie_count == 0:  # servers do not track replays: start over
                association = Association(
                    association.aead_id, association.c2s, association.s2c, initial
                )
            packet, pending = fresh_request(association)
            with contextlib.suppress(BlockingIOError):
                while True:  # a late reply to an earlier probe
                    sock.recv(4096)
            sent_ns = time.time_ns()
            sock.send(packet)
            sent += 1
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    lost += 1
                    break
                ready, _, _ = select.select([sock], [], [], remaining)
                if not ready:
                    continue
                try:
                    data, ancillary, _, _ = sock.recvmsg(4096, _ANCILLARY_SPACE)
                except BlockingIOError:
                    continue
                received_ns = time.time_ns()
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
                        received_ns = seconds * 1_000_000_000 + nanoseconds
                try:
                    sample = association.process_response(
                        data, pending, sent_ns=sent_ns, received_ns=received_ns
                    )
                except ResponseMismatchError:
                    continue
                except Exception as exc:  # a finding, never a crash
                    errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
                    break
                if time.monotonic() >= t0:
                    offsets.append(sample.offset_ns / 1000)
                    delays.append(sample.delay_ns / 1000)
                break
    finally:
        sock.close()
    return {
        "mode": "probe",
        "samples": len(offsets),
        "sent": sent,
        "lost": lost,
        "errors": dict(errors),
        "interval_s": interval,
        "offset_us": {
            "median": _percentile(offsets, 0.5),
            "p05": _percentile(offsets, 0.05),
            "p95": _percentile(offsets, 0.95),
            "median_abs": _percentile([abs(o) for o in offsets], 0.5),
        },
        "delay_us": {
            "median": _percentile(delays, 0.5),
            "p05": _percentile(delays, 0.05),
            "p95": _percentile(delays, 0.95),
        },
    }


# --- NTS-KE load ---------------------------------------------------------------------------


class _VerifiedOnce:
    """A TrustStore that verifies each distinct server certificate chain fully once,
    then recognises it: keeps the client's cost per handshake down to TLS itself."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.known: set[bytes] = set()
        self.lock = threading.Lock()

    def verify(self, chain: list[Any], host: str, now: Any = None) -> None:
        from cryptography.hazmat.primitives import hashes

        key = b"".join(c.fingerprint(hashes.SHA256()) for c in chain)
        with self.lock:
            if key in self.known:
                return
        self.store.verify(chain, host, now)
        with self.lock:
            self.known.add(key)


def _restrict_groups(groups: str) -> None:
    """Make gnomon's KE client offer only ``groups`` (an OpenSSL groups list)."""
    from OpenSSL._util import lib

    import gnomon.client.ke
    from gnomon.tls import client_context

    context = client_context()
    if lib.SSL_CTX_set1_curves_list(context._context, groups.encode()) != 1:
        raise RuntimeError(f"OpenSSL refused the groups list {groups!r}")
    gnomon.client.ke._CONTEXT = context


def run_ke(spec: dict[str, Any], t0: float, t1: float, hard_end: float) -> dict[str, Any]:
    from gnomon.client.ke import KeConnection
    from gnomon.tls import TrustStore

    host, port = spec["host"], int(spec["port"])
    if spec.get("groups"):
        _restrict_groups(spec["groups"])
    trust = _VerifiedOnce(TrustStore.from_file(spec["ca"]))
    aeads = tuple(spec.get("aeads", (15,)))
    max_handshakes = int(spec["max_handshakes"])
    timeout = float(spec.get("timeout", 5.0))
    lock = threading.Lock()
    completions: list[float] = []
    errors: Counter[str] = Counter()
    started = [0]
    groups: Counter[str] = Counter()
    stop = threading.Event()

    def one() -> None:
        deadline = time.monotonic() + timeout
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = KeConnection(host, trust, aeads=aeads)  # type: ignore[arg-type]
            sock.sendall(connection.data_to_send())
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("NTS-KE timed out")
                sock.settimeout(remaining)
                data = sock.recv(65536)
                if not data:
                    connection.connection_closed()
                result = connection.receive_data(data)
                outgoing = connection.data_to_send()
                if outgoing:
                    sock.sendall(outgoing)
                if result is not None:
                    if not result.response.cookies:
                        raise RuntimeError("NTS-KE response without cookies")
                    if len(groups) == 0:
                        with contextlib.suppress(Exception):
                            name = connection._tls.conn.get_group_name()
                            groups[name.decode() if isinstance(name, bytes) else str(name)] += 1
                    return

    def worker() -> None:
        while not stop.is_set():
            now = time.monotonic()
            if now >= t1 or now >= hard_end:
                return
            with lock:
                if started[0] >= max_handshakes:
                    return
                started[0] += 1
            try:
                one()
            except Exception as exc:
                with lock:
                    errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
                time.sleep(0.01)
                continue
            done = time.monotonic()
            with lock:
                completions.append(done)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(int(spec["threads"]))]
    cpu_before = _cpu_self()
    for thread in threads:
        thread.start()
    # CPU at T0, read by this (idle) thread.
    delay = t0 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    cpu_t0, sys_t0, real_t0 = _cpu_self(), _sys_self(), time.monotonic()
    delay = min(t1, hard_end) - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    cpu, cpu_sys, end = _cpu_self() - cpu_t0, _sys_self() - sys_t0, time.monotonic()
    for thread in threads:  # the handshakes under way at T1 finish (each bounded by timeout)
        thread.join(max(0.0, hard_end - time.monotonic()) + timeout + 1)
    stop.set()
    in_window = [c for c in completions if real_t0 <= c < t1]
    return {
        "mode": "ke",
        "elapsed_s": max(1e-9, end - real_t0),
        "handshakes": len(in_window),
        "handshakes_total": len(completions),
        "cpu_s": cpu,
        "cpu_sys_s": cpu_sys,
        "cpu_s_total": _cpu_self() - cpu_before,
        "errors": dict(errors),
        "threads": len(threads),
        "tls_group": next(iter(groups), None),
    }


def main() -> int:
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    born = time.monotonic()
    hard_end = born + float(spec["max_seconds"])
    if spec["mode"] == "ke":
        # Import now, not in the measurement window.
        import gnomon.client.ke
    elif spec["mode"] == "probe":
        import gnomon.proto.nts.client  # noqa: F401
    else:
        _RoughtimeValidator(spec) if spec.get("kind") == "roughtime" else _Validator(spec)
    print("READY", flush=True)
    # Wait (bounded) for "T0 T1".
    ready, _, _ = select.select([sys.stdin], [], [], 60.0)
    if not ready:
        print(json.dumps({"error": "no start line within 60 s"}), flush=True)
        return 2
    line = sys.stdin.readline().split()
    if len(line) != 2:
        return 2
    t0, t1 = float(line[0]), float(line[1])
    hard_end = min(hard_end, t1 + 1.0)
    run = {"ke": run_ke, "probe": run_probe}.get(spec["mode"], run_udp)
    result = run(spec, t0, t1, hard_end)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
