"""Cookies survive a restart when the master keys live in a key file (``[keys] path``)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gnomon.certs import DemoPki
from gnomon.client.ke import KeResult, ke_exchange
from gnomon.client.ntp import fresh_request
from gnomon.errors import NtsNakError
from gnomon.proto.nts.client import Association
from gnomon.tls import TrustStore

from .helpers import LOOPBACK, ServerProcess, toml_config, udp_ask


def _ntp(association: Association, port: int) -> str:
    """'ok' (authenticated answer), 'nak', or 'none'."""
    packet, pending = fresh_request(association)
    reply = udp_ask(port, packet)
    if reply is None:
        return "none"
    try:
        association.process_response(reply, pending, sent_ns=0, received_ns=0)
    except NtsNakError:
        return "nak"
    return "ok"


def _association(ke: KeResult) -> Association:
    return Association(ke.response.aead, ke.c2s, ke.s2c, ke.response.cookies)


@pytest.mark.parametrize("workers", [0, 1], ids=["single-process", "supervised"])
def test_cookies_valid_across_restart(pki: DemoPki, tmp_path: Path, workers: int) -> None:
    key_file = tmp_path / "state" / "keys.json"
    config = tmp_path / "gnomon.toml"
    config.write_text(
        toml_config(pki, key_path=key_file).replace("[tls]", f"workers = {workers}\n[tls]")
    )
    ready = tmp_path / "ready.json"

    first = ServerProcess(config, ready)
    try:
        ke = ke_exchange(LOOPBACK, first.ke_port, trust=TrustStore.from_file(pki.ca_cert))
        assert ke.ntp_port == first.ntp_port
        association = _association(ke)
        assert _ntp(association, first.ntp_port) == "ok"
    finally:
        assert first.stop() == 0  # SIGTERM: a clean exit

    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    document = json.loads(key_file.read_text())
    assert document["keys"]

    second = ServerProcess(config, ready)
    try:
        # cookies the first process minted (and the keys that go with them) still work
        assert _ntp(association, second.ntp_port) == "ok"
        fresh = _association(ke)  # the very first cookies too, not only renewed ones
        assert _ntp(fresh, second.ntp_port) == "ok"
    finally:
        assert second.stop() == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # control: a server with other keys cannot use these cookies
    other = tmp_path / "other.toml"
    other.write_text(
        toml_config(pki, key_path=tmp_path / "other-keys.json").replace(
            "[tls]", f"workers = {workers}\n[tls]"
        )
    )
    third = ServerProcess(other, ready)
    try:
        assert _ntp(_association(ke), third.ntp_port) == "nak"
    finally:
        third.stop()
