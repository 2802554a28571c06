"""Session persistence (keys and cookies in a 0600 file) and server specs (client.session)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from gnomon.certs import make_demo_pki
from gnomon.client.ke import KeResult
from gnomon.client.ntp import fresh_request
from gnomon.client.session import Session, format_reference_id, parse_server
from gnomon.errors import CertificateError, GnomonError
from gnomon.proto.nts.ke import KeResponse

KEY = "ke.example:4460"


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_pki(tmp_path_factory.mktemp("pki")).ca_cert


def ke_result(aead: int = 30, cookies: int = 8, host: str = "ntp.example") -> KeResult:
    key_length = {15: 32, 30: 16}[aead]
    response = KeResponse(
        aead=aead,
        cookies=tuple(bytes([0xA0 + i]) * 64 for i in range(cookies)),
        server=host,
        port=1123,
        compliant_gcm_siv=True,
    )
    return KeResult(
        response,
        c2s=bytes(range(key_length)),
        s2c=bytes(range(100, 100 + key_length)),
        ntp_host=host,
        ntp_port=1123,
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_state_file_is_an_empty_session(tmp_path: Path, ca_file: Path) -> None:
    state_file = tmp_path / "s.json"
    session = Session(state_file=state_file, ca_file=ca_file)
    assert session.cookies_for("ke.example") == 0
    assert not state_file.exists()


def test_save_and_reload(tmp_path: Path, ca_file: Path) -> None:
    state_file = tmp_path / "s.json"
    session = Session(state_file=state_file, ca_file=ca_file)
    ke = ke_result()
    state = session._store(KEY, ke)
    session._save()
    assert mode_of(state_file) == 0o600
    document = json.loads(state_file.read_text())
    assert document["version"] == 1
    entry = document["servers"][KEY]
    assert entry["aead"] == 30
    assert bytes.fromhex(entry["c2s"]) == ke.c2s
    assert bytes.fromhex(entry["s2c"]) == ke.s2c
    assert [bytes.fromhex(c) for c in entry["cookies"]] == list(ke.response.cookies)

    reloaded = Session(state_file=state_file, ca_file=ca_file)
    assert reloaded.cookies_for("ke.example", 4460) == 8
    again = reloaded._servers[KEY]
    assert again.association.aead_id == state.association.aead_id == 30
    assert again.association.c2s == ke.c2s
    assert again.association.s2c == ke.s2c
    assert again.association.cookies == ke.response.cookies
    assert (again.ntp_host, again.ntp_port) == ("ntp.example", 1123)
    # the reloaded keys still work: a request it builds verifies under the same C2S key
    request, _ = fresh_request(again.association)
    assert len(request) > 48
    # only the final file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_spent_cookies_stay_spent_after_reload(tmp_path: Path, ca_file: Path) -> None:
    state_file = tmp_path / "s.json"
    session = Session(state_file=state_file, ca_file=ca_file)
    state = session._store(KEY, ke_result(aead=15))
    fresh_request(state.association)
    fresh_request(state.association)
    session._save()
    reloaded = Session(state_file=state_file, ca_file=ca_file)
    assert reloaded._servers[KEY].association.cookies == ke_result().response.cookies[2:]
    assert reloaded._servers[KEY].association.aead_id == 15


def test_several_servers_and_forget(tmp_path: Path, ca_file: Path) -> None:
    state_file = tmp_path / "deep" / "er" / "s.json"  # missing directories are created
    session = Session(state_file=state_file, ca_file=ca_file)
    session._store("a.example:4460", ke_result(cookies=3, host="a"))
    session._store("b.example:4461", ke_result(cookies=5, host="b"))
    session._save()
    reloaded = Session(state_file=state_file, ca_file=ca_file)
    assert reloaded.cookies_for("a.example") == 3
    assert reloaded.cookies_for("b.example", 4461) == 5
    assert reloaded.cookies_for("b.example") == 0
    reloaded.forget("a.example")
    third = Session(state_file=state_file, ca_file=ca_file)
    assert third.cookies_for("a.example") == 0
    assert third.cookies_for("b.example", 4461) == 5


def test_store_replaces_the_old_association(tmp_path: Path, ca_file: Path) -> None:
    session = Session(state_file=tmp_path / "s.json", ca_file=ca_file)
    session._store(KEY, ke_result(cookies=2))
    session._store(KEY, ke_result(cookies=6))
    assert session.cookies_for("ke.example") == 6
    assert session.key_exchanges == 2


def test_file_mode_is_0600_whatever_the_umask(tmp_path: Path, ca_file: Path) -> None:
    state_file = tmp_path / "s.json"
    state_file.write_text("{}")
    state_file.chmod(0o666)
    session = Session(state_file=state_file, ca_file=ca_file)
    session._store(KEY, ke_result())
    old = os.umask(0)
    try:
        session._save()
    finally:
        os.umask(old)
    assert mode_of(state_file) == 0o600


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        '{"version": 1, "servers": {"k:1": {"aead": 30}}}',
        '{"version": 1, "servers": {"k:1": {"aead": 30, "c2s": "zz", "s2c": "00",'
        ' "cookies": [], "ntp_host": "h", "ntp_port": 1}}}',
        # a 16-byte key for AES-SIV-CMAC-256
        '{"version": 1, "servers": {"k:1": {"aead": 15, "c2s": "' + "00" * 16 + '",'
        ' "s2c": "' + "00" * 16 + '", "cookies": [], "ntp_host": "h", "ntp_port": 1}}}',
        # an AEAD gnomon does not know
        '{"version": 1, "servers": {"k:1": {"aead": 99, "c2s": "00", "s2c": "00",'
        ' "cookies": [], "ntp_host": "h", "ntp_port": 1}}}',
        '{"version": 1, "servers": []}',
        '{"version": 1, "servers": {"k:1": []}}',
        '{"version": 1}',
    ],
)
def test_corrupt_file(tmp_path: Path, ca_file: Path, content: str) -> None:
    state_file = tmp_path / "state-file.json"
    state_file.write_text(content)
    with pytest.raises(GnomonError, match=re.escape(str(state_file))):
        Session(state_file=state_file, ca_file=ca_file)


def test_unreadable_state_path(tmp_path: Path, ca_file: Path) -> None:
    directory = tmp_path / "a-directory.json"
    directory.mkdir()
    with pytest.raises(GnomonError, match=re.escape(str(directory))):
        Session(state_file=directory, ca_file=ca_file)


@pytest.mark.parametrize("content", ['{"version": 2, "servers": {}}', "[1, 2]", '"text"'])
def test_unknown_format_is_ignored(tmp_path: Path, ca_file: Path, content: str) -> None:
    state_file = tmp_path / "s.json"
    state_file.write_text(content)
    session = Session(state_file=state_file, ca_file=ca_file)
    assert session._servers == {}


def test_session_without_state_file_does_not_write(tmp_path: Path, ca_file: Path) -> None:
    session = Session(ca_file=ca_file)
    session._store(KEY, ke_result())
    session._save()
    session.forget("ke.example")
    assert list(tmp_path.iterdir()) == []


def test_bad_ca_file(tmp_path: Path) -> None:
    with pytest.raises(CertificateError):
        Session(ca_file=tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(CertificateError):
        Session(ca_file=not_pem)


# --- parse_server ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("time.example", ("time.example", 4460)),
        ("time.example:4461", ("time.example", 4461)),
        ("192.0.2.1", ("192.0.2.1", 4460)),
        ("192.0.2.1:1", ("192.0.2.1", 1)),
        ("[::1]:4460", ("::1", 4460)),
        ("[2001:db8::5]:65535", ("2001:db8::5", 65535)),
        ("[::1]", ("::1", 4460)),
        ("::1", ("::1", 4460)),
        ("2001:db8::1", ("2001:db8::1", 4460)),
    ],
)
def test_parse_server(spec: str, expected: tuple[str, int]) -> None:
    assert parse_server(spec) == expected


def test_parse_server_default_port() -> None:
    assert parse_server("h", default_port=123) == ("h", 123)
    assert parse_server("[::1]", default_port=123) == ("::1", 123)


@pytest.mark.parametrize(
    "spec",
    ["h:0", "h:65536", "h:-1", "h:abc", "h:99999999", "[::1]:x", "[::1]:0", ":123", "[]:1", ""],
)
def test_parse_server_rejects(spec: str) -> None:
    with pytest.raises(GnomonError):
        parse_server(spec)


@pytest.mark.parametrize("spec", ["[::1]junk", "[::1", "h:+5", "h: 12", "h:1_0"])
def test_parse_server_rejects_sloppy_specs(spec: str) -> None:
    with pytest.raises(GnomonError):
        parse_server(spec)


def test_format_reference_id() -> None:
    assert format_reference_id(1, b"GPS\x00") == "GPS"
    assert format_reference_id(0, b"RATE") == "RATE"
    assert format_reference_id(2, b"\xc0\x00\x02\x01") == "192.0.2.1"
