"""Workers drop root once their ports are bound; key files stay private and are refused
when others could read or replace them."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

import gnomon
from gnomon.certs import DemoPki, make_demo_pki
from gnomon.client.ke import KeResult, ke_exchange
from gnomon.client.ntp import Timing, ntp_exchange
from gnomon.errors import ConfigError, GnomonError
from gnomon.proto.nts.client import Association
from gnomon.server.keys import FileKeyStore
from gnomon.server.secretfiles import read_fleet_secret
from gnomon.server.status import fetch_metrics
from gnomon.tls import TrustStore
from tests.fleet.hosts import FleetHost
from tests.peers.proc import START_TIMEOUT, free_port, wait_until

from .helpers import ServerProcess


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _config(tmp_path: Path, pki: DemoPki, keys: Path) -> Path:
    config = tmp_path / "gnomon.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1"]
ntp_port = 0
ke_port = 0
user = "nobody"
[tls]
certificate = "{pki.cert_chain}"
key = "{pki.key}"
[keys]
path = "{keys}"
[time]
local_stratum = 10
"""
    )
    return config


def test_workers_run_as_the_configured_user(tmp_path: Path, pki: DemoPki) -> None:
    assert os.geteuid() == 0, "this test checks dropping root, so it runs as root"
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    tmp_path.chmod(0o755)
    server = ServerProcess(_config(tmp_path, pki, state / "keys.json"), tmp_path / "ready.json")
    try:
        info = server.info
        assert {_uid_of(pid) for pid in info["pids"].values()} == {nobody.pw_uid}
        result = gnomon.Session(ca_file=pki.ca_cert).query("127.0.0.1", info["ke_port"])
        assert result.authenticated
        keys = state / "keys.json"
        assert keys.stat().st_mode & 0o777 == 0o600
    finally:
        assert server.stop() == 0


def test_key_folder_not_owned_by_the_user_is_refused(tmp_path: Path, pki: DemoPki) -> None:
    state = tmp_path / "state"
    state.mkdir()  # owned by root, not by nobody
    config = _config(tmp_path, pki, state / "k.json")
    done = subprocess.run(
        [sys.executable, "-m", "gnomon", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"gnomon: {state} (keys.path) must belong to server.user 'nobody'"
    ]


# --- key files others could read or replace are refused (issue 11, item 3) ----------


def _key_file(folder: Path) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "keys.json"
    FileKeyStore(path).fetch(1, [1, 2])  # a valid file, mode 0600
    return path


def _check_config(tmp_path: Path, pki: DemoPki, keys: Path) -> list[str]:
    config = _config(tmp_path, pki, keys)
    config.write_text(config.read_text().replace('user = "nobody"\n', ""))
    done = subprocess.run(
        [sys.executable, "-m", "gnomon", "check-config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    return done.stderr.strip().splitlines()


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606, 0o660, 0o640])
def test_key_file_open_to_others_is_refused(tmp_path: Path, pki: DemoPki, mode: int) -> None:
    keys = _key_file(tmp_path / "state")
    keys.chmod(mode)
    expected = f"key file {keys} is open to other users (mode {mode:04o}); chmod 600 {keys}"
    with pytest.raises(ConfigError) as caught:
        FileKeyStore(keys)
    assert str(caught.value) == expected
    assert _check_config(tmp_path, pki, keys) == [f"gnomon: {expected}"]


def test_key_file_of_another_user_is_refused(tmp_path: Path, pki: DemoPki) -> None:
    assert os.geteuid() == 0, "chown needs root"
    keys = _key_file(tmp_path / "state")
    os.chown(keys, pwd.getpwnam("nobody").pw_uid, -1)
    expected = f"key file {keys} belongs to nobody, not root (chown root {keys})"
    with pytest.raises(ConfigError) as caught:
        FileKeyStore(keys)
    assert str(caught.value) == expected
    assert _check_config(tmp_path, pki, keys) == [f"gnomon: {expected}"]


def test_key_file_of_root_is_refused_for_workers_that_drop_root(tmp_path: Path) -> None:
    """Workers running as server.user could not rotate keys in a file root owns."""
    keys = _key_file(tmp_path / "state")
    with pytest.raises(ConfigError, match=rf"^key file {keys} belongs to root, not nobody"):
        FileKeyStore(keys, user="nobody")


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703])
def test_key_file_in_a_folder_everyone_writes_is_refused(
    tmp_path: Path, pki: DemoPki, mode: int
) -> None:
    folder = tmp_path / "shared"
    keys = _key_file(folder)
    folder.chmod(mode)
    expected = (
        f"key file {keys} is in {folder}, which every user can write "
        f"(mode {mode:04o}); chmod o-w {folder}"
    )
    with pytest.raises(ConfigError) as caught:
        FileKeyStore(keys)
    assert str(caught.value) == expected
    assert _check_config(tmp_path, pki, keys) == [f"gnomon: {expected}"]
    (folder / "keys.json").unlink()
    with pytest.raises(ConfigError, match="every user can write"):
        FileKeyStore(keys)  # before the file exists too: anyone could plant one


