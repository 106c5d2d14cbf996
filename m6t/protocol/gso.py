"""GSO super-packets between a TUN device and the tunnel (sans-I/O): the virtio-net header,
the coalescer (userspace GRO) and the segmenter.

A TUN device opened with IFF_VNET_HDR puts a 10-byte `struct virtio_net_hdr` in front of every
packet, both ways. Written into the device, a header of type GSO_TCPV6 or GSO_UDP_L4 says "this
is a run of segments glued together": the kernel forwards or delivers the run as one packet and
cuts it back into the original segments (computing their checksums) only where it must. Read
from the device (with TUN_F_TSO6 / TUN_F_USO6 enabled), the same header announces a super-packet
that the tunnel has to cut into packets no larger than its MTU before they go on the wire.

- `Coalescer` glues consecutive in-order TCP segments of one flow (and same-flow UDP datagrams)
  into one super-packet per device write. It only ever glues packets that the kernel will cut
  back into exactly the same packets: byte-identical headers except the TCP sequence number,
  checksum and a PSH on the last segment; every segment but the last of one size. Anything
  else (a SYN, FIN, RST, URG, a retransmission, a gap, another size, an IPv6 extension header,
  a malformed header) goes into the device alone, unchanged, as it would have without offloads.
  Packets handed to the coalescer have already passed the daemon's per-packet checks, each of
  them: the coalescer never decides what is forwarded, only how.
- `segment` cuts a super-packet read from the device into plain IPv6 packets, each with its own
  headers and a complete checksum (the wire never carries a partial one).

The draft's wire is the same with or without any of this: "every datagram carries one IPv6
packet no larger than the tunnel MTU" holds because the coalescer only works on the device side
and the segmenter cuts at the MTU.

Checksums. The coalescer does not read payloads (a Python sum over every byte costs more than
everything else a packet costs here). It writes either
- a *partial* checksum (`NEEDS_CSUM`, what a forwarding gateway must use: the kernel fills in
  each segment's checksum while segmenting), or
- for local delivery, the super-packet's *complete* checksum, derived from the segments' own
  checksum fields in a few integer operations per segment (ones' complement sums add up): the
  receiving stack then verifies every byte exactly as it would have verified each segment, so
  a segment with a bad checksum makes the whole super-packet fail its check; it is never
  "repaired". Only TCP is written this way (the kernel segments UDP super-packets on delivery,
  which needs a partial checksum).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# --- struct virtio_net_hdr (include/uapi/linux/virtio_net.h) -----------------------------------

VNET_HEADER: Final = struct.Struct("=BBHHHH")  # host order: TUN's default without TUNSETVNETLE
VNET_HEADER_LENGTH: Final = 10
PLAIN_HEADER: Final = bytes(VNET_HEADER_LENGTH)  # no checksum to do, no segmentation
F_NEEDS_CSUM: Final = 1
F_DATA_VALID: Final = 2
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3  # UFO, IPv4 fragments: never enabled here
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80

IPV6_HEADER: Final = 40
NEXT_HEADER_TCP: Final = 6
NEXT_HEADER_UDP: Final = 17
TCP_MIN_HEADER: Final = 20
UDP_HEADER: Final = 8
TCP_CHECK_OFFSET: Final = 16
UDP_CHECK_OFFSET: Final = 6
# TCP flags (byte 13 of the header)
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

# Bounds of one super-packet: its IPv6 payload length is a 16-bit field, and 64 segments is
# what UDP GSO sends and GRO merges at most (so a run never outgrows what one read brought).
MAX_SUPER_PAYLOAD: Final = 65_535
MAX_SEGMENTS: Final = 64
MAX_OPEN_FLOWS: Final = 16  # runs kept open at once; the oldest is written when more start
_TCP_FIELDS = struct.Struct("!I4xBB").unpack_from  # sequence number, data offset, flags
_SEQUENCE = struct.Struct("!I").unpack_from
_SEQUENCE_AND_CHECK = struct.Struct("!HH8xH").unpack_from  # at 44: seq (two words), checksum
_AT_44 = itertools.repeat(44)


@dataclass(frozen=True, slots=True)
class VirtioNetHeader:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET_HEADER.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                                self.csum_start, self.csum_offset)

    @classmethod
    def unpack(cls, data: bytes) -> VirtioNetHeader:
        """The header at the start of `data` (a read from the device); ValueError if short."""
        if len(data) < VNET_HEADER_LENGTH:
            raise ValueError("shorter than a virtio-net header")
        return cls(*VNET_HEADER.unpack_from(data))


# --- ones' complement arithmetic (RFC 1071) -----------------------------------------------------
# A ones' complement sum of 16-bit words is the value of the bytes as one big number modulo
# 0xFFFF (2**16 = 1 modulo 0xFFFF). Sums here are kept as residues in [0, 0xFFFE].

def ones_sum(data: bytes) -> int:
    """The ones' complement sum of `data` (odd length: padded with a zero byte), mod 0xFFFF."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def checksum_field(residue: int) -> int:
    """What goes in a checksum field for data (including the pseudo-header, with the field
    zeroed) whose sum is `residue`: the complement of the sum."""
    return 0xFFFF - residue if residue else 0


