"""Cookie master keys: one per rotation period, kept in a store, held by a ring.

A key's id is the number of its period (``unix time // period``), so every
server computes the same schedule from the clock alone, a restart neither
rotates early nor resets it, and a cookie's key id says how old it is. The
ring holds the current key, the next one (published a period ahead so a
fleet may lag) and ``keep_old`` previous ones, which still open cookies.

Who does what: :class:`RotationPolicy` is the schedule (the one place that
computes a period); :class:`KeyRing` asks the store for the policy's window
from a background thread (:meth:`KeyRing.refresh`: files are locked, Redis may
hang) and builds the codec the serving path uses from the keys it holds
(:meth:`KeyRing.codec`, no store call, so a rotation needs no I/O on the
event loop); a :class:`KeyStore` only keeps and creates secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .._os import write_private_file
from ..errors import ConfigError, GnomonError
from ..proto.nts.cookie import MASTER_KEY_LEN, CookieCodec, CookieKey
from .metrics import Readings
from .secretfiles import check_private_file, check_private_folder

log = logging.getLogger("gnomon.keys")

KEY_ID_LIMIT = 1 << 32
"""Key ids are 32-bit (they travel in every cookie)."""


class KeyStoreError(GnomonError):
    """The key store could not answer (file or network trouble); the caller keeps the keys
    it holds."""


class KeyStore(Protocol):
    """Where master keys live. Implementations must never hand out two different secrets
    for one id (a fleet's store may replace a *future* key's secret: it seals nothing yet).

    Calls may block (file locks, network round trips): :class:`KeyRing` makes them from a
    background thread, never from the loop that serves packets.
    """

    def fetch(self, current: int, ids: Sequence[int]) -> dict[int, bytes]:
        """The secrets for ``ids`` (``current``, the id in force now, among them), creating
        missing ones. Ids other than ``current`` may be left out (a fleet's store in
        trouble); raises :class:`KeyStoreError` when the store cannot answer."""
        ...

    def prune(self, oldest_kept: int) -> None:
        """Forget keys with ids below ``oldest_kept``; :class:`KeyStoreError` on trouble."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class MemoryKeyStore:
    """Keys in memory only: cookies die with the process (tests, demos)."""

    def __init__(self) -> None:
        self.keys: dict[int, bytes] = {}

    def fetch(self, current: int, ids: Sequence[int]) -> dict[int, bytes]:
        for key_id in {*ids, current}:
            self.keys.setdefault(key_id, os.urandom(MASTER_KEY_LEN))
        return {i: self.keys[i] for i in {*ids, current}}

    def prune(self, oldest_kept: int) -> None:
        self.keys = {i: k for i, k in self.keys.items() if i >= oldest_kept}

    def close(self) -> None:
        pass


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
        lock = self.path.with_name(self.path.name + ".lock")
        if self._owner is not None and os.geteuid() == 0 and lock.exists():
            # A lock root left behind (older versions made it before dropping root) would
            # stop the workers' next rotation: it is the user's from now on.
            try:
                os.close(self._open_lock())
            except OSError as exc:
                raise ConfigError(f"key file {self.path}: {exc.strerror} (lock file)") from None

    @property
    def _owner_uid(self) -> int:
        return os.geteuid() if self._owner is None else self._owner[0]

    def _open_lock(self) -> int:
        fd = os.open(
            self.path.with_name(self.path.name + ".lock"),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        if self._owner is not None and os.fstat(fd).st_uid != self._owner[0]:
            os.fchown(fd, *self._owner)  # root, preparing the file for its workers
        return fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = self._open_lock()
            try:
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

    def fetch(self, current: int, ids: Sequence[int]) -> dict[int, bytes]:
        ids = sorted({*ids, current})
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

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """The key schedule: the one place that says which key id is in force when."""

    period: int = 86_400  # seconds; one new key a day
    keep_old: int = 7  # previous keys still accepted

    def period_of(self, unix_time: float) -> int:
        """The id of the key in force at ``unix_time``."""
        return int(unix_time // self.period) % KEY_ID_LIMIT

    def window(self, current: int) -> list[int]:
        """The ids held while ``current`` is in force: ``keep_old`` old ones, it, the next."""
        return list(range(max(0, current - self.keep_old), min(current + 2, KEY_ID_LIMIT)))

    def start_of(self, key_id: int) -> float:
        """When the period of ``key_id`` began (Unix time)."""
        return float(key_id * self.period)

    @property
    def lifetime(self) -> int:
        """Seconds a key is of use from the moment it is created: a period ahead as the
        next key, its own period, ``keep_old`` more, and one to spare for clocks that
        disagree."""
        return (self.keep_old + 2) * self.period

    @property
    def refresh_interval(self) -> float:
        """Seconds between store reads: several per period, and within seconds of a
        fleet's change or of the store's return."""
        return min(5.0, self.period / 4)


SUMMARY_INTERVAL = 300.0
"""Seconds between reminders that the key store is still failing."""


class KeyRing:
    """The keys in force, as a :class:`CookieCodec`.

    :meth:`refresh` (blocking, from a thread: see :meth:`run`) asks the store for the
    policy's window and keeps the secrets; :meth:`codec` (cheap, never touches the store)
    builds the codec of the current period from them, so a rotation happens on time even
    while the store hangs, as long as the next key was fetched during the period before.
    A failing store is logged when it starts and stops failing (with a reminder every
    ``summary_interval`` seconds between) and counted in :attr:`failures`; the keys held
    keep serving.
    """

    def __init__(
        self,
        store: KeyStore,
        policy: RotationPolicy = RotationPolicy(),
        *,
        summary_interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self.store = store
        self.policy = policy
        self.summary_interval = summary_interval
        self._lock = threading.Lock()
        self._secrets: dict[int, bytes] = {}
        self._codec: CookieCodec | None = None
        self._built: tuple[int, tuple[tuple[int, bytes], ...]] | None = None
        self._missing_logged: int | None = None  # a period whose key was missing, logged
        self.failures = 0
        """Store calls that failed."""
        self.store_ok: bool | None = None
        """Whether the last store call succeeded (None before the first)."""
        self.last_error: str | None = None
        self._failing_since: float | None = None
        self._failed_in_row = 0
        self._last_report = 0.0

    # --- the serving side: no store calls ---

    def codec(self, now: float) -> CookieCodec:
        """The codec for ``now`` from the keys held; raises :class:`KeyStoreError` only
        before the first successful :meth:`refresh`."""
        with self._lock:
            self._build(self.policy.period_of(now))
            if self._codec is None:
                raise KeyStoreError("no cookie key held yet (the key store has not answered)")
            return self._codec

    @property
    def current_id(self) -> int | None:
        """The id of the key the codec seals with (None before the first refresh)."""
        codec = self._codec
        return None if codec is None else codec.current_id

    def readings(self, now: float) -> Readings:
        """The ring's metrics: key in force and its age, store health, failed refreshes."""
        readings = Readings(counters={"key_store": {"": self.failures}})
        key_id = self.current_id
        if key_id is not None:
            readings.gauges["gnomon_cookie_key_id"] = key_id
            readings.gauges["gnomon_cookie_key_age_seconds"] = now - self.policy.start_of(key_id)
        if self.store_ok is not None:
            readings.gauges["gnomon_key_store_reachable"] = 1 if self.store_ok else 0
        return readings

    # --- the store side: blocking ---

    def start(self, now: float) -> CookieCodec:
        """The first refresh: the codec for ``now``, or :class:`KeyStoreError` saying why
        the store cannot give the key in force (a server must not start without it)."""
        self._fetch(now)
        self.store_ok = True
        return self.codec(now)

    def refresh(self, now: float) -> bool:
        """Ask the store for the window of ``now``; whether it answered. Never raises for
        store trouble (logged and counted instead)."""
        try:
            self._fetch(now)
        except KeyStoreError as exc:
            self._failed(now, str(exc))
            return False
        self._answered(now)
        return True

    def _fetch(self, now: float) -> None:
        current = self.policy.period_of(now)
        ids = self.policy.window(current)
        secrets = self.store.fetch(current, ids)
        self.store.prune(ids[0])
        with self._lock:
            held = {i: s for i, s in self._secrets.items() if i >= ids[0]}
            self._secrets = {**held, **secrets}
            self._build(current)

    def run(self, stop: threading.Event, clock: Callable[[], float] = time.time) -> None:
        """Refresh every :attr:`RotationPolicy.refresh_interval` until ``stop`` is set
        (the body of the ring's thread)."""
        while not stop.wait(self.policy.refresh_interval):
            try:
                self.refresh(clock())
            except Exception:  # a bug must not end the rotation silently
                self.failures += 1
                log.exception("cookie key refresh failed")

    def _build(self, period: int) -> None:
        """Rebuild the codec for ``period`` if the keys held for it changed. Lock held."""
        if period not in self._secrets:
            # The store could not give this period's key in time: keep sealing with the
            # key held (still accepted for keep_old periods) until it does.
            if self._codec is not None and self._missing_logged != period:
                self._missing_logged = period
                log.warning(
                    "cookie key %d not held (key store failing); still sealing with key %d",
                    period,
                    self._codec.current_id,
                )
            return
        window = self.policy.window(period)
        kept = tuple((i, self._secrets[i]) for i in window if i in self._secrets)
        if self._built == (period, kept):
            return
        if self._built is None or self._built[0] != period:
            log.info("cookie key %d in force (%d accepted)", period, len(kept))
        accepted = [CookieKey(i, secret) for i, secret in kept if i != period]
        self._codec = CookieCodec(CookieKey(period, self._secrets[period]), accepted)
        self._built = (period, kept)

    def _failed(self, now: float, error: str) -> None:
        self.failures += 1
        self._failed_in_row += 1
        self.store_ok = False
        self.last_error = error
        if self._failing_since is None:
            self._failing_since = self._last_report = now
            log.warning(
                "key store failing: %s; serving with the keys held (key %s in force)",
                error,
                self.current_id,
            )
        elif now - self._last_report >= self.summary_interval:
            self._last_report = now
            log.warning(
                "key store still failing after %.0f s (%d failed refreshes, last: %s); "
                "key %s in force",
                now - self._failing_since,
                self._failed_in_row,
                error,
                self.current_id,
            )

    def _answered(self, now: float) -> None:
        self.store_ok = True
        self.last_error = None
        if self._failing_since is not None:
            log.info(
                "key store answers again after %.0f s (%d failed refreshes)",
                now - self._failing_since,
                self._failed_in_row,
            )
        self._failing_since = None
        self._failed_in_row = 0
