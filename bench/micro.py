"""In-process cost of gnomon's NTP reply path, without sockets.

``.venv/bin/python bench/micro.py`` times ``NtpResponder.respond`` per scenario
(plain, NTS with 0 or 1 placeholder, AEAD 15 and 30), with ``--primitives``
the AEAD calls it makes, with ``--loop`` the UDP loop (``NtpService.drain``
with ``recvmmsg``/``sendmmsg`` and with ``recvmsg``/``sendto``, on loopback, replies to a socket
nobody waits on), with ``--profile SCENARIO`` prints a cProfile of that
scenario, and with ``--baseline SRC`` (another checkout's root) times that
tree's responder and cookie codec in the same process, alternating with this
one's over ``--rounds`` rounds, so both see the same machine (A/B on a busy
host: compare the two columns, not figures of different runs); with
``--callgrind`` too it compares valgrind instruction counts per respond, which
do not move with the machine's load.
Requests are built the way the bench's load generator gets them: gnomon's
client (``Association.build_request``) from cookies sealed by a CookieCodec,
with ``--sessions`` distinct key sets (default 16, as bench/run.py).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import importlib.util
import inspect
import os
import pstats
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from callgrind import instructions_per_step

from gnomon.client.ntp import fresh_request
from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256, ALGORITHMS
from gnomon.proto.nts.client import Association
from gnomon.proto.nts.cookie import RANDOM_LEN, CookieCodec, CookieKey
from gnomon.proto.nts.ke import MAX_COOKIES
from gnomon.proto.nts.ntp_server import NtpResponder, TimeSource

SCENARIOS = {
    "plain": (None, 0),
    "nts0-15": (AES_SIV_CMAC_256, 0),
    "nts1-15": (AES_SIV_CMAC_256, 1),
    "nts0-30": (AES_128_GCM_SIV, 0),
    "nts1-30": (AES_128_GCM_SIV, 1),
}


def requests(
    codec: Any, scenario: str, sessions: int, count: int, association: Any = Association
) -> list[bytes]:
    aead, placeholders = SCENARIOS[scenario]
    if aead is None:
        header = bytearray(48)
        header[0] = 0x23
        return [bytes(header[:40]) + os.urandom(8) for _ in range(count)]
    out: list[bytes] = []
    length = ALGORITHMS[aead].key_length
    keys = [(os.urandom(length), os.urandom(length)) for _ in range(sessions)]
    for i in range(count):
        c2s, s2c = keys[i % sessions]
        # A jar of 8 - placeholders cookies makes build_request send that many placeholders.
        jar = [
            codec.seal(aead, c2s, s2c, os.urandom(RANDOM_LEN))
            for _ in range(MAX_COOKIES - placeholders)
        ]
        out.append(fresh_request(association(aead, c2s, s2c, jar))[0])
    return out


def time_respond(responder: Any, packets: list[bytes], seconds: float) -> float:
    respond = responder.respond
    clock = time.time_ns
    now = clock()
    for packet in packets:  # warm-up and check
        assert respond(packet, now, clock) is not None
    loops = 0
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or loops < 3:
        start = time.perf_counter()
        for packet in packets:
            respond(packet, now, clock)
        best = min(best, (time.perf_counter() - start) / len(packets))
        loops += 1
    return best * 1e6


def primitives() -> None:
    """Each call the NTS path makes, at the sizes of an nts0 request (AEAD 30 and 15),
    and what the former cookie format (AES-GCM-SIV per cookie) and os.urandom cost."""
    from hashlib import blake2b

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV, AESSIV

    gcm_siv, siv, gcm = AESGCMSIV(os.urandom(16)), AESSIV(os.urandom(32)), AESGCM(os.urandom(16))
    nonce, nonce16, head = os.urandom(12), os.urandom(16), os.urandom(84)
    request_ad = {30: os.urandom(156), 15: os.urandom(188)}
    sealed = gcm.encrypt(nonce, bytes(34), b"k" * 6)
    gcm_siv_sealed = gcm_siv.encrypt(nonce, bytes(34), b"k" * 6)
    gcm_siv_request = gcm_siv.encrypt(nonce, b"", request_ad[30])
    siv_request = siv.encrypt(b"", [request_ad[15], nonce16])
    prf = blake2b(key=os.urandom(32), digest_size=60)

    def nonces() -> bytes:
        copy = prf.copy()
        copy.update(bytes(16) + bytes(34))
        return copy.digest()

    cases = {
        "cookie open: AESGCM.decrypt(50 B, ad 6 B)": lambda: gcm.decrypt(nonce, sealed, b"k" * 6),
        "cookie seal: AESGCM.encrypt(34 B, ad 6 B)": lambda: gcm.encrypt(
            nonce, bytes(34), b"k" * 6
        ),
        "cookie and reply nonces: BLAKE2b copy/update/digest": nonces,
        "request check, AEAD 30: AESGCMSIV.decrypt(16 B, ad 156 B)": lambda: gcm_siv.decrypt(
            nonce, gcm_siv_request, request_ad[30]
        ),
        "reply seal, AEAD 30: AESGCMSIV.encrypt(72 B, ad 84 B)": lambda: gcm_siv.encrypt(
            nonce, bytes(72), head
        ),
        "request check, AEAD 15: AESSIV.decrypt(16 B, [ad 188 B, nonce])": lambda: siv.decrypt(
            siv_request, [request_ad[15], nonce16]
        ),
        "reply seal, AEAD 15: AESSIV.encrypt(104 B, [ad 84 B, nonce])": lambda: siv.encrypt(
            bytes(104), [head, nonce16]
        ),
        "former cookie open: AESGCMSIV.decrypt(50 B, ad 6 B)": lambda: gcm_siv.decrypt(
            nonce, gcm_siv_sealed, b"k" * 6
        ),
        "former cookie seal: AESGCMSIV.encrypt(34 B, ad 6 B)": lambda: gcm_siv.encrypt(
            nonce, bytes(34), b"k" * 6
        ),
        "former reply nonce: os.urandom(28)": lambda: os.urandom(28),
    }
    for name, call in cases.items():
        number = 100_000
        cost = min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6
        print(f"  {name:64s} {cost:6.2f} µs")


def loop_costs() -> None:
    """Per datagram: NtpService.drain receiving (the responder answers nothing), then
    receiving and sending a 48-byte reply; batched system calls, then one per datagram."""
    import socket

    from gnomon.server.ntp import NtpService, open_ntp_socket

    class Answer:
        tx_key = 0  # never interleaved

        def __init__(self, reply: bytes | None) -> None:
            self.reply = reply

        def respond(self, data: bytes, receive_ns: int, clock: object) -> bytes | None:
            return self.reply

    def per_datagram(reply: bytes | None, mmsg: bool, count: int = 1024) -> float:
        server = open_ntp_socket("127.0.0.1", 0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
            service = NtpService(Answer(reply), server)  # type: ignore[arg-type]
            if not mmsg:
                service._batch = None
            best = float("inf")
            for _ in range(7):
                for _ in range(count):
                    client.sendto(bytes(228), server.getsockname())
                start = time.perf_counter()
                for _ in range(count // 64 + 2):
                    service.drain()
                best = min(best, (time.perf_counter() - start) / count)
                try:
                    while True:
                        client.recv(4096)
                except BlockingIOError:
                    pass
            return best * 1e6
        finally:
            server.close()
            client.close()

    for mmsg in (True, False):
        name = "recvmmsg/sendmmsg" if mmsg else "recvmsg/sendto   "
        print(
            f"  {name}: receive {per_datagram(None, mmsg):5.2f} µs, "
            f"receive + send a reply {per_datagram(bytes(48), mmsg):5.2f} µs per datagram"
        )


class Tree:
    """The responder and cookie codec of one gnomon tree (this one, or a baseline's
    imported as another package), behind the API both understand."""

    def __init__(self, label: str, package: str = "gnomon") -> None:
        self.label = label
        self.cookie = importlib.import_module(f"{package}.proto.nts.cookie")
        self.server = importlib.import_module(f"{package}.proto.nts.ntp_server")
        self.client = importlib.import_module(f"{package}.proto.nts.client")
        self.package = package
        self.codec = self.cookie.CookieCodec(self.cookie.CookieKey(1, os.urandom(16)))
        self._seeded = "seed" in inspect.signature(self.server.NtpResponder).parameters
        # seal_reply's last argument: the reply's unique input now, the time before.
        self._unique = "unique" in inspect.signature(self.codec.seal_reply).parameters

    def responder(self) -> Any:
        source = self.server.TimeSource(leap=0, stratum=2, reference_id=b"\x7f\x00\x00\x01")
        if self._seeded:
            return self.server.NtpResponder(self.codec, source, seed=os.urandom(16))
        return self.server.NtpResponder(self.codec, source)

    def requests(self, scenario: str, sessions: int, count: int) -> list[bytes]:
        return requests(self.codec, scenario, sessions, count, self.client.Association)

    def cookie_calls(self) -> dict[str, Callable[[], object]]:
        """Cookie open, and one and two cookies sealed (beside a reply's nonce), as the
        responder calls them, over 4096 cookies of random sessions."""
        codec = self.codec
        c2s, s2c = os.urandom(16), os.urandom(16)
        plain = AES_128_GCM_SIV.to_bytes(2, "big") + c2s + s2c
        cookies = [codec.seal(AES_128_GCM_SIV, c2s, s2c, os.urandom(16)) for _ in range(4096)]
        last: object = os.urandom(16) if self._unique else time.time_ns()
        for cookie in cookies:
            assert codec.open_raw(cookie) == plain
        endless = iter(cookies * 2000)
        open_raw, seal_reply = codec.open_raw, codec.seal_reply
        return {
            "cookie open": lambda: open_raw(next(endless)),
            "reply nonce, no cookie": lambda: seal_reply(plain, 0, 12, last),
            "reply nonce and 1 cookie": lambda: seal_reply(plain, 1, 12, last),
            "reply nonce and 2 cookies": lambda: seal_reply(plain, 2, 12, last),
        }


def load_baseline(root: Path) -> Tree:
    src = root / "src" / "gnomon"
    spec = importlib.util.spec_from_file_location(
        "gnomon_baseline", src / "__init__.py", submodule_search_locations=[str(src)]
    )
    assert spec is not None and spec.loader is not None, f"no gnomon package in {root}"
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules["gnomon_baseline"] = module
    spec.loader.exec_module(module)
    return Tree(f"baseline {root}", "gnomon_baseline")


def compare(trees: list[Tree], sessions: int, count: int, rounds: int) -> None:
    """Best per-call time of each tree, the trees taking turns round after round."""
    print(f"A/B, best of {rounds} alternating rounds (µs per call):")
    print(f"  {'':28s}" + "".join(f"{t.label[:24]:>26s}" for t in trees) + "     ratio")

    def show(name: str, best: list[float]) -> None:
        ratio = best[-1] / best[0]
        print(f"  {name:28s}" + "".join(f"{b:26.3f}" for b in best) + f"  {ratio:8.3f}")

    for scenario in SCENARIOS:
        cases = []
        for tree in trees:
            responder, packets = tree.responder(), tree.requests(scenario, sessions, count)
            now = time.time_ns()
            assert all(responder.respond(p, now, time.time_ns) for p in packets)
            cases.append((responder.respond, packets))
        best = [float("inf")] * len(trees)
        for _ in range(rounds):
            for n, (respond, packets) in enumerate(cases):
                now, clock = time.time_ns(), time.time_ns
                start = time.perf_counter()
                for packet in packets:
                    respond(packet, now, clock)
                best[n] = min(best[n], (time.perf_counter() - start) / len(packets) * 1e6)
        show(f"respond {scenario}", best)
    calls = [tree.cookie_calls() for tree in trees]
    for name in calls[0]:
        best = [float("inf")] * len(trees)
        for _ in range(rounds):
            for n, tree_calls in enumerate(calls):
                cost = timeit.timeit(tree_calls[name], number=2000) / 2000 * 1e6
                best[n] = min(best[n], cost)
        show(name, best)


def respond_loops(tree: Tree, scenario: str, sessions: int, count: int, loops: int) -> None:
    """``loops`` passes of ``tree``'s responder over ``count`` requests (run under valgrind)."""
    responder, packets = tree.responder(), tree.requests(scenario, sessions, count)
    respond, now, clock = responder.respond, time.time_ns(), time.time_ns
    for _ in range(loops):
        for packet in packets:
            respond(packet, now, clock)


def drain_loops(tree: Tree, scenario: str, sessions: int, count: int, loops: int) -> None:
    """``loops`` passes of ``count`` requests through ``tree``'s whole NTP service path
    (``NtpService.drain``: recvmmsg, the responder, sendmmsg) on loopback, 64 at a time."""
    import socket

    ntp = importlib.import_module(f"{tree.package}.server.ntp")
    server = ntp.open_ntp_socket("127.0.0.1", 0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    responder = tree.responder()
    service = ntp.NtpService(responder, server)
    packets, address = tree.requests(scenario, sessions, count), server.getsockname()
    counters = responder.counters
    for _ in range(loops):
        for at in range(0, count, 64):
            chunk = packets[at : at + 64]
            goal = counters.plain + counters.nts + len(chunk)
            for packet in chunk:
                client.sendto(packet, address)
            while counters.plain + counters.nts < goal:
                service.drain()
            for _ in chunk:
                client.recv(4096)


def instructions(scenario: str, baseline: Path | None, count: int, low: int, high: int) -> float:
    """Instructions per reply of ``scenario`` (``respond:NAME`` or ``drain:NAME``), from
    runs of ``low`` and ``high`` passes over ``count`` requests under valgrind."""

    def command(loops: int) -> list[str]:
        argv = [sys.executable, __file__, "--ir-run", scenario, str(loops)]
        argv += ["--requests", str(count)]
        return argv + (["--baseline", str(baseline)] if baseline is not None else [])

    return instructions_per_step(command, low, high, count)


def compare_instructions(baseline: Path, count: int) -> None:
    """Per reply: the responder alone, then the whole service path (``drain:``), which
    is what bench/run.py's CPU per reply measures apart from the kernel (the same for
    both trees)."""
    print("A/B, valgrind instructions per reply (Ir; independent of the machine's load):")
    print(f"  {'':28s}{'baseline':>14s}{'this tree':>14s}     ratio")
    for part in ("respond", "drain"):
        for scenario in SCENARIOS:
            name = f"{part}:{scenario}"
            before = instructions(name, baseline, count, 1, 3)
            after = instructions(name, None, count, 1, 3)
            print(f"  {part} {scenario:20s}{before:14.0f}{after:14.0f}  {after / before:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per scenario")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--profile", choices=SCENARIOS, help="cProfile one scenario")
    parser.add_argument("--primitives", action="store_true", help="also time the AEAD calls")
    parser.add_argument("--loop", action="store_true", help="also time the UDP loop")
    parser.add_argument("--baseline", type=Path, help="A/B against the checkout at this path")
    parser.add_argument("--rounds", type=int, default=40, help="A/B rounds")
    parser.add_argument(
        "--callgrind", action="store_true", help="A/B by instruction counts (with --baseline)"
    )
    parser.add_argument("--ir-run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ir_run:
        (part, scenario), loops = args.ir_run[0].split(":"), int(args.ir_run[1])
        tree = load_baseline(args.baseline.resolve()) if args.baseline else Tree("this tree")
        run = respond_loops if part == "respond" else drain_loops
        run(tree, scenario, args.sessions, args.requests, loops)
        return
    if args.baseline and args.callgrind:
        compare_instructions(args.baseline.resolve(), args.requests)
        return
    if args.baseline:
        trees = [load_baseline(args.baseline.resolve()), Tree("this tree")]
        compare(trees, args.sessions, args.requests, args.rounds)
        return
    codec = CookieCodec(CookieKey(1, os.urandom(16)))
    synced = TimeSource(leap=0, stratum=2, reference_id=b"\x7f\x00\x00\x01")
    if args.profile:
        responder = NtpResponder(codec, synced, seed=os.urandom(RANDOM_LEN))
        packets = requests(codec, args.profile, args.sessions, args.requests)
        respond, clock, now = responder.respond, time.time_ns, time.time_ns()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(200):
            for packet in packets:
                respond(packet, now, clock)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        return
    print("NtpResponder.respond, best per-request time:")
    for scenario in SCENARIOS:
        responder = NtpResponder(codec, synced, seed=os.urandom(RANDOM_LEN))
        packets = requests(codec, scenario, args.sessions, args.requests)
        cost = time_respond(responder, packets, args.seconds)
        print(f"  {scenario:8s} {cost:6.2f} µs  ({len(packets[0])} B request)")
    if args.primitives:
        print("AEAD primitives (cryptography, per call):")
        primitives()
    if args.loop:
        print("UDP loop (NtpService.drain), loopback:")
        loop_costs()


if __name__ == "__main__":
    main()
