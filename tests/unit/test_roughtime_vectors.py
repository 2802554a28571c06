"""Every published vector in tests/data/roughtime (copied from ../shared/roughtime/vectors)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from roughtime_helpers import DATA, INTEROP_PUBLIC, INTEROP_SEED, vector

from gnomon.errors import RoughtimeVerificationError, RoughtimeVersionError
from gnomon.proto.roughtime import message as m
from gnomon.proto.roughtime.chain import Link, judge, malfeasance_report, next_nonce, verify_report
from gnomon.proto.roughtime.client import build_request, parse_client_request, verify_response
from gnomon.proto.roughtime.versions import DRAFT_08, DRAFT_11, GOOGLE, VERSION_1

CLOUDFLARE = {
    "cloudflare_roughtime_ietf_draft08_001.json": DRAFT_08,
    "cloudflare_roughtime_ietf_draft08_010.json": DRAFT_08,
    "cloudflare_roughtime_ietf_draft11_001.json": DRAFT_11,
    "cloudflare_roughtime_ietf_draft11_010.json": DRAFT_11,
    "cloudflare_roughtime_google_001.json": GOOGLE,
}


def seed_public(hex_seed: str) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(hex_seed))
    return key.public_key().public_bytes_raw()


@pytest.mark.parametrize("name", sorted(CLOUDFLARE))
def test_cloudflare_batches_verify_with_their_merkle_paths(name: str) -> None:
    data = vector(name)
    public = seed_public(data["root_key"])
    online = seed_public(data["online_key"])
    assert len(data["request"]) == len(data["replies"]) == int(name[-8:-5])
    indexes = set()
    for request_hex, reply_hex in zip(data["request"], data["replies"], strict=True):
        request = parse_client_request(bytes.fromhex(request_hex))
        reply = verify_response(request, bytes.fromhex(reply_hex), public)
        assert reply.version == CLOUDFLARE[name]
        assert reply.online_public == online
        if CLOUDFLARE[name] == GOOGLE:
            assert (reply.midpoint_us, reply.radius_us) == (50_000_000, 5_000_000)
            assert reply.earliest <= 45 and reply.latest >= 55
        else:
            assert (reply.midpoint, reply.radius, reply.mint, reply.maxt) == (50, 5, 0, 100)
        response = m.decode(m.unframe(reply.response) if reply.version else reply.response)
        indexes.add(response.u32(m.INDX))
        if len(data["request"]) > 1:
            assert response[m.PATH]  # a real path, walked from the leaf
    assert indexes == set(range(len(data["request"])))


def test_cloudflare_replies_do_not_verify_for_another_request() -> None:
    data = vector("cloudflare_roughtime_ietf_draft11_010.json")
    public = seed_public(data["root_key"])
    first = parse_client_request(bytes.fromhex(data["request"][0]))
    with pytest.raises(RoughtimeVerificationError):
        verify_response(first, bytes.fromhex(data["replies"][1]), public)


ROUGHLY_SUPPORTED = {0x8000000B, 0x8000000C, GOOGLE}


def roughly_captures() -> list[tuple[str, dict[str, object]]]:
    return [(f"{c['role']}-{c['other']}", c) for c in vector("roughly_interop_packets.json")]


@pytest.mark.parametrize(("label", "capture"), roughly_captures(), ids=lambda x: str(x)[:40])
def test_roughly_interop_captures(label: str, capture: dict[str, str]) -> None:
    public = base64.b64decode(INTEROP_PUBLIC)
    request = parse_client_request(base64.b64decode(capture["request"]))
    response = base64.b64decode(capture["response"])
    if capture["other"] == "some-draft-7-server":
        # draft 7 (MJD timestamps, another delegation context) is not spoken by gnomon
        with pytest.raises(RoughtimeVersionError):
            verify_response(request, response, public)
        return
    reply = verify_response(request, response, public)
    assert reply.version in ROUGHLY_SUPPORTED
    assert reply.radius >= 1
    assert reply.mint <= reply.midpoint <= reply.maxt


def test_interop_seed_matches_its_public_key() -> None:
    seed = base64.b64decode(INTEROP_SEED)
    assert seed_public(seed.hex()) == base64.b64decode(INTEROP_PUBLIC)


# --- draft 19, Appendix B: a chain of three with one liar ---------------------------


def appendix_b() -> dict[str, list[dict[str, str]]]:
    data: dict[str, list[dict[str, str]]] = vector("draft19_appendix_b_malfeasance_report.json")
    return data


def test_appendix_b_chain_is_found_inconsistent_and_the_liar_named_from_the_data() -> None:
    verdict = verify_report((DATA / "draft19_appendix_b_malfeasance_report.json").read_text())
    assert not verdict.consistent
    assert all(link.reply.version == VERSION_1 for link in verdict.links)
    midpoints = [link.reply.midpoint for link in verdict.links]
    # computed from the signed midpoints, not taken from the draft's prose
    outlier = max(range(3), key=lambda i: sum(abs(midpoints[i] - x) for x in midpoints))
    assert verdict.suspects == (outlier,)
    involved = {(v.earlier, v.later) for v in verdict.violations}
    assert involved == {tuple(sorted((outlier, j))) for j in range(3) if j != outlier}
    # the first server is a day ahead of the other two (the draft's prose names another)
    assert outlier == 0 and midpoints[0] - midpoints[1] >= 86400 - 10
    assert verdict.interval is None


def test_appendix_b_requests_and_report_are_reproduced_byte_for_byte() -> None:
    raw = (DATA / "draft19_appendix_b_malfeasance_report.json").read_text()
    entries = appendix_b()["responses"]
    links = []
    previous_response = None
    for entry in entries:
        public = base64.b64decode(entry["publicKey"])
        original = base64.b64decode(entry["request"])
        rand = base64.b64decode(entry["rand"]) if "rand" in entry else None
        if previous_response is None:
            nonce = m.decode(m.unframe(original))[m.NONC]
        else:
            assert rand is not None
            nonce = next_nonce(previous_response, rand)
        # gnomon builds the same request (1024-byte message, as the draft's examples)
        request = build_request(nonce, (VERSION_1,), public, size=1036)
        assert request.packet == original
        response = base64.b64decode(entry["response"])
        links.append(Link(public, verify_response(request, response, public), rand))
        previous_response = response
    verdict = judge(links)
    assert not verdict.consistent
    assert malfeasance_report(verdict.links) == raw
    assert verdict.report() == raw


def test_a_tampered_report_proves_nothing() -> None:
    document = appendix_b()
    document["responses"][1]["rand"] = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    with pytest.raises(RoughtimeVerificationError):
        verify_report(json.dumps(document))
