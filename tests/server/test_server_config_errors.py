"""Configuration errors: ``gnomon check-config`` and ``gnomon serve`` print one line and fail."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.server.supervisor import Supervisor

from .helpers import LOOPBACK, base_config, toml_config

TIMEOUT = 15.0


def _run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "gnomon", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"gnomon {' '.join(args)} still running after {timeout} s")


def _fifo(path: Path) -> Path:
    """A named pipe where a file is expected: opening it for reading would wait forever."""
    os.mkfifo(path)
    return path


def _mismatched_key(pki: DemoPki, tmp: Path) -> str:
    other = make_demo_pki(tmp / "other")
    return toml_config(pki).replace(str(pki.key), str(other.key))


# name -> (config text builder, a fragment the one line must hold)
CASES: dict[str, tuple[Callable[[DemoPki, Path], str], str]] = {
    "unknown-key": (lambda p, t: toml_config(p, extra="[ke]\nbogus = 1\n"), "ke.bogus"),
    "unknown-section": (lambda p, t: toml_config(p, extra="[bogus]\nx = 1\n"), "[bogus]"),
    "wrong-type": (
        lambda p, t: toml_config(p).replace("ke_port = 0", 'ke_port = "4460"'),
        "server.ke_port",
    ),
    "bad-port": (
        lambda p, t: toml_config(p).replace("ke_port = 0", "ke_port = 70000"),
        "server.ke_port",
    ),
    "bad-listen": (
        lambda p, t: toml_config(p).replace('"127.0.0.1"', '"localhost"'),
        "server.listen",
    ),
    "rate-limit-table-too-small": (
        lambda p, t: toml_config(p, extra="[limits]\nntp_rate_max_clients = 1\n"),
        "limits.ntp_rate_max_clients",
    ),
    "bad-deny-network": (
        lambda p, t: toml_config(p, extra='[limits]\ndeny = ["10.0.0.1/8"]\n'),
        "limits.deny",
    ),
    "bad-aead": (lambda p, t: toml_config(p, extra="[nts]\naeads = [99]\n"), "nts.aeads"),
    "not-toml": (lambda p, t: toml_config(p) + "this is = not = toml\n", "TOML"),
    "missing-certificate-file": (
        lambda p, t: toml_config(p).replace(str(p.cert_chain), str(t / "missing.pem")),
        "missing.pem",
    ),
    "missing-key-file": (
        lambda p, t: toml_config(p).replace(str(p.key), str(t / "missing.key")),
        "missing.key",
    ),
    "no-tls-section": (
        lambda p, t: toml_config(p).split("[tls]")[0],
        "tls.certificate",
    ),
    "key-not-matching-certificate": (_mismatched_key, "does not match"),
    "ke-timeout-nan": (lambda p, t: toml_config(p, extra="[ke]\ntimeout = nan\n"), "ke.timeout"),
    "ke-timeout-inf": (lambda p, t: toml_config(p, extra="[ke]\ntimeout = inf\n"), "ke.timeout"),
    "listen-integer": (
        lambda p, t: toml_config(p).replace('"127.0.0.1"', "2130706433"),
        "server.listen",
    ),
    "ntp-rate-interval-nan": (
        lambda p, t: toml_config(p, extra="[limits]\nntp_rate_interval = nan\n"),
        "limits.ntp_rate_interval",
    ),
    "hold-inf": (lambda p, t: toml_config(p, extra="[time]\nhold = inf\n"), "time.hold"),
    "keys-path-fifo": (
        lambda p, t: toml_config(p, key_path=_fifo(t / "keys.json")),
        "keys.path",
    ),
    "certificate-fifo": (
        lambda p, t: toml_config(p).replace(str(p.cert_chain), str(_fifo(t / "cert.pem"))),
        "tls.certificate",
    ),
    "certificate-not-pem": (
        lambda p, t: (
            (t / "junk.pem").write_text("junk\n")
            and toml_config(p).replace(str(p.cert_chain), str(t / "junk.pem"))
        ),
        "junk.pem",
    ),
}


def _write(pki: DemoPki, tmp_path: Path, case: str) -> Path:
    builder, _ = CASES[case]
    path = tmp_path / "gnomon.toml"
    path.write_text(builder(pki, tmp_path))
    return path


def _assert_one_line(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gnomon: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_config_reports_one_line(pki: DemoPki, tmp_path: Path, case: str) -> None:
    path = _write(pki, tmp_path, case)
    _assert_one_line(_run("check-config", str(path)), CASES[case][1])


def _serve_cases() -> list[object]:
    cases: list[object] = []
    for case in sorted(CASES):
        cases.append(pytest.param(case, 0, id=f"{case}-single-process"))
        # the default: a supervisor whose workers load the TLS files in fresh processes
        cases.append(pytest.param(case, None, id=f"{case}-supervised"))
    return cases


@pytest.mark.parametrize(("case", "workers"), _serve_cases())
def test_serve_reports_one_line(
    pki: DemoPki, tmp_path: Path, case: str, workers: int | None
) -> None:
    path = _write(pki, tmp_path, case)
    if workers is not None:
        text = path.read_text()
        assert "[server]\n" in text or case == "no-tls-section"
        path.write_text(text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1))
    _assert_one_line(_run("serve", "--config", str(path), "--log-level", "WARNING"), CASES[case][1])


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize("upstream", ["127.0.0.1:abc", "127.0.0.1:70000"])
def test_bad_upstream_reports_one_line(
    pki: DemoPki, tmp_path: Path, command: str, upstream: str
) -> None:
    path = tmp_path / "gnomon.toml"
    path.write_text(
        toml_config(pki, extra=f'[time]\nupstream = "{upstream}"\n').replace(
            "[tls]", "workers = 0\n[tls]"
        )
    )
    args = (
        ("check-config", str(path))
        if command == "check-config"
        else ("serve", "--config", str(path), "--log-level", "WARNING")
    )
    # a server that starts anyway is a failure too: give it a few seconds, not more
    _assert_one_line(_run(*args, timeout=3.0), "time.upstream")


@pytest.mark.parametrize(
    "name", ["ntp.ex\u00e4mple.net", "bad name", "a" * 300], ids=["non-ascii", "space", "long"]
)
def test_bad_advertised_server_reports_one_line(pki: DemoPki, tmp_path: Path, name: str) -> None:
    path = tmp_path / "gnomon.toml"
    path.write_text(toml_config(pki, extra=f'[nts]\nntp_server = "{name}"\n'), encoding="utf-8")
    _assert_one_line(_run("check-config", str(path)), "nts.ntp_server")


def test_corrupt_key_file_reported_by_check_config(pki: DemoPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text("not json")
    path = tmp_path / "gnomon.toml"
    path.write_text(toml_config(pki, key_path=keys))
    _assert_one_line(_run("check-config", str(path)), "keys.json")


def test_corrupt_key_file_reported_by_serve(pki: DemoPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text("not json")
    path = tmp_path / "gnomon.toml"
    path.write_text(toml_config(pki, key_path=keys))
    _assert_one_line(_run("serve", "--config", str(path), "--log-level", "WARNING"), "keys.json")


def test_missing_config_file(tmp_path: Path) -> None:
    for args in (
        ("check-config", str(tmp_path / "nope.toml")),
        ("serve", "--config", str(tmp_path / "nope.toml")),
    ):
        _assert_one_line(_run(*args), "nope.toml")


def test_good_config_checks_ok(pki: DemoPki, tmp_path: Path) -> None:
    path = tmp_path / "gnomon.toml"
    path.write_text(toml_config(pki))
    result = _run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def _serve_args(path: Path) -> tuple[str, ...]:
    return ("serve", "--config", str(path), "--log-level", "WARNING")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_config_file_not_utf8(pki: DemoPki, tmp_path: Path, command: str) -> None:
    path = tmp_path / "gnomon.toml"
    path.write_bytes(toml_config(pki).encode() + b"# r\xe9sum\xe9 in Latin-1\n")
    args = ("check-config", str(path)) if command == "check-config" else _serve_args(path)
    _assert_one_line(_run(*args), "not UTF-8")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_config_file_is_a_fifo(tmp_path: Path, command: str) -> None:
    path = _fifo(tmp_path / "gnomon.toml")
    args = ("check-config", str(path)) if command == "check-config" else _serve_args(path)
    _assert_one_line(_run(*args), "not a regular file")


def _with_workers(text: str, workers: int) -> str:
    return text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)


@pytest.mark.parametrize("workers", [0, 1], ids=["single-process", "supervised"])
@pytest.mark.parametrize("kind", ["ntp", "ke"])
def test_port_in_use_reported_in_one_line(
    pki: DemoPki, tmp_path: Path, kind: str, workers: int
) -> None:
    sock_type = socket.SOCK_DGRAM if kind == "ntp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, sock_type) as taken:
        taken.bind((LOOPBACK, 0))
        if kind == "ke":
            taken.listen()
        port = taken.getsockname()[1]
        text = toml_config(pki).replace(f"{kind}_port = 0", f"{kind}_port = {port}")
        path = tmp_path / "gnomon.toml"
        path.write_text(_with_workers(text, workers))
        result = _run(*_serve_args(path))
    _assert_one_line(result, f"server.{kind}_port")
    assert "already in use" in result.stderr and str(port) in result.stderr


def _nonlocal_bind_allowed() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0"
    except OSError:
        return False


# RFC 5737 documentation address: never on a host; binding it sends nothing anywhere.
FOREIGN = "192.0.2.1"


@pytest.mark.skipif(_nonlocal_bind_allowed(), reason="this host binds non-local addresses")
@pytest.mark.parametrize("command", ["check-config", "serve-single-process", "serve-supervised"])
def test_listen_address_not_on_this_host(pki: DemoPki, tmp_path: Path, command: str) -> None:
    text = toml_config(pki).replace(f'"{LOOPBACK}"', f'"{FOREIGN}"')
    path = tmp_path / "gnomon.toml"
    path.write_text(_with_workers(text, 0 if command == "serve-single-process" else 1))
    args = ("check-config", str(path)) if command == "check-config" else _serve_args(path)
    result = _run(*args)
    _assert_one_line(result, "server.listen")
    assert FOREIGN in result.stderr and "not one of this host's" in result.stderr


def test_worker_start_error_reaches_the_supervisor_in_one_line(
    pki: DemoPki, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A worker that cannot start (here: its port taken after the supervisor's checks)
    sends its error to the supervisor, which raises it as one line; no traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        config = base_config(pki, ke_port=taken.getsockname()[1], key_path=tmp_path / "k.json")
        supervisor = Supervisor(config, ntp_workers=0, ke_workers=1, log_level=logging.WARNING)
        with pytest.raises(RuntimeError) as raised:
            supervisor.run()
    assert str(raised.value).startswith("ke worker 0: ")
    assert "in use" in str(raised.value)
    assert "Traceback" not in capfd.readouterr().err
