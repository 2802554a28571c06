"""``gnomon roughtime``: queries, chains with reports, keygen and delegate."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import pytest
from roughtime_helpers import MIDPOINT, make_server
from roughtime_loopback import LoopbackServer

from gnomon.cli import main
from gnomon.proto.roughtime import RoughtimeServer
from gnomon.proto.roughtime.chain import verify_report
from gnomon.server.roughtime_keys import newest_covering, read_long_term_key, read_online_keys


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_query_prints_the_verified_time(capsys: pytest.CaptureFixture[str]) -> None:
    server, public = make_server()
    with LoopbackServer(server, MIDPOINT, 4) as loop:
        assert main(["roughtime", f"127.0.0.1:{loop.port}", "--key", b64(public)]) == 0
        out = capsys.readouterr().out
        assert "± 4 s" in out and str(MIDPOINT) in out
        assert main(["roughtime", f"127.0.0.1:{loop.port}", "--key", b64(public), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["midpoint"] == MIDPOINT and document["radius"] == 4


def test_wrong_key_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = make_server()
    _, other = make_server(seed=50)
    with LoopbackServer(server, MIDPOINT) as loop:
        code = main(["roughtime", f"127.0.0.1:{loop.port}", "--key", b64(other), "--attempts", "1"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gnomon: ") and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["roughtime", "127.0.0.1:2002"],
        ["roughtime", "127.0.0.1:2002", "--key", "not base64!"],
        ["roughtime", "127.0.0.1:99999", "--key", b64(bytes(32))],
        ["roughtime"],
        ["roughtime", "--list", "/nonexistent/list.json"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def write_list(path: Path, loops: list[LoopbackServer], keys: list[bytes]) -> Path:
    servers = [
        {
            "name": f"s{i}",
            "version": "1",  # a string, as some published lists write it
            "publicKeyType": "ed25519",
            "publicKey": b64(key),
            "addresses": [{"protocol": "udp", "address": f"127.0.0.1:{loop.port}"}],
        }
        for i, (loop, key) in enumerate(zip(loops, keys, strict=True))
    ]
    path.write_text(json.dumps({"servers": servers}))
    return path


@pytest.mark.parametrize("lie", [0, 7200])
def test_list_chain_exit_status_and_report(
    lie: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = [make_server(seed=60 + i) for i in range(3)]
    loops = [
        LoopbackServer(s, MIDPOINT + (lie if i == 1 else 0), 2) for i, (s, _) in enumerate(made)
    ]
    report = tmp_path / "report.json"
    try:
        listing = write_list(tmp_path / "servers.json", loops, [k for _, k in made])
        code = main(["roughtime", "--list", str(listing), "--report", str(report)])
    finally:
        for loop in loops:
            loop.close()
    out = capsys.readouterr().out
    if lie == 0:
        assert code == 0 and "agreed:" in out and not report.exists()
    else:
        assert code == 3 and "DISAGREE" in out and "likely liar: s1" in out
        assert not verify_report(report.read_text()).consistent


def test_keygen_writes_a_private_key_and_prints_an_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "long-term.key"
    argv = ["roughtime", "keygen", "--out", str(key_file), "--address", "time.example:2002"]
    assert main(argv) == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = read_long_term_key(key_file)
    public = b64(key.public_key().public_bytes_raw())
    out = capsys.readouterr().out
    assert f"public key: {public}" in out
    entry = json.loads(out[out.index("{") :])
    assert entry["publicKey"] == public and entry["addresses"][0]["address"] == "time.example:2002"
    assert main(argv) == 2  # never overwrites a key without --force


def test_delegate_signs_ahead_and_a_server_runs_from_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "long-term.key"
    assert main(["roughtime", "keygen", "--out", str(key_file)]) == 0
    out = tmp_path / "delegations.json"
    now = int(time.time())
    argv = ["roughtime", "delegate", "--key", str(key_file), "--out", str(out)]
    assert main([*argv, "--count", "3", "--days", "1", "--start", str(now)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    long_term_public, keys = read_online_keys(out)  # what the server reads, checked
    assert len(keys) == 3
    chosen = newest_covering(keys, now + 86400 + 10)
    assert chosen is not None and chosen.delegation.mint == now + 86400
    assert long_term_public == read_long_term_key(key_file).public_key().public_bytes_raw()
    server = RoughtimeServer(long_term_public, chosen.private, chosen.delegation)
    with LoopbackServer(server, now + 86400 + 10) as loop:
        assert main(["roughtime", f"127.0.0.1:{loop.port}", "--key", b64(long_term_public)]) == 0
    key_file.chmod(0o644)
    assert main([*argv, "--force"]) == 2  # a key others can read is refused


def test_versions_option(capsys: pytest.CaptureFixture[str]) -> None:
    server, public = make_server()
    with LoopbackServer(server, MIDPOINT) as loop:
        argv = ["roughtime", f"127.0.0.1:{loop.port}", "--key", b64(public), "--json"]
        assert main([*argv, "--versions", "0x8000000c"]) == 0
        assert json.loads(capsys.readouterr().out)["version"] == "0x8000000c"
        with pytest.raises(SystemExit):
            main([*argv, "--versions", "7"])
        with pytest.raises(SystemExit):
            main([*argv, "--versions", "google,1"])
