"""The m6t addressing plan ("MN's CoA on the tunnel interface") and RFC 4193 prefixes.

    +---------------------+---------+---------+-------------------+
    |    /48 ULA prefix   | 16 bits | 16 bits |      48 bits      |
    |                     |subnet ID|  MN ID  |    random value   |
    +---------------------+---------+---------+-------------------+

The client is configured with the /80; it appends 48 fresh random bits every time it changes
its point of attachment, so a new IPv4 network always means a new address and a new gateway
state ("Against the MN").
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Collection
from dataclasses import dataclass

from m6t.protocol.constants import (
    MN_ID_BITS,
    NTP_UNIX_OFFSET,
    RANDOM_SUFFIX_BITS,
    SUBNET_ID_BITS,
    TUNNEL_PREFIX_LENGTH,
    ULA_FIRST_BYTE,
    ULA_GLOBAL_ID_BITS,
    ULA_PREFIX_LENGTH,
)

_SUFFIX_MASK = (1 << RANDOM_SUFFIX_BITS) - 1
_SUBNET_MASK = (1 << SUBNET_ID_BITS) - 1
_MN_ID_MASK = (1 << MN_ID_BITS) - 1
_ULA_NETWORK = ipaddress.IPv6Network("fc00::/7")


class AddressingError(ValueError):
    """A prefix, ID or address that the m6t addressing plan cannot accept."""


def ntp_timestamp(unix_time: float) -> int:
    """The 64-bit NTP format RFC 4193 hashes: 32 bits of seconds (era-wrapped), 32 of fraction.
    The caller reads the clock; this only converts."""
    seconds = int(unix_time)
    fraction = min(int((unix_time - seconds) * 2**32), 2**32 - 1)
    return ((seconds + NTP_UNIX_OFFSET) % 2**32) << 32 | fraction


def eui64_from_mac(mac: bytes) -> bytes:
    """RFC 4291 appendix A (which RFC 4193 points to): insert FFFE, flip the U/L bit."""
    if len(mac) != 6:
        raise AddressingError("a MAC address is 6 bytes")
    return bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]


def rfc4193_global_id(ntp_timestamp: int, eui64: bytes) -> int:
    """RFC 4193 section 3.2.2: SHA-1 of the 64-bit NTP time and an EUI-64, keep the least
    significant 40 bits. The caller supplies both (the core reads no clock and no interface)."""
    if not 0 <= ntp_timestamp < 1 << 64:
        raise AddressingError("NTP timestamp must fit in 64 bits")
    if len(eui64) != 8:
        raise AddressingError("EUI-64 must be 8 bytes")
    digest = hashlib.sha1(ntp_timestamp.to_bytes(8, "big") + eui64).digest()
    return int.from_bytes(digest[-5:], "big")


def ula_prefix(global_id: int) -> ipaddress.IPv6Network:
    """fd00::/8 + 40-bit global ID = the /48 (RFC 4193 section 3.1, L = 1)."""
    if not 0 <= global_id < 1 << ULA_GLOBAL_ID_BITS:
        raise AddressingError("global ID must fit in 40 bits")
    value = (ULA_FIRST_BYTE << ULA_GLOBAL_ID_BITS | global_id) << (128 - ULA_PREFIX_LENGTH)
    return ipaddress.IPv6Network((value, ULA_PREFIX_LENGTH))


def generate_site_prefix(unix_time: float, mac: bytes | None) -> ipaddress.IPv6Network:
    """A fresh RFC 4193 /48 (section 3.2.2): SHA-1 of the NTP time and the EUI-64 of `mac`,
    or of 64 random bits where the machine has no MAC address (RFC 4193 allows any suitably
    unique identifier). The one generator: the CLI and the desktop app both call it."""
    eui64 = eui64_from_mac(mac) if mac is not None else secrets.token_bytes(8)
    return ula_prefix(rfc4193_global_id(ntp_timestamp(unix_time), eui64))


def _check_unicast(network: ipaddress.IPv6Network, what: str) -> None:
    first = network.network_address
    if first.is_multicast or first.is_link_local or first.is_loopback or first.is_unspecified:
        raise AddressingError(f"{what} {network} is not a routable unicast prefix")


def parse_network(text: str, what: str = "prefix") -> ipaddress.IPv6Network:
    try:
        network = ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        raise AddressingError(f"{what} {text!r}: {exc}") from None
    _check_unicast(network, what)
    return network


@dataclass(frozen=True, slots=True)
class TunnelPrefix:
    """A client's /80. Any unicast prefix works ("the addressing scheme based on ULA ... is only
    indicative"); `is_ula` tells whether it follows RFC 4193."""

    network: ipaddress.IPv6Network

    def __post_init__(self) -> None:
        if self.network.prefixlen != TUNNEL_PREFIX_LENGTH:
            raise AddressingError(
                f"tunnel prefix {self.network} must be a /{TUNNEL_PREFIX_LENGTH} "
                f"(/48 + 16-bit subnet ID + 16-bit MN ID)")
        _check_unicast(self.network, "tunnel prefix")

    @classmethod
    def parse(cls, text: str) -> TunnelPrefix:
        return cls(parse_network(text, "tunnel prefix"))

    @classmethod
    def compose(cls, site: ipaddress.IPv6Network, subnet_id: int, mn_id: int) -> TunnelPrefix:
        if site.prefixlen != ULA_PREFIX_LENGTH:
            raise AddressingError(f"site prefix {site} must be a /{ULA_PREFIX_LENGTH}")
        if not 0 <= subnet_id <= _SUBNET_MASK:
            raise AddressingError(f"subnet ID {subnet_id} must be 0..{_SUBNET_MASK}")
        if not 0 <= mn_id <= _MN_ID_MASK:
            raise AddressingError(f"MN ID {mn_id} must be 0..{_MN_ID_MASK}")
        value = int(site.network_address) | (subnet_id << MN_ID_BITS | mn_id) << RANDOM_SUFFIX_BITS
        return cls(ipaddress.IPv6Network((value, TUNNEL_PREFIX_LENGTH)))

    @property
    def site(self) -> ipaddress.IPv6Network:
        return self.network.supernet(new_prefix=ULA_PREFIX_LENGTH)

    @property
    def subnet_id(self) -> int:
        return int(self.network.network_address) >> (RANDOM_SUFFIX_BITS + MN_ID_BITS) & _SUBNET_MASK

    @property
    def mn_id(self) -> int:
        return int(self.network.network_address) >> RANDOM_SUFFIX_BITS & _MN_ID_MASK

    @property
    def is_ula(self) -> bool:
        return self.network.subnet_of(_ULA_NETWORK)

    def address(self, suffix: int) -> ipaddress.IPv6Address:
        if not 0 <= suffix <= _SUFFIX_MASK:
            raise AddressingError(f"suffix {suffix:#x} must fit in {RANDOM_SUFFIX_BITS} bits")
        return ipaddress.IPv6Address(int(self.network.network_address) | suffix)

    def suffix_of(self, address: ipaddress.IPv6Address) -> int:
        if address not in self.network:
            raise AddressingError(f"{address} is not in {self.network}")
        return int(address) & _SUFFIX_MASK

    def __str__(self) -> str:
        return str(self.network)


def new_random_suffix(taken: Collection[int] = ()) -> int:
    """48 fresh random bits from `secrets`, never one already used by another tunnel on the
    same /80 ("Multiple tunnel interfaces on a MN": "some local synchronization is required to
    prevent the simultaneous use of identical 48 bits random values"). All-zeros and all-ones
    are skipped: they look like anycast or placeholders to humans and some stacks."""
    while True:
        suffix = secrets.randbits(RANDOM_SUFFIX_BITS)
        if suffix not in (0, _SUFFIX_MASK) and suffix not in taken:
            return suffix