def pseudo_header_sum(addresses: bytes, length: int, next_header: int) -> int:
    """RFC 8200 section 8.1: source and destination (32 bytes), upper-layer length, next
    header."""
    return (ones_sum(addresses) + (length >> 16) + (length & 0xFFFF) + next_header) % 0xFFFF


def transport_checksum_ok(packet: bytes) -> bool:
    """Whether a TCP or UDP packet (no extension headers) carries a correct checksum. For
    tests and tools: the data paths never sum payloads."""
    total = pseudo_header_sum(packet[8:40], len(packet) - IPV6_HEADER, packet[6])
    if packet[6] == NEXT_HEADER_UDP and packet[46:48] == b"\0\0":
        return False  # RFC 8200 section 8.1: a zero UDP checksum is invalid over IPv6
    return (total + ones_sum(packet[IPV6_HEADER:])) % 0xFFFF == 0


def with_checksum(packet: bytes, offset: int) -> bytes:
    """`packet` (TCP or UDP after a 40-byte IPv6 header) with its checksum at `offset` of the
    transport header computed from scratch."""
    check_at = IPV6_HEADER + offset
    zeroed = packet[:check_at] + b"\0\0" + packet[check_at + 2:]
    residue = (pseudo_header_sum(packet[8:40], len(packet) - IPV6_HEADER, packet[6])
               + ones_sum(zeroed[IPV6_HEADER:])) % 0xFFFF
    value = checksum_field(residue)
    if value == 0 and packet[6] == NEXT_HEADER_UDP:
        value = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    return zeroed[:check_at] + value.to_bytes(2, "big") + zeroed[check_at + 2:]


# --- the segmenter --------------------------------------------------------------------------------

# What `segment` refuses, by name: counted as drops.
SEGMENT_ERRORS: Final = ("gso_not_ipv6", "gso_unsupported", "gso_short", "gso_too_big",
                         "bad_csum_offset")


class SegmentError(ValueError):
    """A packet read from the device that cannot be turned into wire packets; `reason` names
    it for the drop counters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def segment(header: VirtioNetHeader, packet: bytes, max_packet: int) -> list[bytes]:
    """The wire packets for one read from the device: `packet` itself if the header asks for
    nothing, the packet with its checksum completed (NEEDS_CSUM), or a TCP/UDP super-packet cut
    into packets of at most `max_packet` bytes (the tunnel MTU), each with complete headers and
    checksum. TCP is cut at the sender's segment size or smaller (any cut is valid TCP); a UDP
    datagram boundary is the application's, so a UDP segment larger than `max_packet` is an
    error, as is anything this tunnel never asked the kernel for. Raises SegmentError."""
    gso_type = header.gso_type & ~GSO_ECN
    if gso_type == GSO_NONE:
        if not header.flags & F_NEEDS_CSUM:
            return [packet]
        return [_complete(packet, header)]
    if len(packet) < IPV6_HEADER or packet[0] >> 4 != 6:
        raise SegmentError("gso_not_ipv6")
    if (header.flags & F_NEEDS_CSUM and header.csum_start != IPV6_HEADER) or \
            (packet[4] << 8 | packet[5]) + IPV6_HEADER != len(packet):
        raise SegmentError("gso_unsupported")  # extension headers, or a jumbogram
    if gso_type == GSO_TCPV6 and packet[6] == NEXT_HEADER_TCP:
        return _segment_tcp(packet, header.gso_size, max_packet)
    if gso_type == GSO_UDP_L4 and packet[6] == NEXT_HEADER_UDP:
        return _segment_udp(packet, header.gso_size, max_packet)
    raise SegmentError("gso_unsupported")


def _complete(packet: bytes, header: VirtioNetHeader) -> bytes:
    """A single packet whose checksum the kernel left to the device: the field holds the
    pseudo-header's sum, the device adds the sum of everything from csum_start on."""
    start, at = header.csum_start, header.csum_start + header.csum_offset
    if start < IPV6_HEADER or at + 2 > len(packet):
        raise SegmentError("bad_csum_offset")
    value = checksum_field(ones_sum(packet[start:]))
    if value == 0 and packet[6] == NEXT_HEADER_UDP:
        value = 0xFFFF
    return packet[:at] + value.to_bytes(2, "big") + packet[at + 2:]


