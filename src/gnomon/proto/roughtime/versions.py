"""The rules of each Roughtime version, in one table.

The version a *response* names picks the rules used to check it: the hash
input of the Merkle leaf, the signature contexts, the nonce and hash sizes,
the time unit and where ``VER`` sits. A client accepts only a version its
request offered.

| version      | leaf input     | delegation context ends | VER in        | times |
|--------------|----------------|-------------------------|---------------|-------|
| 1            | request packet | ``signature\\0``         | SREP (+VERS)  | s     |
| 0x8000000c   | request packet | ``signature\\0``         | SREP (+VERS)  | s     |
| 0x8000000b/8 | nonce          | ``signature--\\0``       | top level     | s     |
| Google       | nonce (64 B)   | ``signature--\\0``       | (no version)  | µs    |

Version-1 context spelling. Draft 19 and its Appendix B examples spell the
contexts ``RoughTime v1 ...``; roughly 0.3.0, the deployed implementation that
cites RFC 10049, signs and checks version 1 with ``Roughtime v1 ...`` and
rejects the other. A gnomon client accepts either for version 1. A gnomon
server signs version 1 with roughly's ``Roughtime v1 ...``: it is the spelling
a deployed peer verifies (and gnomon's own client accepts both), while no
deployed client is known to insist on the draft's capital T. Version
0x8000000c keeps ``RoughTime v1 ...``, which every draft-12+ implementation
uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

VERSION_1 = 0x00000001
DRAFT_12 = 0x8000000C  # drafts 12 to 19
DRAFT_11 = 0x8000000B
DRAFT_08 = 0x80000008
GOOGLE = 0  # Google-Roughtime has no version number; 0 is reserved by RFC 10049

_DELEGATION_DRAFT = b"RoughTime v1 delegation signature\x00"
_RESPONSE_DRAFT = b"RoughTime v1 response signature\x00"
_DELEGATION_ROUGHLY = b"Roughtime v1 delegation signature\x00"
_RESPONSE_ROUGHLY = b"Roughtime v1 response signature\x00"
_DELEGATION_OLD = b"RoughTime v1 delegation signature--\x00"


@dataclass(frozen=True, slots=True)
class Rules:
    """How one version builds and checks packets."""

    version: int
    name: str
    framed: bool  # ROUGHTIM + length around the message
    nonce_size: int
    hash_size: int  # SHA-512 truncated to this many bytes
    leaf_is_packet: bool  # leaf = H(0x00 || request packet), else H(0x00 || nonce)
    delegation_contexts: tuple[bytes, ...]  # accepted; the first is the one a server signs with
    response_contexts: tuple[bytes, ...]
    microseconds: bool  # MIDP and RADI in µs (Google), else seconds
    version_in_srep: bool  # VER and VERS inside SREP, TYPE at top level

    @property
    def delegation_context(self) -> bytes:
        return self.delegation_contexts[0]

    @property
    def response_context(self) -> bytes:
        return self.response_contexts[0]


def _current(
    version: int, name: str, delegation: tuple[bytes, ...], response: tuple[bytes, ...]
) -> Rules:
    """The layout of draft 12 onwards (and version 1): leaf over the request, VER in SREP."""
    return Rules(version, name, True, 32, 32, True, delegation, response, False, True)


def _early(version: int, name: str) -> Rules:
    """Drafts 8 to 11 as Cloudflare deployed them: leaf over the nonce, ``--`` context."""
    return Rules(
        version, name, True, 32, 32, False, (_DELEGATION_OLD,), (_RESPONSE_DRAFT,), False, False
    )


RULES: dict[int, Rules] = {
    VERSION_1: _current(
        VERSION_1,
        "version 1 (RFC 10049)",
        (_DELEGATION_ROUGHLY, _DELEGATION_DRAFT),
        (_RESPONSE_ROUGHLY, _RESPONSE_DRAFT),
    ),
    DRAFT_12: _current(
        DRAFT_12, "0x8000000c (drafts 12-19)", (_DELEGATION_DRAFT,), (_RESPONSE_DRAFT,)
    ),
    DRAFT_11: _early(DRAFT_11, "0x8000000b (draft 11)"),
    DRAFT_08: _early(DRAFT_08, "0x80000008 (draft 8)"),
    GOOGLE: replace(
        _early(GOOGLE, "Google-Roughtime"),
        framed=False,
        nonce_size=64,
        hash_size=64,
        microseconds=True,
    ),
}

# UDP (and TCP) port: the one most public servers use. RFC 10049's IANA assignment could
# not be confirmed here, so clients and the server default to this (README says so).
DEFAULT_PORT = 2002

CLIENT_VERSIONS = (VERSION_1, DRAFT_12, DRAFT_11, DRAFT_08)  # what a client offers by default
SERVER_VERSIONS = (VERSION_1, DRAFT_12)  # what a gnomon server can answer


def version_name(version: int) -> str:
    rules = RULES.get(version)
    return rules.name if rules else f"0x{version:08x}"
