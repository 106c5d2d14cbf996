"""The addressing plan: RFC 4193 prefixes and the /48 + 16 + 16 + 48 tunnel address layout."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from m6t.protocol import addressing
from m6t.protocol.addressing import (
    AddressingError,
    TunnelPrefix,
    new_random_suffix,
    parse_network,
    rfc4193_global_id,
    ula_prefix,
)
from tests.unit.helpers import ScriptedRandbits

ALL_ONES_48 = (1 << 48) - 1
EUI64 = bytes.fromhex("0211 22ff fe33 4455".replace(" ", ""))


def expected_global_id(ntp_timestamp: int, eui64: bytes) -> int:
    """RFC 4193 section 3.2.2, steps 1-5, written from the RFC: SHA-1 over the 64-bit NTP
    timestamp concatenated with the EUI-64, keep the least significant 40 bits."""
    key = ntp_timestamp.to_bytes(8, "big") + eui64
    return int(hashlib.sha1(key).hexdigest(), 16) & (2**40 - 1)


@pytest.mark.parametrize(
    ("ntp_timestamp", "eui64"),
    [
        (0, bytes(8)),
        (0xE9A1_2B3C_4D5E_6F70, EUI64),  # an NTP time in 2024, seconds.fraction
        (2**64 - 1, b"\xff" * 8),
        (0x0123_4567_89AB_CDEF, bytes(range(8))),
    ],
)
def test_rfc4193_global_id_is_the_low_40_bits_of_sha1(ntp_timestamp: int, eui64: bytes) -> None:
    global_id = rfc4193_global_id(ntp_timestamp, eui64)
    assert global_id == expected_global_id(ntp_timestamp, eui64)
    assert 0 <= global_id < 2**40


def test_rfc4193_global_id_depends_on_both_inputs() -> None:
    base = rfc4193_global_id(1, EUI64)
    assert rfc4193_global_id(2, EUI64) != base
    assert rfc4193_global_id(1, EUI64[:-1] + b"\x56") != base


@pytest.mark.parametrize(
    ("ntp_timestamp", "eui64"),
    [(-1, EUI64), (2**64, EUI64), (0, EUI64[:7]), (0, EUI64 + b"\x00"), (0, b"")],
    ids=["negative_time", "time_over_64_bits", "eui64_7_bytes", "eui64_9_bytes", "eui64_empty"],
)
def test_rfc4193_global_id_rejects(ntp_timestamp: int, eui64: bytes) -> None:
    with pytest.raises(AddressingError):
        rfc4193_global_id(ntp_timestamp, eui64)


@pytest.mark.parametrize(
    ("global_id", "prefix"),
    [
        (0x01_0203_0405, "fd01:203:405::/48"),
        (0, "fd00::/48"),
        (2**40 - 1, "fdff:ffff:ffff::/48"),
    ],
)
def test_ula_prefix(global_id: int, prefix: str) -> None:
    network = ula_prefix(global_id)
    assert network == ipaddress.IPv6Network(prefix)
    assert network.subnet_of(ipaddress.IPv6Network("fd00::/8"))  # RFC 4193: fc00::/7, L = 1


def test_ula_prefix_of_a_generated_global_id() -> None:
    global_id = expected_global_id(0xE9A1_2B3C_4D5E_6F70, EUI64)
    network = ula_prefix(rfc4193_global_id(0xE9A1_2B3C_4D5E_6F70, EUI64))
    assert int(network.network_address) >> 80 == 0xFD << 40 | global_id
    assert network.prefixlen == 48


@pytest.mark.parametrize("global_id", [-1, 2**40])
def test_ula_prefix_rejects_ids_outside_40_bits(global_id: int) -> None:
    with pytest.raises(AddressingError):
        ula_prefix(global_id)


# --- TunnelPrefix -----------------------------------------------------------------------------


def test_tunnel_prefix_parse_splits_the_fields() -> None:
    prefix = TunnelPrefix.parse("fd01:203:405:a:b::/80")
    assert prefix.site == ipaddress.IPv6Network("fd01:203:405::/48")
    assert prefix.subnet_id == 0xA
    assert prefix.mn_id == 0xB
    assert prefix.is_ula
    assert str(prefix) == "fd01:203:405:a:b::/80"


def test_tunnel_prefix_compose_is_the_inverse_of_the_fields() -> None:
    site = ipaddress.IPv6Network("fd01:203:405::/48")
    prefix = TunnelPrefix.compose(site, subnet_id=0xFFFF, mn_id=0x1234)
    assert prefix == TunnelPrefix.parse("fd01:203:405:ffff:1234::/80")
    assert (prefix.site, prefix.subnet_id, prefix.mn_id) == (site, 0xFFFF, 0x1234)
    assert TunnelPrefix.compose(site, 0, 0).network == ipaddress.IPv6Network(
        "fd01:203:405::/80")


def test_tunnel_prefix_address_and_suffix_of() -> None:
    prefix = TunnelPrefix.parse("fd01:203:405:a:b::/80")
    address = prefix.address(0x1234_5678_9ABC)
    assert address == ipaddress.IPv6Address("fd01:203:405:a:b:1234:5678:9abc")
    assert prefix.suffix_of(address) == 0x1234_5678_9ABC
    assert prefix.address(ALL_ONES_48) == ipaddress.IPv6Address(
        "fd01:203:405:a:b:ffff:ffff:ffff")
    assert prefix.suffix_of(prefix.address(1)) == 1


def test_a_non_ula_prefix_is_allowed_but_known_as_such() -> None:
    # "the addressing scheme based on ULA provided above is only indicative"
    prefix = TunnelPrefix.parse("2001:db8:1:2:3::/80")
    assert not prefix.is_ula
    assert (prefix.subnet_id, prefix.mn_id) == (2, 3)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("fd01:203:405:a::/64", id="wrong_length_64"),
        pytest.param("fd01:203:405:a:b:c::/96", id="wrong_length_96"),
        pytest.param("fd01:203:405:a:b::1/80", id="host_bits_set"),
        pytest.param("ff02::/80", id="multicast"),
        pytest.param("fe80::/80", id="link_local"),
        pytest.param("::/80", id="unspecified"),
        pytest.param("fd01:203:405:a:b::", id="no_length_means_128"),
        pytest.param("not an address", id="garbage"),
        pytest.param("192.0.2.0/24", id="ipv4"),
    ],
)
def test_tunnel_prefix_parse_rejects(text: str) -> None:
    with pytest.raises(AddressingError):
        TunnelPrefix.parse(text)


def test_addressing_error_is_a_value_error_and_names_the_prefix() -> None:
    with pytest.raises(ValueError, match=r"fd01:203:405:a::/64.*/80"):
        TunnelPrefix(ipaddress.IPv6Network("fd01:203:405:a::/64"))


@pytest.mark.parametrize(
    ("site", "subnet_id", "mn_id"),
    [
        pytest.param("fd01:203:405::/56", 0, 0, id="site_not_48"),
        pytest.param("fd01:203::/32", 0, 0, id="site_32"),
        pytest.param("fd01:203:405::/48", 0x10000, 0, id="subnet_17_bits"),
        pytest.param("fd01:203:405::/48", -1, 0, id="subnet_negative"),
        pytest.param("fd01:203:405::/48", 0, 0x10000, id="mn_id_17_bits"),
        pytest.param("fd01:203:405::/48", 0, -1, id="mn_id_negative"),
        pytest.param("ff0e:203:405::/48", 0, 0, id="multicast_site"),
        pytest.param("fe80::/48", 0, 0, id="link_local_site"),
    ],
)
def test_tunnel_prefix_compose_rejects(site: str, subnet_id: int, mn_id: int) -> None:
    with pytest.raises(AddressingError):
        TunnelPrefix.compose(ipaddress.IPv6Network(site), subnet_id, mn_id)


@pytest.mark.parametrize("suffix", [-1, 2**48])
def test_tunnel_prefix_address_rejects_suffixes_outside_48_bits(suffix: int) -> None:
    with pytest.raises(AddressingError):
        TunnelPrefix.parse("fd01:203:405:a:b::/80").address(suffix)


def test_suffix_of_rejects_an_address_of_another_prefix() -> None:
    prefix = TunnelPrefix.parse("fd01:203:405:a:b::/80")
    other_mn = TunnelPrefix.parse("fd01:203:405:a:c::/80").address(5)
    with pytest.raises(AddressingError):
        prefix.suffix_of(other_mn)


def test_parse_network_names_what_it_parses() -> None:
    assert parse_network("fd6d:6d74:1::/48") == ipaddress.IPv6Network("fd6d:6d74:1::/48")
    with pytest.raises(AddressingError, match=r"^client_prefix"):
        parse_network("fd6d:6d74:1::1/48", "client_prefix")
    with pytest.raises(AddressingError, match=r"^client_prefix"):
        parse_network("ff02::/16", "client_prefix")


# --- new_random_suffix ------------------------------------------------------------------------


def test_new_random_suffix_is_48_bits_never_0_or_all_ones_and_varies() -> None:
    suffixes = [new_random_suffix() for _ in range(2000)]
    assert all(0 < suffix < ALL_ONES_48 for suffix in suffixes)
    assert len(set(suffixes)) > 1990  # 48 random bits: collisions are essentially impossible
    assert max(suffixes) >= 2**44  # the high bits are used too


def test_new_random_suffix_avoids_taken_values() -> None:
    taken: set[int] = set()
    for _ in range(500):
        suffix = new_random_suffix(taken)
        assert suffix not in taken
        taken.add(suffix)
    assert len(taken) == 500


def test_new_random_suffix_retries_until_free(monkeypatch: pytest.MonkeyPatch) -> None:
    randbits = ScriptedRandbits([0, ALL_ONES_48, 0x111, 0x222, 0x333, 0x444])
    monkeypatch.setattr(addressing.secrets, "randbits", randbits)
    assert new_random_suffix(taken={0x111, 0x222, 0x333}) == 0x444
    assert randbits.requested_bits == [48] * 6


def test_new_random_suffix_accepts_the_first_free_value(monkeypatch: pytest.MonkeyPatch) -> None:
    randbits = ScriptedRandbits([0x222, 0x111])
    monkeypatch.setattr(addressing.secrets, "randbits", randbits)
    assert new_random_suffix(taken=frozenset({0x111})) == 0x222
    assert randbits.requested_bits == [48]