def _segment_tcp(packet: bytes, gso_size: int, max_packet: int) -> list[bytes]:
    if len(packet) < IPV6_HEADER + TCP_MIN_HEADER:
        raise SegmentError("gso_short")
    header_length = packet[52] >> 4 << 2
    start = IPV6_HEADER + header_length
    if header_length < TCP_MIN_HEADER or start > len(packet):
        raise SegmentError("gso_short")
    size = min(gso_size, max_packet - start)
    if size <= 0:
        raise SegmentError("gso_too_big")
    ip_first = packet[:4]
    ip_rest = packet[6:40]
    addresses = packet[8:40]
    ports = packet[40:44]
    seq = int.from_bytes(packet[44:48], "big")
    ack_offset = packet[48:53]  # acknowledgement number, data offset
    flags = packet[53]
    window_urgent_options = packet[54:56], packet[58:start]
    payload = packet[start:]
    end = len(payload)
    out = []
    for offset in range(0, max(end, 1), size):
        chunk = payload[offset:offset + size]
        last = offset + size >= end
        # Like the kernel's tcp_gso_segment: FIN and PSH only on the last segment, CWR only
        # on the first.
        seg_flags = flags if last else flags & ~(FIN | PSH)
        if offset:
            seg_flags &= ~CWR
        tcp_length = header_length + len(chunk)
        tcp = b"".join((ports, ((seq + offset) & 0xFFFFFFFF).to_bytes(4, "big"), ack_offset,
                        bytes((seg_flags,)), window_urgent_options[0], b"\0\0",
                        window_urgent_options[1]))
        residue = (pseudo_header_sum(addresses, tcp_length, NEXT_HEADER_TCP) + ones_sum(tcp)
                   + ones_sum(chunk)) % 0xFFFF
        out.append(b"".join((ip_first, tcp_length.to_bytes(2, "big"), ip_rest,
                             tcp[:TCP_CHECK_OFFSET], checksum_field(residue).to_bytes(2, "big"),
                             tcp[TCP_CHECK_OFFSET + 2:], chunk)))
    return out


def _segment_udp(packet: bytes, gso_size: int, max_packet: int) -> list[bytes]:
    if len(packet) < IPV6_HEADER + UDP_HEADER:
        raise SegmentError("gso_short")
    if gso_size <= 0 or IPV6_HEADER + UDP_HEADER + gso_size > max_packet:
        raise SegmentError("gso_too_big")
    ip_first, ip_rest = packet[:4], packet[6:40]
    addresses, ports = packet[8:40], packet[40:44]
    payload = packet[IPV6_HEADER + UDP_HEADER:]
    out = []
    for offset in range(0, max(len(payload), 1), gso_size):
        chunk = payload[offset:offset + gso_size]
        udp_length = UDP_HEADER + len(chunk)
        length = udp_length.to_bytes(2, "big")
        residue = (pseudo_header_sum(addresses, udp_length, NEXT_HEADER_UDP)
                   + ones_sum(ports) + udp_length + ones_sum(chunk)) % 0xFFFF
        value = checksum_field(residue) or 0xFFFF
        out.append(b"".join((ip_first, length, ip_rest, ports, length,
                             value.to_bytes(2, "big"), chunk)))
    return out


