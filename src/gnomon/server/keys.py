"""Cookie master keys: one per rotation period, kept in a store.

A key's id is the number of its period (``unix time // period``), so every
server computes the same schedule from the clock alone, a restart neither
rotates early nor resets it, and a cookie's key id says how old it is. The
ring holds the current key, the next one (published a period ahead so a
fleet may lag) and ``keep_old`` previous ones, which still open cookies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .._os import write_private_file
from ..errors import ConfigError, GnomonError
from ..proto.nts.cookie import MASTER_KEY_LEN, CookieCodec, CookieKey
from .secretfiles import check_private_file, check_private_folder

log = logging.getLogger("gnomon.keys")


class KeyStore(Protocol):
    """Where master keys live. Implementations must never hand out two
    different secrets for one id."""

    def get_or_create(self, ids: list[int]) -> dict[int, bytes]:
        """The secrets for ``ids``, creating (and persisting) missing ones."""

    def prune(self, oldest_kept: int) -> None:
        """Forget keys with ids below ``oldest_kept``."""


class MemoryKeyStore:
    """Keys in memory only: cookies die with the process (tests, demos)."""

    def __init__(self) -> None:
        self.keys: dict[int, bytes] = {}

    def get_or_create(self, ids: list[int]) -> dict[int, bytes]:
        for key_id in ids:
            self.keys.setdefault(key_id, os.urandom(MASTER_KEY_LEN))
        return {i: self.keys[i] for i in ids}

    def prune(self, oldest_kept: int) -> None:
        self.keys = {i: k for i, k in self.keys.items() if i >= oldest_kept}


class KeyStoreError(GnomonError):
    """The key store could not answer (file or network trouble); the caller keeps the keys
    it holds."""


class FileKeyStore:
    """Keys in a JSON file (mode 0600, replaced atomically) for one machine.

    Several processes may share the file: creation happens under an
    exclusive ``flock`` after re-reading it, so no two processes ever mint
    different keys under one id. The file (and its lock) must belong to
    ``user`` (default: this process's user), be closed to everyone else and
    sit in a folder not every user can write; a root process writing them for
    ``user`` gives them to that user, so workers that drop root can rotate.
    """

    VERSION = 1

    def __init__(self, path: str | Path, user: str | None = None) -> None:
        self.path = Path(path)
        self._owner: tuple[int, int] | None = None
        if user is not None:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise ConfigError(f"no user {user!r} to own the key file {self.path}") from None
            self._owner = (entry.pw_uid, entry.pw_gid)
        self._lock = threading.Lock()
        check_private_folder(self.path.parent, "key file", self.path)
        self.keys = self._read()

    @property
    def _owner_uid(self) -> int:
        return os.geteuid() if self._owner is None else self._owner[0]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(
                self.path.with_name(self.path.name + ".lock"),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
            try:
                if self._owner is not None and os.fstat(fd).st_uid != self._owner[0]:
                    os.fchown(fd, *self._owner)  # root, preparing the file for its workers
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _read(self) -> dict[int, bytes]:
        """The keys in the file ({} if there is none); ConfigError if it is unusable."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"key file {self.path} is unreadable: {exc.strerror}") from None
        with open(fd, "rb") as handle:
            check_private_file(self.path, "key file", {self._owner_uid}, os.fstat(fd))
            try:
                document = json.loads(handle.read())
            except OSError as exc:
                raise ConfigError(f"key file {self.path} is unreadable: {exc.strerror}") from None
            except ValueError as exc:
                raise ConfigError(f"key file {self.path} is corrupt: {exc}") from None
        try:
            if document["version"] != self.VERSION:
                raise ValueError(f"version {document['version']}")
            keys = {int(i): bytes.fromhex(k) for i, k in document["keys"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"key file {self.path} is corrupt: {exc}") from None
        if any(len(k) != MASTER_KEY_LEN for k in keys.values()):
            raise ConfigError(f"key file {self.path} holds a key of the wrong length")
        return keys

    def _write(self) -> None:
        document = {
            "version": self.VERSION,
            "keys": {str(i): k.hex() for i, k in self.keys.items()},
        }
        write_private_file(self.path, json.dumps(document), self._owner)

    @contextlib.contextmanager
    def _store_errors(self) -> Iterator[None]:
        """File trouble at run time is the store's trouble: the ring keeps its keys."""
        try:
            yield
        except ConfigError as exc:
            raise KeyStoreError(str(exc)) from None
        except OSError as exc:
            where = exc.filename or self.path
            raise KeyStoreError(f"key file {where}: {exc.strerror or exc}") from None

    def get_or_create(self, ids: list[int]) -> dict[int, bytes]:
        if all(i in self.keys for i in ids):
            return {i: self.keys[i] for i in ids}
        with self._store_errors(), self._locked():
            self.keys = self._read()
            missing = [i for i in ids if i not in self.keys]
            if missing:
                for key_id in missing:
                    self.keys[key_id] = os.urandom(MASTER_KEY_LEN)
                self._write()
            return {i: self.keys[i] for i in ids}

    def prune(self, oldest_kept: int) -> None:
        if all(i >= oldest_kept for i in self.keys):
            return
        with self._store_errors(), self._locked():
            self.keys = {i: k for i, k in self._read().items() if i >= oldest_kept}
            self._write()


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    period: int = 86_400  # seconds; one new key a day
    keep_old: int = 7  # previous keys still accepted

    def period_of(self, unix_time: float) -> int:
        return int(unix_time // self.period) % (1 << 32)


class KeyRing:
    """The keys in force now, as a :class:`CookieCodec`, refreshed per period."""

    def __init__(self, store: KeyStore, policy: RotationPolicy = RotationPolicy()) -> None:
        self.store = store
        self.policy = policy
        self._period: int | None = None
        self._codec: CookieCodec | None = None
        self._generation: object = None

    def codec(self, now: float) -> CookieCodec:
        period = self.policy.period_of(now)
        generation = getattr(self.store, "generation", None)  # a shared store learnt new keys
        if self._codec is None or period != self._period or generation != self._generation:
            try:
                self._codec = self._build(period)
            except GnomonError as exc:
                if self._codec is None:
                    raise
                # Keep serving with the keys held (they stay valid for keep_old periods);
                # the store is asked again on the next call.
                log.warning("cookie keys not refreshed, keeping key %s: %s", self._period, exc)
                return self._codec
            self._period = period
            self._generation = generation
        return self._codec

    @property
    def current_id(self) -> int | None:
        return self._period

    def _build(self, period: int) -> CookieCodec:
        oldest = max(0, period - self.policy.keep_old)
        ids = list(range(oldest, period + 2))  # previous ones, current, next
        secrets = self.store.get_or_create(ids)  # a shared store may lack some in an outage
        self.store.prune(oldest)
        if period != self._period:
            log.info("cookie key %d in force (%d accepted)", period, len(secrets))
        accepted = [CookieKey(i, secret) for i, secret in secrets.items() if i != period]
        return CookieCodec(CookieKey(period, secrets[period]), accepted)
