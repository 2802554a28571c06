"""RedisKeyStore against a real redis-server: one key ring per fleet, outages, bad data."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from gnomon.errors import GnomonError
from gnomon.proto.nts.aead import AES_128_GCM_SIV
from gnomon.server.keys import KeyRing, RotationPolicy
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
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
FLEET = "test"

MakeStore = Callable[..., RedisKeyStore]


def period_now() -> int:
    return int(time.time() // PERIOD)


def window(current: int) -> list[int]:
    """The ids KeyRing asks for in period `current`: old ones, current, next."""
    return list(range(current - KEEP_OLD, current + 2))


@pytest.fixture
def make_store(redis_server: RedisServer) -> Iterator[MakeStore]:
    stores: list[RedisKeyStore] = []

    def make(secret: bytes = SECRET, *, url: str | None = None, **kwargs: object) -> RedisKeyStore:
        options: dict[str, object] = {"period": PERIOD, "keep_old": KEEP_OLD, "fleet": FLEET}
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
    ids = window(period_now())
    barrier = threading.Barrier(len(stores) + 8, timeout=10)
    results: list[dict[int, bytes]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    shared = make_store()  # one store used by several threads at once, too

    def run(store: RedisKeyStore) -> None:
        try:
            barrier.wait()
            keys = store.get_or_create(ids)
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
        assert store.reachable
        assert store.last_error is None
        assert store.last_success is not None
        assert store.key_ids == frozenset(ids)


def test_other_fleet_secret_gives_other_keys(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    ids = window(period_now())
    ours = make_store().get_or_create(ids)
    theirs = make_store(OTHER_SECRET).get_or_create(ids)
    assert sorted(theirs) == ids
    assert all(ours[i] != theirs[i] for i in ids)
    # Redis's content alone (the seeds) does not give the keys
    dump = seeds_in_redis(redis_server)
    assert sorted(dump) == ids  # the second store used the same seeds
    assert all(derive_key(OTHER_SECRET, i, dump[i]) != ours[i] for i in ids)


def test_fleets_are_separate(redis_server: RedisServer, make_store: MakeStore) -> None:
    ids = window(period_now())
    a = make_store(fleet="alpha").get_or_create(ids)
    b = make_store(fleet="beta").get_or_create(ids)
    assert all(a[i] != b[i] for i in ids)
    assert sorted(seeds_in_redis(redis_server, "alpha")) == ids
    assert sorted(seeds_in_redis(redis_server, "beta")) == ids


def test_seeds_expire(redis_server: RedisServer, make_store: MakeStore) -> None:
    ids = window(period_now())
    make_store().get_or_create(ids)
    client = redis_server.client()
    try:
        for key_id in ids:
            ttl = client.ttl(f"gnomon:{FLEET}:seed:{key_id}")
            assert (KEEP_OLD + 2) * PERIOD - 5 <= ttl <= (KEEP_OLD + 2) * PERIOD
    finally:
        client.close()


# --- outages ---


def test_redis_stopped_then_restarted(
    redis_server: RedisServer, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gnomon.keys.redis")
    a, b = make_store(retry_interval=0.2), make_store(retry_interval=0.2)
    current = period_now()
    ids = window(current)
    keys = a.get_or_create(ids)
    assert b.get_or_create(ids) == keys
    generation = a.generation

    redis_server.stop()

    # everything cached: served without Redis
    assert a.get_or_create(ids) == keys
    # the next period: its key was cached as "next", the one after never seen
    started = time.monotonic()
    later = a.get_or_create(window(current + 1))
    assert time.monotonic() - started < 2
    assert later == {i: keys[i] for i in window(current + 1) if i in keys}
    assert current + 2 not in later  # absent, not minted
    assert not a.reachable
    assert a.last_error
    assert a.key_ids == frozenset(ids)
    # a current id never seen: unavailable
    with pytest.raises(KeyStoreUnavailable, match=str(current + 2)):
        a.get_or_create(window(current + 2))
    with pytest.raises(KeyStoreUnavailable):
        a.keys_for(current + 2, [current + 2])
    assert isinstance(KeyStoreUnavailable("x"), GnomonError)
    assert not a.refresh()
    assert a.generation == generation
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per outage
    assert "unreachable" in warnings[0].getMessage()

    redis_server.start()  # same port, empty (no persistence)

    # (refresh at a fixed time: the test must not depend on crossing a period boundary)
    assert wait_until(lambda: a.refresh(current * PERIOD), 5, interval=0.1)
    assert a.reachable
    assert a.last_error is None
    assert a.generation > generation
    infos = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(infos) == 1
    # a healed Redis: a's seeds were put back, so a fresh server gets the old keys
    fresh = make_store()
    assert fresh.get_or_create(ids) == keys
    # new ids appear on both servers, the same ones
    new_ids = window(current + 2)

    def b_keys() -> dict[int, bytes] | None:
        try:
            return b.get_or_create(new_ids)
        except KeyStoreUnavailable:
            return None

    got_b = wait_until(b_keys, 5, interval=0.1)
    assert got_b is not None
    assert sorted(got_b) == new_ids
    assert a.get_or_create(new_ids) == got_b
    assert all(got_b[i] == keys[i] for i in set(ids) & set(new_ids))


def test_unreachable_at_start(make_store: MakeStore) -> None:
    # connection refused: nothing listens there
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = make_store(url=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(KeyStoreUnavailable, match="unreachable"):
        store.get_or_create(window(period_now()))
    assert not store.reachable
    assert store.last_success is None
    assert store.last_error
    assert store.key_ids == frozenset()
    assert not store.refresh()


def test_unanswering_redis_times_out(make_store: MakeStore) -> None:
    # a socket that accepts connections (kernel backlog) but never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = make_store(url=f"redis://127.0.0.1:{port}/0", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(KeyStoreUnavailable):
            store.get_or_create(window(period_now()))
        assert time.monotonic() - started < 2.5
        assert not store.reachable
        assert "Timeout" in (store.last_error or "")
        # the pause after a failure: the next call does not wait for Redis again
        started = time.monotonic()
        with pytest.raises(KeyStoreUnavailable):
            store.get_or_create(window(period_now()))
        assert time.monotonic() - started < 0.2


# --- garbage in Redis ---


def test_garbage_seed_is_not_used(redis_server: RedisServer, make_store: MakeStore) -> None:
    current = period_now()
    client = redis_server.client()
    try:
        client.set(f"gnomon:{FLEET}:seed:{current - 1}", b"too short")
        client.rpush(f"gnomon:{FLEET}:seed:{current - 2}", b"x" * SEED_LEN)  # wrong type
        store = make_store()
        keys = store.get_or_create(window(current))
        assert sorted(keys) == [current, current + 1]  # the bad ones are absent
        assert store.reachable
        assert store.last_error and "seed" in store.last_error
        # never overwritten: the bad values are left for an operator to see
        assert client.get(f"gnomon:{FLEET}:seed:{current - 1}") == b"too short"
        # the bad id as the current one: unavailable
        client.set(f"gnomon:{FLEET}:seed:{current + 5}", b"y" * (SEED_LEN + 1))
        with pytest.raises(KeyStoreUnavailable, match=str(current + 5)):
            make_store().get_or_create(window(current + 5))
        # another store that saw good seeds keeps serving its own keys
        assert store.get_or_create(window(current)) == keys
    finally:
        client.close()


def test_changed_seed_keeps_keys_in_use_and_adopts_the_future_one(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    ids = window(period_now())
    a = make_store()
    keys = a.get_or_create(ids)
    client = redis_server.client()
    try:
        client.flushall()  # Redis lost its seeds...
        other = make_store().get_or_create(ids)  # ...and a server without a cache made new ones
    finally:
        client.close()
    assert all(other[i] != keys[i] for i in ids)
    assert a.refresh(now=ids[-2] * PERIOD)
    # Keys in force or past keep their cookies valid: one id, one key, for this server's
    # lifetime. The future key seals nothing yet, so the fleet's seed is adopted for it.
    assert a.conflicts == len(ids) - 1
    after = a.get_or_create(ids)
    assert {i: after[i] for i in ids[:-1]} == {i: keys[i] for i in ids[:-1]}
    assert after[ids[-1]] == other[ids[-1]]
    assert a.last_error and "differs" in a.last_error


def test_decoding_client_rejected() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, decode_responses=True)
    with pytest.raises(ValueError, match="decode"):
        RedisKeyStore(client, SECRET, period=PERIOD, keep_old=KEEP_OLD)


def test_short_secret_rejected() -> None:
    client = redis.Redis(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match=f"at least {MIN_FLEET_SECRET_LEN}"):
        RedisKeyStore(client, b"x" * 31, period=PERIOD, keep_old=KEEP_OLD)
    with pytest.raises(ValueError):
        RedisKeyStore(client, SECRET, period=0, keep_old=KEEP_OLD)
    with pytest.raises(ValueError):
        RedisKeyStore(client, SECRET, period=PERIOD, keep_old=KEEP_OLD, fleet="")


# --- refresh ---


def test_refresh_fetches_the_window_and_the_next_key(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    store = make_store()
    now = time.time()
    current = int(now // PERIOD)
    assert store.refresh(now)
    assert store.key_ids == frozenset(window(current))  # the next key included
    assert store.generation == 1
    redis_server.stop()
    # all cached: answered without a round trip (no failure noticed)
    assert sorted(store.get_or_create(window(current))) == window(current)
    assert store.keys_for(current + 1, [current + 1])
    assert store.reachable
    # prune forgets old keys (Redis keeps them until they expire)
    store.prune(current)
    assert store.key_ids == frozenset({current, current + 1})


# --- with KeyRing and CookieCodec ---


def test_cookie_sealed_by_one_server_opens_on_another(make_store: MakeStore) -> None:
    policy = RotationPolicy(period=PERIOD, keep_old=KEEP_OLD)
    ring_a = KeyRing(make_store(), policy)
    ring_b = KeyRing(make_store(), policy)
    now = time.time()
    c2s, s2c = b"c" * 16, b"s" * 16
    cookie = ring_a.codec(now).seal(AES_128_GCM_SIV, c2s, s2c)
    assert ring_b.codec(now).open(cookie) == (AES_128_GCM_SIV, c2s, s2c)
    # still opens next period (old key), and a server a period ahead is understood
    later = ring_a.codec(now + PERIOD).seal(AES_128_GCM_SIV, c2s, s2c)
    assert ring_b.codec(now).open(later) == (AES_128_GCM_SIV, c2s, s2c)
    assert ring_b.codec(now + PERIOD).open(cookie) == (AES_128_GCM_SIV, c2s, s2c)
    # a server of another fleet secret cannot open it
    ring_c = KeyRing(make_store(OTHER_SECRET), policy)
    assert ring_c.codec(now).open(cookie) is None
