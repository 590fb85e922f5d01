"""The machine's facts that need no root: addresses as text and packed."""

import ipaddress

from hypothesis import given, strategies as st

from ncsniffer import host


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_pack_address_packs_as_ipaddress_does(address):
    assert host.pack_address(str(address)) == address.packed


@given(st.ip_addresses(v=4))
def test_a_dotted_quad_resolves_to_itself_without_dns(address):
    assert host.resolve_all(str(address)) == [str(address)]


def test_dotted_numbers_follow_inet_aton_and_v6_texts_are_normalised():
    assert host.resolve_all("10.1") == ["10.0.0.1"]
    assert host.resolve_all("1.2.3.4.5") == []
    assert host.resolve_all("2001:DB8::0:1%eth0") == ["2001:db8::1"]
    assert host.resolve_all("2001:db8::zz") == []
    assert host.pack_address(host.resolve_address("::ffff:192.0.2.1")) == \
        ipaddress.ip_address("::ffff:192.0.2.1").packed
