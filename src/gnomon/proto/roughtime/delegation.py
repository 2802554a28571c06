"""Delegation certificates: the long-term key vouches for an online key over MINT..MAXT.

``CERT = {SIG: sign(long-term key, context || DELE), DELE: {PUBK, MINT, MAXT}}``.
The context depends on the version (see :mod:`.versions`), so a
:class:`Delegation` holds one signature per version it was signed for. It is
made offline with :func:`delegate` (the long-term private key never needs to
be on the server) and saved with :meth:`Delegation.to_json`; the server then
needs only the delegation and the online private key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ...errors import RoughtimeFormatError, RoughtimeVerificationError
from .message import DELE, MAXT, MINT, PUBK, SIG, Message, decode, encode, u64
from .versions import RULES, SERVER_VERSIONS, Rules, version_name

FORMAT = "gnomon-roughtime-delegation"
FORMAT_VERSION = 1


def dele_message(online_public: bytes, mint: int, maxt: int) -> bytes:
    return encode({PUBK: online_public, MINT: u64(mint), MAXT: u64(maxt)})


@dataclass(frozen=True, slots=True)
class Delegation:
    """An online key, its validity window (Unix seconds) and the long-term key's signatures."""

    online_public: bytes
    mint: int
    maxt: int
    signatures: Mapping[int, bytes]  # version -> Ed25519 signature over context || DELE
    long_term_public: bytes = b""  # informative; verify() takes the key to trust
    _dele: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.online_public) != 32:
            raise RoughtimeFormatError("online public key must be 32 bytes")
        if not 0 <= self.mint <= self.maxt < 1 << 64:
            raise RoughtimeFormatError(f"bad delegation window {self.mint}..{self.maxt}")
        object.__setattr__(self, "signatures", dict(self.signatures))
        object.__setattr__(self, "_dele", dele_message(self.online_public, self.mint, self.maxt))

    @property
    def dele(self) -> bytes:
        return self._dele

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(self.signatures)

    def covers(self, unix_seconds: int) -> bool:
        return self.mint <= unix_seconds <= self.maxt

    def certificate(self, version: int) -> bytes:
        """The encoded CERT message for ``version``."""
        try:
            signature = self.signatures[version]
        except KeyError:
            raise RoughtimeFormatError(
                f"delegation not signed for version {version_name(version)}"
            ) from None
        return encode({SIG: signature, DELE: self._dele})

    def certificates(self) -> dict[int, bytes]:
        return {version: self.certificate(version) for version in self.signatures}

    def verify(self, long_term_public: bytes) -> None:
        """Check every signature against ``long_term_public``."""
        for version, signature in self.signatures.items():
            rules = RULES.get(version)
            if rules is None:
                raise RoughtimeFormatError(f"delegation for unknown version 0x{version:08x}")
            verify_delegation(long_term_public, signature, self._dele, rules)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "longTermPublicKey": base64.b64encode(self.long_term_public).decode(),
                "onlinePublicKey": base64.b64encode(self.online_public).decode(),
                "mint": self.mint,
                "maxt": self.maxt,
                "signatures": {
                    f"0x{v:08x}": base64.b64encode(s).decode() for v, s in self.signatures.items()
                },
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Delegation:
        try:
            document = json.loads(text)
            if document.get("format") != FORMAT or document.get("version") != FORMAT_VERSION:
                raise RoughtimeFormatError("not a gnomon Roughtime delegation file")
            return cls(
                online_public=base64.b64decode(document["onlinePublicKey"], validate=True),
                mint=int(document["mint"]),
                maxt=int(document["maxt"]),
                signatures={
                    int(v, 16): base64.b64decode(s, validate=True)
                    for v, s in document["signatures"].items()
                },
                long_term_public=base64.b64decode(
                    document.get("longTermPublicKey", ""), validate=True
                ),
            )
        except RoughtimeFormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise RoughtimeFormatError(f"bad delegation file: {exc}") from None


def delegate(
    long_term_private: Ed25519PrivateKey,
    online_public: bytes,
    mint: int,
    maxt: int,
    versions: Iterable[int] = SERVER_VERSIONS,
) -> Delegation:
    """Sign a delegation of ``online_public`` for ``mint..maxt`` (Unix seconds), offline."""
    dele = dele_message(online_public, mint, maxt)
    signatures: dict[int, bytes] = {}
    for version in versions:
        rules = RULES.get(version)
        if rules is None or rules.microseconds:
            raise RoughtimeFormatError(f"cannot delegate for version {version_name(version)}")
        signatures[version] = long_term_private.sign(rules.delegation_context + dele)
    return Delegation(
        online_public,
        mint,
        maxt,
        signatures,
        long_term_private.public_key().public_bytes_raw(),
    )


def verify_delegation(public_key: bytes, signature: bytes, dele: bytes, rules: Rules) -> None:
    """Raise unless ``signature`` is ``public_key``'s over one of the version's contexts ‖ DELE."""
    verify_signature(public_key, signature, rules.delegation_contexts, dele, "delegation")


def verify_signature(
    public_key: bytes, signature: bytes, contexts: tuple[bytes, ...], data: bytes, what: str
) -> None:
    if len(signature) != 64:
        raise RoughtimeFormatError(f"{what} signature of {len(signature)} bytes")
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise RoughtimeVerificationError(f"invalid Ed25519 public key for the {what}") from None
    for context in contexts:
        try:
            key.verify(signature, context + data)
            return
        except InvalidSignature:
            continue
    raise RoughtimeVerificationError(f"{what} signature does not verify")


def parse_dele(dele: Message) -> tuple[bytes, int, int]:
    """PUBK, MINT, MAXT of a DELE message."""
    return dele.require(PUBK, 32), dele.u64(MINT), dele.u64(MAXT)


def parse_certificate(cert: bytes) -> tuple[bytes, bytes, Message]:
    """SIG, the raw DELE bytes and the decoded DELE of a CERT message."""
    message = decode(cert)
    dele_raw = message.require(DELE)
    return message.require(SIG, 64), dele_raw, decode(dele_raw)