def test_key_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    os.mkfifo(keys, 0o600)
    with pytest.raises(ConfigError, match=rf"^key file {keys} is not a regular file$"):
        FileKeyStore(keys)


def test_serve_refuses_an_open_key_file_in_one_line(tmp_path: Path, pki: DemoPki) -> None:
    keys = _key_file(tmp_path / "state")
    keys.chmod(0o644)
    config = _config(tmp_path, pki, keys)
    config.write_text(config.read_text().replace('user = "nobody"\n', ""))
    done = subprocess.run(
        [sys.executable, "-m", "gnomon", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"gnomon: key file {keys} is open to other users (mode 0644); chmod 600 {keys}"
    ]


# --- the fleet secret is the file's bytes, all of them (issue 11, items 3 and 4) ------


@pytest.mark.parametrize("last", [b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\x00"])
def test_fleet_secret_ending_in_whitespace_is_read_whole(tmp_path: Path, last: bytes) -> None:
    path = tmp_path / "fleet.key"
    secret = os.urandom(31) + last  # what `head -c 32 /dev/urandom` gives now and then
    path.write_bytes(secret)
    path.chmod(0o600)
    assert read_fleet_secret(path) == secret
    path.write_bytes(b" \n" + secret + b"\n\n")
    assert read_fleet_secret(path) == b" \n" + secret + b"\n\n"  # no byte dropped either end


def test_fleet_secret_checks(tmp_path: Path) -> None:
    path = tmp_path / "fleet.key"
    path.write_bytes(os.urandom(31))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"holds 31 bytes; it needs at least 32"):
        read_fleet_secret(path)
    path.write_bytes(os.urandom(32))
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"is open to other users \(mode 0640\)"):
        read_fleet_secret(path)
    path.chmod(0o600)
    tmp_path.chmod(0o777)
    try:
        with pytest.raises(ConfigError, match=r"which every user can write"):
            read_fleet_secret(path)
    finally:
        tmp_path.chmod(0o700)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match=r"is not a regular file$"):
        read_fleet_secret(fifo)  # and does not block
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(ConfigError, match=r"belongs to nobody, not root"):
        read_fleet_secret(path)
    assert len(read_fleet_secret(path, user="nobody")) == 32  # the user the server runs as


# --- a privilege drop that survives rotations, metrics and renewals (issue 11, item 1) --

PERIOD = 10  # the shortest rotation period: the test sees two rotations


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path sits in a folder only root can
    enter, so an unprivileged worker could not reach its files)."""
    path = Path(tempfile.mkdtemp(prefix="gnomon-drop-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _install_root_only(source: DemoPki, cert: Path, key: Path) -> None:
    """Replace the files atomically, the key readable by root only (certbot's way)."""
    for src, dst, mode in ((source.cert_chain, cert, 0o644), (source.key, key, 0o600)):
        temporary = dst.with_name(dst.name + ".new")
        shutil.copyfile(src, temporary)
        os.chown(temporary, 0, 0)
        temporary.chmod(mode)
        os.replace(temporary, dst)


def _ke(ca: Path, port: int) -> KeResult:
    return ke_exchange("127.0.0.1", port, trust=TrustStore.from_file(ca), timeout=5.0)


def _nts_ok(ke: KeResult, port: int, cookie: int = 0) -> bool:
    association = Association(
        ke.response.aead, ke.c2s, ke.s2c, ke.response.cookies[cookie : cookie + 1]
    )
    sample, _ = ntp_exchange(association, "127.0.0.1", port, Timing(timeout=3.0))
    return sample.stratum == 10


def _next_period() -> None:
    """Wait for the next rotation (and the worker's once-a-second look at its ring)."""
    time.sleep(PERIOD - time.time() % PERIOD + 1.5)


def test_privilege_drop_survives_rotations_metrics_and_renewal(open_dir: Path) -> None:
    assert os.geteuid() == 0, "this test checks dropping root, so it runs as root"
    nobody = pwd.getpwnam("nobody")
    first, renewed = make_demo_pki(open_dir / "pki1"), make_demo_pki(open_dir / "pki2")
    tls = open_dir / "tls"
    tls.mkdir(mode=0o755)
    cert, key = tls / "fullchain.pem", tls / "privkey.pem"
    _install_root_only(first, cert, key)
    state = open_dir / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    keys = state / "keys.json"
    lock = state / "keys.json.lock"
    lock.touch(mode=0o600)  # left by an older gnomon that made it as root
    metrics_port = free_port("127.0.0.1", udp=False)
    config = open_dir / "gnomon.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1"]
