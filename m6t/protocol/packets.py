"""IPv6 packets as the tunnel sees them: header checks, keepalives, ICMPv6 echo and Packet Too Big.

The tunnel carries IPv6 packets unchanged: every upper layer (UDP, TCP, ICMPv6, ESP, fragment
headers) passes untouched, so MIPv6, IKE and IPsec run on top without knowing about m6t. Only
the fixed 40-byte header is read; addresses are 16-byte `bytes` (the form a dict lookup wants).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from m6t.protocol.constants import (
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_PACKET_TOO_BIG,
    IPV6_HEADER_LENGTH,
    IPV6_MINIMUM_MTU,
    IPV6_VERSION,
    KEEPALIVE_ADDRESS,
    NEXT_HEADER_ICMPV6,
    NEXT_HEADER_NONE,
)
from m6t.protocol.drops import DropReason

_HEADER = struct.Struct("!IHBB16s16s")
_ICMP_ECHO = struct.Struct("!BBHHH")
_ICMP_PTB = struct.Struct("!BBHI")
DEFAULT_HOP_LIMIT = 64


def check_ipv6(packet: bytes) -> DropReason | None:
    """Why this datagram is not a well-formed IPv6 packet, or None if it is.

    Payload length must match the datagram exactly: a jumbogram (payload length 0) never fits
    in a UDP datagram, and trailing bytes would mean a sender we should not trust.
    """
    size = len(packet)
    if size < IPV6_HEADER_LENGTH:
        return DropReason.SHORT_PACKET
    if packet[0] >> 4 != IPV6_VERSION:
        return DropReason.BAD_VERSION
    if (packet[4] << 8 | packet[5]) + IPV6_HEADER_LENGTH != size:
        return DropReason.BAD_LENGTH
    return None


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """The fixed IPv6 header (RFC 8200 section 3), for tests, tools and probes."""

    payload_length: int
    next_header: int
    hop_limit: int
    source: bytes
    destination: bytes
    traffic_class: int = 0
    flow_label: int = 0

    def pack(self) -> bytes:
        first = IPV6_VERSION << 28 | self.traffic_class << 20 | self.flow_label
        return _HEADER.pack(
            first, self.payload_length, self.next_header, self.hop_limit,
            self.source, self.destination,
        )

    @classmethod
    def unpack(cls, packet: bytes) -> IPv6Header:
        """Parse a packet that `check_ipv6` accepted; raises ValueError on anything else."""
        reason = check_ipv6(packet)
        if reason is not None:
            raise ValueError(f"not an IPv6 packet: {reason}")
        first, length, next_header, hop_limit, src, dst = _HEADER.unpack_from(packet)
        return cls(length, next_header, hop_limit, src, dst, first >> 20 & 0xFF, first & 0xFFFFF)


def build_ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes,
               hop_limit: int = DEFAULT_HOP_LIMIT) -> bytes:
    return IPv6Header(len(payload), next_header, hop_limit, src, dst).pack() + payload


# --- Keepalives ("Maintaining NAT states") ---

def build_keepalive(tunnel_address: bytes) -> bytes:
    """"an empty IPv6 packet (Next Header in IPv6 header set to 59) ... The IPv6 source address
    of the packet is set to the tunnel interface address and the destination address is set to
    fe80::1." (Maintaining NAT states)"""
    return build_ipv6(tunnel_address, KEEPALIVE_ADDRESS, NEXT_HEADER_NONE, b"", hop_limit=255)


def is_keepalive(packet: bytes) -> bool:
    """A keepalive, sent by the client, is recognised by its destination fe80::1 and no upper
    layer. Call only on packets that `check_ipv6` accepted."""
    return packet[6] == NEXT_HEADER_NONE and packet[24:40] == KEEPALIVE_ADDRESS


def is_keepalive_reply(packet: bytes) -> bool:
    """The gateway "replies with a similar message but with the addresses reversed"."""
    return packet[6] == NEXT_HEADER_NONE and packet[8:24] == KEEPALIVE_ADDRESS


def build_keepalive_reply(keepalive: bytes) -> bytes:
    return build_ipv6(KEEPALIVE_ADDRESS, keepalive[8:24], NEXT_HEADER_NONE, b"", hop_limit=255)


