"""One parser for server forms: library, aquery_many and CLI accept the same text."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gnomon
from gnomon.cli import DEFAULT_AEADS_HELP
from gnomon.client.session import Session, parse_server, server_address
from gnomon.errors import GnomonError
from gnomon.hostport import join_host_port, split_host_port
from gnomon.proto.nts.client import DEFAULT_AEADS


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("::1", 4460, "[::1]:4460"),
        ("127.0.0.1", 123, "127.0.0.1:123"),
        ("a.example", 1, "a.example:1"),
    ],
)
def test_join_host_port_brackets_ipv6(host: str, port: int, text: str) -> None:
    assert join_host_port(host, port) == text
    assert parse_server(text) == (host, port)


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
    ),
    port=st.integers(1, 65535),
)
def test_join_then_parse_round_trips(host: str, port: int) -> None:
    assert parse_server(join_host_port(host, port)) == (host, port)
    assert parse_server(host, default_port=port) == (host, port)


def test_split_host_port_says_when_no_port_was_written() -> None:
    assert split_host_port("h", None) == ("h", None)
    assert split_host_port("[::1]", None) == ("::1", None)
    assert split_host_port("::1", None) == ("::1", None)
    assert split_host_port("h:7", None) == ("h", 7)


@pytest.mark.parametrize("spec", ["[localhost]:1", "[::1]:", "h:", " h", "h :1"])
def test_sloppy_forms_are_refused_with_the_text(spec: str) -> None:
    with pytest.raises(GnomonError, match="bad server"):
        parse_server(spec)


@pytest.mark.parametrize(
    ("server", "port", "expected"),
    [
        ("localhost:24460", None, ("localhost", 24460)),
        ("localhost", 24460, ("localhost", 24460)),
        ("localhost", None, ("localhost", 4460)),
        ("[::1]:24460", None, ("::1", 24460)),
        ("[::1]", 24460, ("::1", 24460)),
        ("::1", 24460, ("::1", 24460)),
        ("192.0.2.7", None, ("192.0.2.7", 4460)),
    ],
)
def test_server_address_takes_every_form(
    server: str, port: int | None, expected: tuple[str, int]
) -> None:
    assert server_address(server, port) == expected


@pytest.mark.parametrize(("server", "port"), [("h:1", 2), ("[::1]:1", 1), ("h", 0), ("h", 65536)])
def test_server_address_refuses_two_ports_or_a_bad_one(server: str, port: int) -> None:
    with pytest.raises(GnomonError):
        server_address(server, port)


def test_query_functions_share_the_signature() -> None:
    """gnomon.query("host:port") and gnomon.query(host, port): port optional everywhere."""
    for function in (gnomon.query, gnomon.aquery, Session.query, Session.aquery):
        assert inspect.signature(function).parameters["port"].default is None


def test_session_keys_servers_by_one_spelling() -> None:
    session = Session()
    assert session.cookies_for("[::1]:4460") == session.cookies_for("::1") == 0
    session.forget("localhost:24460")  # no state file: nothing to write, no error


def test_cli_help_states_the_real_default_aeads() -> None:
    assert ",".join(str(a) for a in DEFAULT_AEADS) == DEFAULT_AEADS_HELP
