"""Properties over arbitrary input: bad bytes are dropped with a reason, never raised.

Hypothesis runs are bounded (a few hundred examples, no deadline, no example database) so the
unit suite stays fast and leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from m6t.linux.udp import FragmentationNeeded, parse_fragmentation_needed
from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.constants import KEEPALIVE_ADDRESS, NEXT_HEADER_NONE
from m6t.protocol.drops import DropReason
from m6t.protocol.gateway import (
    EXPIRY_TICK,
    FORWARD,
    Drop,
    Gateway,
    GatewayPolicy,
    Reply,
    StateKind,
    pack_peer,
)
from m6t.protocol.packets import (
    Echo,
    IPv6Header,
    PacketTooBig,
    build_echo,
    build_ipv6,
    build_keepalive,
    build_packet_too_big,
    check_ipv6,
    icmpv6_checksum,
    internet_checksum,
    is_keepalive,
    parse_echo,
    parse_packet_too_big,
)
from m6t.protocol.ratelimit import TokenBuckets
from tests.unit.helpers import bounded

BOUNDED = bounded(max_examples=250)

PREFIX = ipaddress.IPv6Network("fd6d:6d74:1::/48")
HOME_AGENT = ipaddress.IPv6Address("fd48:4100::2").packed
HOME_HOST = ipaddress.IPv6Address("fd48:4100::99").packed
CLIENTS = [TunnelPrefix.compose(PREFIX, 0, n).address(0xA1B2_C3D4_E5F6).packed
           for n in range(1, 7)]
OUTSIDER = ipaddress.IPv6Address("2001:db8::1").packed
KNOWN_ADDRESSES = [*CLIENTS, HOME_AGENT, HOME_HOST, KEEPALIVE_ADDRESS, OUTSIDER]
PEERS = [pack_peer(bytes([198, 51, 100, 7]), 40000), pack_peer(bytes([198, 51, 100, 7]), 40001),
         pack_peer(bytes([203, 0, 113, 9]), 40000), pack_peer(bytes([203, 0, 113, 9]), 4500, 1)]


def make_gateway(**overrides: Any) -> Gateway:
    settings_: dict[str, Any] = {
        "client_prefix": PREFIX,
        "home_agents": frozenset({ipaddress.IPv6Address(HOME_AGENT)}),
        "temporary_lifetime": 2.0,
        "active_lifetime": 10.0,
        "new_states_per_second": 0.5,
        "new_states_burst": 2,
        "max_states": 4,
        "max_temporary_states": 3,
        "mtu": 1400,
    }
    settings_.update(overrides)
    return Gateway(GatewayPolicy(**settings_))


# --- strategies -------------------------------------------------------------------------------

# Biased towards the addresses the gateway cares about, so that decisions other than a drop
# come up often, with random addresses still in the mix.
addresses = st.one_of(st.sampled_from(CLIENTS[:2]),
                      st.sampled_from([HOME_AGENT, KEEPALIVE_ADDRESS]),
                      st.sampled_from(KNOWN_ADDRESSES), st.binary(min_size=16, max_size=16))
next_headers = st.one_of(st.sampled_from([59, 58, 50, 17, 6, 44]), st.integers(0, 255))
payloads = st.one_of(st.binary(max_size=64), st.integers(0, 1600).map(bytes))

well_formed = st.one_of(
    st.builds(build_ipv6, addresses, addresses, next_headers, payloads, st.integers(0, 255)),
    st.builds(build_ipv6, st.sampled_from(CLIENTS[:3]), st.just(HOME_AGENT), next_headers,
              payloads),  # client -> home agent
    st.builds(build_ipv6, st.sampled_from([HOME_AGENT, HOME_HOST]), st.sampled_from(CLIENTS[:3]),
              next_headers, payloads),  # home side -> client
    st.builds(build_keepalive, addresses),
    st.builds(build_echo, addresses, addresses, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
              st.binary(max_size=64), request=st.booleans()),
    st.builds(build_packet_too_big, addresses, st.integers(0, 0xFFFF_FFFF),
              st.integers(40, 1600).map(bytes)),
)


@st.composite
def near_ipv6(draw: st.DrawFn) -> bytes:
    """Well-formed IPv6 packets (keepalives, echoes, Packet Too Big, anything), with a field or
    a byte wrong now and then."""
    packet = draw(well_formed)
    mutation = draw(st.sampled_from(["none"] * 5 + ["version", "length", "truncate", "extend",
                                                    "byte"]))
    if mutation == "version":
        packet = bytes([draw(st.integers(0, 255))]) + packet[1:]
    elif mutation == "length":
        packet = packet[:4] + draw(st.binary(min_size=2, max_size=2)) + packet[6:]
    elif mutation == "truncate":
        packet = packet[:draw(st.integers(0, len(packet)))]
    elif mutation == "extend":
        packet += draw(st.binary(min_size=1, max_size=8))
    elif mutation == "byte":
        offset = draw(st.integers(0, len(packet) - 1))
        packet = packet[:offset] + bytes([draw(st.integers(0, 255))]) + packet[offset + 1:]
    return packet


packets = st.one_of(st.binary(max_size=120), near_ipv6(), near_ipv6())
peers = st.one_of(st.sampled_from(PEERS),
                  st.builds(pack_peer, st.binary(min_size=4, max_size=4), st.integers(0, 65535),
                            st.integers(0, 255)))


# --- packets ----------------------------------------------------------------------------------


@BOUNDED
@given(packets)
def test_check_ipv6_never_raises_and_accepts_exactly_the_well_formed(packet: bytes) -> None:
    reason = check_ipv6(packet)
    well_formed = (len(packet) >= 40 and packet[0] >> 4 == 6
                   and int.from_bytes(packet[4:6], "big") == len(packet) - 40)
    assert (reason is None) == well_formed
    assert reason is None or isinstance(reason, DropReason)


@BOUNDED
@given(packets)
def test_ipv6_header_unpack_raises_only_value_error_and_round_trips(packet: bytes) -> None:
    try:
        header = IPv6Header.unpack(packet)
    except ValueError:
        assert check_ipv6(packet) is not None
        return
    assert header.pack() == packet[:40]
    assert header.payload_length == len(packet) - 40


@BOUNDED
@given(packets)
def test_parse_echo_never_raises_and_reports_what_is_there(packet: bytes) -> None:
    echo = parse_echo(packet)
    if echo is None:
        return
    assert isinstance(echo, Echo)
    assert (echo.source, echo.destination) == (packet[8:24], packet[24:40])
    assert echo.data == packet[48:]
    assert icmpv6_checksum(echo.source, echo.destination, packet[40:]) == 0


@BOUNDED
@given(packets)
def test_parse_packet_too_big_never_raises_and_reports_what_is_there(packet: bytes) -> None:
    too_big = parse_packet_too_big(packet)
    if too_big is None:
        return
    assert isinstance(too_big, PacketTooBig)
    assert too_big.mtu == int.from_bytes(packet[44:48], "big")
    assert too_big.invoking_packet == packet[48:]


@BOUNDED
@given(packets)
def test_is_keepalive_never_raises_on_checked_packets(packet: bytes) -> None:
    if check_ipv6(packet) is not None:
        return
    assert is_keepalive(packet) == (packet[6] == NEXT_HEADER_NONE
                                    and packet[24:40] == KEEPALIVE_ADDRESS)


@BOUNDED
@given(addresses, addresses, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.binary(max_size=100), st.booleans())
def test_echo_round_trips(src: bytes, dst: bytes, identifier: int, sequence: int, data: bytes,
                          request: bool) -> None:
    packet = build_echo(src, dst, identifier, sequence, data, request=request)
    assert parse_echo(packet) == Echo(src, dst, request, identifier, sequence, data)


@BOUNDED
@given(addresses, st.integers(1280, 65535), st.integers(40, 3000).map(bytes))
def test_packet_too_big_round_trips_within_1280_bytes(src: bytes, mtu: int,
                                                      invoking: bytes) -> None:
    packet = build_packet_too_big(src, mtu, invoking)
    assert len(packet) <= 1280
    assert parse_packet_too_big(packet) == PacketTooBig(src, invoking[8:24], mtu,
                                                        invoking[:1280 - 48])


def reference_checksum(data: bytes) -> int:
    total = 0
    for index in range(0, len(data), 2):
        total += int.from_bytes(data[index:index + 2].ljust(2, b"\x00"), "big")
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@BOUNDED
@given(st.binary(max_size=200))
def test_internet_checksum_matches_a_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


# --- gateway ----------------------------------------------------------------------------------


def populated_gateway() -> Gateway:
    """CLIENTS[0] active from PEERS[0], CLIENTS[1] temporary from PEERS[2], at t=10."""
    gateway = make_gateway()
    assert gateway.receive_from_client(build_ipv6(CLIENTS[0], HOME_AGENT, 50, b"bu"),
                                       PEERS[0], 10.0) is FORWARD
    assert gateway.receive_from_home(build_ipv6(HOME_AGENT, CLIENTS[0], 50, b"ba"),
                                     10.0) == PEERS[0]
    assert gateway.receive_from_client(build_ipv6(CLIENTS[1], HOME_AGENT, 50, b"bu"),
                                       PEERS[2], 10.0) is FORWARD
    return gateway


@BOUNDED
@given(packets, peers, st.floats(10.0, 20.0))
def test_receive_from_client_never_raises(packet: bytes, peer: int, now: float) -> None:
    gateway = populated_gateway()
    decision = gateway.receive_from_client(packet, peer, now)
    if decision is FORWARD:
        state = gateway.lookup(ipaddress.IPv6Address(packet[8:24]))
        assert state is not None
        assert state.peer == peer
        assert ipaddress.IPv6Address(packet[8:24]) in PREFIX
        assert packet[24:40] == HOME_AGENT
    elif isinstance(decision, Reply):
        assert is_keepalive(packet)
        state = gateway.lookup(ipaddress.IPv6Address(packet[8:24]))
        assert state is not None
        assert (state.kind, state.peer) == (StateKind.ACTIVE, peer)
    else:
        assert isinstance(decision, Drop)
        assert gateway.drops == Counter({decision.reason: 1})


@BOUNDED
@given(packets, st.floats(10.0, 20.0))
def test_receive_from_home_never_raises(packet: bytes, now: float) -> None:
    gateway = populated_gateway()
    decision = gateway.receive_from_home(packet, now)
    if isinstance(decision, int):
        state = gateway.lookup(ipaddress.IPv6Address(packet[24:40]))
        assert state is not None
        assert (state.kind, state.peer) == (StateKind.ACTIVE, decision)
        assert len(packet) <= gateway.client_mtu(decision)
    elif isinstance(decision, Reply):
        too_big = parse_packet_too_big(decision.packet)
        assert too_big is not None
        assert too_big.destination == packet[8:24]
        assert gateway.drops == Counter({DropReason.TOO_BIG: 1})
    else:
        assert isinstance(decision, Drop)
        assert gateway.drops == Counter({decision.reason: 1})


# The daemon skips the core for the rest of a flow within one batch (m6t/gateway/daemon.py):
# these are the promises in receive_from_client's and receive_from_home's docstrings it rests on.
flow_addresses = st.sampled_from([*CLIENTS[:3], HOME_AGENT, HOME_HOST, OUTSIDER])


@BOUNDED
@given(packets, st.sampled_from(CLIENTS[:3]), st.sampled_from(PEERS), next_headers, payloads,
       st.floats(10.0, 20.0))
def test_a_forwarded_client_flow_stays_forwarded_within_a_batch(
        first: bytes, src: bytes, peer: int, next_header: int, payload: bytes,
        now: float) -> None:
    gateway = populated_gateway()
    if gateway.receive_from_client(first, peer, now) is not FORWARD:
        first = build_ipv6(src, HOME_AGENT, 50, b"first")
    assume(gateway.receive_from_client(first, peer, now) is FORWARD)
    drops = Counter(gateway.drops)
    same_flow = build_ipv6(first[8:24], first[24:40], next_header, payload)
    assert gateway.receive_from_client(same_flow, peer, now) is FORWARD
    assert gateway.drops == drops


@BOUNDED
@given(packets, st.sampled_from(CLIENTS[:2]), flow_addresses, next_headers, payloads,
       st.floats(10.0, 20.0))
def test_a_home_flow_goes_to_the_same_client_within_a_batch(
        first: bytes, dst: bytes, other_src: bytes, next_header: int, payload: bytes,
        now: float) -> None:
    gateway = populated_gateway()
    peer = gateway.receive_from_home(first, now)
    if not isinstance(peer, int):
        first = build_ipv6(HOME_AGENT, dst, 50, b"first")
        peer = gateway.receive_from_home(first, now)
    assume(isinstance(peer, int))
    assert isinstance(peer, int)
    drops = Counter(gateway.drops)
    same_flow = build_ipv6(other_src, first[24:40], next_header, payload)
    decision = gateway.receive_from_home(same_flow, now)
    if len(same_flow) <= gateway.client_mtu(peer):
        assert decision == peer
        assert gateway.drops == drops
    else:
        assert isinstance(decision, Reply | Drop)  # Packet Too Big, or its budget spent


# --- random sequences -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientPacket:
    client: int
    peer: int
    kind: str  # "data", "keepalive", "to_outsider"


@dataclass(frozen=True)
class HomePacket:
    client: int
    from_home_agent: bool
    size: int


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Expire:
    pass


# Few clients and peers, so that states collide; client and home packets come up most.
client_indexes = st.integers(0, len(CLIENTS) - 1)
client_packets = st.builds(ClientPacket, client_indexes, st.integers(0, len(PEERS) - 1),
                           st.sampled_from(["data", "data", "data", "keepalive", "to_outsider"]))
home_packets = st.builds(HomePacket, client_indexes, st.sampled_from([True, True, False]),
                         st.sampled_from([60, 60, 60, 1400, 1401]))
operations = st.one_of(
    client_packets, client_packets, home_packets, home_packets,
    st.builds(Advance, st.one_of(st.sampled_from([0.0, 0.001, 0.01, 0.5, 1.0, 2.5, 11.0]),
                                 st.floats(0.0, 15.0))),
    st.just(Expire()),
)


def check_invariants(gateway: Gateway) -> None:
    states = gateway.states()
    kinds = Counter(state.kind for state in states)
    counts = gateway.counts()
    assert counts == {StateKind.TEMPORARY: kinds[StateKind.TEMPORARY],
                      StateKind.ACTIVE: kinds[StateKind.ACTIVE]}
    assert sum(counts.values()) <= gateway.policy.max_states
    assert counts[StateKind.TEMPORARY] <= gateway.policy.max_temporary_states
    assert len({state.address for state in states}) == len(states)
    assert all(state.address in PREFIX for state in states)
    deadline = gateway.next_deadline()
    assert (deadline is None) == (not states)
    if deadline is not None:
        assert deadline <= min(state.expires_at for state in states) + EXPIRY_TICK + 1e-9


@bounded(max_examples=200)
@given(st.lists(operations, min_size=20, max_size=100))
def test_random_sequences_keep_the_table_consistent_and_bounded(ops: list[object]) -> None:
    gateway = make_gateway()
    now = 100.0
    expected_drops: Counter[DropReason] = Counter()
    for op in ops:
        before = {state.address: state for state in gateway.states()}
        if isinstance(op, ClientPacket):
            src, peer = CLIENTS[op.client], PEERS[op.peer]
            if op.kind == "keepalive":
                packet = build_keepalive(src)
            else:
                packet = build_ipv6(src, OUTSIDER if op.kind == "to_outsider" else HOME_AGENT,
                                    50, b"payload")
            decision: object = gateway.receive_from_client(packet, peer, now)
            if decision is FORWARD or isinstance(decision, Reply):
                state = gateway.lookup(ipaddress.IPv6Address(src))
                assert state is not None
                assert state.peer == peer
        elif isinstance(op, HomePacket):
            dst = CLIENTS[op.client]
            packet = build_ipv6(HOME_AGENT if op.from_home_agent else HOME_HOST, dst, 50,
                                bytes(op.size - 40))
            decision = gateway.receive_from_home(packet, now)
            if isinstance(decision, int):
                state = gateway.lookup(ipaddress.IPv6Address(dst))
                assert state is not None
                assert (state.kind, state.peer) == (StateKind.ACTIVE, decision)
            elif isinstance(decision, Reply):
                expected_drops[DropReason.TOO_BIG] += 1
        elif isinstance(op, Advance):
            now += op.seconds
            decision = None
        else:
            removed = gateway.expire(now)
            decision = None
            after = gateway.states()
            assert removed == len(before) - len(after)
            # Nothing is removed early, and nothing due stays more than a tick or so.
            assert all(state.address in {s.address for s in after}
                       for state in before.values() if state.expires_at > now)
            assert all(state.expires_at > now - 2 * EXPIRY_TICK for state in after)
        if isinstance(decision, Drop):
            expected_drops[decision.reason] += 1
        # States are never updated: a state that lives on keeps its peer, and never goes
        # back from active to temporary.
        for state in gateway.states():
            old = before.get(state.address)
            if old is not None:
                assert state.peer == old.peer
                assert not (old.kind is StateKind.ACTIVE and state.kind is StateKind.TEMPORARY)
        check_invariants(gateway)
    assert gateway.drops == expected_drops


# --- ICMPv4 "fragmentation needed" (m6t.linux.udp) --------------------------------------------

# Router 192.0.2.1 tells the gateway (198.51.100.1) that its 1500-byte datagram from port 3544
# to the client's NAT (203.0.113.9:40000) needs a 1400-byte next-hop MTU.
FRAGMENTATION_NEEDED = bytes.fromhex(
    "45000038 00000000 4001 0000 c0000201 c6336401"  # outer IPv4: ICMP, router -> gateway
    "0304 0000 0000 0578"  # type 3 code 4, checksum (unchecked), unused, next-hop MTU 1400
    "450005dc 12340000 4011 0000 c6336401 cb007109"  # quoted IPv4: UDP, gateway -> client
    "0dd8 9c40 05c8 0000"  # quoted UDP: 3544 -> 40000
)


def test_parse_fragmentation_needed_reads_the_quoted_udp_datagram() -> None:
    assert parse_fragmentation_needed(FRAGMENTATION_NEEDED) == FragmentationNeeded(
        local=("198.51.100.1", 3544), remote=("203.0.113.9", 40000), mtu=1400)


@pytest.mark.parametrize(
    ("offset", "value"),
    [(0, 0x65), (20, 0x0B), (21, 0x03), (26, 0x00), (37, 0x06), (28, 0x65)],
    ids=["outer_not_ipv4", "time_exceeded", "port_unreachable", "mtu_below_68",
         "quoted_tcp", "quoted_not_ipv4"],
)
def test_parse_fragmentation_needed_rejects(offset: int, value: int) -> None:
    packet = bytearray(FRAGMENTATION_NEEDED)
    packet[offset] = value
    if offset == 26:
        packet[27] = 67
    assert parse_fragmentation_needed(bytes(packet)) is None


@st.composite
def near_fragmentation_needed(draw: st.DrawFn) -> bytes:
    packet = bytearray(FRAGMENTATION_NEEDED)
    for _ in range(draw(st.integers(0, 4))):
        offset = draw(st.integers(0, len(packet) - 1))
        packet[offset] = draw(st.sampled_from([0x40, 0x41, 0x44, 0x4F, 0x03, 0x04, 0x11, 0x00,
                                               0xFF]) | st.integers(0, 255))
    return bytes(packet[:draw(st.integers(0, len(packet) + 8))]) + draw(st.binary(max_size=24))


@BOUNDED
@given(st.one_of(st.binary(max_size=100), near_fragmentation_needed()))
def test_parse_fragmentation_needed_never_raises(packet: bytes) -> None:
    parsed = parse_fragmentation_needed(packet)
    assert parsed is None or (isinstance(parsed, FragmentationNeeded) and parsed.mtu >= 68)


@pytest.mark.parametrize("where", ["quoted", "outer"])
def test_parse_fragmentation_needed_rejects_ipv4_headers_shorter_than_20_bytes(
        where: str) -> None:
    if where == "quoted":
        # The quoted header claims IHL 4 (16 bytes): the "UDP ports" would be read at offset 16,
        # i.e. from the quoted destination address.
        packet = bytearray(FRAGMENTATION_NEEDED)
        packet[28] = 0x44
    else:
        # The outer header claims IHL 4: the ICMP message is looked for at offset 16.
        packet = bytearray(b"\x44" + bytes(15) + FRAGMENTATION_NEEDED[20:])
    assert parse_fragmentation_needed(bytes(packet)) is None


@bounded(300)
@given(now=st.floats(min_value=0, max_value=1e9, allow_nan=False),
       rate=st.sampled_from([0.001, 0.5, 1.0, 3.0, 5.0, 10.0, 1000.0]),
       burst=st.integers(min_value=1, max_value=50))
def test_a_burst_at_one_instant_gets_exactly_its_tokens(now: float, rate: float,
                                                       burst: int) -> None:
    # "Creation of such states should also be rate-limited on a per IPv4 address basis"
    # (Against the GW): the budget is `burst` at once, never one fewer from float rounding.
    buckets = TokenBuckets(rate, burst, max_sources=4)
    granted = sum(buckets.take("198.51.100.7", now) for _ in range(burst + 3))
    assert granted == burst