# --- the coalescer --------------------------------------------------------------------------------

class _Run:
    """Segments of one flow waiting to become one super-packet. The byte strings a segment
    must start with are kept ready: a segment of the first's size that starts with `prefix`
    (IPv6 header, ports and, for UDP, length) and, for TCP, has `middle` at 48 and `options`
    at 58 has the first segment's headers but for its sequence number and checksum."""

    __slots__ = ("first", "gso", "header_length", "hop_limit", "ip_first", "limit", "middle",
                 "next_seq", "options", "packets", "payload", "prefix", "size", "tcp")

    def __init__(self, first: bytes, tcp: bool, header_length: int, payload: int,
                 seq: int) -> None:
        self.first = first
        self.tcp = tcp
        self.size = len(first)
        self.header_length = header_length  # transport header
        self.gso = payload  # every segment's payload but the last's
        self.payload = payload  # total payload so far
        self.next_seq = (seq + payload) & 0xFFFFFFFF
        self.packets = [first]
        # How many segments of the first's size fit (MAX_SEGMENTS, and a 16-bit length).
        self.limit = min(MAX_SEGMENTS, (MAX_SUPER_PAYLOAD - header_length) // payload)
        self.prefix = first[:44] if tcp else first[:46]
        self.ip_first = first[:4]  # version, traffic class, flow label
        self.hop_limit = first[7]
        self.middle = first[48:56]  # ack, data offset, flags, window
        self.options = first[58:IPV6_HEADER + header_length]  # urgent pointer, options


# What the device is given: a list of buffers for one writev, the virtio-net header first.
Write = list[bytes]


class Coalescer:
    """Userspace GRO: `add` packets (each already checked and forwarded by the daemon), then
    `flush` them as device writes, at the latest when the read queue is empty, so that nothing
    waits for a packet that may never come.

    `tcp`/`udp` say which super-packets the device accepts (GSO_TCPV6; GSO_UDP_L4 needs Linux
    6.2). `local_delivery` writes TCP super-packets with their complete checksum (see the module
    docstring); without it, with a partial one, as forwarding requires.
    """

    def __init__(self, tcp: bool = True, udp: bool = False, local_delivery: bool = False,
                 max_flows: int = MAX_OPEN_FLOWS) -> None:
        self.tcp = tcp
        self.udp = udp
        self.local_delivery = local_delivery
        self.max_flows = max_flows
        # Open runs by flow (addresses and ports), TCP and UDP apart; insertion order is age.
        self._tcp_runs: dict[bytes, _Run] = {}
        self._udp_runs: dict[bytes, _Run] = {}
        self._last: _Run | None = None  # the run the previous packet went to
        self._out: list[Write] = []
        self.writes_out = 0  # device writes flushed
        self.coalesced = 0  # packets that went out inside a super-packet

    def __bool__(self) -> bool:
        """Whether anything waits to be flushed (cheaper than len)."""
        return bool(self._out or self._tcp_runs or self._udp_runs)

    def __len__(self) -> int:
        """Packets added and not yet flushed."""
        return sum(len(run.packets) for runs in (self._tcp_runs, self._udp_runs)
                   for run in runs.values()) + len(self._out)

    def add(self, packet: bytes) -> None:
        # The common case first, in as few operations as can be: the next full-size segment of
        # the run the previous packet went to.
        run = self._last
        if run is not None and packet.startswith(run.prefix) and len(packet) == run.size:
            packets = run.packets
            if len(packets) < run.limit:
                if run.tcp:
                    if (_SEQUENCE(packet, 44)[0] == run.next_seq
                            and packet.startswith(run.middle, 48)
                            and packet.startswith(run.options, 58)):
                        packets.append(packet)
                        run.payload += run.gso
                        run.next_seq = (run.next_seq + run.gso) & 0xFFFFFFFF
                        return
                elif packet[46] or packet[47]:  # a zero UDP checksum goes alone
                    packets.append(packet)
                    run.payload += run.gso
                    return
        self._add(packet)

    def _add(self, packet: bytes) -> None:
        size = len(packet)
        if size >= IPV6_HEADER + 4:  # the ports are there: the flow is known
            next_header = packet[6]
            if next_header == NEXT_HEADER_TCP and self.tcp:
                self._add_tcp(packet, size)
                return
            if next_header == NEXT_HEADER_UDP and self.udp:
                self._add_udp(packet, size)
                return
        self._out.append([PLAIN_HEADER, packet])

    def add_all(self, packets: Iterable[bytes]) -> None:
        """`add` each of `packets`, in order."""
        for packet in packets:
            self.add(packet)

    def _add_tcp(self, packet: bytes, size: int) -> None:
        key = packet[8:44]
        runs = self._tcp_runs
        run = runs.get(key)
        if size < IPV6_HEADER + TCP_MIN_HEADER:
            if run is not None:
                self._close(runs, key, run)
            self._out.append([PLAIN_HEADER, packet])
            return
        seq, offset, flags = _TCP_FIELDS(packet, 44)
        if run is not None:
            if seq == run.next_seq and len(run.packets) < MAX_SEGMENTS:
                if (packet.startswith(run.prefix) and size == run.size
                        and packet.startswith(run.middle, 48)
                        and packet.startswith(run.options, 58)):
                    # Same headers and size: a segment in the middle (of another flow's run
                    # than the previous packet's).
                    if len(run.packets) < run.limit:
                        run.packets.append(packet)
                        run.payload += run.gso
                        run.next_seq = (seq + run.gso) & 0xFFFFFFFF
                        self._last = run
                        return
                elif self._last_of_run(run, packet, size, offset, flags):
                    run.packets.append(packet)
                    run.payload += size - IPV6_HEADER - run.header_length
                    self._close(runs, key, run)  # a short segment or a push ends the run
                    return
            self._close(runs, key, run)
        # Only a plain in-sequence data segment starts a run (SYN, FIN, RST, URG, ECE, CWR and
        # pure ACKs go alone, as the kernel's GRO would have them); in local delivery, the
        # complete checksum needs whole 16-bit words per segment, so an odd size goes alone.
        header_length = offset >> 4 << 2
        payload = size - IPV6_HEADER - header_length
        if (flags == ACK and payload > 0 and header_length >= TCP_MIN_HEADER
                and (payload % 2 == 0 or not self.local_delivery)):
            self._open(runs, key, _Run(packet, True, header_length, payload, seq))
        else:
            self._out.append([PLAIN_HEADER, packet])

    @staticmethod
    def _last_of_run(run: _Run, packet: bytes, size: int, offset: int, flags: int) -> bool:
        """A segment that may end `run`: shorter than the others or with PSH set, and
        otherwise the same headers."""
        payload = size - IPV6_HEADER - run.header_length
        return (0 < payload <= run.gso and flags & ~PSH == ACK
                and offset >> 4 << 2 == run.header_length
                and packet.startswith(run.ip_first) and packet[7] == run.hop_limit
                and packet.startswith(run.middle[:5], 48)
                and packet.startswith(run.middle[6:], 54)
                and packet.startswith(run.options, 58)
                and run.payload + run.header_length + payload <= MAX_SUPER_PAYLOAD)

    def _add_udp(self, packet: bytes, size: int) -> None:
        key = packet[8:44]
        runs = self._udp_runs
        run = runs.get(key)
        payload = size - IPV6_HEADER - UDP_HEADER
        # Well-formed (UDP length = IPv6 payload length), with data, and a checksum that is not
        # zero (invalid over IPv6: the kernel would fill it in, so it goes alone, unchanged).
        valid = payload > 0 and (packet[44] << 8 | packet[45]) == size - IPV6_HEADER and \
            packet[46:48] != b"\0\0"
        if run is not None:
            if (valid and payload <= run.gso and packet.startswith(run.ip_first)
                    and packet[7] == run.hop_limit
                    and run.payload + UDP_HEADER + payload <= MAX_SUPER_PAYLOAD
                    and len(run.packets) < MAX_SEGMENTS):
                run.packets.append(packet)
                run.payload += payload
                if payload < run.gso:
                    self._close(runs, key, run)
                else:
                    self._last = run
                return
            self._close(runs, key, run)
        if valid:
            self._open(runs, key, _Run(packet, False, UDP_HEADER, payload, 0))
        else:
            self._out.append([PLAIN_HEADER, packet])

    def _open(self, runs: dict[bytes, _Run], key: bytes, run: _Run) -> None:
        if len(runs) >= self.max_flows:
            oldest = next(iter(runs))
            self._close(runs, oldest, runs[oldest])
        runs[key] = run
        self._last = run

    def _close(self, runs: dict[bytes, _Run], key: bytes, run: _Run) -> None:
        del runs[key]
        if self._last is run:
            self._last = None
        self._out.append(self._write(run))

    def flush(self) -> list[Write]:
        """Everything added so far, as device writes: super-packets and single packets. Order
        within a flow is kept; packets of different flows may be reordered."""
        for runs in (self._tcp_runs, self._udp_runs):
            for key, run in list(runs.items()):
                self._close(runs, key, run)
        out, self._out = self._out, []
        self.writes_out += len(out)
        return out

    def _write(self, run: _Run) -> Write:
        packets = run.packets
        count = len(packets)
        if count == 1:
            return [PLAIN_HEADER, packets[0]]
        self.coalesced += count
        first = run.first
        start = IPV6_HEADER + run.header_length
        length = run.header_length + run.payload  # transport header + all payloads
        ip_header = first[:4] + length.to_bytes(2, "big") + first[6:IPV6_HEADER]
        addresses = first[8:40]
        if run.tcp:
            last_flags = packets[-1][53]
            if self.local_delivery:
                flags, check = 0, _combined_tcp_check(run, length)
            else:
                flags = F_NEEDS_CSUM
                check = pseudo_header_sum(addresses, length, NEXT_HEADER_TCP) or 0xFFFF
            transport = b"".join((first[40:53], bytes((first[53] | last_flags & PSH,)),
                                  first[54:56], check.to_bytes(2, "big"), first[58:start]))
            header = VNET_HEADER.pack(flags, GSO_TCPV6, start, run.gso,
                                      IPV6_HEADER if flags else 0,
                                      TCP_CHECK_OFFSET if flags else 0)
        else:
            check = pseudo_header_sum(addresses, length, NEXT_HEADER_UDP) or 0xFFFF
            transport = b"".join((first[40:44], length.to_bytes(2, "big"),
                                  check.to_bytes(2, "big")))
            header = VNET_HEADER.pack(F_NEEDS_CSUM, GSO_UDP_L4, start, run.gso, IPV6_HEADER,
                                      UDP_CHECK_OFFSET)
        return [header, ip_header, transport, *[packet[start:] for packet in packets]]


def _combined_tcp_check(run: _Run, length: int) -> int:
    """The complete checksum of a run's super-packet, from its segments' checksum fields.

    For each segment i with a correct checksum, pseudo_i + header_i + payload_i = 0 (ones'
    complement, the checksum field included in header_i). So the payloads together sum to
    -(sum of pseudo_i + header_i), and the super-packet's field is what makes its own pseudo-
    header, header and all the payloads sum to 0. Headers differ only in the sequence number,
    the PSH bit and the checksum field, so each costs a few integer operations. Every payload
    but the last has an even length, so the payloads' sum does not depend on where they sit."""
    packets = run.packets
    first = run.first
    header_length = run.header_length
    count = len(packets)
    addresses = ones_sum(first[8:40])
    # Header sum of the first segment without its sequence number, flags' PSH and checksum.
    base = first[40:44] + b"\0\0\0\0" + first[48:53] + bytes((first[53] & ~PSH,)) + \
        first[54:56] + b"\0\0" + first[58:IPV6_HEADER + header_length]
    fixed = ones_sum(base)
    last_psh = packets[-1][53] & PSH  # only the last segment may have PSH
    # Per segment: its pseudo-header length (all alike but the last's), the words of its
    # sequence number and its checksum field (one struct call each).
    segments = (count * (addresses + NEXT_HEADER_TCP + fixed)
                + (count - 1) * (header_length + run.gso) + len(packets[-1]) - IPV6_HEADER
                + last_psh + sum(map(sum, map(_SEQUENCE_AND_CHECK, packets, _AT_44))))
    own = (addresses + (length >> 16) + (length & 0xFFFF) + NEXT_HEADER_TCP + fixed
           + (first[44] << 8 | first[45]) + (first[46] << 8 | first[47]) + last_psh)
    return checksum_field((own - segments) % 0xFFFF)
