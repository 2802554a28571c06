"""The value classes on a query's import path are plain classes (gnomon._frozen), not
dataclasses; they keep what frozen dataclasses gave them."""

from __future__ import annotations

import copy
import pickle

import pytest
from cryptography.hazmat.primitives.ciphers import aead as public_aead

from gnomon._frozen import FrozenInstanceError
from gnomon.client.session import Result
from gnomon.proto.nts import aead
from gnomon.proto.nts.ke import Record
from gnomon.proto.nts.ntp import ExtensionField, NtpHeader, NtpPacket


def _result(**changes: object) -> Result:
    fields: dict[str, object] = {
        "server": "h:4460", "address": "127.0.0.1", "port": 123, "offset": 0.5,
        "delay": 0.01, "stratum": 2, "leap": 0, "reference_id": "1.2.3.4",
        "root_delay": 0.0, "root_dispersion": 0.0, "precision": -20, "aead": 30,
        "cookies_left": 8, "key_exchange": True, "server_time": 1.0,
    }  # fmt: skip
    return Result(**{**fields, **changes})  # type: ignore[arg-type]


def test_equality_hash_and_repr_are_field_wise() -> None:
    assert _result() == _result() and hash(_result()) == hash(_result())
    assert _result() != _result(offset=0.25)
    assert Record(1, b"x") != (1, b"x", False)  # not a tuple
    assert repr(Record(1, b"x")) == "Record(type=1, body=b'x', critical=False)"
    assert _result().as_dict()["aead_name"] == "AEAD_AES_128_GCM_SIV"
    assert list(_result().as_dict())[:3] == ["server", "address", "port"]


def test_fields_cannot_be_assigned_or_deleted() -> None:
    header = NtpHeader(stratum=1)
    with pytest.raises(FrozenInstanceError):
        header.stratum = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del header.stratum  # type: ignore[misc]
    with pytest.raises(AttributeError):
        header.other = 1  # type: ignore[attr-defined]
    assert header.stratum == 1


def test_pickle_copy_and_match() -> None:
    packet = NtpPacket(NtpHeader(transmit_ts=5), (ExtensionField(0x104, b"c" * 16),), None, (48,))
    assert pickle.loads(pickle.dumps(packet)) == packet
    assert copy.deepcopy(packet).offsets == (48,)
    assert NtpPacket(packet.header, packet.extensions) == packet  # offsets are not compared
    assert aead.ALGORITHMS[30].required_nonce_space == 12
    assert pickle.loads(pickle.dumps(aead.ALGORITHMS[15])) == aead.ALGORITHMS[15]
    match Record(5, b"k"):
        case Record(5, body):
            assert body == b"k"
        case _:
            pytest.fail("no match")


def test_aead_classes_are_cryptographys_public_ones() -> None:
    assert aead.AESGCMSIV is public_aead.AESGCMSIV and aead.AESSIV is public_aead.AESSIV
