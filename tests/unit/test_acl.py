"""Allow and deny lists of networks (gnomon.proto.acl)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.proto.acl import Acl, address_value


def test_empty_lists_permit_everyone() -> None:
    acl = Acl()
    assert acl.unrestricted
    for host in ("0.0.0.0", "192.0.2.1", "255.255.255.255", "::", "2001:db8::1", "ffff::1"):
        assert acl.permits(host)


def test_allow_list_only() -> None:
    acl = Acl(allow=["192.0.2.0/24", "2001:db8:1::/48", "198.51.100.7"])
    assert not acl.unrestricted
    assert acl.permits("192.0.2.0")
    assert acl.permits("192.0.2.255")
    assert not acl.permits("192.0.3.0")
    assert not acl.permits("192.0.1.255")
    assert acl.permits("198.51.100.7")
    assert not acl.permits("198.51.100.8")
    assert acl.permits("2001:db8:1:ffff::1")
    assert not acl.permits("2001:db8:2::1")
    assert not acl.permits("::1")


def test_deny_list_only() -> None:
    acl = Acl(deny=["10.0.0.0/8", "2001:db8::/32"])
    assert not acl.unrestricted
    assert not acl.permits("10.255.0.1")
    assert acl.permits("11.0.0.0")
    assert acl.permits("9.255.255.255")
    assert not acl.permits("2001:db8:ffff::1")
    assert acl.permits("2001:db9::1")
    assert acl.permits("::1")


def test_deny_wins_over_allow() -> None:
    acl = Acl(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert acl.permits("10.0.255.255")
    assert not acl.permits("10.1.0.0")
    assert not acl.permits("10.1.255.255")
    assert acl.permits("10.2.0.0")
    assert not acl.permits("11.0.0.0")  # not on the allow list
    # a narrower allow inside a deny does not punch a hole in it
    acl = Acl(allow=["10.1.0.0/16", "10.2.0.0/16"], deny=["10.0.0.0/8"])
    assert not acl.permits("10.1.2.3")
    assert not acl.permits("10.2.2.3")
    # the same network on both lists is denied
    assert not Acl(allow=["2001:db8::/32"], deny=["2001:db8::/32"]).permits("2001:db8::1")


def test_overlapping_and_adjacent_entries() -> None:
    acl = Acl(
        allow=["10.0.0.0/9", "10.128.0.0/9", "10.0.0.0/16", "10.0.0.5"],
        deny=["10.0.0.4/30", "10.0.0.6/31", "10.255.255.255"],
    )
    assert acl.permits("10.0.0.3")
    assert not acl.permits("10.0.0.4")
    assert not acl.permits("10.0.0.5")  # explicitly allowed, but inside a deny
    assert not acl.permits("10.0.0.7")
    assert acl.permits("10.0.0.8")
    assert acl.permits("10.127.255.255")
    assert acl.permits("10.128.0.0")
    assert acl.permits("10.255.255.254")
    assert not acl.permits("10.255.255.255")
    assert not acl.permits("11.0.0.0")


def test_ipv6_entries() -> None:
    acl = Acl(allow=["2001:db8::/32", "fe80::/10"], deny=["2001:db8:bad::/48", "2001:db8::1/128"])
    assert acl.permits("2001:db8::2")
    assert not acl.permits("2001:db8::1")
    assert not acl.permits("2001:db8:bad:1::1")
    assert acl.permits("2001:db8:bae::1")
    assert acl.permits("fe80::1%eth0")  # the zone is not part of the address
    assert not acl.permits("192.0.2.1")  # IPv4 is not on the allow list


def test_ipv4_mapped_clients_are_judged_as_ipv4() -> None:
    acl = Acl(allow=["192.0.2.0/24"], deny=["192.0.2.128/25"])
    assert acl.permits("::ffff:192.0.2.1")
    assert not acl.permits("::ffff:192.0.2.200")
    assert not acl.permits("::ffff:198.51.100.1")


def test_ipv4_mapped_entries_mean_ipv4() -> None:
    acl = Acl(deny=["::ffff:10.0.0.0/104"])  # = 10.0.0.0/8
    assert not acl.permits("10.1.2.3")
    assert not acl.permits("::ffff:10.1.2.3")
    assert acl.permits("11.1.2.3")
    assert acl.permits("::a01:203")  # IPv4-compatible, not mapped: native IPv6


def test_ipv6_wide_entries_do_not_cover_ipv4() -> None:
    acl = Acl(deny=["::/0"])
    assert not acl.permits("2001:db8::1")
    assert acl.permits("192.0.2.1")
    assert acl.permits("::ffff:192.0.2.1")
    only_v4 = Acl(allow=["0.0.0.0/0"])
    assert only_v4.permits("203.0.113.9")
    assert not only_v4.permits("2001:db8::1")


def test_everything_denied() -> None:
    acl = Acl(deny=["0.0.0.0/0", "::/0"])
    assert not acl.unrestricted
    assert not acl.permits("192.0.2.1")
    assert not acl.permits("::1")


def test_allow_all_explicitly_is_unrestricted() -> None:
    assert Acl(allow=["0.0.0.0/0", "::/0"]).unrestricted
    assert Acl(allow=["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]).unrestricted  # adjacent
    assert not Acl(allow=["0.0.0.0/0"]).unrestricted


@pytest.mark.parametrize("host", ["", "localhost", "300.1.1.1", "1.2.3", "::g", "1.2.3.4/32"])
def test_non_addresses_are_refused(host: str) -> None:
    assert not Acl().permits(host)
    assert not Acl(deny=["10.0.0.0/8"]).permits(host)


@pytest.mark.parametrize(
    ("allow", "deny", "bad"),
    [
        (["10.0.0.0/8", "bogus"], [], "'bogus'"),
        (["10.0.0.1/8"], [], "'10.0.0.1/8'"),  # host bits set: a likely typo
        ([], ["10.0.0.0/33"], "'10.0.0.0/33'"),
        ([], ["2001:db8::/129"], "'2001:db8::/129'"),
        ([], ["2001:db8::1/64"], "'2001:db8::1/64'"),
        ([], [""], "''"),
        ([42], [], "42"),
    ],
)
def test_bad_entries_raise_value_error_naming_them(
    allow: list[object], deny: list[object], bad: str
) -> None:
    with pytest.raises(ValueError) as info:
        Acl(allow=allow, deny=deny)  # type: ignore[arg-type]
    message = str(info.value)
    assert bad in message
    assert ("allow" if allow else "deny") in message
    assert "\n" not in message


def test_a_single_string_is_not_a_list() -> None:
    with pytest.raises(ValueError, match="lists"):
        Acl(allow="10.0.0.0/8")


def test_entries_may_be_ipaddress_objects_and_padded_strings() -> None:
    acl = Acl(
        allow=[ipaddress.ip_network("192.0.2.0/24"), " 2001:db8::/32 "],
        deny=[ipaddress.ip_network("192.0.2.0/25")],
    )
    assert acl.permits("192.0.2.200")
    assert not acl.permits("192.0.2.1")
    assert acl.permits("2001:db8::1")
    assert "192.0.2.0/24" in repr(acl)


def test_cache_is_bounded_and_stays_correct() -> None:
    acl = Acl(allow=["10.0.0.0/9"], cache_size=16)
    for rounds in range(2):
        for i in range(5000):
            host = str(ipaddress.IPv4Address(0x0A000000 + i * 4099))
            assert acl.permits(host) == (i * 4099 < 1 << 23), (rounds, host)
            assert len(acl._cache) <= 16


def test_address_value() -> None:
    assert address_value("0.0.0.1") == 1
    assert address_value("::ffff:0.0.0.1") == 1
    assert address_value("::1") == (1 << 128) + 1
    assert address_value("fe80::1%eth0") == address_value("fe80::1")
    with pytest.raises(ValueError):
        address_value("example.org")


# -- against a reference built on ipaddress ---------------------------------

_v4_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0x0A000000, 0x0A00FFFF),
    st.integers(12, 32),
)
_v6_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + (1 << 80)),
    st.integers(40, 128),
)
_nets = st.lists(st.one_of(_v4_nets, _v6_nets), max_size=6)
_hosts = st.one_of(
    st.integers(0x09FFFFF0, 0x0A010010).map(lambda a: str(ipaddress.IPv4Address(a))),
    st.integers(0x09FFFFF0, 0x0A010010).map(lambda a: f"::ffff:{ipaddress.IPv4Address(a)}"),
    st.integers((0x20010DB8 << 96) - 16, (0x20010DB8 << 96) + (1 << 81)).map(
        lambda a: str(ipaddress.IPv6Address(a))
    ),
)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def reference(allow: list[Network], deny: list[Network], host: str) -> bool:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in deny):
        return False
    return not allow or any(address in network for network in allow)


@settings(max_examples=400, deadline=None)
@given(_nets, _nets, st.lists(_hosts, min_size=1, max_size=20))
def test_matches_the_reference(allow: list[Network], deny: list[Network], hosts: list[str]) -> None:
    acl = Acl(allow=[str(n) for n in allow], deny=[str(n) for n in deny])
    for host in hosts:
        assert acl.permits(host) == reference(allow, deny, host), host
        assert acl.permits(host) == reference(allow, deny, host), host  # cached
