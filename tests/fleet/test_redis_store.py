"""RedisKeyStore against a real redis-server: one key ring per fleet, outages, bad data."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from gnomon.errors import GnomonError
from gnomon.proto.nts.aead import AES_128_GCM_SIV
from gnomon.server.keys import KeyRing, KeyStoreError, RotationPolicy
from gnomon.server.redisstore import (
    MIN_FLEET_SECRET_LEN,
    SEED_LEN,
    KeyStoreUnavailable,
    RedisKeyStore,
    derive_key,
)
from tests.peers.proc import wait_until

from .conftest import RedisServer

PERIOD = 60
KEEP_OLD = 2
POLICY = RotationPolicy(period=PERIOD, keep_old=KEEP_OLD)
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
FLEET = "test"

MakeStore = Callable[..., RedisKeyStore]


def period_now() -> int:
    return POLICY.period_of(time.time())


def window(current: int) -> list[int]:
    """The ids KeyRing asks for in period `current`: old ones, current, next."""
    return POLICY.window(current)


def fetch(store: RedisKeyStore, current: int) -> dict[int, bytes]:
    return store.fetch(current, window(current))


@pytest.fixture
def make_store(redis_server: RedisServer) -> Iterator[MakeStore]:
    stores: list[RedisKeyStore] = []

    def make(secret: bytes = SECRET, *, url: str | None = None, **kwargs: object) -> RedisKeyStore:
        options: dict[str, object] = {"seed_lifetime": POLICY.lifetime, "fleet": FLEET}
        options.update(kwargs)
        store = RedisKeyStore.connect(url or redis_server.url, secret, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def seeds_in_redis(server: RedisServer, fleet: str = FLEET) -> dict[int, bytes]:
    client = server.client()
    try:
        prefix = f"gnomon:{fleet}:seed:"
        seeds: dict[int, bytes] = {}
        for name in client.keys(prefix + "*"):
            value = client.get(name)
            assert isinstance(value, bytes)
            seeds[int(name[len(prefix) :])] = value
        return seeds
    finally:
        client.close()


# --- one seed per id for the whole fleet ---


def test_many_servers_racing_get_identical_keys(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    stores = [make_store() for _ in range(16)]
    current = period_now()
    ids = window(current)
    barrier = threading.Barrier(len(stores) + 8, timeout=10)
    results: list[dict[int, bytes]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    shared = make_store()  # one store used by several threads at once, too

    def run(store: RedisKeyStore) -> None:
        try:
            barrier.wait()
            keys = fetch(store, current)
            with lock:
                results.append(keys)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    threads += [threading.Thread(target=run, args=(shared,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert len(results) == len(threads)
    first = results[0]
    assert sorted(first) == ids
    assert all(r == first for r in results)
    assert len(set(first.values())) == len(ids)  # one key per id, all different

    seeds = seeds_in_redis(redis_server)
    assert sorted(seeds) == ids  # exactly one seed per id
    for key_id, seed in seeds.items():
        assert len(seed) == SEED_LEN
        assert first[key_id] == derive_key(SECRET, key_id, seed)
    for store in [*stores, shared]:
        assert store.key_ids == frozenset(ids)
        assert store.conflicts == 0


def test_other_fleet_secret_gives_other_keys(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    current = period_now()
    ids = window(current)
    ours = fetch(make_store(), current)
    theirs = fetch(make_store(OTHER_SECRET), current)
    assert sorted(theirs) == ids
    assert all(ours[i] != theirs[i] for i in ids)
    # Redis's content alone (the seeds) does not give the keys
    dump = seeds_in_redis(redis_server)
    assert sorted(dump) == ids  # the second store used the same seeds
    assert all(derive_key(OTHER_SECRET, i, dump[i]) != ours[i] for i in ids)


def test_fleets_are_separate(redis_server: RedisServer, make_store: MakeStore) -> None:
    current = period_now()
    ids = window(current)
    a = fetch(make_store(fleet="alpha"), current)
    b = fetch(make_store(fleet="beta"), current)
    assert all(a[i] != b[i] for i in ids)
    assert sorted(seeds_in_redis(redis_server, "alpha")) == ids
    assert sorted(seeds_in_redis(redis_server, "beta")) == ids


def test_seeds_expire(redis_server: RedisServer, make_store: MakeStore) -> None:
    current = period_now()
    fetch(make_store(), current)
    client = redis_server.client()
    try:
        for key_id in window(current):
            ttl = client.ttl(f"gnomon:{FLEET}:seed:{key_id}")
            assert POLICY.lifetime == (KEEP_OLD + 2) * PERIOD
            assert POLICY.lifetime - 5 <= ttl <= POLICY.lifetime
    finally:
        client.close()


# --- outages ---


def test_redis_stopped_then_restarted(
    redis_server: RedisServer, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gnomon.keys")
    a, b = make_store(), make_store()
    ring_a, ring_b = KeyRing(a, POLICY), KeyRing(b, POLICY)
    current = period_now()
    ids = window(current)
    t = current * PERIOD  # times inside the test's periods, whatever the clock says
    codec = ring_a.start(t)
    assert ring_b.start(t).key_ids == codec.key_ids
    keys = a.fetch(current, ids)
    assert b.fetch(current, ids) == keys

    redis_server.stop()

    # the store says it cannot answer; the ring keeps serving the keys it holds
    with pytest.raises(KeyStoreUnavailable, match="unreachable"):
        a.fetch(current, ids)
    assert isinstance(KeyStoreUnavailable("x"), GnomonError)
    failures = ring_a.failures
    for n in range(20):
        assert not ring_a.refresh(t + n)
    assert ring_a.failures == failures + 20 and ring_a.store_ok is False
    assert ring_a.codec(t) is codec
    # the next period: its key was fetched ahead, so the ring rotates without Redis
    later = ring_a.codec(t + PERIOD)
    assert later.current_id == current + 1
    assert later.key_ids == frozenset(ids[1:])  # the oldest left the window
    # the one after was never seen: not minted, the held key goes on sealing
    assert ring_a.codec(t + 2 * PERIOD).current_id == current + 1
    assert a.key_ids == frozenset(ids)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == [
        "key store failing",  # once per outage, not once per refresh
        f"cookie key {current + 2} not held (key store failing); still sealing with key "
        f"{current + 1}",
    ], warnings

    redis_server.start()  # same port, empty (no persistence)

    assert wait_until(lambda: ring_a.refresh(t), 5, interval=0.1)
    assert ring_a.store_ok
    infos = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(infos) == 1
    # a healed Redis: a's seeds were put back, so a fresh server gets the old keys
    assert fetch(make_store(), current) == keys
    # new ids appear on both servers, the same ones
    new_ids = window(current + 2)
    assert ring_b.refresh(t + 2 * PERIOD) and ring_a.refresh(t + 2 * PERIOD)
    got_b = b.fetch(current + 2, new_ids)
    assert sorted(got_b) == new_ids
    assert a.fetch(current + 2, new_ids) == got_b
    assert all(got_b[i] == keys[i] for i in set(ids) & set(new_ids))
    assert ring_a.codec(t + 2 * PERIOD).current_id == current + 2


def test_unreachable_at_start(make_store: MakeStore) -> None:
    # connection refused: nothing listens there
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = make_store(url=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(KeyStoreUnavailable, match="unreachable"):
        fetch(store, period_now())
    assert store.key_ids == frozenset()
    ring = KeyRing(store, POLICY)
    with pytest.raises(KeyStoreUnavailable, match="unreachable"):
        ring.start(time.time())
    assert not ring.refresh(time.time())
    with pytest.raises(KeyStoreError, match="no cookie key held yet"):
        ring.codec(time.time())


def test_unanswering_redis_times_out(make_store: MakeStore) -> None:
    # a socket that accepts connections (kernel backlog) but never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = make_store(url=f"redis://127.0.0.1:{port}/0", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(KeyStoreUnavailable, match="Timeout"):
            fetch(store, period_now())
        assert time.monotonic() - started < 2.5


# --- garbage in Redis ---


def test_garbage_seed_is_not_used(redis_server: RedisServer, make_store: MakeStore) -> None:
    current = period_now()
    client = redis_server.client()
    try:
        client.set(f"gnomon:{FLEET}:seed:{current - 1}", b"too short")
        client.rpush(f"gnomon:{FLEET}:seed:{current - 2}", b"x" * SEED_LEN)  # wrong type
        store = make_store()
        keys = fetch(store, current)
        assert sorted(keys) == [current, current + 1]  # the bad ones are absent
        # never overwritten: the bad values are left for an operator to see
        assert client.get(f"gnomon:{FLEET}:seed:{current - 1}") == b"too short"
        # the bad id as the current one: unavailable
        client.set(f"gnomon:{FLEET}:seed:{current + 5}", b"y" * (SEED_LEN + 1))
        with pytest.raises(KeyStoreUnavailable, match=rf"{current + 5}.*{SEED_LEN + 1} bytes"):
            fetch(make_store(), current + 5)
        # another store that saw good seeds keeps serving its own keys
        assert fetch(store, current) == keys
    finally:
        client.close()


def test_changed_seed_keeps_keys_in_use_and_adopts_the_future_one(
    redis_server: RedisServer, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    current = period_now()
    ids = window(current)
    a = make_store()
    keys = fetch(a, current)
    client = redis_server.client()
    try:
        client.flushall()  # Redis lost its seeds...
        other = fetch(make_store(), current)  # ...and a server without a cache made new ones
    finally:
        client.close()
    assert all(other[i] != keys[i] for i in ids)
    after = fetch(a, current)
    # Keys in force or past keep their cookies valid: one id, one key, for this server's
    # lifetime. The future key seals nothing yet, so the fleet's seed is adopted for it.
    assert a.conflicts == len(ids) - 1
    assert {i: after[i] for i in ids[:-1]} == {i: keys[i] for i in ids[:-1]}
    assert after[ids[-1]] == other[ids[-1]]
    assert any("differs" in r.getMessage() for r in caplog.records)


def test_decoding_client_rejected() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, decode_responses=True)
    with pytest.raises(ValueError, match="decode"):
        RedisKeyStore(client, SECRET, seed_lifetime=POLICY.lifetime)


def test_short_secret_rejected() -> None:
    client = redis.Redis(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match=f"at least {MIN_FLEET_SECRET_LEN}"):
        RedisKeyStore(client, b"x" * 31, seed_lifetime=POLICY.lifetime)
    with pytest.raises(ValueError):
        RedisKeyStore(client, SECRET, seed_lifetime=0)
    with pytest.raises(ValueError):
        RedisKeyStore(client, SECRET, seed_lifetime=POLICY.lifetime, fleet="")


# --- the ring's refresh ---


def test_refresh_fetches_the_window_and_the_next_key(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    store = make_store()
    ring = KeyRing(store, POLICY)
    now = time.time()
    current = POLICY.period_of(now)
    assert ring.refresh(now)
    assert store.key_ids == frozenset(window(current))  # the next key included
    assert ring.codec(now).key_ids == frozenset(window(current))
    # the ring prunes what left the window
    assert ring.refresh(now + PERIOD)
    assert store.key_ids == frozenset(window(current + 1))
    assert min(store.key_ids) == current + 1 - KEEP_OLD


# --- with KeyRing and CookieCodec ---


def test_cookie_sealed_by_one_server_opens_on_another(make_store: MakeStore) -> None:
    ring_a = KeyRing(make_store(), POLICY)
    ring_b = KeyRing(make_store(), POLICY)
    now = time.time()
    c2s, s2c = b"c" * 16, b"s" * 16
    cookie = ring_a.start(now).seal(AES_128_GCM_SIV, c2s, s2c, os.urandom(16))
    assert ring_b.start(now).open(cookie) == (AES_128_GCM_SIV, c2s, s2c)
    # still opens next period (old key), and a server a period ahead is understood
    later = ring_a.start(now + PERIOD).seal(AES_128_GCM_SIV, c2s, s2c, os.urandom(16))
    assert ring_b.codec(now).open(later) == (AES_128_GCM_SIV, c2s, s2c)
    assert ring_b.start(now + PERIOD).open(cookie) == (AES_128_GCM_SIV, c2s, s2c)
    # a server of another fleet secret cannot open it
    ring_c = KeyRing(make_store(OTHER_SECRET), POLICY)
    assert ring_c.start(now).open(cookie) is None