ntp_port = 0
ke_port = 0
workers = 1
user = "nobody"
[tls]
certificate = "{cert}"
key = "{key}"
[keys]
path = "{keys}"
rotation_period = {PERIOD}
keep_old = 2
[time]
local_stratum = 10
[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
    )
    host = FleetHost("drop", config, open_dir)
    try:
        ke_port, ntp_port = host.info["ke_port"], host.info["ntp_port"]
        workers = [pid for name, pid in host.info["pids"].items()]
        assert {_uid_of(pid) for pid in workers} == {nobody.pw_uid}
        exchanges = [_ke(first.ca_cert, ke_port)]
        assert _nts_ok(exchanges[0], ntp_port)
        for _ in range(2):  # two rotations: keys created and the file rewritten by nobody
            _next_period()
            exchanges.append(_ke(first.ca_cert, ke_port))
            assert exchanges[-1].response.cookies[0][:4] != exchanges[-2].response.cookies[0][:4]
            for n, ke in enumerate(exchanges):
                assert _nts_ok(ke, ntp_port, cookie=1 + n), f"cookie of exchange {n}"
        for path in (keys, lock):
            info = path.stat()
            assert (info.st_uid, info.st_mode & 0o777) == (nobody.pw_uid, 0o600), path

        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def counted() -> bool:
            values = fetch_metrics(url)
            ke_ok = values.get("gnomon_ke_connections_total", {}).get("ok", 0)
            nts = values.get("gnomon_ntp_requests_total", {}).get("nts", 0)
            return ke_ok == 3 and nts == 6

        assert wait_until(counted, START_TIMEOUT, interval=0.25), fetch_metrics(url)
        values = fetch_metrics(url)
        assert values["gnomon_key_store_reachable"][""] == 1
        assert values["gnomon_cookie_key_id"][""] == int.from_bytes(
            exchanges[-1].response.cookies[0][:4], "big"
        )

        # A renewal whose key only root may read reaches the unprivileged KE worker.
        _install_root_only(renewed, cert, key)

        def renewal_served() -> bool:
            try:
                return _nts_ok(_ke(renewed.ca_cert, ke_port), ntp_port)
            except GnomonError:
                return False

        assert wait_until(renewal_served, START_TIMEOUT, interval=0.25)
        with pytest.raises(GnomonError):
            _ke(first.ca_cert, ke_port)  # the old certificate is gone
        expiry = fetch_metrics(url)["gnomon_certificate_expiry_timestamp_seconds"][""]
        assert expiry == _not_after(renewed.cert_chain)
        assert host.process.poll() is None
    finally:
        host.stop()
    log = (open_dir / "drop.log").read_text()
    assert "certificate reloaded" in log
    for bad in ("Permission denied", "Traceback", "ERROR", "key store failing"):
        assert bad not in log, log[-4000:]


def _not_after(chain: Path) -> float:
    return x509.load_pem_x509_certificates(chain.read_bytes())[0].not_valid_after_utc.timestamp()


def test_files_root_writes_for_the_user_are_the_users(tmp_path: Path) -> None:
    """The supervisor, still root, creates the key file and its lock for the workers that
    will rotate keys in them once they dropped root; a lock an older gnomon left root's
    becomes the user's."""
    assert os.geteuid() == 0, "chown needs root"
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    keys, lock = state / "keys.json", state / "keys.json.lock"
    FileKeyStore(keys, user="nobody")
    assert not lock.exists()  # check-config and start-up write nothing yet
    FileKeyStore(keys, user="nobody").fetch(5, [4, 5, 6])
    for path in (keys, lock):
        info = path.stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (
            nobody.pw_uid,
            nobody.pw_gid,
            0o600,
        ), path
    os.chown(lock, 0, 0)
    FileKeyStore(keys, user="nobody")
    assert lock.stat().st_uid == nobody.pw_uid
