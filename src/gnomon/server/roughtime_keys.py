"""Roughtime server keys: the long-term key file, online keys and their delegations.

A Roughtime server signs responses with an *online* key; the *long-term* key
(the one clients know) only signs delegations: "this online key may sign
times from MINT to MAXT". Two ways to run:

- **online delegation** (``[roughtime] long_term_key``): the server holds the
  long-term key, makes a fresh online key at start and a new one before the
  current delegation ends (:class:`SelfDelegating`);
- **offline long-term key** (``[roughtime] delegations``): the operator signs a
  series of overlapping delegations ahead of time on another machine
  (``gnomon roughtime delegate``, which calls :func:`make_online_keys` and
  :func:`write_online_keys`); the server holds only those online keys and
  their certificates (:class:`Delegated`), picks the newest one covering now,
  re-reads the file when it changes, and refuses to start when none covers now.

Both files hold private keys: they are written mode 0600 and refused, in one
line, when group or others may read them.

File formats (JSON, base64 of raw 32-byte Ed25519 values):

- long-term key: ``{"format": "gnomon-roughtime-long-term-key", "version": 1,
  "privateKey": seed, "publicKey": key}``; a file holding just the base64 seed
  (roughly's ``ROUGHLY_PRIVATE_KEY``) is read too;
- online keys: ``{"format": "gnomon-roughtime-online-keys", "version": 1,
  "longTermPublicKey": key, "keys": [{"onlinePrivateKey": seed, "delegation":
  <a Delegation.to_json() object>}, ...]}``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .._os import write_private_file
from ..errors import ConfigError, GnomonError
from ..proto.roughtime.delegation import Delegation, delegate
from .secretfiles import check_private_file

log = logging.getLogger("gnomon.roughtime")

LONG_TERM_FORMAT = "gnomon-roughtime-long-term-key"
ONLINE_KEYS_FORMAT = "gnomon-roughtime-online-keys"
FORMAT_VERSION = 1
# A delegation made by the server itself starts this long before now: a client
# whose request meets a server clock stepped back a little still sees MINT <= MIDP.
SELF_DELEGATION_SLACK = 3600
# Warn when the last delegation of a file ends within this many seconds.
DELEGATION_WARNING = 7 * 86400


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _seed(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def _key_from_seed(value: str, what: str) -> Ed25519PrivateKey:
    try:
        seed = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise ConfigError(f"{what}: not base64") from None
    if len(seed) != 32:
        raise ConfigError(f"{what}: an Ed25519 seed is 32 bytes, not {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _read_private(path: Path, what: str) -> str:
    """The text of a private file; ConfigError (one line) if missing, not a regular
    file, or open to other users (``secretfiles.check_private_file``)."""
    try:
        check_private_file(path, what, {0, os.geteuid()})
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not text") from None


# --- the long-term key ----------------------------------------------------------------------


def write_long_term_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Save ``key`` to ``path``, mode 0600 (``gnomon roughtime keygen``)."""
    document = {
        "format": LONG_TERM_FORMAT,
        "version": FORMAT_VERSION,
        "privateKey": _b64(_seed(key)),
        "publicKey": _b64(public_key_of(key)),
    }
    write_private_file(path, json.dumps(document, indent=2) + "\n")


def read_long_term_key(path: Path) -> Ed25519PrivateKey:
    """The key in a long-term key file (gnomon's JSON, or a bare base64 seed)."""
    what = "Roughtime long-term key file"
    text = _read_private(path, what)
    if not text.lstrip().startswith("{"):
        return _key_from_seed(text, f"{what} {path}")
    try:
        document = json.loads(text)
        if document.get("format") != LONG_TERM_FORMAT:
            raise ConfigError(f"{what} {path}: not a gnomon Roughtime long-term key")
        key = _key_from_seed(document["privateKey"], f"{what} {path}")
        public = document.get("publicKey")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{what} {path}: not valid JSON with a privateKey") from None
    if public is not None and public != _b64(public_key_of(key)):
        raise ConfigError(f"{what} {path}: publicKey does not belong to privateKey")
    return key


def demo_long_term_key(directory: Path) -> Path:
    """A fresh long-term key in ``directory`` (``gnomon serve --demo``)."""
    path = directory / "roughtime.key"
    write_long_term_key(path, Ed25519PrivateKey.generate())
    return path


# --- online keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OnlineKey:
    """An online private key and the long-term key's delegation of it."""

    private: Ed25519PrivateKey
    delegation: Delegation

    def covers(self, now: int) -> bool:
        return self.delegation.covers(now)


def make_online_keys(
    long_term: Ed25519PrivateKey, start: int, count: int, period: int, overlap: int
) -> list[OnlineKey]:
    """``count`` fresh online keys delegated one after another: the i-th covers
    ``start + i * period`` to ``start + (i + 1) * period + overlap`` (Unix seconds),
    so a server switches to the next while the previous is still valid."""
    if count < 1 or period < 1 or overlap < 0:
        raise ConfigError("delegations need count >= 1, period >= 1 s and overlap >= 0 s")
    keys = []
    for i in range(count):
        online = Ed25519PrivateKey.generate()
        mint = start + i * period
        keys.append(
            OnlineKey(
                online, delegate(long_term, public_key_of(online), mint, mint + period + overlap)
            )
        )
    return keys


