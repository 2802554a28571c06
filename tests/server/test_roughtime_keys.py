"""Roughtime server keys: the long-term key file, offline delegations, online rotation."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.errors import ConfigError
from gnomon.proto.roughtime.versions import DRAFT_12, VERSION_1
from gnomon.server.roughtime_keys import (
    SELF_DELEGATION_SLACK,
    Delegated,
    SelfDelegating,
    make_online_keys,
    newest_covering,
    public_key_of,
    read_long_term_key,
    read_online_keys,
    write_long_term_key,
    write_online_keys,
)

NOW = 1_796_000_000
LONG_TERM = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = public_key_of(LONG_TERM)


def test_long_term_key_round_trip_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "roughtime.key"
    write_long_term_key(path, LONG_TERM)
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_key_of(read_long_term_key(path)) == PUBLIC
    document = json.loads(path.read_text())
    assert base64.b64decode(document["publicKey"]) == PUBLIC


def test_a_bare_base64_seed_is_a_long_term_key(tmp_path: Path) -> None:
    """roughly's ROUGHLY_PRIVATE_KEY format."""
    path = tmp_path / "seed"
    path.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    path.chmod(0o600)
    assert public_key_of(read_long_term_key(path)) == PUBLIC


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_files_open_to_others_are_refused_in_one_line(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "roughtime.key"
    write_long_term_key(key, LONG_TERM)
    online = tmp_path / "online.json"
    write_online_keys(online, PUBLIC, make_online_keys(LONG_TERM, NOW, 1, 3600, 0))
    for path, read in ((key, read_long_term_key), (online, read_online_keys)):
        path.chmod(mode)
        with pytest.raises(ConfigError) as info:
            read(path)  # type: ignore[operator]
        message = str(info.value)
        assert "\n" not in message and f"chmod 600 {path}" in message


@pytest.mark.parametrize(
    "text",
    ["", "not base64!", base64.b64encode(bytes(31)).decode(), '{"format": "x"}', "{broken"],
)
def test_bad_long_term_key_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        read_long_term_key(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_long_term_key(tmp_path / "absent")


def test_offline_delegations_overlap_and_verify(tmp_path: Path) -> None:
    keys = make_online_keys(LONG_TERM, NOW, 3, 86400, 3600)
    path = tmp_path / "online.json"
    write_online_keys(path, PUBLIC, keys)
    assert path.stat().st_mode & 0o777 == 0o600
    public, read = read_online_keys(path)
    assert public == PUBLIC and len(read) == 3
    for key in read:
        key.delegation.verify(PUBLIC)
        assert set(key.delegation.signatures) == {VERSION_1, DRAFT_12}
    # Every instant of the series is covered; in an overlap the newer key serves.
    assert newest_covering(read, NOW + 86400 + 1800) is read[1]
    assert newest_covering(read, NOW + 86399) is read[0]
    assert newest_covering(read, NOW - 1) is None
    assert newest_covering(read, NOW + 3 * 86400 + 3601) is None


def test_a_delegation_by_another_long_term_key_is_refused(tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate()
    path = tmp_path / "online.json"
    write_online_keys(path, PUBLIC, make_online_keys(other, NOW, 1, 3600, 0))
    with pytest.raises(ConfigError, match="key 1"):
        read_online_keys(path)


def test_an_online_key_that_is_not_the_delegated_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "online.json"
    write_online_keys(path, PUBLIC, make_online_keys(LONG_TERM, NOW, 2, 3600, 0))
    document = json.loads(path.read_text())
    first, second = document["keys"]
    first["onlinePrivateKey"] = second["onlinePrivateKey"]
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="another online key"):
        read_online_keys(path)


def test_the_server_refuses_to_start_when_no_delegation_covers_now(tmp_path: Path) -> None:
    path = tmp_path / "online.json"
    write_online_keys(path, PUBLIC, make_online_keys(LONG_TERM, NOW - 7200, 1, 3600, 0))
    with pytest.raises(ConfigError, match="no delegation covers now") as info:
        Delegated(path, NOW)
    assert "\n" not in str(info.value) and "ended" in str(info.value)
    with pytest.raises(ConfigError, match="start later"):
        Delegated(path, NOW - 10 * 3600)


def test_delegated_switches_to_the_next_key_and_rereads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "online.json"
    keys = make_online_keys(LONG_TERM, NOW, 2, 3600, 600)
    write_online_keys(path, PUBLIC, keys)
    source = Delegated(path, NOW)
    first = source.current(NOW + 10)
    assert first is not None and first.delegation.mint == NOW
    second = source.current(NOW + 3600 + 1)
    assert second is not None and second.delegation.mint == NOW + 3600
    assert source.current(NOW + 2 * 3600 + 601) is None
    more = make_online_keys(LONG_TERM, NOW + 7200, 1, 3600, 600)
    write_online_keys(path, PUBLIC, [*keys, *more])
    os.utime(path, ns=(1, 1))  # a different stamp, whatever the clock's resolution
    source.reload_if_changed()
    later = source.current(NOW + 2 * 3600 + 601)
    assert later is not None and later.delegation.mint == NOW + 7200


def test_a_broken_rewrite_keeps_the_delegations_read_before(tmp_path: Path) -> None:
    path = tmp_path / "online.json"
    write_online_keys(path, PUBLIC, make_online_keys(LONG_TERM, NOW, 1, 3600, 0))
    source = Delegated(path, NOW)
    path.write_text("{}")
    os.utime(path, ns=(1, 1))
    source.reload_if_changed()
    assert source.current(NOW + 1) is not None


def test_self_delegating_rotates_half_way_with_overlap() -> None:
    period = 86400
    source = SelfDelegating(LONG_TERM, period)
    first = source.current(NOW)
    first.delegation.verify(PUBLIC)
    assert first.delegation.mint == NOW - SELF_DELEGATION_SLACK
    assert source.current(NOW + period // 2 - SELF_DELEGATION_SLACK - 1) is first
    second = source.current(NOW + period // 2)
    assert second is not first
    # The old key is still valid when the new one takes over: responses signed
    # just before the switch still verify for a while.
    assert first.covers(NOW + period // 2) and second.covers(NOW + period // 2)
    # A clock stepped outside the window gets a fresh delegation at once.
    assert source.current(NOW - 10 * period).covers(NOW - 10 * period)
