"""The key store a configuration names, and the check that it works, without the rest
of the server: the supervisor checks the store before any worker starts, and imports
neither asyncio nor the services for it."""

from __future__ import annotations

import time

from .config import ServerConfig
from .keys import FileKeyStore, KeyRing, KeyStore, MemoryKeyStore, RotationPolicy
from .secretfiles import read_fleet_secret


def key_policy(config: ServerConfig) -> RotationPolicy:
    return RotationPolicy(config.rotation_period, config.keep_old)


def make_key_store(config: ServerConfig) -> KeyStore:
    """The key store the configuration names (Redis for a fleet, a file, or memory)."""
    if config.key_store == "redis":
        from .redisstore import RedisKeyStore

        assert config.redis_url is not None and config.fleet_secret_file is not None
        return RedisKeyStore.connect(
            config.redis_url,
            read_fleet_secret(config.fleet_secret_file, config.user),
            seed_lifetime=key_policy(config).lifetime,
            fleet=config.fleet,
        )
    if config.key_path is not None:
        return FileKeyStore(config.key_path, config.user)
    return MemoryKeyStore()


def check_key_store(config: ServerConfig) -> None:
    """Fail now, in one line, if the configured store cannot give the current key."""
    store = make_key_store(config)
    try:
        KeyRing(store, key_policy(config)).start(time.time())
    finally:
        store.close()