def write_online_keys(path: Path, long_term_public: bytes, keys: Iterable[OnlineKey]) -> None:
    """Save online keys and their delegations to ``path``, mode 0600."""
    document = {
        "format": ONLINE_KEYS_FORMAT,
        "version": FORMAT_VERSION,
        "longTermPublicKey": _b64(long_term_public),
        "keys": [
            {
                "onlinePrivateKey": _b64(_seed(key.private)),
                "delegation": json.loads(key.delegation.to_json()),
            }
            for key in keys
        ],
    }
    write_private_file(path, json.dumps(document, indent=2) + "\n")


def read_online_keys(path: Path) -> tuple[bytes, list[OnlineKey]]:
    """The long-term public key and the online keys of a delegations file, each
    delegation's signatures checked against that key and its online key checked
    against its private key."""
    what = "Roughtime delegations file"
    text = _read_private(path, what)
    try:
        document: Any = json.loads(text)
        if document.get("format") != ONLINE_KEYS_FORMAT:
            raise ConfigError(f"{what} {path}: not a gnomon Roughtime delegations file")
        long_term_public = base64.b64decode(document["longTermPublicKey"], validate=True)
        entries = list(document["keys"])
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise ConfigError(
            f"{what} {path}: not valid JSON with longTermPublicKey and keys"
        ) from None
    if len(long_term_public) != 32:
        raise ConfigError(f"{what} {path}: longTermPublicKey is not 32 bytes")
    keys = []
    for number, entry in enumerate(entries, 1):
        where = f"{what} {path}, key {number}"
        try:
            private = _key_from_seed(entry["onlinePrivateKey"], where)
            delegation = Delegation.from_json(json.dumps(entry["delegation"]))
            delegation.verify(long_term_public)
        except ConfigError:
            raise
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: missing {exc}") from None
        except GnomonError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if public_key_of(private) != delegation.online_public:
            raise ConfigError(f"{where}: the delegation is for another online key")
        keys.append(OnlineKey(private, delegation))
    if not keys:
        raise ConfigError(f"{what} {path} holds no delegation")
    return long_term_public, keys


def newest_covering(keys: Sequence[OnlineKey], now: int) -> OnlineKey | None:
    """Of the keys whose delegation covers ``now``, the one that started last."""
    covering = [key for key in keys if key.covers(now)]
    return max(covering, key=lambda key: key.delegation.mint) if covering else None


def _describe(seconds: int) -> str:
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} h"


class SelfDelegating:
    """Online keys made and delegated by the server, which holds the long-term key.

    Each delegation covers ``period`` seconds from a little before its creation;
    a new key takes over half-way, so two keys always overlap by half a period.
    """

    def __init__(self, long_term: Ed25519PrivateKey, period: int) -> None:
        self.long_term = long_term
        self.long_term_public = public_key_of(long_term)
        self.period = period
        self._key: OnlineKey | None = None

    def current(self, now: int) -> OnlineKey:
        key = self._key
        if key is None or not key.covers(now) or now >= key.delegation.mint + self.period // 2:
            (key,) = make_online_keys(
                self.long_term, now - SELF_DELEGATION_SLACK, 1, self.period, SELF_DELEGATION_SLACK
            )
            self._key = key
            log.info(
                "Roughtime online key delegated until %d (%s)", key.delegation.maxt,
                _describe(key.delegation.maxt - now),
            )  # fmt: skip
        return key


class Delegated:
    """Online keys delegated ahead of time, read from a file the server re-reads when
    it changes; the long-term private key never comes near the server."""

    def __init__(self, path: Path, now: int) -> None:
        self.path = path
        self.long_term_public, self.keys = read_online_keys(path)
        self._stamp = self._file_stamp()
        if newest_covering(self.keys, now) is None:
            last = max(key.delegation.maxt for key in self.keys)
            state = "have all ended" if last < now else "start later"
            raise ConfigError(
                f"Roughtime delegations file {path}: no delegation covers now ({now}): "
                f"they {state}; sign new ones with gnomon roughtime delegate"
            )
        self._warned_for: int | None = None

    def _file_stamp(self) -> tuple[int, int] | None:
        with contextlib.suppress(OSError):
            info = self.path.stat()
            return info.st_mtime_ns, info.st_size
        return None

    def reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            long_term_public, keys = read_online_keys(self.path)
        except ConfigError as exc:
            log.error("keeping the delegations read before: %s", exc)
            return
        if long_term_public != self.long_term_public:
            log.error(
                "keeping the delegations read before: %s is for another long-term key", self.path
            )
            return
        self.keys = keys
        log.info("read %d Roughtime delegations from %s", len(keys), self.path)

    def current(self, now: int) -> OnlineKey | None:
        """The newest key covering ``now``, or None (then the server does not answer)."""
        key = newest_covering(self.keys, now)
        last = max(k.delegation.maxt for k in self.keys)
        if last - now < DELEGATION_WARNING and self._warned_for != last:
            self._warned_for = last
            log.warning(
                "the last Roughtime delegation in %s ends in %s: sign more with "
                "gnomon roughtime delegate", self.path, _describe(max(0, last - now)),
            )  # fmt: skip
        return key