# --- ICMPv6 (RFC 4443) ---

def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum, folded and inverted."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """Checksum over the RFC 8200 section 8.1 pseudo-header and the ICMPv6 message."""
    pseudo = src + dst + struct.pack("!I3xB", len(message), NEXT_HEADER_ICMPV6)
    return internet_checksum(pseudo + message)


def _icmpv6(src: bytes, dst: bytes, unsummed: bytes) -> bytes:
    """Wrap an ICMPv6 message whose checksum field is zero, filling in the checksum."""
    checksum = icmpv6_checksum(src, dst, unsummed)
    message = unsummed[:2] + checksum.to_bytes(2, "big") + unsummed[4:]
    return build_ipv6(src, dst, NEXT_HEADER_ICMPV6, message)


@dataclass(frozen=True, slots=True)
class Echo:
    """An ICMPv6 echo request or reply (RFC 4443 section 4)."""

    source: bytes
    destination: bytes
    is_request: bool
    identifier: int
    sequence: int
    data: bytes


def build_echo(src: bytes, dst: bytes, identifier: int, sequence: int, data: bytes = b"",
               *, request: bool = True) -> bytes:
    kind = ICMPV6_ECHO_REQUEST if request else ICMPV6_ECHO_REPLY
    return _icmpv6(src, dst, _ICMP_ECHO.pack(kind, 0, 0, identifier, sequence) + data)


def parse_echo(packet: bytes) -> Echo | None:
    """The echo carried by this packet, or None if it is not a valid ICMPv6 echo.

    Only a packet whose next header is ICMPv6 directly is considered (a probe never carries
    extension headers), and the checksum must be right.
    """
    if check_ipv6(packet) is not None or packet[6] != NEXT_HEADER_ICMPV6:
        return None
    message = packet[IPV6_HEADER_LENGTH:]
    if len(message) < _ICMP_ECHO.size:
        return None
    kind, code, _, identifier, sequence = _ICMP_ECHO.unpack_from(message)
    if kind not in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) or code != 0:
        return None
    src, dst = packet[8:24], packet[24:40]
    if icmpv6_checksum(src, dst, message) != 0:
        return None
    return Echo(src, dst, kind == ICMPV6_ECHO_REQUEST, identifier, sequence,
                message[_ICMP_ECHO.size:])


def echo_reply_for(request: bytes) -> bytes | None:
    """The reply a host owes to this echo request (used by fakes and the lab's scripted HA)."""
    echo = parse_echo(request)
    if echo is None or not echo.is_request:
        return None
    return build_echo(echo.destination, echo.source, echo.identifier, echo.sequence, echo.data,
                      request=False)


@dataclass(frozen=True, slots=True)
class PacketTooBig:
    """An ICMPv6 Packet Too Big (RFC 4443 section 3.2)."""

    source: bytes
    destination: bytes
    mtu: int
    invoking_packet: bytes


def build_packet_too_big(src: bytes, mtu: int, invoking_packet: bytes) -> bytes:
    """A Packet Too Big back to the invoking packet's source, carrying "as much of invoking
    packet as possible without the ICMPv6 packet exceeding the minimum IPv6 MTU"."""
    dst = invoking_packet[8:24]
    room = IPV6_MINIMUM_MTU - IPV6_HEADER_LENGTH - _ICMP_PTB.size
    body = _ICMP_PTB.pack(ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + invoking_packet[:room]
    return _icmpv6(src, dst, body)


def parse_packet_too_big(packet: bytes) -> PacketTooBig | None:
    if check_ipv6(packet) is not None or packet[6] != NEXT_HEADER_ICMPV6:
        return None
    message = packet[IPV6_HEADER_LENGTH:]
    if len(message) < _ICMP_PTB.size:
        return None
    kind, code, _, mtu = _ICMP_PTB.unpack_from(message)
    if kind != ICMPV6_PACKET_TOO_BIG or code != 0:
        return None
    if icmpv6_checksum(packet[8:24], packet[24:40], message) != 0:
        return None
    return PacketTooBig(packet[8:24], packet[24:40], mtu, message[_ICMP_PTB.size:])
