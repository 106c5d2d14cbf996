"""Wire format of the packets the tunnel looks at: one table of hand-written vectors, both ways.

Each vector is the exact bytes on the wire (written out by hand, field by field) and the
structure they stand for. Every vector is checked in both directions: building the structure
gives exactly those bytes, and parsing those bytes gives exactly that structure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from m6t.protocol.constants import (
    IPV6_MINIMUM_MTU,
    KEEPALIVE_ADDRESS,
    NEXT_HEADER_ICMPV6,
    NEXT_HEADER_NONE,
)
from m6t.protocol.drops import DropReason
from m6t.protocol.packets import (
    Echo,
    IPv6Header,
    PacketTooBig,
    build_echo,
    build_ipv6,
    build_keepalive,
    build_keepalive_reply,
    build_packet_too_big,
    check_ipv6,
    echo_reply_for,
    icmpv6_checksum,
    internet_checksum,
    is_keepalive,
    is_keepalive_reply,
    parse_echo,
    parse_packet_too_big,
)


def hexbytes(text: str) -> bytes:
    """Hex with any whitespace and '|' field separators, so vectors can be laid out by field."""
    return bytes.fromhex("".join(text.replace("|", " ").split()))


# Addresses, written out in full as they appear on the wire.
CLIENT = hexbytes("fd6d 6d74 0001 0000 | 0001 a1b2 c3d4 e5f6")  # fd6d:6d74:1:0:1:a1b2:c3d4:e5f6
HOME_AGENT = hexbytes("fd48 4100 0000 0000 | 0000 0000 0000 0002")  # fd48:4100::2
ICMP_SOURCE = hexbytes("fd6d 6d74 0001 0000 | 0000 0000 0000 0001")  # fd6d:6d74:1::1
FE80_1 = hexbytes("fe80 0000 0000 0000 | 0000 0000 0000 0001")

#                      ver/tc/flow | payload len | next hdr | hop limit
HEADER_VECTOR = hexbytes("6ab12345 | 0004 | 11 | 40") + CLIENT + HOME_AGENT + hexbytes("deadbeef")
KEEPALIVE_VECTOR = hexbytes("60000000 | 0000 | 3b | ff") + CLIENT + FE80_1
KEEPALIVE_REPLY_VECTOR = hexbytes("60000000 | 0000 | 3b | ff") + FE80_1 + CLIENT
#                         type | code | checksum | identifier | sequence | data "m6t!"
ECHO_REQUEST_MESSAGE = hexbytes("80 | 00 | 977e | 1234 | 0001 | 6d367421")
ECHO_REPLY_MESSAGE = hexbytes("81 | 00 | 967e | 1234 | 0001 | 6d367421")
ECHO_REQUEST_VECTOR = (hexbytes("60000000 | 000c | 3a | 40") + CLIENT + HOME_AGENT
                       + ECHO_REQUEST_MESSAGE)
ECHO_REPLY_VECTOR = (hexbytes("60000000 | 000c | 3a | 40") + HOME_AGENT + CLIENT
                     + ECHO_REPLY_MESSAGE)
# The gateway tells the home agent that its echo reply (52 bytes) did not fit a 1400-byte MTU:
#                          type | code | checksum | MTU 1400 | the whole invoking packet
PACKET_TOO_BIG_MESSAGE = hexbytes("02 | 00 | b4db | 00000578") + ECHO_REPLY_VECTOR
PACKET_TOO_BIG_VECTOR = (hexbytes("60000000 | 003c | 3a | 40") + ICMP_SOURCE + HOME_AGENT
                         + PACKET_TOO_BIG_MESSAGE)


def keepalive_view(packet: bytes) -> tuple[IPv6Header, bool, bool]:
    return IPv6Header.unpack(packet), is_keepalive(packet), is_keepalive_reply(packet)


@dataclass(frozen=True)
class WireVector:
    name: str
    wire: bytes
    structure: object
    build: Callable[[], bytes]
    parse: Callable[[bytes], object]


WIRE_VECTORS = [
    WireVector(
        "ipv6_header",
        HEADER_VECTOR,
        IPv6Header(payload_length=4, next_header=17, hop_limit=64, source=CLIENT,
                   destination=HOME_AGENT, traffic_class=0xAB, flow_label=0x12345),
        lambda: IPv6Header(4, 17, 64, CLIENT, HOME_AGENT, 0xAB, 0x12345).pack()
        + hexbytes("deadbeef"),
        IPv6Header.unpack,
    ),
    WireVector(
        "keepalive",
        KEEPALIVE_VECTOR,
        (IPv6Header(0, NEXT_HEADER_NONE, 255, CLIENT, FE80_1), True, False),
        lambda: build_keepalive(CLIENT),
        keepalive_view,
    ),
    WireVector(
        "keepalive_reply",
        KEEPALIVE_REPLY_VECTOR,
        (IPv6Header(0, NEXT_HEADER_NONE, 255, FE80_1, CLIENT), False, True),
        lambda: build_keepalive_reply(KEEPALIVE_VECTOR),
        keepalive_view,
    ),
    WireVector(
        "echo_request",
        ECHO_REQUEST_VECTOR,
        Echo(CLIENT, HOME_AGENT, is_request=True, identifier=0x1234, sequence=1, data=b"m6t!"),
        lambda: build_echo(CLIENT, HOME_AGENT, 0x1234, 1, b"m6t!"),
        parse_echo,
    ),
    WireVector(
        "echo_reply",
        ECHO_REPLY_VECTOR,
        Echo(HOME_AGENT, CLIENT, is_request=False, identifier=0x1234, sequence=1, data=b"m6t!"),
        lambda: build_echo(HOME_AGENT, CLIENT, 0x1234, 1, b"m6t!", request=False),
        parse_echo,
    ),
    WireVector(
        "packet_too_big",
        PACKET_TOO_BIG_VECTOR,
        PacketTooBig(ICMP_SOURCE, HOME_AGENT, 1400, ECHO_REPLY_VECTOR),
        lambda: build_packet_too_big(ICMP_SOURCE, 1400, ECHO_REPLY_VECTOR),
        parse_packet_too_big,
    ),
]


@pytest.mark.parametrize("vector", WIRE_VECTORS, ids=lambda vector: vector.name)
def test_build_gives_the_exact_wire_bytes(vector: WireVector) -> None:
    assert vector.build().hex() == vector.wire.hex()


@pytest.mark.parametrize("vector", WIRE_VECTORS, ids=lambda vector: vector.name)
def test_parse_of_the_wire_bytes_gives_the_structure(vector: WireVector) -> None:
    assert check_ipv6(vector.wire) is None
    assert vector.parse(vector.wire) == vector.structure


# --- checksums, verified without the code under test -----------------------------------------


def reference_icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """A second, deliberately naive RFC 1071 / RFC 8200 section 8.1 implementation: word by
    word with an end-around carry after every addition."""
    pseudo = src + dst + len(message).to_bytes(4, "big") + bytes(3) + bytes([NEXT_HEADER_ICMPV6])
    data = pseudo + message + (b"\x00" if len(message) % 2 else b"")
    total = 0
    for index in range(0, len(data), 2):
        total += data[index] << 8 | data[index + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def zero_checksum(message: bytes) -> bytes:
    return message[:2] + b"\x00\x00" + message[4:]


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        (CLIENT, HOME_AGENT, ECHO_REQUEST_MESSAGE),
        (HOME_AGENT, CLIENT, ECHO_REPLY_MESSAGE),
        (ICMP_SOURCE, HOME_AGENT, PACKET_TOO_BIG_MESSAGE),
    ],
    ids=["echo_request", "echo_reply", "packet_too_big"],
)
def test_checksums_in_the_vectors_agree_with_a_reference_implementation(
        src: bytes, dst: bytes, message: bytes) -> None:
    written = int.from_bytes(message[2:4], "big")
    assert reference_icmpv6_checksum(src, dst, zero_checksum(message)) == written
    assert icmpv6_checksum(src, dst, zero_checksum(message)) == written
    # A message carrying its right checksum sums to zero: that is what the parsers check.
    assert icmpv6_checksum(src, dst, message) == 0


def test_echo_request_checksum_by_hand() -> None:
    words = [
        0xFD6D, 0x6D74, 0x0001, 0x0000, 0x0001, 0xA1B2, 0xC3D4, 0xE5F6,  # source
        0xFD48, 0x4100, 0x0000, 0x0000, 0x0000, 0x0000, 0x0000, 0x0002,  # destination
        0x0000, 0x000C, 0x0000, 0x003A,  # upper-layer length 12, zeros, next header 58
        0x8000, 0x0000, 0x1234, 0x0001, 0x6D36, 0x7421,  # type/code, checksum 0, id, seq, data
    ]
    total = sum(words)
    assert total == 0x6687B
    folded = (total & 0xFFFF) + (total >> 16)  # 0x687B + 0x6 = 0x6881
    assert ~folded & 0xFFFF == 0x977E == int.from_bytes(ECHO_REQUEST_MESSAGE[2:4], "big")
    # The reply differs only in its type byte (0x80 -> 0x81: the sum grows by 0x0100, and
    # swapping source and destination does not change it): its checksum is 0x0100 less.
    assert int.from_bytes(ECHO_REPLY_MESSAGE[2:4], "big") == 0x977E - 0x0100


def test_internet_checksum_matches_the_rfc_1071_example() -> None:
    # RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2 (one's complement), checksum 220d.
    assert internet_checksum(hexbytes("0001 f203 f4f5 f6f7")) == 0x220D


def test_internet_checksum_pads_odd_lengths_with_a_zero_byte() -> None:
    assert internet_checksum(b"\x12\x34\x56") == internet_checksum(b"\x12\x34\x56\x00")
    assert internet_checksum(b"\x12\x34\x56") == ~(0x1234 + 0x5600) & 0xFFFF


# --- keepalives -------------------------------------------------------------------------------


def test_keepalive_reply_reverses_the_addresses_of_the_keepalive() -> None:
    keepalive = IPv6Header.unpack(build_keepalive(CLIENT))
    reply = IPv6Header.unpack(build_keepalive_reply(build_keepalive(CLIENT)))
    assert (reply.source, reply.destination) == (keepalive.destination, keepalive.source)
    assert keepalive.destination == KEEPALIVE_ADDRESS
    assert reply.next_header == keepalive.next_header == NEXT_HEADER_NONE
    assert reply.payload_length == keepalive.payload_length == 0


def test_keepalive_needs_both_fe80_1_and_next_header_59() -> None:
    assert not is_keepalive(build_ipv6(CLIENT, FE80_1, NEXT_HEADER_ICMPV6, b""))
    assert not is_keepalive(build_ipv6(CLIENT, HOME_AGENT, NEXT_HEADER_NONE, b""))
    assert not is_keepalive(KEEPALIVE_REPLY_VECTOR)
    assert not is_keepalive_reply(KEEPALIVE_VECTOR)
    assert not is_keepalive_reply(build_ipv6(FE80_1, CLIENT, NEXT_HEADER_ICMPV6, b""))


# --- ICMPv6 echo ------------------------------------------------------------------------------


def test_echo_reply_for_a_request_is_the_reply_vector() -> None:
    assert echo_reply_for(ECHO_REQUEST_VECTOR) == ECHO_REPLY_VECTOR
    assert echo_reply_for(ECHO_REPLY_VECTOR) is None  # a reply is not answered
    assert echo_reply_for(KEEPALIVE_VECTOR) is None


def corrupt(packet: bytes, offset: int, value: int) -> bytes:
    return packet[:offset] + bytes([value]) + packet[offset + 1:]


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(corrupt(ECHO_REQUEST_VECTOR, 42, 0x98), id="wrong_checksum"),
        pytest.param(corrupt(ECHO_REQUEST_VECTOR, 50, ord("M")), id="data_changed"),
        pytest.param(corrupt(ECHO_REQUEST_VECTOR, 8, 0xFC), id="source_changed"),
        pytest.param(corrupt(ECHO_REQUEST_VECTOR, 41, 1), id="nonzero_code"),
        pytest.param(corrupt(ECHO_REQUEST_VECTOR, 40, 1), id="not_an_echo_type"),
        pytest.param(corrupt(ECHO_REQUEST_VECTOR, 6, 17), id="next_header_not_icmpv6"),
        pytest.param(ECHO_REQUEST_VECTOR[:-1], id="bad_ipv6_length"),
        pytest.param(build_ipv6(CLIENT, HOME_AGENT, NEXT_HEADER_ICMPV6,
                                ECHO_REQUEST_MESSAGE[:7]), id="message_shorter_than_8"),
        pytest.param(PACKET_TOO_BIG_VECTOR, id="packet_too_big"),
    ],
)
def test_parse_echo_rejects(packet: bytes) -> None:
    assert parse_echo(packet) is None


# --- Packet Too Big ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("invoking_length", "quoted_length"),
    [
        (52, 52),
        (1232, 1232),  # 40 + 8 + 1232 = 1280 exactly: still whole
        (1233, 1232),
        (1500, 1232),
        (9000, 1232),
    ],
)
def test_packet_too_big_never_exceeds_the_ipv6_minimum_mtu(
        invoking_length: int, quoted_length: int) -> None:
    invoking = build_ipv6(HOME_AGENT, CLIENT, 50, bytes(range(256)) * 40)[:invoking_length]
    packet = build_packet_too_big(ICMP_SOURCE, 1400, invoking)
    assert len(packet) == 40 + 8 + quoted_length <= IPV6_MINIMUM_MTU
    assert check_ipv6(packet) is None
    assert parse_packet_too_big(packet) == PacketTooBig(
        ICMP_SOURCE, HOME_AGENT, 1400, invoking[:quoted_length])


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(corrupt(PACKET_TOO_BIG_VECTOR, 47, 0x79), id="mtu_changed"),
        pytest.param(corrupt(PACKET_TOO_BIG_VECTOR, 41, 1), id="nonzero_code"),
        pytest.param(corrupt(PACKET_TOO_BIG_VECTOR, 40, 1), id="destination_unreachable"),
        pytest.param(corrupt(PACKET_TOO_BIG_VECTOR, 6, 59), id="next_header_not_icmpv6"),
        pytest.param(build_ipv6(ICMP_SOURCE, HOME_AGENT, NEXT_HEADER_ICMPV6,
                                PACKET_TOO_BIG_MESSAGE[:7]), id="message_shorter_than_8"),
        pytest.param(PACKET_TOO_BIG_VECTOR + b"\x00", id="trailing_byte"),
        pytest.param(ECHO_REPLY_VECTOR, id="echo_reply"),
    ],
)
def test_parse_packet_too_big_rejects(packet: bytes) -> None:
    assert parse_packet_too_big(packet) is None


# --- check_ipv6 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        pytest.param(b"", DropReason.SHORT_PACKET, id="empty"),
        pytest.param(KEEPALIVE_VECTOR[:39], DropReason.SHORT_PACKET, id="39_bytes"),
        pytest.param(hexbytes("45000028") + bytes(36), DropReason.BAD_VERSION, id="ipv4"),
        pytest.param(corrupt(KEEPALIVE_VECTOR, 0, 0x00), DropReason.BAD_VERSION, id="version_0"),
        pytest.param(corrupt(KEEPALIVE_VECTOR, 0, 0x70), DropReason.BAD_VERSION, id="version_7"),
        pytest.param(KEEPALIVE_VECTOR + b"\x00", DropReason.BAD_LENGTH, id="trailing_byte"),
        pytest.param(HEADER_VECTOR[:-1], DropReason.BAD_LENGTH, id="payload_truncated"),
        pytest.param(corrupt(KEEPALIVE_VECTOR, 4, 0x01), DropReason.BAD_LENGTH,
                     id="payload_length_256_but_empty"),
        pytest.param(corrupt(HEADER_VECTOR, 5, 0x00), DropReason.BAD_LENGTH,
                     id="jumbogram_payload_length_0"),
        pytest.param(KEEPALIVE_VECTOR, None, id="keepalive"),
        pytest.param(HEADER_VECTOR, None, id="udp"),
        pytest.param(ECHO_REQUEST_VECTOR, None, id="echo"),
    ],
)
def test_check_ipv6(packet: bytes, reason: DropReason | None) -> None:
    assert check_ipv6(packet) == reason


@pytest.mark.parametrize("packet", [b"", b"\x60" * 39, hexbytes("45000028") + bytes(36),
                                    KEEPALIVE_VECTOR + b"\x00"])
def test_unpack_raises_value_error_for_what_check_ipv6_rejects(packet: bytes) -> None:
    with pytest.raises(ValueError, match=str(check_ipv6(packet))):
        IPv6Header.unpack(packet)


UPPER_LAYERS = {
    "hop_by_hop": 0,
    "tcp": 6,
    "udp": 17,
    "routing_header": 43,
    "fragment_header": 44,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "mobility_header": 135,
}


@pytest.mark.parametrize("next_header", UPPER_LAYERS.values(), ids=UPPER_LAYERS.keys())
def test_any_upper_layer_passes_check_ipv6_untouched(next_header: int) -> None:
    # Not parseable as anything the tunnel knows: the tunnel must not care.
    payload = bytes([next_header]) + bytes(range(1, 48))
    packet = build_ipv6(CLIENT, HOME_AGENT, next_header, payload)
    copy = bytes(packet)
    assert check_ipv6(packet) is None
    assert packet == copy
    header = IPv6Header.unpack(packet)
    assert (header.next_header, header.payload_length) == (next_header, len(payload))
    assert packet[40:] == payload
    assert not is_keepalive(packet)
