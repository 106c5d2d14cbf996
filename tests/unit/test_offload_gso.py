"""The pure offload logic (m6t.protocol.gso): virtio-net headers, checksums, the segmenter and
the coalescer, including the property that coalescing then segmenting gives back the packets.

Packets are built here with the RFC 1071 checksum of m6t.protocol.packets (struct-based), so
the module's own arithmetic is checked against an independent one.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m6t.protocol import gso
from m6t.protocol.gso import (
    ACK,
    CWR,
    FIN,
    GSO_NONE,
    GSO_TCPV6,
    GSO_UDP_L4,
    PLAIN_HEADER,
    PSH,
    RST,
    SYN,
    Coalescer,
    SegmentError,
    VirtioNetHeader,
    segment,
    transport_checksum_ok,
)
from m6t.protocol.packets import internet_checksum
from tests.unit.helpers import bounded

CLIENT = ipaddress.IPv6Address("fd6d:6d74:1:1:1:a1b2:c3d4:e5f6").packed
OTHER_CLIENT = ipaddress.IPv6Address("fd6d:6d74:1:1:2:a1b2:c3d4:e5f6").packed
HOME_AGENT = ipaddress.IPv6Address("fd48:4100::2").packed
MTU = 1472
TIMESTAMPS = bytes.fromhex("0101080a000003e8000007d0")  # NOP NOP TS val=1000 ecr=2000


def ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes, hop_limit: int = 64,
         traffic_class: int = 0) -> bytes:
    first = 6 << 28 | traffic_class << 20
    return struct.pack("!IHBB16s16s", first, len(payload), next_header, hop_limit, src,
                       dst) + payload


def pseudo(src: bytes, dst: bytes, length: int, next_header: int) -> bytes:
    return src + dst + struct.pack("!I3xB", length, next_header)


def tcp(seq: int, payload: bytes, flags: int = ACK, src: bytes = CLIENT,
        dst: bytes = HOME_AGENT, ports: tuple[int, int] = (40000, 5201), ack: int = 77,
        window: int = 512, options: bytes = TIMESTAMPS, hop_limit: int = 64,
        traffic_class: int = 0, bad_checksum: bool = False) -> bytes:
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", *ports, seq & 0xFFFFFFFF, ack, offset << 4, flags,
                         window, 0, 0) + options
    check = internet_checksum(pseudo(src, dst, len(header) + len(payload), 6) + header + payload)
    if bad_checksum:
        check ^= 0x0101
    header = header[:16] + check.to_bytes(2, "big") + header[18:]
    return ipv6(src, dst, 6, header + payload, hop_limit, traffic_class)


def udp(payload: bytes, src: bytes = CLIENT, dst: bytes = HOME_AGENT,
        ports: tuple[int, int] = (4500, 4500), zero_checksum: bool = False) -> bytes:
    length = 8 + len(payload)
    header = struct.pack("!HHHH", *ports, length, 0)
    check = internet_checksum(pseudo(src, dst, length, 17) + header + payload) or 0xFFFF
    if zero_checksum:
        check = 0
    return ipv6(src, dst, 17, header[:6] + check.to_bytes(2, "big") + payload)


def data(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def write_bytes(write: list[bytes]) -> tuple[VirtioNetHeader, bytes]:
    return VirtioNetHeader.unpack(write[0]), b"".join(write[1:])


def resegment(writes: list[list[bytes]]) -> list[bytes]:
    """What the kernel makes of the device writes: each cut back into packets."""
    out: list[bytes] = []
    for write in writes:
        header, packet = write_bytes(write)
        out.extend(segment(header, packet, 65535))
    return out


# --- the virtio-net header: one table of wire vectors, both ways --------------------------------

HEADERS = [
    (VirtioNetHeader(), "00000000000000000000"),
    (VirtioNetHeader(1, GSO_TCPV6, 72, 1400, 40, 16), "01044800780528001000"),
    (VirtioNetHeader(1, GSO_UDP_L4, 48, 64, 40, 6), "01053000400028000600"),
]


@pytest.mark.parametrize(("header", "wire"), HEADERS)
def test_virtio_header_wire_vectors(header: VirtioNetHeader, wire: str) -> None:
    # Host order (x86: little-endian), the default of a TUN device without TUNSETVNETLE.
    if struct.pack("=H", 1) != b"\x01\x00":
        pytest.skip("vectors are written for a little-endian host")
    assert header.pack().hex() == wire
    assert VirtioNetHeader.unpack(bytes.fromhex(wire) + b"rest") == header


def test_a_short_header_is_an_error() -> None:
    with pytest.raises(ValueError):
        VirtioNetHeader.unpack(b"\0" * 9)


# --- checksums ----------------------------------------------------------------------------------

@given(st.binary(max_size=3000))
@bounded(max_examples=200)
def test_ones_sum_agrees_with_rfc1071(blob: bytes) -> None:
    assert gso.checksum_field(gso.ones_sum(blob)) == internet_checksum(blob) or (
        internet_checksum(blob) == 0xFFFF and gso.ones_sum(blob) == 0)


def test_checksum_validation_of_built_packets() -> None:
    assert transport_checksum_ok(tcp(1, data(100)))
    assert not transport_checksum_ok(tcp(1, data(100), bad_checksum=True))
    assert transport_checksum_ok(udp(data(64)))
    assert not transport_checksum_ok(udp(data(64), zero_checksum=True))


# --- the segmenter ------------------------------------------------------------------------------

def super_tcp(seq: int, payload: bytes, flags: int = ACK, options: bytes = TIMESTAMPS) -> bytes:
    """A TSO super-packet as the kernel hands it over: one header, a partial checksum."""
    offset = (20 + len(options)) // 4
    length = 20 + len(options) + len(payload)
    header = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, offset << 4, flags, 512, 0, 0)
    partial = (~internet_checksum(pseudo(CLIENT, HOME_AGENT, length, 6))) & 0xFFFF
    header = header[:16] + partial.to_bytes(2, "big") + header[18:] + options
    return ipv6(CLIENT, HOME_AGENT, 6, header + payload)


def tso(gso_size: int, hdr_len: int = 72) -> VirtioNetHeader:
    return VirtioNetHeader(gso.F_NEEDS_CSUM, GSO_TCPV6, hdr_len, gso_size, 40, 16)


def test_a_plain_read_is_the_packet() -> None:
    packet = tcp(5, data(10))
    assert segment(VirtioNetHeader(), packet, MTU) == [packet]


def test_a_partial_checksum_is_completed() -> None:
    whole = udp(data(33))
    partial = (~internet_checksum(pseudo(CLIENT, HOME_AGENT, 41, 17))) & 0xFFFF
    read = whole[:46] + partial.to_bytes(2, "big") + whole[48:]
    header = VirtioNetHeader(gso.F_NEEDS_CSUM, GSO_NONE, 0, 0, 40, 6)
    assert segment(header, read, MTU) == [whole]


def test_a_tso_super_packet_becomes_the_segments_tcp_would_have_sent() -> None:
    payload = data(1400 * 3 + 100)
    segments = segment(tso(1400), super_tcp(1000, payload, ACK | PSH | FIN | CWR), MTU)
    assert segments == [
        tcp(1000, payload[:1400], ACK | CWR),           # CWR only on the first
        tcp(2400, payload[1400:2800], ACK),
        tcp(3800, payload[2800:4200], ACK),
        tcp(5200, payload[4200:], ACK | PSH | FIN),     # PSH and FIN only on the last
    ]
    assert all(len(s) <= MTU and transport_checksum_ok(s) for s in segments)


def test_tcp_is_cut_at_the_mtu_when_the_sender_asked_for_more() -> None:
    payload = data(3000)
    segments = segment(tso(2000), super_tcp(0, payload), 1280)
    assert [len(s) for s in segments] == [1280, 1280, 40 + 32 + 3000 - 2 * 1208]
    assert b"".join(s[72:] for s in segments) == payload
    assert all(transport_checksum_ok(s) for s in segments)


def test_sequence_numbers_wrap() -> None:
    payload = data(2000)
    segments = segment(tso(1000), super_tcp(0xFFFFFE00, payload), MTU)
    assert segments == [tcp(0xFFFFFE00, payload[:1000]), tcp(0xFFFFFE00 + 1000, payload[1000:])]


def test_a_uso_super_packet_becomes_datagrams() -> None:
    payload = data(64 * 5 + 10)
    length = 8 + len(payload)
    partial = (~internet_checksum(pseudo(CLIENT, HOME_AGENT, length, 17))) & 0xFFFF
    read = ipv6(CLIENT, HOME_AGENT, 17, struct.pack("!HHHH", 4500, 4500, length, partial)
                + payload)
    header = VirtioNetHeader(gso.F_NEEDS_CSUM, GSO_UDP_L4, 48, 64, 40, 6)
    assert segment(header, read, MTU) == [udp(payload[i:i + 64])
                                          for i in range(0, len(payload), 64)]


@pytest.mark.parametrize(("header", "packet", "reason"), [
    (tso(1400), b"\x45" + bytes(60), "gso_not_ipv6"),
    (tso(1400), ipv6(CLIENT, HOME_AGENT, 0, bytes(8) + bytes(60)), "gso_unsupported"),
    (VirtioNetHeader(1, GSO_TCPV6, 72, 1400, 48, 16), super_tcp(0, data(3000)),
     "gso_unsupported"),
    (VirtioNetHeader(1, GSO_UDP_L4, 48, 1500, 40, 6), udp(data(3000)), "gso_too_big"),
    (VirtioNetHeader(1, GSO_TCPV6, 72, 0, 40, 16), super_tcp(0, data(3000)), "gso_too_big"),
    (VirtioNetHeader(1, GSO_NONE, 0, 0, 40, 90), tcp(0, data(10)), "bad_csum_offset"),
])
def test_what_the_segmenter_refuses_it_names(header: VirtioNetHeader, packet: bytes,
                                             reason: str) -> None:
    with pytest.raises(SegmentError) as error:
        segment(header, packet, MTU)
    assert error.value.reason == reason


# --- the coalescer ------------------------------------------------------------------------------

def stream(seq: int, sizes: list[int], **kwargs: object) -> list[bytes]:
    out = []
    for size in sizes:
        out.append(tcp(seq, data(size, seq), **kwargs))  # type: ignore[arg-type]
        seq += size
    return out


def coalesce(packets: list[bytes], **kwargs: bool) -> list[list[bytes]]:
    coalescer = Coalescer(**kwargs)
    coalescer.add_all(packets)
    return coalescer.flush()


@pytest.mark.parametrize("local_delivery", [False, True])
def test_in_order_segments_become_one_super_packet(local_delivery: bool) -> None:
    packets = stream(1000, [1400] * 5 + [600])
    writes = coalesce(packets, local_delivery=local_delivery)
    assert len(writes) == 1
    header, packet = write_bytes(writes[0])
    assert header.gso_type == GSO_TCPV6 and header.gso_size == 1400
    assert header.hdr_len == 72
    assert (packet[4] << 8 | packet[5]) + 40 == len(packet) == 72 + 1400 * 5 + 600
    if local_delivery:
        # The complete checksum, derived from the segments': the stack verifies all of it.
        assert header.flags == 0 and transport_checksum_ok(packet)
    else:
        assert header.flags == gso.F_NEEDS_CSUM
        assert (header.csum_start, header.csum_offset) == (40, 16)
    assert resegment(writes) == packets


def test_a_bad_checksum_in_a_local_delivery_run_fails_the_whole_super_packet() -> None:
    packets = stream(0, [1400] * 4)
    packets[2] = tcp(2800, data(1400, 2800), bad_checksum=True)
    writes = coalesce(packets, local_delivery=True)
    assert len(writes) == 1
    assert not transport_checksum_ok(write_bytes(writes[0])[1])  # never "repaired"


def test_a_lone_packet_goes_as_it_came() -> None:
    packet = tcp(1, data(100))
    assert coalesce([packet]) == [[PLAIN_HEADER, packet]]


@pytest.mark.parametrize("flags", [SYN, SYN | ACK, ACK | FIN, ACK | RST, RST, ACK | gso.URG,
                                   ACK | gso.ECE, ACK | CWR])
def test_control_flags_flush_the_run_and_go_alone(flags: int) -> None:
    packets = stream(0, [1000] * 3)
    odd = tcp(3000, data(1000), flags)
    after = stream(4000, [1000] * 2)
    writes = coalesce([*packets, odd, *after])
    assert [len(w) for w in writes] == [3 + 3, 2, 3 + 2]
    assert writes[1] == [PLAIN_HEADER, odd]
    assert resegment(writes) == [*packets, odd, *after]


def test_psh_ends_a_run_as_its_last_segment() -> None:
    packets = stream(0, [1000] * 3)
    pushed = tcp(3000, data(1000), ACK | PSH)
    after = stream(4000, [1000] * 2)
    writes = coalesce([*packets, pushed, *after])
    assert len(writes) == 2
    header, packet = write_bytes(writes[0])
    assert packet[53] == ACK | PSH and header.gso_size == 1000
    assert resegment(writes) == [*packets, pushed, *after]


def test_a_gap_or_a_retransmission_starts_a_new_run() -> None:
    first = stream(0, [1000] * 3)
    gap = stream(5000, [1000] * 2)  # 3000-5000 lost
    again = stream(3000, [1000] * 2)  # retransmitted
    writes = coalesce([*first, *gap, *again])
    assert len(writes) == 3
    assert resegment(writes) == [*first, *gap, *again]


def test_pure_acks_are_never_merged() -> None:
    acks = [tcp(10, b"", ack=77 + i) for i in range(3)]
    assert coalesce(acks) == [[PLAIN_HEADER, a] for a in acks]


def test_segment_sizes_that_differ() -> None:
    grows = stream(0, [500, 500, 1000, 1000])  # a larger one cannot follow: new run
    writes = coalesce(grows)
    assert len(writes) == 2
    assert resegment(writes) == grows
    shrinks = stream(0, [1000, 1000, 500, 1000, 1000])  # a smaller one ends the run
    writes = coalesce(shrinks)
    assert len(writes) == 2
    assert write_bytes(writes[0])[1][4:6] == (32 + 2500).to_bytes(2, "big")
    assert resegment(writes) == shrinks


@pytest.mark.parametrize("change", [
    {"ack": 78}, {"window": 1024}, {"options": bytes.fromhex("0101080a000003e9000007d0")},
    {"hop_limit": 63}, {"traffic_class": 3},  # an ECN CE mark, say
])
def test_headers_must_match_byte_for_byte(change: dict[str, object]) -> None:
    packets = stream(0, [1000] * 2)
    other = tcp(2000, data(1000, 2000), **change)  # type: ignore[arg-type]
    writes = coalesce([*packets, other])
    assert len(writes) == 2
    assert resegment(writes) == [*packets, other]


def test_flows_interleaved_each_keep_their_order() -> None:
    a = stream(0, [1000] * 4)
    b = stream(9000, [1200] * 4, ports=(40001, 5201))
    c = stream(500, [800] * 4, src=OTHER_CLIENT)
    mixed = [p for trio in zip(a, b, c, strict=True) for p in trio]
    writes = coalesce(mixed)
    assert len(writes) == 3
    back = resegment(writes)
    assert sorted(back) == sorted(mixed)
    for flow in (a, b, c):
        assert [p for p in back if p in flow] == flow


def test_a_foreign_packet_in_the_middle_of_a_run_is_never_merged() -> None:
    # The daemon drops spoofed and malformed packets before they get here; what does get here
    # from another flow (another source, even with the next sequence number) stays apart.
    packets = stream(0, [1000] * 4)
    spoofed = tcp(2000, data(1000, 2000), src=OTHER_CLIENT)
    writes = coalesce([packets[0], packets[1], spoofed, packets[2], packets[3]])
    assert [PLAIN_HEADER, spoofed] in writes
    merged = [w for w in writes if len(w) > 2]
    assert len(merged) == 1 and resegment(merged) == packets
    # A mangled segment of the flow itself goes alone, between the runs before and after it.
    mangled = packets[2][:52] + b"\xf0" + packets[2][53:]  # data offset 60: past the payload
    writes = coalesce([packets[0], packets[1], mangled, packets[2], packets[3]])
    assert writes[1] == [PLAIN_HEADER, mangled]
    assert resegment([writes[0]]) == packets[:2] and resegment([writes[2]]) == packets[2:]


def test_extension_headers_and_other_protocols_go_alone() -> None:
    hop_by_hop = ipv6(CLIENT, HOME_AGENT, 0, bytes([6, 0]) + bytes(6) + tcp(0, data(10))[40:])
    icmp = ipv6(CLIENT, HOME_AGENT, 58, bytes(16))
    esp = ipv6(CLIENT, HOME_AGENT, 50, bytes(100))
    assert coalesce([hop_by_hop, icmp, esp, esp]) == [[PLAIN_HEADER, p]
                                                      for p in (hop_by_hop, icmp, esp, esp)]


def test_runs_are_bounded() -> None:
    packets = stream(0, [1000] * 100)
    writes = coalesce(packets)
    assert [len(w) - 3 for w in writes] == [gso.MAX_SEGMENTS, 100 - gso.MAX_SEGMENTS]
    big = stream(0, [8000] * 20)
    writes = coalesce(big)
    assert all(len(b"".join(w[1:])) - 40 <= gso.MAX_SUPER_PAYLOAD for w in writes)
    assert resegment(writes) == big


def test_too_many_open_flows_write_out_the_oldest() -> None:
    flows = [stream(0, [1000] * 2, ports=(40000 + i, 5201)) for i in range(4)]
    coalescer = Coalescer(max_flows=2)
    for i in range(2):
        for flow in flows:
            coalescer.add(flow[i])
    writes = coalescer.flush()
    back = resegment(writes)
    for flow in flows:
        assert [p for p in back if p in flow] == flow


def test_odd_sizes_are_not_merged_for_local_delivery() -> None:
    packets = stream(0, [999] * 3)
    assert len(coalesce(packets, local_delivery=True)) == 3
    assert len(coalesce(packets, local_delivery=False)) == 1


def test_tcp_coalescing_can_be_off() -> None:
    packets = stream(0, [1000] * 3)
    assert len(coalesce(packets, tcp=False)) == 3


def test_udp_datagrams_of_one_flow_become_one_super_packet() -> None:
    datagrams = [udp(data(64, i)) for i in range(10)] + [udp(data(20))]
    writes = coalesce(datagrams, udp=True)
    assert len(writes) == 1
    header, packet = write_bytes(writes[0])
    assert (header.gso_type, header.gso_size, header.flags) == (GSO_UDP_L4, 64, 1)
    assert (header.csum_start, header.csum_offset, header.hdr_len) == (40, 6, 48)
    assert packet[44:46] == (8 + 64 * 10 + 20).to_bytes(2, "big")
    assert resegment(writes) == datagrams
    assert len(coalesce(datagrams, udp=False)) == len(datagrams)


def test_udp_with_a_zero_checksum_or_a_lying_length_goes_alone() -> None:
    datagrams = [udp(data(64, i)) for i in range(4)]
    zero = udp(data(64), zero_checksum=True)
    lying = datagrams[0][:44] + b"\x00\x10" + datagrams[0][46:]
    writes = coalesce([*datagrams[:2], zero, lying, *datagrams[2:]], udp=True)
    assert [PLAIN_HEADER, zero] in writes and [PLAIN_HEADER, lying] in writes
    assert sorted(resegment([w for w in writes if len(w) > 2])) == sorted(datagrams)


def test_counters() -> None:
    coalescer = Coalescer()
    coalescer.add_all([*stream(0, [1000] * 3), ipv6(CLIENT, HOME_AGENT, 58, bytes(8))])
    assert len(coalescer) == 4
    coalescer.flush()
    assert (coalescer.writes_out, coalescer.coalesced) == (2, 3)
    assert len(coalescer) == 0


# --- the property: coalesce, then segment, gives back the packets --------------------------------

FLOWS = [dict(ports=(40000, 5201)), dict(ports=(40001, 5201)), dict(src=OTHER_CLIENT),
         dict(ports=(40000, 5201), options=b"")]


@st.composite
def traffic(draw: st.DrawFn) -> list[bytes]:
    """Packets of a few TCP flows and a UDP flow, interleaved; mostly in order, with gaps,
    retransmissions, pushes, control flags, pure ACKs and changing sizes."""
    sequences = [draw(st.integers(0, 0xFFFFFFFF)) for _ in FLOWS]
    packets = []
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.integers(0, len(FLOWS)))
        if kind == len(FLOWS):
            packets.append(udp(data(draw(st.sampled_from([0, 1, 63, 64, 200])))))
            continue
        size = draw(st.sampled_from([0, 1, 2, 100, 999, 1000, 1000, 1000, 1400]))
        flags = draw(st.sampled_from([ACK] * 8 + [ACK | PSH, ACK | FIN, SYN, ACK | CWR]))
        seq = sequences[kind]
        jump = draw(st.sampled_from([0] * 8 + [-1000, 1000]))
        packet = tcp(seq + jump, data(size, seq), flags, **FLOWS[kind])  # type: ignore[arg-type]
        sequences[kind] = (seq + jump + size) & 0xFFFFFFFF
        packets.append(packet)
    return packets


@given(traffic(), st.booleans(), st.sampled_from([2, 16]))
@bounded(max_examples=300)
def test_coalesce_then_segment_gives_back_the_packets(packets: list[bytes],
                                                      local_delivery: bool,
                                                      max_flows: int) -> None:
    coalescer = Coalescer(udp=True, local_delivery=local_delivery, max_flows=max_flows)
    coalescer.add_all(packets)
    writes = coalescer.flush()
    back = resegment(writes)
    assert sorted(back) == sorted(packets)
    by_flow: dict[bytes, list[bytes]] = defaultdict(list)
    for packet in packets:
        by_flow[packet[6:7] + packet[8:44]].append(packet)
    for key, flow in by_flow.items():
        assert [p for p in back if p[6:7] + p[8:44] == key] == flow
    for write in writes:
        header, packet = write_bytes(write)
        if header.gso_type == GSO_TCPV6 and local_delivery:
            assert transport_checksum_ok(packet)
        assert (packet[4] << 8 | packet[5]) + 40 == len(packet)

