"""Chained queries over several servers, the consistency check and malfeasance reports.

The first nonce is random; each next one is ``H(previous response packet ||
rand)`` with 32 fresh random bytes, so each response proves the one before it
existed when it was signed. For every earlier ``i`` and later ``j`` of a chain,
``MIDP_i - RADI_i <= MIDP_j + RADI_j``; a pair that breaks it proves that one
of the two servers lied, and the chain (requests, responses, rands, keys) is
the report (``application/roughtime-malfeasance+json``). Only verified
responses go into a chain: a signature or format failure may be grease and is
never reported.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import RoughtimeFormatError, RoughtimeVerificationError
from .client import Reply, parse_client_request, verify_response
from .merkle import digest

RAND_SIZE = 32
MAX_REPORT_ENTRIES = 64
REPORT_MEDIA_TYPE = "application/roughtime-malfeasance+json"


def next_nonce(previous_response: bytes, rand: bytes, size: int = 32) -> bytes:
    """The nonce of the next request in a chain: H(previous response packet || rand)."""
    if len(rand) != RAND_SIZE:
        raise ValueError(f"rand is {RAND_SIZE} bytes")
    return digest(previous_response + rand, size)


@dataclass(frozen=True, slots=True)
class Link:
    """One verified step of a chain."""

    public_key: bytes
    reply: Reply
    rand: bytes | None = None  # None on the first link (its nonce is random)
    name: str = ""  # the server's name, for messages; not part of the report


@dataclass(frozen=True, slots=True)
class Violation:
    """Links ``earlier`` and ``later`` whose intervals cannot both hold."""

    earlier: int
    later: int
    gap: int  # seconds by which MIDP_i - RADI_i exceeds MIDP_j + RADI_j


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a chain shows: the interval every server agrees on, or who disagrees."""

    links: tuple[Link, ...]
    violations: tuple[Violation, ...] = field(default=())

    @property
    def consistent(self) -> bool:
        return not self.violations

    @property
    def interval(self) -> tuple[int, int] | None:
        """[latest earliest, earliest latest] over the chain, when it is not empty."""
        if not self.consistent:
            return None
        low = max(link.reply.earliest for link in self.links)
        high = min(link.reply.latest for link in self.links)
        return (low, high) if low <= high else None

    @property
    def involved(self) -> tuple[int, ...]:
        """Positions of every link in some violation."""
        return tuple(sorted({i for v in self.violations for i in (v.earlier, v.later)}))

    @property
    def suspects(self) -> tuple[int, ...]:
        """Positions of the servers (by public key) whose removal alone makes the rest
        consistent: the likely liar.

        With one liar among honest servers this names it (all its positions); when
        no single server explains every violation, every involved position is
        returned.
        """
        if self.consistent:
            return ()
        keys = [link.public_key for link in self.links]
        candidates = {
            key
            for key in {keys[i] for i in self.involved}
            if all(key in (keys[v.earlier], keys[v.later]) for v in self.violations)
        }
        if not candidates:
            return self.involved
        return tuple(i for i, key in enumerate(keys) if key in candidates)

    def report(self) -> str:
        return malfeasance_report(self.links)


def find_violations(replies: Sequence[Reply]) -> tuple[Violation, ...]:
    """Every pair (i < j) with MIDP_i - RADI_i > MIDP_j + RADI_j (exact µs arithmetic)."""
    found = []
    for i, earlier in enumerate(replies):
        low = earlier.midpoint_us - earlier.radius_us
        for j in range(i + 1, len(replies)):
            later = replies[j]
            high = later.midpoint_us + later.radius_us
            if low > high:
                found.append(Violation(i, j, (low - high) // 1_000_000))
    return tuple(found)


def judge(links: Sequence[Link]) -> Verdict:
    return Verdict(tuple(links), find_violations([link.reply for link in links]))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def report_document(links: Sequence[Link]) -> dict[str, Any]:
    entries: list[dict[str, str]] = []
    for link in links:
        entry = {"publicKey": _b64(link.public_key)}
        if link.rand is not None:
            entry["rand"] = _b64(link.rand)
        entry["request"] = _b64(link.reply.request)
        entry["response"] = _b64(link.reply.response)
        entries.append(entry)
    return {"responses": entries}


def malfeasance_report(links: Sequence[Link]) -> str:
    """The report as JSON text (one-space indent, as draft 19's Appendix B prints it)."""
    return json.dumps(report_document(links), indent=1)


def _unb64(entry: dict[str, Any], key: str, position: int) -> bytes:
    value = entry.get(key)
    if not isinstance(value, str):
        raise RoughtimeFormatError(f"report entry {position} has no {key}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RoughtimeFormatError(f"report entry {position}: {key} is not base64") from None


def verify_report(text: str | bytes) -> Verdict:
    """Check a malfeasance report: every response verifies, every nonce chains; then judge.

    Raises :class:`RoughtimeFormatError` or :class:`RoughtimeVerificationError`
    when the report itself is not a valid chain (it then proves nothing).
    """
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RoughtimeFormatError(f"report is not JSON: {exc}") from None
    entries = document.get("responses") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RoughtimeFormatError("report has no responses")
    if len(entries) > MAX_REPORT_ENTRIES:
        raise RoughtimeFormatError(f"report of {len(entries)} responses")
    links: list[Link] = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RoughtimeFormatError(f"report entry {position} is not an object")
        public_key = _unb64(entry, "publicKey", position)
        request = parse_client_request(_unb64(entry, "request", position))
        response = _unb64(entry, "response", position)
        rand = _unb64(entry, "rand", position) if "rand" in entry else None
        if position and rand is None:
            raise RoughtimeFormatError(f"report entry {position} has no rand")
        if position == 0 and rand is not None:
            raise RoughtimeFormatError("the first report entry has a rand")
        if rand is not None:
            if len(rand) != RAND_SIZE:
                raise RoughtimeFormatError(f"report entry {position}: rand is not 32 bytes")
            expected = next_nonce(links[-1].reply.response, rand, len(request.nonce))
            if request.nonce != expected:
                raise RoughtimeVerificationError(
                    f"report entry {position}: nonce is not chained to the previous response"
                )
        if len(public_key) != 32:
            raise RoughtimeFormatError(f"report entry {position}: public key is not 32 bytes")
        links.append(Link(public_key, verify_response(request, response, public_key), rand))
    return judge(links)
