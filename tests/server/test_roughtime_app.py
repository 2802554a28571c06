"""Roughtime in the assembled server: configuration, an in-process server over UDP,
a supervised `gnomon serve` with offline delegations, metrics and status."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.certs import DemoPki
from gnomon.errors import ConfigError
from gnomon.proto.roughtime.client import ClientRequest, build_request, verify_response
from gnomon.proto.roughtime.versions import DRAFT_12, VERSION_1
from gnomon.server.config import parse_config
from gnomon.server.metrics import MetricsExporter
from gnomon.server.roughtime_keys import (
    make_online_keys,
    public_key_of,
    read_long_term_key,
    write_long_term_key,
    write_online_keys,
)
from gnomon.server.status import summarize

from .helpers import LOOPBACK, WAIT, ServerProcess, base_config, running_server

LONG_TERM = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = public_key_of(LONG_TERM)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "roughtime.key"
    write_long_term_key(path, LONG_TERM)
    return path


def ask(port: int, sent: ClientRequest, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(sent.packet, (LOOPBACK, port))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None


def fresh(versions: tuple[int, ...] = (VERSION_1, DRAFT_12)) -> ClientRequest:
    return build_request(os.urandom(32), versions=versions, server_key=PUBLIC)


def roughtime_config(pki: DemoPki, key_file: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "roughtime": True,
        "roughtime_port": 0,
        "roughtime_long_term_key": key_file,
        "roughtime_max_wait": 0.0,
    }
    values.update(overrides)
    return base_config(pki, **values)


# --- configuration ---------------------------------------------------------------------------


def test_roughtime_section(tmp_path: Path) -> None:
    config = parse_config(
        '[server]\nrole = "roughtime"\nlisten = ["127.0.0.1"]\n'
        '[roughtime]\nport = 2002\nlong_term_key = "/k"\nmax_batch = 128\nmax_wait = 0.005\n'
        'listen = ["::1"]\nworkers = 2\n'
    )
    assert config.roughtime and config.roughtime_port == 2002
    assert config.roughtime_long_term_key == Path("/k")
    assert config.roughtime_addresses == ("::1",)
    assert (config.roughtime_max_batch, config.roughtime_max_wait) == (128, 0.005)
    assert config.roughtime_workers == 2
    assert config.certificate is None  # Roughtime alone needs no TLS certificate


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("enabled = true", "long_term_key or delegations"),
        ('enabled = true\nlong_term_key = "/a"\ndelegations = "/b"', "one of them"),
        ('long_term_key = "/a"\nmax_batch = 0', "roughtime.max_batch"),
        ('long_term_key = "/a"\nmax_wait = 2', "roughtime.max_wait"),
        ('long_term_key = "/a"\nmin_radius = 0', "roughtime.min_radius"),
        ('long_term_key = "/a"\nport = 70000', "roughtime.port"),
        ('long_term_key = "/a"\nlisten = ["nowhere"]', "roughtime.listen"),
        ('long_term_key = "/a"\nsecret = 1', "unknown key roughtime.secret"),
    ],
)
def test_roughtime_configuration_errors_are_one_line(section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(f'[server]\nrole = "ntp"\n[roughtime]\n{section}\n')
    assert "\n" not in str(info.value)


# --- in process ------------------------------------------------------------------------------


async def test_both_versions_answered_beside_nts(pki: DemoPki, key_file: Path) -> None:
    config = roughtime_config(pki, key_file, local_stratum=10)
    async with running_server(config) as server:
        assert server.roles == {"ke", "ntp", "roughtime"}
        assert server.roughtime is not None
        port = server.roughtime.bound_port
        for versions in ((VERSION_1,), (DRAFT_12,)):
            sent = fresh(versions)
            packet = await asyncio.to_thread(ask, port, sent)
            assert packet is not None
            reply = verify_response(sent, packet, PUBLIC)
            assert reply.version == versions[0]
            # No upstream: no leap-second information, so RADI is at least 3 s.
            assert reply.radius == 3 and abs(reply.midpoint - time.time()) < 3
        assert server.roughtime.counts()["answered"] == 2


async def test_unsynchronised_server_does_not_answer(pki: DemoPki, key_file: Path) -> None:
    async with running_server(roughtime_config(pki, key_file)) as server:
        assert server.roughtime is not None
        assert await asyncio.to_thread(ask, server.roughtime.bound_port, fresh(), 0.3) is None
        assert server.roughtime.counts()["unsynchronized"] == 1
        server.publish_time_source(
            type(server.roughtime.clock.source)(leap=0, stratum=2)  # the upstream answers
        )
        sent = fresh()
        packet = await asyncio.to_thread(ask, server.roughtime.bound_port, sent)
        assert packet is not None and verify_response(sent, packet, PUBLIC).radius >= 1


async def test_metrics_and_status_lines(pki: DemoPki, key_file: Path) -> None:
    config = roughtime_config(pki, key_file, roughtime_local_clock_radius=10, role="roughtime")
    async with running_server(config) as server:
        assert server.roughtime is not None and server.roles == {"roughtime"}
        port = server.roughtime.bound_port
        assert await asyncio.to_thread(ask, port, fresh())
        assert await asyncio.to_thread(ask, port, fresh((0x8000000B,)), 0.3) is None
        exporter = MetricsExporter(server.metric_sources())
        exporter.update()
        from prometheus_client import REGISTRY

        def sample(name: str, **labels: str) -> float | None:
            return REGISTRY.get_sample_value(name, labels)

        assert sample("gnomon_roughtime_requests_total", outcome="answered") == 1
        assert sample("gnomon_roughtime_requests_total", outcome="no_common_version") == 1
        assert sample("gnomon_roughtime_batches_total") == 1
        end = sample("gnomon_roughtime_delegation_expiry_timestamp_seconds")
        assert end is not None and end > time.time()
        exporter.close()
    text = summarize(
        {
            "gnomon_roughtime_requests_total": {"answered": 128.0, "too_short": 3.0},
            "gnomon_roughtime_batches_total": {"": 4.0},
            "gnomon_roughtime_delegation_expiry_timestamp_seconds": {"": time.time() + 7200},
        }
    )
    assert "Roughtime:   answered 128, too_short 3" in text
    assert "4 batches signed (32.0 responses per batch)" in text
    assert "delegated for 2.0 h more" in text
    # A Roughtime-only server has no cookies: no cookie-key line (an NTS server has one).
    roughtime_only = {
        "gnomon_roughtime_requests_total": {"answered": 1.0},
        "gnomon_cookie_key_id": {"": 3.0},
    }
    assert "cookie keys" not in summarize(roughtime_only)
    both = {**roughtime_only, "gnomon_ntp_requests_total": {"answered": 1.0}}
    assert "cookie keys: key 3" in summarize(both)


# --- gnomon serve, supervised, long-term key offline ----------------------------------------------


def serve_toml(tmp_path: Path, delegations: Path) -> Path:
    path = tmp_path / "gnomon.toml"
    path.write_text(
        "[server]\n"
        'role = "roughtime"\n'
        f'listen = ["{LOOPBACK}"]\n'
        "[roughtime]\n"
        "port = 0\n"
        f'delegations = "{delegations}"\n'
        "local_clock_radius = 5\n"
        "max_wait = 0.001\n"
    )
    return path


def test_serve_with_offline_delegations(tmp_path: Path) -> None:
    now = int(time.time())
    delegations = tmp_path / "online.json"
    write_online_keys(delegations, PUBLIC, make_online_keys(LONG_TERM, now - 600, 2, 3600, 600))
    server = ServerProcess(serve_toml(tmp_path, delegations), tmp_path / "ready.json")
    try:
        assert server.info["roughtime_public_key"] == base64.b64encode(PUBLIC).decode()
        sent = fresh()
        packet = ask(int(server.info["roughtime_port"]), sent)
        assert packet is not None
        reply = verify_response(sent, packet, PUBLIC)
        assert reply.mint == now - 600 and reply.radius == 5
    finally:
        assert server.stop() == 0


def test_keygen_and_delegate_commands_make_files_the_server_serves(tmp_path: Path) -> None:
    """The operator's path: keygen, delegate (where the long-term key lives), then a
    server that only has the delegations."""
    key = tmp_path / "long-term.key"
    delegations = tmp_path / "online.json"

    def gnomon(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gnomon", "roughtime", *args],
            capture_output=True,
            text=True,
            timeout=WAIT * 4,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    printed = gnomon("keygen", "--out", str(key))
    public = read_long_term_key(key).public_key().public_bytes_raw()
    assert base64.b64encode(public).decode() in printed
    gnomon("delegate", "--key", str(key), "--out", str(delegations), "--days", "1", "--count", "2")
    assert delegations.stat().st_mode & 0o777 == 0o600
    server = ServerProcess(serve_toml(tmp_path, delegations), tmp_path / "ready.json")
    try:
        sent = build_request(os.urandom(32), (VERSION_1, DRAFT_12), server_key=public)
        packet = ask(int(server.info["roughtime_port"]), sent)
        assert packet is not None
        assert verify_response(sent, packet, public).version == VERSION_1
    finally:
        assert server.stop() == 0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_dead_roughtime_worker_is_restarted(tmp_path: Path) -> None:
    now = int(time.time())
    delegations = tmp_path / "online.json"
    write_online_keys(delegations, PUBLIC, make_online_keys(LONG_TERM, now - 600, 1, 7200, 0))
    server = ServerProcess(serve_toml(tmp_path, delegations), tmp_path / "ready.json")
    try:
        port = int(server.info["roughtime_port"])
        pids = dict(server.info["pids"])
        assert ask(port, fresh()) is not None
        victim = int(pids["roughtime-0"])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + WAIT * 4
        while alive(victim):  # its socket is closed once it is gone (or a zombie)
            assert time.monotonic() < deadline
            time.sleep(0.02)
        answered = False
        while not answered and time.monotonic() < deadline:
            sent = fresh()
            packet = ask(port, sent, timeout=0.5)
            answered = packet is not None and verify_response(sent, packet, PUBLIC).radius == 5
        assert answered, "no answer after the worker was killed"
    finally:
        assert server.stop() == 0


def test_serve_refuses_to_start_without_a_covering_delegation(tmp_path: Path) -> None:
    now = int(time.time())
    delegations = tmp_path / "online.json"
    write_online_keys(delegations, PUBLIC, make_online_keys(LONG_TERM, now - 7200, 1, 3600, 0))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gnomon",
            "serve",
            "--config",
            str(serve_toml(tmp_path, delegations)),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no delegation covers now" in lines[0], result.stderr


def test_serve_refuses_a_key_file_open_to_others(tmp_path: Path, key_file: Path) -> None:
    key_file.chmod(0o644)
    config = tmp_path / "gnomon.toml"
    config.write_text(
        f'[server]\nrole = "roughtime"\nlisten = ["{LOOPBACK}"]\n'
        f'[roughtime]\nport = 0\nlong_term_key = "{key_file}"\n'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gnomon",
            "serve",
            "--config",
            str(config),
            "--log-level",
            "WARNING",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "chmod 600" in lines[0], result.stderr
    check = subprocess.run(
        [sys.executable, "-m", "gnomon", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
    )
    assert check.returncode == 2 and "chmod 600" in check.stderr
