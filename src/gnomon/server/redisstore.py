"""Cookie master keys shared by a fleet of servers through Redis.

Redis holds one random *seed* per key id, never a key: every server derives
the real master key itself,

    key = HKDF-SHA256(ikm = fleet secret, salt = b"gnomon cookie key",
                      info = key id (4 bytes, big-endian) || seed)[:16]

from a fleet secret it reads from a local file (the cfnts pattern: a dump of
Redis alone cannot forge or open cookies). All servers of one fleet share the
secret and the Redis key prefix (``gnomon:{fleet}:seed:{id}`` by default).

A seed is created at most once for the whole fleet: each server proposes a
fresh random seed with ``SET key seed NX EX ttl`` and then ``GET``s the key,
so the first writer's seed is the one everybody derives from. Seeds expire
from Redis ``(keep_old + 2) * period`` seconds after they are written. A seed
is written at the earliest one period before its own (the ring pre-publishes
the next key), so it outlives the last period that still accepts it, with a
period to spare for clocks that disagree.

Every key the store derives stays in its cache until :meth:`prune`, and a
cached key is never replaced: once a server has used a key under an id it
keeps it. When Redis cannot be reached (connection refused, time-out; the
client built by :meth:`RedisKeyStore.connect` gives up after 0.5 s without
retrying) or answers garbage for an id (not bytes, wrong length, wrong type),
the store answers from its cache, *never* mints a key locally, and raises
:class:`KeyStoreUnavailable` only when it holds no key for the current id.

Contract with the caller (see :class:`~gnomon.server.keys.KeyRing`):

* ``get_or_create(ids)`` takes the *current* id to be ``ids[-2]`` (``ids[0]``
  when only one id is given): KeyRing asks for ``[period - keep_old ..
  period + 1]``, i.e. the old keys, the current one, then the next one.
  :meth:`keys_for` takes the current id explicitly.
* The dict returned may lack ids other than the current one (Redis down or
  garbage for them): they are absent, never made up. A caller must build its
  codec from the ids present.
* When every id asked for is cached the store answers without any network
  round trip, so the ring's once-a-period rebuild does not block once
  :meth:`refresh` has fetched the next key ahead of time.
* :meth:`refresh` is meant to be called periodically (every few seconds, from
  a thread: it blocks for up to the socket time-out) so that a server picks
  up new keys, re-publishes its seeds into a Redis that lost them, and
  notices an outage or its end within seconds. :attr:`generation` grows
  whenever the cache gains a key, so a ring can rebuild its codec then.
* After a failed round trip, ``get_or_create``/``keys_for`` do not contact
  Redis again for ``retry_interval`` seconds (they answer from the cache), so
  a server under load does not wait for a dead Redis on every request.
  :meth:`refresh` ignores that pause.

Redis must keep the seeds: configure it with a ``noeviction`` or
``volatile-*`` ``maxmemory-policy`` and, if a Redis restart should not lose
them, persistence. A Redis that lost its seeds is healed by the servers'
caches: every server proposes its cached seed (``SET NX``) for the ids it
knows, so the fleet keeps its keys as long as one server with a cache
refreshes before a server without one creates a new seed. If two different
seeds meet anyway, each server keeps the key it already has (logged as a
conflict, counted in :attr:`conflicts`).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import GnomonError
from ..proto.nts.cookie import MASTER_KEY_LEN
from .secretfiles import MIN_FLEET_SECRET_LEN

log = logging.getLogger("gnomon.keys.redis")

SEED_LEN = 32
"""Bytes of a seed in Redis."""

HKDF_SALT = b"gnomon cookie key"
_KEY_ID = struct.Struct("!I")


class KeyStoreUnavailable(GnomonError):
    """The key store cannot provide the key for the current period (and has none cached)."""


def derive_key(fleet_secret: bytes, key_id: int, seed: bytes) -> bytes:
    """The cookie master key for ``key_id`` from the fleet secret and the id's seed."""
    if not 0 <= key_id < 1 << 32:
        raise ValueError(f"key id {key_id} is not a 32-bit unsigned integer")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=MASTER_KEY_LEN,
        salt=HKDF_SALT,
        info=_KEY_ID.pack(key_id) + seed,
    )
    return hkdf.derive(fleet_secret)


