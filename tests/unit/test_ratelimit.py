"""Per-prefix rate limiting and RATE kisses (gnomon.proto.ratelimit)."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.proto.nts.fields import (
    EF_NTS_AUTHENTICATOR,
    EF_NTS_COOKIE,
    EF_NTS_COOKIE_PLACEHOLDER,
    EF_UNIQUE_IDENTIFIER,
)
from gnomon.proto.nts.ntp import (
    HEADER_LEN,
    LEAP_UNSYNCHRONIZED,
    MODE_SERVER,
    NtpHeader,
    NtpPacket,
    encode_extension_field,
    unix_ns_to_ntp,
)
from gnomon.proto.ratelimit import KeRateLimiter, RateLimiter, Verdict, build_rate_kiss

ALLOW, KISS, DROP = Verdict.ALLOW, Verdict.KISS, Verdict.DROP


def limiter(**kwargs: object) -> RateLimiter:
    kwargs.setdefault("rng", random.Random(1234))
    return RateLimiter(**kwargs)  # type: ignore[arg-type]


def v4(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + i))


def v6(i: int) -> str:
    """Address i, each in its own /64."""
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) + (i << 64) + 1))


# -- bursts, refill, leak ---------------------------------------------------


def test_burst_then_drop_without_leak() -> None:
    rl = limiter(interval=2.0, burst=16, leak=0)
    key = rl.key("192.0.2.1")
    verdicts = [rl.check(key, 100.0) for _ in range(20)]
    assert verdicts == [ALLOW] * 16 + [DROP] * 4
    assert rl.counters.limited == 4
    assert rl.counters.leaked == 0


def test_burst_then_kiss_or_drop_with_leak() -> None:
    rl = limiter(interval=2.0, burst=16, leak=2, max_leak_rate=None)
    key = rl.key("192.0.2.1")
    assert [rl.check(key, 100.0) for _ in range(16)] == [ALLOW] * 16
    over = [rl.check(key, 100.0) for _ in range(8000)]
    assert ALLOW not in over
    kisses = over.count(KISS)
    # one in 2**2 over-limit requests leaks, at random
    assert 0.2 * len(over) < kisses < 0.3 * len(over)
    assert rl.counters.leaked == kisses
    assert rl.counters.limited == len(over)


def test_leak_one_in_two_with_chrony_style_answers() -> None:
    rl = limiter(interval=1.0, burst=1, leak=1, kod=False, max_leak_rate=None)
    key = rl.key("2001:db8::1")
    assert rl.check(key, 0.0) is ALLOW
    over = [rl.check(key, 0.0) for _ in range(4000)]
    assert KISS not in over
    assert 0.45 * len(over) < over.count(ALLOW) < 0.55 * len(over)


def test_leak_is_capped_globally_across_prefixes() -> None:
    rl = limiter(interval=60.0, burst=1, leak=1, max_leak_rate=10.0)
    keys = [rl.key(v4(i)) for i in range(200)]
    for key in keys:
        rl.check(key, 0.0)  # spend every bucket
    leaked = 0
    for step in range(2000):  # 2000 over-limit requests spread over one second
        leaked += rl.check(keys[step % 200], step / 2000) is KISS
    # a burst of one second's worth (10) plus 10 per second: nowhere near 1000
    assert 10 <= leaked <= 21
    assert rl.counters.leaked == leaked


def test_refill_one_token_per_interval() -> None:
    rl = limiter(interval=2.0, burst=4, leak=0)
    key = rl.key("192.0.2.7")
    assert [rl.check(key, 0.0) for _ in range(5)] == [ALLOW] * 4 + [DROP]
    assert rl.check(key, 1.9) is DROP
    assert rl.check(key, 2.0) is ALLOW  # one token back
    assert rl.check(key, 2.0) is DROP
    # a full bucket after burst * interval of silence, not more
    assert [rl.check(key, 10.0) for _ in range(5)] == [ALLOW] * 4 + [DROP]
    assert [rl.check(key, 1000.0) for _ in range(5)] == [ALLOW] * 4 + [DROP]


def test_steady_overload_is_answered_at_the_configured_rate() -> None:
    rl = limiter(interval=2.0, burst=16, leak=0)
    key = rl.key("192.0.2.7")
    allowed = sum(rl.check(key, t / 10) is ALLOW for t in range(10_000))  # 10/s for 1000 s
    assert 16 + 499 <= allowed <= 16 + 500


def test_a_client_within_the_limit_is_never_limited() -> None:
    rl = limiter(interval=2.0, burst=16)
    key = rl.key("192.0.2.7")
    # bursts of 8 every 16 s (the average rate) and one request every 2 s
    assert all(rl.check(key, 16.0 * n) is ALLOW for n in range(100) for _ in range(8))
    assert all(rl.check(key, 2000.0 + 2 * n) is ALLOW for n in range(1000))


def test_clients_are_independent() -> None:
    rl = limiter(interval=2.0, burst=2, leak=0)
    a, b = rl.key("192.0.2.1"), rl.key("192.0.2.2")
    assert [rl.check(a, 0.0) for _ in range(3)] == [ALLOW, ALLOW, DROP]
    assert [rl.check(b, 0.0) for _ in range(3)] == [ALLOW, ALLOW, DROP]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 12)),  # (client, time step in quarters)
        max_size=300,
    ),
    st.sampled_from([1.0, 2.0, 0.5]),
    st.integers(1, 6),
)
def test_matches_a_reference_token_bucket(
    events: list[tuple[int, int]], interval: float, burst: int
) -> None:
    """GCRA agrees with the textbook bucket: `burst` tokens, one per interval."""
    rl = limiter(interval=interval, burst=burst, leak=0)
    tokens = dict.fromkeys(range(4), float(burst))
    last = dict.fromkeys(range(4), 0.0)
    now = 0.0
    for client, step in events:
        now += step / 4  # exact in binary floating point
        tokens[client] = min(burst, tokens[client] + (now - last[client]) / interval)
        last[client] = now
        expected = ALLOW if tokens[client] >= 1 else DROP
        if expected is ALLOW:
            tokens[client] -= 1
        assert rl.check(rl.key(v4(client)), now) is expected


# -- prefixes and keys ------------------------------------------------------


def test_ipv6_slash64_shares_a_bucket() -> None:
    rl = limiter(interval=2.0, burst=16, leak=0)
    a = rl.key("2001:db8:1:2::1")
    b = rl.key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    c = rl.key("2001:db8:1:3::1")
    assert a == b != c
    for _ in range(8):
        assert rl.check_host("2001:db8:1:2::1", 0.0) is ALLOW
        assert rl.check_host("2001:db8:1:2:dead:beef::9", 0.0) is ALLOW
    assert rl.check_host("2001:db8:1:2::77", 0.0) is DROP
    assert rl.check_host("2001:db8:1:3::1", 0.0) is ALLOW


def test_configurable_prefix_lengths() -> None:
    rl = limiter(ipv4_prefix=24, ipv6_prefix=48)
    assert rl.key("192.0.2.1") == rl.key("192.0.2.254") != rl.key("192.0.3.1")
    assert rl.key("2001:db8:1:2::1") == rl.key("2001:db8:1:ffff::1") != rl.key("2001:db8:2::1")
    whole = limiter(ipv4_prefix=0, ipv6_prefix=0)
    assert whole.key("0.0.0.0") == whole.key("255.255.255.255")
    assert whole.key("::") == whole.key("ffff::")
    assert whole.key("1.2.3.4") != whole.key("::")  # the two families never share a bucket


def test_ipv4_mapped_ipv6_counts_as_ipv4() -> None:
    rl = limiter(interval=2.0, burst=2, leak=0)
    assert rl.key("::ffff:192.0.2.1") == rl.key("192.0.2.1")
    assert rl.key("::ffff:c000:201") == rl.key("192.0.2.1")
    assert rl.check_host("192.0.2.1", 0.0) is ALLOW
    assert rl.check_host("::ffff:192.0.2.1", 0.0) is ALLOW
    assert rl.check_host("192.0.2.1", 0.0) is DROP
    # the mapped address gets the IPv4 prefix length, not the IPv6 one
    rl24 = limiter(ipv4_prefix=24)
    assert rl24.key("::ffff:192.0.2.1") == rl24.key("192.0.2.200")
    assert rl24.key("::ffff:192.0.3.1") != rl24.key("192.0.2.200")


def test_zone_is_ignored() -> None:
    rl = limiter()
    assert rl.key("fe80::1%eth0") == rl.key("fe80::1") == rl.key("fe80::2%3")


@pytest.mark.parametrize("host", ["", "localhost", "192.0.2", "1.2.3.4.5", "::g", "256.1.1.1"])
def test_key_rejects_non_addresses(host: str) -> None:
    rl = limiter()
    with pytest.raises(ValueError, match="not an IP address"):
        rl.key(host)
    with pytest.raises(ValueError):
        rl.check_host(host, 0.0)


@settings(max_examples=300)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**128 - 1))
def test_ipv4_and_ipv6_keys_never_collide(a4: int, a6: int) -> None:
    rl = limiter(ipv4_prefix=32, ipv6_prefix=128)
    addr6 = ipaddress.IPv6Address(a6)
    k4 = rl.key(str(ipaddress.IPv4Address(a4)))
    k6 = rl.key(str(addr6))
    if addr6.ipv4_mapped is None:
        assert k4 != k6
    else:
        assert (k4 == k6) == (int(addr6.ipv4_mapped) == a4)


# -- bounded memory and eviction ------------------------------------------


def test_memory_is_bounded_under_a_flood_of_distinct_addresses() -> None:
    rl = limiter(max_entries=1000)
    for i in range(120_000):
        host = v4(i) if i % 2 else v6(i)
        assert rl.check_host(host, i / 100_000) is ALLOW  # every one is new: a fresh bucket
        assert len(rl._current) + len(rl._previous) <= 1000
        assert len(rl._keys) <= 1000
    assert len(rl) <= 1000
    assert rl.counters.rotations >= 120_000 // 500 - 1


def test_default_bound_holds_for_a_large_flood() -> None:
    rl = limiter()
    for i in range(150_000):
        rl.check_host(v6(i), 0.0)
    assert len(rl._current) + len(rl._previous) <= 1 << 16
    assert len(rl._keys) <= 4096


def test_eviction_does_not_reset_a_limited_client_under_normal_load() -> None:
    """Below max_entries / (2 * burst * interval) new prefixes a second, only
    full buckets are ever evicted: the greedy client stays limited although
    the table turns over many times."""
    rl = limiter(interval=2.0, burst=16, leak=0, max_entries=1024)  # threshold: 16/s
    greedy = rl.key("198.51.100.9")
    allowed = 0
    other = 0
    for tick in range(6000):  # 600 s in steps of 0.1 s
        now = tick / 10
        allowed += rl.check(greedy, now) is ALLOW  # 10 requests a second
        if tick % 10 == 0:
            for _ in range(10):  # 10 new clients a second, each polling once
                assert rl.check_host(v4(other), now) is ALLOW
                other += 1
    assert other > 5 * 1024  # the table did turn over
    assert rl.counters.rotations >= 10
    assert allowed <= 16 + 600 / 2 + 1


def test_a_flood_above_the_threshold_can_churn_buckets_but_at_a_price() -> None:
    """The documented trade-off: a client that floods enough new prefixes
    between its own requests (max_entries / 2 to max_entries of them) finds its
    bucket evicted and gets a fresh burst: fail open, but every extra answer
    costs the flood at least max_entries / (2 * burst) packets."""
    rl = limiter(interval=2.0, burst=16, leak=0, max_entries=1024)
    greedy = rl.key("198.51.100.9")
    allowed = 0
    flood = 0
    for second in range(60):
        allowed += sum(rl.check(greedy, second) is ALLOW for _ in range(20))
        for _ in range(1100):  # more than two generations of new prefixes
            rl.check_host(v6(flood), second + 0.5)
            flood += 1
    fair = 16 + 60 / 2 + 1
    assert allowed > 10 * fair  # the limiter failed open for this client...
    assert allowed <= 16 * 60  # ...by no more than a fresh bucket each time
    assert flood / (allowed - fair) >= 1024 / 2 / 16  # and the flood paid for every extra answer


def test_expire_forgets_only_full_buckets() -> None:
    rl = limiter(interval=2.0, burst=4, leak=0)
    for i in range(100):
        rl.check_host(v4(i), 0.0)
    busy = rl.key("192.0.2.99")
    for _ in range(4):
        rl.check(busy, 0.0)
    assert len(rl) == 101
    assert rl.expire(1.0) == 0  # every bucket still short of a token at t=1
    assert rl.expire(2.0) == 100  # the one-request clients are full again
    assert len(rl) == 1
    assert rl.check(busy, 2.0) is ALLOW
    assert rl.check(busy, 2.0) is DROP  # its state survived the sweep


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=400), st.integers(2, 20))
def test_table_never_exceeds_its_bound(clients: list[int], bound: int) -> None:
    rl = limiter(max_entries=bound, leak=0)
    for step, client in enumerate(clients):
        rl.check(client, step * 0.01)
        assert len(rl) <= bound


def test_invalid_configuration() -> None:
    for kwargs in (
        {"interval": 0},
        {"interval": -1.0},
        {"burst": 0},
        {"burst": 1.5},
        {"leak": -1},
        {"leak": 17},
        {"ipv4_prefix": 33},
        {"ipv6_prefix": -1},
        {"max_entries": 1},
        {"max_leak_rate": 0.0},
    ):
        with pytest.raises(ValueError):
            limiter(**kwargs)
    with pytest.raises(ValueError, match="random source"):
        RateLimiter(leak=2)


# -- NTS-KE -----------------------------------------------------------------


def test_ke_limiter_allows_a_burst_then_ten_a_minute() -> None:
    ke = KeRateLimiter()
    assert all(ke.allow_host("192.0.2.1", 0.0) for _ in range(20))
    assert not ke.allow_host("192.0.2.1", 0.0)
    assert not ke.allow_host("192.0.2.1", 5.9)
    assert ke.allow_host("192.0.2.1", 6.0)
    assert sum(ke.allow_host("192.0.2.1", 6.0 + t) for t in range(1, 61)) == 10
    assert ke.allow_host("192.0.2.2", 6.0)  # someone else
    assert ke.allow_host("2001:db8::1", 6.0)


def test_ke_limiter_never_leaks_and_denies_garbage() -> None:
    ke = KeRateLimiter(interval=60.0, burst=1)
    key = ke.key("192.0.2.1")
    assert ke.allow(key, 0.0)
    assert not any(ke.allow(key, 0.0) for _ in range(1000))
    assert not ke.allow_host("not an address", 0.0)


# -- RATE kiss-o'-death -----------------------------------------------------

TRANSMIT = 0x1234_5678_9ABC_DEF0
RECEIVE_NS = 1_700_000_000_123_456_789
TRANSMIT_NS = RECEIVE_NS + 20_000


def client_header(version: int = 4, poll: int = 6) -> bytes:
    return NtpHeader(version=version, mode=3, poll=poll, transmit_ts=TRANSMIT).encode()


def nts_request(unique_id: bytes = bytes(range(32))) -> bytes:
    return b"".join(
        (
            client_header(),
            encode_extension_field(EF_UNIQUE_IDENTIFIER, unique_id),
            encode_extension_field(EF_NTS_COOKIE, b"c" * 100),
            encode_extension_field(EF_NTS_COOKIE_PLACEHOLDER, bytes(100)),
            encode_extension_field(EF_NTS_AUTHENTICATOR, b"\x00\x10\x00\x10" + bytes(32)),
        )
    )


@pytest.mark.parametrize(("version", "poll"), [(4, 6), (3, 10), (1, -6), (2, 0)])
def test_kiss_for_a_plain_request(version: int, poll: int) -> None:
    request = client_header(version, poll)
    kiss = build_rate_kiss(request, RECEIVE_NS, TRANSMIT_NS, precision=-20)
    assert kiss is not None
    assert len(kiss) == HEADER_LEN == len(request)
    header = NtpHeader.decode(kiss)
    assert header.mode == MODE_SERVER
    assert header.leap == LEAP_UNSYNCHRONIZED
    assert header.version == version
    assert header.stratum == 0
    assert header.reference_id == b"RATE"
    assert header.kiss_code == "RATE"
    assert header.poll == poll
    assert header.precision == -20
    assert header.origin_ts == TRANSMIT
    assert header.receive_ts == unix_ns_to_ntp(RECEIVE_NS)
    assert header.transmit_ts == unix_ns_to_ntp(TRANSMIT_NS)
    assert header.reference_ts == header.root_delay == header.root_dispersion == 0


def test_kiss_for_an_nts_request_echoes_the_unique_identifier_only() -> None:
    unique_id = bytes(range(100, 132))
    request = nts_request(unique_id)
    kiss = build_rate_kiss(request, RECEIVE_NS, TRANSMIT_NS)
    assert kiss is not None
    assert len(kiss) < len(request)
    packet = NtpPacket.decode(kiss)
    assert packet.header.kiss_code == "RATE"
    assert packet.header.origin_ts == TRANSMIT
    assert [(ef.type, ef.body) for ef in packet.extensions] == [(EF_UNIQUE_IDENTIFIER, unique_id)]
    assert packet.mac is None


def test_kiss_echoes_no_unique_identifier_past_the_authenticator_or_broken_framing() -> None:
    uid = encode_extension_field(EF_UNIQUE_IDENTIFIER, bytes(32))
    auth = encode_extension_field(EF_NTS_AUTHENTICATOR, bytes(36))
    after_auth = client_header() + auth + uid
    assert build_rate_kiss(after_auth, RECEIVE_NS, TRANSMIT_NS) == build_rate_kiss(
        client_header(), RECEIVE_NS, TRANSMIT_NS
    )
    broken = client_header() + b"\x01\x04\x00\x13" + bytes(40)  # length not a multiple of 4
    kiss = build_rate_kiss(broken, RECEIVE_NS, TRANSMIT_NS)
    assert kiss is not None and len(kiss) == HEADER_LEN
    legacy_mac = client_header() + bytes(20)
    kiss = build_rate_kiss(legacy_mac, RECEIVE_NS, TRANSMIT_NS)
    assert kiss is not None and len(kiss) == HEADER_LEN


@pytest.mark.parametrize(
    "request_",
    [
        b"",
        bytes(47),
        NtpHeader(mode=4, transmit_ts=TRANSMIT).encode(),  # a server's answer: never kiss back
        NtpHeader(mode=1).encode(),
        NtpHeader(mode=6).encode(),
        NtpHeader(mode=3, version=0).encode(),
        NtpHeader(mode=3, version=5).encode(),
    ],
)
def test_no_kiss_for_what_is_not_a_client_request(request_: bytes) -> None:
    assert build_rate_kiss(request_, RECEIVE_NS, TRANSMIT_NS) is None


@settings(max_examples=500)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 2**63), st.integers(0, 2**63))
def test_kiss_is_never_longer_than_the_request(data: bytes, receive: int, transmit: int) -> None:
    if len(data) >= 1 and data[0] & 7 != 3:
        data = bytes([(data[0] & 0xF8) | 3]) + data[1:]  # mostly client requests
    kiss = build_rate_kiss(data, receive, transmit)
    if kiss is not None:
        assert HEADER_LEN <= len(kiss) <= len(data)
        assert NtpHeader.decode(kiss).kiss_code == "RATE"
        assert kiss[24:32] == data[40:48]


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=200).map(lambda b: b[: len(b) - len(b) % 4]))
def test_kiss_echo_matches_the_request_field(unique_id: bytes) -> None:
    request = client_header() + encode_extension_field(EF_UNIQUE_IDENTIFIER, unique_id)
    kiss = build_rate_kiss(request, RECEIVE_NS, TRANSMIT_NS)
    assert kiss is not None
    assert kiss[HEADER_LEN:] == request[HEADER_LEN:]
