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
cached key in force or past is never replaced: once a server has used a key
under an id it keeps it. Each :meth:`~RedisKeyStore.fetch` is one pipelined
round trip; when Redis cannot be reached (connection refused, time-out: the
client built by :meth:`RedisKeyStore.connect` gives up after 0.5 s without
retrying) it raises :class:`KeyStoreUnavailable`, and the
:class:`~gnomon.server.keys.KeyRing` keeps serving the keys it holds; garbage
for an id (not bytes, wrong length, wrong type) leaves that id out (answered
from the cache if it is there). The store *never* mints a key locally.

The ring calls the store from a background thread every few seconds, so a
server picks up new keys, re-publishes its seeds into a Redis that lost them,
and notices an outage or its end within seconds, without a round trip on the
path that serves packets.

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
from collections.abc import Sequence
from typing import Any

import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..proto.nts.cookie import MASTER_KEY_LEN
from .keys import KEY_ID_LIMIT, KeyStoreError
from .secretfiles import MIN_FLEET_SECRET_LEN

log = logging.getLogger("gnomon.keys.redis")

SEED_LEN = 32
"""Bytes of a seed in Redis."""

HKDF_SALT = b"gnomon cookie key"
_KEY_ID = struct.Struct("!I")


class KeyStoreUnavailable(KeyStoreError):
    """Redis did not answer, or could not give the key in force (and none is cached)."""


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
    time-outs and no retries (see :meth:`connect`). ``seed_lifetime`` is how long
    Redis keeps a seed (the rotation policy's
    :attr:`~gnomon.server.keys.RotationPolicy.lifetime`).
    """

    def __init__(
        self,
        client: redis.Redis,
        fleet_secret: bytes,
        *,
        seed_lifetime: int,
        fleet: str = "default",
        key_prefix: str | None = None,
    ) -> None:
        if not isinstance(fleet_secret, bytes | bytearray):
            raise TypeError("the fleet secret must be bytes")
        if len(fleet_secret) < MIN_FLEET_SECRET_LEN:
            raise ValueError(
                f"the fleet secret is {len(fleet_secret)} bytes; at least "
                f"{MIN_FLEET_SECRET_LEN} random bytes are needed (e.g. `head -c 32 /dev/urandom`)"
            )
        if seed_lifetime < 1:
            raise ValueError(f"the seed lifetime must be at least 1 s, not {seed_lifetime}")
        if not fleet or any(c.isspace() for c in fleet):
            raise ValueError(f"the fleet name {fleet!r} must be non-empty, without spaces")
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("the Redis client must not decode responses (decode_responses=False)")
        self.client = client
        self._secret = bytes(fleet_secret)
        self.fleet = fleet
        self.key_prefix = f"gnomon:{fleet}:seed:" if key_prefix is None else key_prefix
        self.seed_lifetime = seed_lifetime

        self._lock = threading.Lock()
        self._seeds: dict[int, bytes] = {}
        self._keys: dict[int, bytes] = {}
        self._reported: set[tuple[int, str]] = set()  # (id, problem) already logged
        self.conflicts = 0
        """Times Redis held a seed other than the one this server already uses."""

    @classmethod
    def connect(
        cls,
        url: str,
        fleet_secret: bytes,
        *,
        seed_lifetime: int,
        fleet: str = "default",
        key_prefix: str | None = None,
        timeout: float = 0.5,
    ) -> RedisKeyStore:
        """A store with its own client for ``url`` (``redis://host:port/db``, ``unix://...``).

        The client gives up after ``timeout`` seconds (connect and each reply)
        and never retries by itself: the ring's keys cover outages.
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
            client, fleet_secret, seed_lifetime=seed_lifetime, fleet=fleet, key_prefix=key_prefix
        )

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # --- the KeyStore protocol ---

    def fetch(self, current: int, ids: Sequence[int]) -> dict[int, bytes]:
        """The keys for ``ids`` and ``current``, in one round trip to Redis.

        Missing seeds are created in Redis for the whole fleet, and seeds this
        store knows are proposed again (``SET NX``), which restores them into a
        Redis that lost them. Ids with an unusable seed are answered from the
        cache or left out. Raises :class:`KeyStoreUnavailable` if Redis does not
        answer, or if the current key is neither in Redis nor cached.
        """
        wanted = sorted({*ids, current})
        for key_id in wanted:
            if not 0 <= key_id < KEY_ID_LIMIT:
                raise ValueError(f"key id {key_id} is not a 32-bit unsigned integer")
        problems = self._sync(current, wanted)
        with self._lock:
            found = {i: self._keys[i] for i in wanted if i in self._keys}
        if current not in found:
            reason = next((p for p in problems if p.startswith(f"seed {current} ")), None)
            raise KeyStoreUnavailable(
                f"no cookie key for id {current} (fleet {self.fleet!r}): {reason or 'no seed'}"
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

    @property
    def key_ids(self) -> frozenset[int]:
        """The ids of the keys in the cache."""
        with self._lock:
            return frozenset(self._keys)

    # --- the round trip ---

    def _seed_key(self, key_id: int) -> str:
        return f"{self.key_prefix}{key_id}"

    def _sync(self, current: int, ids: list[int]) -> list[str]:
        """One pipelined round trip: propose a seed for each id, read the winner; the
        problems met with seeds."""
        with self._lock:
            proposals = {i: self._seeds.get(i) or os.urandom(SEED_LEN) for i in ids}
        try:
            pipe = self.client.pipeline(transaction=False)
            for key_id, seed in proposals.items():
                name = self._seed_key(key_id)
                pipe.set(name, seed, nx=True, ex=self.seed_lifetime)
                pipe.get(name)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            if len(replies) != 2 * len(proposals):
                raise redis.exceptions.ResponseError(
                    f"{len(replies)} replies to {2 * len(proposals)} commands"
                )
        except (redis.exceptions.RedisError, OSError) as exc:
            raise KeyStoreUnavailable(
                f"Redis unreachable (fleet {self.fleet!r}): {type(exc).__name__}: {exc}"
            ) from None
        with self._lock:
            problems = []
            for n, key_id in enumerate(proposals):
                problem = self._accept(key_id, current, replies[2 * n], replies[2 * n + 1])
                if problem is not None:
                    problems.append(problem)
        return problems

    def _accept(self, key_id: int, current: int, set_reply: Any, get_reply: Any) -> str | None:
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
                return None
            if cached == get_reply:
                return None
            if key_id > current:
                # A future key seals nothing yet: take the fleet's seed, so servers that
                # disagreed after Redis lost its data converge before the key is used.
                self._seeds[key_id] = get_reply
                self._keys[key_id] = derive_key(self._secret, key_id, get_reply)
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
