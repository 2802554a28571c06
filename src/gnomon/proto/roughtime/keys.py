"""Key and delegation file formats (text in, text out; reading and writing files is the caller's).

Long-term key file: the base64 Ed25519 seed on one line (the form roughly's
``ROUGHLY_PRIVATE_KEY`` takes). ``gnomon roughtime keygen`` writes it, mode 0600.

Delegations file (``gnomon roughtime delegate``): online keys made and
delegated ahead of time, one per window, so the long-term key can stay
offline; the server reads it and uses the delegation covering the present.
It holds online *private* keys: mode 0600 too.

    {"format": "gnomon-roughtime-delegations", "version": 1,
     "longTermPublicKey": b64, "delegations": [{"onlinePrivateKey": b64 seed,
     "onlinePublicKey", "mint", "maxt", "signatures": {"0x00000001": b64, ...}}]}
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ...errors import RoughtimeFormatError
from .delegation import Delegation, delegate
from .versions import SERVER_VERSIONS

FORMAT = "gnomon-roughtime-delegations"
FORMAT_VERSION = 1


def private_key_from_text(text: str | bytes, what: str = "key") -> Ed25519PrivateKey:
    """An Ed25519 private key from its base64 32-byte seed (surrounding whitespace ignored)."""
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RoughtimeFormatError(f"{what} is not a base64 Ed25519 seed") from None
    if len(seed) != 32:
        raise RoughtimeFormatError(f"{what} holds {len(seed)} bytes, not a 32-byte seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def private_key_to_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.private_bytes_raw()).decode("ascii") + "\n"


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode("ascii")


@dataclass(frozen=True, slots=True)
class OnlineDelegation:
    """An online private key and the delegation the long-term key signed for it."""

    online_key: Ed25519PrivateKey
    delegation: Delegation

    def __post_init__(self) -> None:
        if self.online_key.public_key().public_bytes_raw() != self.delegation.online_public:
            raise RoughtimeFormatError("the delegation is for another online key")


@dataclass(frozen=True, slots=True)
class DelegationSet:
    long_term_public: bytes
    delegations: tuple[OnlineDelegation, ...]

    def select(self, now: int, margin: int = 0) -> OnlineDelegation | None:
        """The delegation covering ``now`` (and ``now + margin``) with the latest MINT."""
        usable = [
            d
            for d in self.delegations
            if d.delegation.mint <= now and now + margin <= d.delegation.maxt
        ]
        return max(usable, key=lambda d: d.delegation.mint) if usable else None

    @property
    def ends(self) -> int:
        """The MAXT of the last delegation: sign more before then."""
        return max(d.delegation.maxt for d in self.delegations)

    def verify(self) -> None:
        for item in self.delegations:
            item.delegation.verify(self.long_term_public)

    def to_json(self) -> str:
        entries = []
        for item in self.delegations:
            entry = json.loads(item.delegation.to_json())
            entry.pop("format", None)
            entry.pop("version", None)
            entry.pop("longTermPublicKey", None)
            entry["onlinePrivateKey"] = base64.b64encode(
                item.online_key.private_bytes_raw()
            ).decode()
            entries.append(entry)
        return json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "longTermPublicKey": base64.b64encode(self.long_term_public).decode(),
                "delegations": entries,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DelegationSet:
        try:
            document = json.loads(text)
            if document.get("format") != FORMAT or document.get("version") != FORMAT_VERSION:
                raise RoughtimeFormatError("not a gnomon Roughtime delegations file")
            long_term = base64.b64decode(document["longTermPublicKey"], validate=True)
            items = []
            for entry in document["delegations"]:
                online = private_key_from_text(entry["onlinePrivateKey"], "onlinePrivateKey")
                delegation = Delegation(
                    online_public=base64.b64decode(entry["onlinePublicKey"], validate=True),
                    mint=int(entry["mint"]),
                    maxt=int(entry["maxt"]),
                    signatures={
                        int(v, 16): base64.b64decode(s, validate=True)
                        for v, s in entry["signatures"].items()
                    },
                    long_term_public=long_term,
                )
                items.append(OnlineDelegation(online, delegation))
        except RoughtimeFormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise RoughtimeFormatError(f"bad delegations file: {exc!r}") from None
        if not items:
            raise RoughtimeFormatError("delegations file holds no delegation")
        return cls(long_term, tuple(items))


def make_delegations(
    long_term: Ed25519PrivateKey,
    online_seeds: Sequence[bytes],
    start: int,
    window: int,
    overlap: int,
    versions: Iterable[int] = SERVER_VERSIONS,
) -> DelegationSet:
    """One delegation per seed: window ``i`` covers ``start + i*window`` to
    ``start + (i+1)*window + overlap``, so the next one is valid before this one ends."""
    if window <= 0 or overlap < 0:
        raise ValueError("window must be positive and overlap not negative")
    chosen = tuple(versions)
    items = []
    for i, seed in enumerate(online_seeds):
        online = Ed25519PrivateKey.from_private_bytes(seed)
        mint = start + i * window
        signed = delegate(
            long_term,
            online.public_key().public_bytes_raw(),
            mint,
            mint + window + overlap,
            chosen,
        )
        items.append(OnlineDelegation(online, signed))
    return DelegationSet(long_term.public_key().public_bytes_raw(), tuple(items))