class RedisKeyStore:
    """A :class:`~gnomon.server.keys.KeyStore` for a fleet: seeds in Redis, keys derived locally.

    ``client`` must return bytes (``decode_responses=False``); use short socket
    time-outs and no retries (see :meth:`connect`). ``period`` and ``keep_old``
    must be those of the ring's rotation policy: they set the seeds' lifetime
    in Redis and the window :meth:`refresh` fetches.
    """

    def __init__(
        self,
        client: redis.Redis,
        fleet_secret: bytes,
        *,
        period: int,
        keep_old: int,
        fleet: str = "default",
        key_prefix: str | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        if not isinstance(fleet_secret, bytes | bytearray):
            raise TypeError("the fleet secret must be bytes")
        if len(fleet_secret) < MIN_FLEET_SECRET_LEN:
            raise ValueError(
                f"the fleet secret is {len(fleet_secret)} bytes; at least "
                f"{MIN_FLEET_SECRET_LEN} random bytes are needed (e.g. `head -c 32 /dev/urandom`)"
            )
        if period < 1:
            raise ValueError(f"the rotation period must be at least 1 s, not {period}")
        if keep_old < 0:
            raise ValueError(f"keep_old must not be negative, not {keep_old}")
        if not fleet or any(c.isspace() for c in fleet):
            raise ValueError(f"the fleet name {fleet!r} must be non-empty, without spaces")
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("the Redis client must not decode responses (decode_responses=False)")
        self.client = client
        self._secret = bytes(fleet_secret)
        self.period = period
        self.keep_old = keep_old
        self.fleet = fleet
        self.key_prefix = f"gnomon:{fleet}:seed:" if key_prefix is None else key_prefix
        self.seed_ttl = (keep_old + 2) * period
        self.retry_interval = retry_interval

        self._lock = threading.Lock()
        self._seeds: dict[int, bytes] = {}
        self._keys: dict[int, bytes] = {}
        self._last_ids: list[int] = []
        self._retry_after = 0.0  # monotonic; no get_or_create round trip before
        self._outage_logged = False
        self._reported: set[tuple[int, str]] = set()  # (id, problem) already logged
        self._gained = False  # the cache gained keys in the round trip being recorded

        self.reachable = False
        """Whether the last round trip to Redis succeeded (False before the first one)."""
        self.last_error: str | None = None
        """Why the last round trip failed, or the last bad seed seen; None once all is well."""
        self.last_success: float | None = None
        """``time.monotonic()`` of the last successful round trip."""
        self.generation = 0
        """Grows by one each time the cache gains keys."""
        self.conflicts = 0
        """Times Redis held a seed other than the one this server already uses."""

    @classmethod
    def connect(
        cls,
        url: str,
        fleet_secret: bytes,
        *,
        period: int,
        keep_old: int,
        fleet: str = "default",
        key_prefix: str | None = None,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
    ) -> RedisKeyStore:
        """A store with its own client for ``url`` (``redis://host:port/db``, ``unix://...``).

        The client gives up after ``timeout`` seconds (connect and each reply)
        and never retries by itself: the store's cache covers outages.
        No connection is made here.
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        return cls(
            client,
            fleet_secret,
            period=period,
            keep_old=keep_old,
            fleet=fleet,
            key_prefix=key_prefix,
            retry_interval=retry_interval,
        )

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # --- the KeyStore protocol ---

    def get_or_create(self, ids: list[int]) -> dict[int, bytes]:
        """The keys for ``ids`` (KeyRing's contract: ``ids[-2]`` is the current id).

        Missing seeds are created in Redis for the whole fleet. Ids whose key
        is neither cached nor obtainable are left out; raises
        :class:`KeyStoreUnavailable` if the current id is one of them.
        """
        if not ids:
            return {}
        current = ids[-2] if len(ids) >= 2 else ids[0]
        return self.keys_for(current, ids)

    def keys_for(self, current_id: int, ids: Iterable[int]) -> dict[int, bytes]:
        """The keys for ``ids`` and ``current_id``; raises if the current one is unavailable."""
        wanted = sorted({*ids, current_id})
        for key_id in wanted:
            if not 0 <= key_id < 1 << 32:
                raise ValueError(f"key id {key_id} is not a 32-bit unsigned integer")
        with self._lock:
            self._last_ids = wanted
            missing = [i for i in wanted if i not in self._keys]
            try_redis = bool(missing) and time.monotonic() >= self._retry_after
        if try_redis:
            self._sync(missing)
        with self._lock:
            found = {i: self._keys[i] for i in wanted if i in self._keys}
            error = self.last_error
        if current_id not in found:
            reason = f": {error}" if error else ""
            raise KeyStoreUnavailable(
                f"no cookie key for id {current_id} (fleet {self.fleet!r}, Redis "
                f"{'reachable' if self.reachable else 'unreachable'}{reason})"
            )
        return found

    def prune(self, oldest_kept: int) -> None:
        """Forget cached keys below ``oldest_kept``. Seeds in Redis expire on their own
        (another server whose clock lags may still need them)."""
        with self._lock:
            for key_id in [i for i in self._keys if i < oldest_kept]:
                del self._keys[key_id]
                del self._seeds[key_id]
            self._reported = {r for r in self._reported if r[0] >= oldest_kept}
            self._last_ids = [i for i in self._last_ids if i >= oldest_kept]

    # --- periodic refresh, status ---

    def refresh(self, now: float | None = None) -> bool:
        """Fetch (creating if needed) the ids last asked for and the window of ``now``.

        The window is ``[current - keep_old .. current + 1]`` for the current
        period of ``now`` (default: ``time.time()``), so the next key is in the
        cache before the ring needs it. Seeds this store knows are proposed
        again (``SET NX``), which restores them into a Redis that lost them.
        Never raises for Redis trouble: returns whether the round trip
        succeeded, and updates :attr:`reachable`, :attr:`last_error`,
        :attr:`last_success`. Call it every few seconds from a thread.
        """
        current = int((time.time() if now is None else now) // self.period) % (1 << 32)
        window = range(max(0, current - self.keep_old), min(current + 2, 1 << 32))
        with self._lock:
            ids = sorted({*self._last_ids, *window})
        return self._sync(ids)

    @property
    def key_ids(self) -> frozenset[int]:
        """The ids of the keys in the cache."""
        with self._lock:
            return frozenset(self._keys)

    # --- the round trip ---

    def _seed_key(self, key_id: int) -> str:
        return f"{self.key_prefix}{key_id}"

    def _sync(self, ids: list[int]) -> bool:
        """One pipelined round trip: propose a seed for each id, read the winner."""
        with self._lock:
            proposals = {i: self._seeds.get(i) or os.urandom(SEED_LEN) for i in ids}
        try:
            pipe = self.client.pipeline(transaction=False)
            for key_id, seed in proposals.items():
                name = self._seed_key(key_id)
                pipe.set(name, seed, nx=True, ex=self.seed_ttl)
                pipe.get(name)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            if len(replies) != 2 * len(proposals):
                raise redis.exceptions.ResponseError(
                    f"{len(replies)} replies to {2 * len(proposals)} commands"
                )
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        with self._lock:
            problems = []
            for n, key_id in enumerate(proposals):
                problem = self._accept(key_id, replies[2 * n], replies[2 * n + 1])
                if problem is not None:
                    problems.append(problem)
            self._note_success(problems)
        return True

    def _accept(self, key_id: int, set_reply: Any, get_reply: Any) -> str | None:
        """Take Redis's seed for ``key_id`` into the cache; a problem's text if it is unusable.

        Called with the lock held.
        """
        if isinstance(set_reply, Exception) or isinstance(get_reply, Exception):
            error = get_reply if isinstance(get_reply, Exception) else set_reply
            problem = f"seed {key_id}: Redis error {error}"
        elif not isinstance(get_reply, bytes):
            kind = "missing" if get_reply is None else f"not bytes ({type(get_reply).__name__})"
            problem = f"seed {key_id} in Redis is {kind}"
        elif len(get_reply) != SEED_LEN:
            problem = f"seed {key_id} in Redis is {len(get_reply)} bytes, not {SEED_LEN}"
        else:
            cached = self._seeds.get(key_id)
            if cached is None:
                self._seeds[key_id] = get_reply
                self._keys[key_id] = derive_key(self._secret, key_id, get_reply)
                self._gained = True
                return None
            if cached == get_reply:
                return None
            if key_id > int(time.time() // self.period) % (1 << 32):
                # A future key seals nothing yet: take the fleet's seed, so servers that
                # disagreed after Redis lost its data converge before the key is used.
                self._seeds[key_id] = get_reply
                self._keys[key_id] = derive_key(self._secret, key_id, get_reply)
                self._gained = True
                log.warning(
                    "key store (fleet %r): adopted the fleet's seed for future key %d",
                    self.fleet,
                    key_id,
                )
                return None
            self.conflicts += 1
            problem = (
                f"seed {key_id} in Redis differs from the one in use here (Redis lost its "
                "seeds and another server made a new one?); keeping the key in use"
            )
        if (key_id, problem) not in self._reported:
            self._reported.add((key_id, problem))
            log.error("key store (fleet %r): %s", self.fleet, problem)
        return problem

    def _note_success(self, problems: list[str]) -> None:
        """Record a round trip that Redis answered. Called with the lock held."""
        if self._gained:
            self._gained = False
            self.generation += 1
        self.reachable = True
        self.last_success = time.monotonic()
        self.last_error = problems[0] if problems else None
        # bad seeds are not retried on every request either, only after a pause
        self._retry_after = time.monotonic() + self.retry_interval if problems else 0.0
        if self._outage_logged:
            self._outage_logged = False
            log.info("key store (fleet %r): Redis is reachable again", self.fleet)

    def _failed(self, error: str) -> None:
        with self._lock:
            self.reachable = False
            self.last_error = error
            self._retry_after = time.monotonic() + self.retry_interval
            first = not self._outage_logged
            self._outage_logged = True
            cached = len(self._keys)
        if first:
            log.warning(
                "key store (fleet %r): Redis unreachable (%s); serving %d cached key(s), "
                "minting none",
                self.fleet,
                error,
                cached,
            )
