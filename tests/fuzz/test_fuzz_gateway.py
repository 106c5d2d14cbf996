"""Fuzzing the packet checks and the gateway's two receive paths as a machine with a memory.

tests/unit/test_properties.py checks single packets against a fixed table and random sequences
of well-formed operations. Here Hypothesis drives one Gateway through long runs where every
packet is any bytes (corpus/packets/ seeds with our addresses written in, then mutated), from
any peer, both directions interleaved, with the clock, expiry, ICMP-lowered client MTUs and
policy reloads (SIGHUP) mixed in; after every step the decision must be one the draft allows
and the table's invariants must hold. The client's own checks (m6t.protocol.client) get the
same bytes.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.client import (
    PROBE_MARKER,
    Inbound,
    PortRace,
    check_from_tun,
    classify_from_gateway,
)
from m6t.protocol.constants import IPV6_MINIMUM_MTU, KEEPALIVE_ADDRESS, NEXT_HEADER_NONE
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
    build_ipv6,
    build_keepalive,
    build_keepalive_reply,
    check_ipv6,
    echo_reply_for,
    is_keepalive,
    parse_echo,
    parse_packet_too_big,
)
from tests.fuzz.seeds import mutated, seeds
from tests.unit.helpers import bounded

PREFIX = ipaddress.IPv6Network("fd6d:6d74:1::/48")
HOME_AGENTS = [ipaddress.IPv6Address("fd48:4100::2"), ipaddress.IPv6Address("2001:db8:1::1")]
HOME_HOST = ipaddress.IPv6Address("fd48:4100::99").packed
CLIENTS = [TunnelPrefix.compose(PREFIX, 1, n).address(0xA1B2_C3D4_E5F6 + n).packed
           for n in range(1, 6)]
OUTSIDE = ipaddress.IPv6Address("fd00:bad::1").packed
ADDRESSES = [*CLIENTS, *(a.packed for a in HOME_AGENTS), HOME_HOST, KEEPALIVE_ADDRESS, OUTSIDE,
             bytes(16)]
PEERS = [pack_peer(bytes([198, 51, 100, 2]), port, listener)
         for port in (40001, 40002) for listener in (0, 1)] + \
        [pack_peer(bytes([198, 51, 100, 3]), 40001), pack_peer(bytes([203, 0, 113, 9]), 9)]
PACKETS = seeds("packets")


@st.composite
def packets(draw: st.DrawFn, sources: list[bytes], destinations: list[bytes]) -> bytes:
    """A seed packet, usually with addresses of this direction written in (so that states are
    made, used and refused), sometimes mutated after that."""
    packet = bytearray(draw(st.sampled_from(PACKETS)))
    if len(packet) >= 40 and draw(st.integers(0, 3)):
        packet[8:24] = draw(st.sampled_from(sources) | st.sampled_from(ADDRESSES))
        packet[24:40] = draw(st.sampled_from(destinations) | st.sampled_from(ADDRESSES))
    if draw(st.integers(0, 3)) == 0:
        return draw(mutated([bytes(packet)], max_steps=3))
    return bytes(packet)


HOME_SIDE = [*(a.packed for a in HOME_AGENTS), HOME_HOST]
to_home = st.one_of(packets(CLIENTS[:3], [HOME_AGENTS[0].packed, KEEPALIVE_ADDRESS]),
                    packets(CLIENTS, [*HOME_SIDE, KEEPALIVE_ADDRESS]), st.binary(max_size=80))
from_home = st.one_of(packets(HOME_SIDE[:1], CLIENTS[:3]), packets(HOME_SIDE, CLIENTS),
                      st.binary(max_size=80))
any_packet = st.one_of(to_home, from_home)
peers = st.one_of(st.sampled_from(PEERS), st.sampled_from(PEERS),
                  st.builds(pack_peer, st.binary(min_size=4, max_size=4), st.integers(0, 65535),
                            st.integers(0, 255)))


def policy(**tuning: Any) -> GatewayPolicy:
    settings_: dict[str, Any] = {
        "client_prefix": PREFIX, "home_agents": frozenset(HOME_AGENTS[:1]),
        "temporary_lifetime": 2.0, "active_lifetime": 10.0, "new_states_per_second": 0.5,
        "new_states_burst": 2, "max_states": 4, "max_temporary_states": 3, "mtu": 1400,
    }
    settings_.update(tuning)
    return GatewayPolicy(**settings_)


# What a SIGHUP may bring (the daemon keeps client_prefix across reloads).
RELOADS = [policy(), policy(max_states=2, max_temporary_states=1),
           policy(home_agents=frozenset(HOME_AGENTS), mtu=1280, active_lifetime=3.0),
           policy(new_states_per_second=100.0, new_states_burst=50, max_states=50,
                  temporary_lifetime=0.5),
           policy(mtu=65507, packet_too_big_per_second=1.0)]


class GatewayMachine(RuleBasedStateMachine):
    """One gateway, any packets, and a running count of what it should have dropped."""

    @initialize()
    def start(self) -> None:
        self.gateway = Gateway(policy())
        self.now = 100.0
        self.expected_drops: Counter[DropReason] = Counter(dict.fromkeys(DropReason, 0))

    def table(self) -> dict[bytes, tuple[StateKind, int, float]]:
        return {s.address.packed: (s.kind, s.peer, s.expires_at) for s in self.gateway.states()}

    def dropped(self, decision: Drop, before: dict[bytes, Any]) -> None:
        assert isinstance(decision.reason, DropReason)
        self.expected_drops[decision.reason] += 1
        after = self.table()
        # A drop changes no state (not even a lifetime).
        assert after == before

    @rule(packet=to_home, peer=peers)
    def from_client(self, packet: bytes, peer: int) -> None:
        gateway, before = self.gateway, self.table()
        decision = gateway.receive_from_client(packet, peer, self.now)
        event(f"from client: {getattr(decision, 'reason', decision)!r}")
        src = packet[8:24]
        if decision is FORWARD:
            assert check_ipv6(packet) is None
            assert ipaddress.IPv6Address(src) in gateway.policy.client_prefix
            assert packet[24:40] in {a.packed for a in gateway.policy.home_agents}
            kind, state_peer, _ = self.table()[src]
            assert state_peer == peer
            if src not in before:
                # A new (temporary) state: only below both caps.
                assert kind is StateKind.TEMPORARY
                assert len(before) < gateway.policy.max_states
                assert sum(k is StateKind.TEMPORARY for k, _, _ in before.values()) \
                    < gateway.policy.max_temporary_states
        elif isinstance(decision, Reply):
            # "it replies with a similar message but with the addresses reversed": only for
            # an active state from its own IPv4 address and port.
            assert is_keepalive(packet) and len(packet) == 40 and packet[6] == NEXT_HEADER_NONE
            assert before[src][:2] == (StateKind.ACTIVE, peer)
            assert decision.packet == build_keepalive_reply(packet)
        else:
            assert isinstance(decision, Drop)
            self.dropped(decision, before)

    @rule(client=st.sampled_from(CLIENTS[:3]), peer=st.sampled_from(PEERS),
          keepalive=st.booleans())
    def client_speaks(self, client: bytes, peer: int, keepalive: bool) -> None:
        """A well-formed packet from one of a few clients: states get made and refused."""
        packet = build_keepalive(client) if keepalive else build_ipv6(
            client, HOME_AGENTS[0].packed, 17, bytes(20))
        self.from_client(packet, peer)

    @rule(client=st.sampled_from(CLIENTS[:3]), source=st.sampled_from(HOME_SIDE),
          size=st.sampled_from([40, 100, 1280, 1400, 1401, 1500]))
    def home_answers(self, client: bytes, source: bytes, size: int) -> None:
        """A well-formed packet from the home side: states get confirmed, used, too small."""
        self.from_home(build_ipv6(source, client, 17, bytes(size - 40)))

    @rule(packet=from_home)
    def from_home(self, packet: bytes) -> None:
        gateway, before = self.gateway, self.table()
        decision = gateway.receive_from_home(packet, self.now)
        event(f"from home: {getattr(decision, 'reason', type(decision).__name__)!r}")
        dst = packet[24:40]
        if isinstance(decision, Drop):
            self.dropped(decision, before)
            return
        assert check_ipv6(packet) is None and dst in before
        kind, peer, _ = self.table()[dst]
        assert kind is StateKind.ACTIVE and peer == before[dst][1]
        if before[dst][0] is StateKind.TEMPORARY:
            # Only a home agent confirms a temporary state.
            assert packet[8:24] in {a.packed for a in gateway.policy.home_agents}
        if isinstance(decision, Reply):
            too_big = parse_packet_too_big(decision.packet)
            assert too_big is not None and too_big.destination == packet[8:24]
            assert len(packet) > gateway.client_mtu(peer)
            assert IPV6_MINIMUM_MTU <= too_big.mtu == gateway.client_mtu(peer)
            self.expected_drops[DropReason.TOO_BIG] += 1
        else:
            assert decision == peer and len(packet) <= gateway.client_mtu(peer)

    @rule(seconds=st.sampled_from([0.0, 0.001, EXPIRY_TICK, 0.5, 2.0, 2.5, 11.0])
          | st.floats(0.0, 15.0))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def expire(self) -> None:
        before = self.table()
        removed = self.gateway.expire(self.now)
        after = self.table()
        assert removed == len(before) - len(after)
        assert all(address in after for address, (_, _, expires_at) in before.items()
                   if expires_at > self.now)
        assert all(expires_at > self.now - 2 * EXPIRY_TICK for _, _, expires_at in after.values())

    @rule(peer=peers, ipv4_mtu=st.integers(0, 70_000))
    def fragmentation_needed(self, peer: int, ipv4_mtu: int) -> None:
        before = self.gateway.client_mtu(peer)
        lowered = self.gateway.lower_client_mtu(peer, ipv4_mtu)
        after = self.gateway.client_mtu(peer)
        if lowered is None:
            assert after == before
        else:
            assert IPV6_MINIMUM_MTU <= lowered < before + 1 and after == lowered

    @rule(new=st.sampled_from(RELOADS))
    def reload(self, new: GatewayPolicy) -> None:
        before = self.table()
        self.gateway.apply_policy(new, self.now)
        assert self.table() == before  # states stay; new lifetimes apply from their next refresh

    @invariant()
    def table_is_consistent(self) -> None:
        gateway = self.gateway
        states = gateway.states()
        counts = gateway.counts()
        assert counts[StateKind.TEMPORARY] + counts[StateKind.ACTIVE] == len(states)
        assert len({s.address for s in states}) == len(states)
        assert all(s.address in PREFIX for s in states)
        deadline = gateway.next_deadline()
        assert (deadline is None) == (not states)
        if states:
            assert deadline is not None
            assert deadline <= min(s.expires_at for s in states) + EXPIRY_TICK + 1e-9
        assert gateway.drops == self.expected_drops


GatewayMachine.TestCase.settings = settings(bounded(50), stateful_step_count=50)
test_the_gateway_keeps_its_invariants_whatever_arrives = GatewayMachine.TestCase


# --- the client's checks (m6t.protocol.client) ------------------------------------------------

OURS = CLIENTS[0]


@bounded(200)
@given(any_packet)
def test_what_the_helper_reads_from_the_gateway_is_classified_or_dropped_by_name(
        packet: bytes) -> None:
    decision = classify_from_gateway(packet, OURS)
    if isinstance(decision, DropReason):
        return
    assert check_ipv6(packet) is None and packet[24:40] == OURS
    if decision is Inbound.KEEPALIVE_REPLY:
        assert packet[6] == NEXT_HEADER_NONE and packet[8:24] == KEEPALIVE_ADDRESS
    elif decision is Inbound.PROBE_REPLY:
        # An echo reply carrying our probe marker (its checksum is the session's to check).
        assert packet[6] == 58 and packet[40] == 129 and packet[48:].startswith(PROBE_MARKER)


@bounded(200)
@given(any_packet)
def test_what_the_helper_reads_from_its_tun_goes_out_only_from_its_address(
        packet: bytes) -> None:
    reason = check_from_tun(packet, OURS)
    if reason is None:
        assert check_ipv6(packet) is None and packet[8:24] == OURS
        assert packet[24] != 0xFF  # never multicast
    else:
        assert isinstance(reason, DropReason)


@bounded(100)
@given(st.lists(any_packet, max_size=10), st.integers(0, 2))
def test_a_port_race_is_won_only_by_the_answer_to_its_own_probe(
        answers: list[bytes], port_index: int) -> None:
    home_agent = HOME_AGENTS[0].packed
    ports = [3544, 4500, 53]
    race = PortRace(TunnelPrefix.compose(PREFIX, 1, 1), home_agent, ports, 10.0, set(),
                    timeout=3.0)
    sent = dict(race.due(10.0))
    port = ports[port_index]
    for answer in [*answers, sent[port]]:  # junk, then our own request reflected as is
        winner = race.receive(port, answer, 10.5)
        if winner is not None:
            echo = parse_echo(answer)
            assert echo is not None and not echo.is_request
            assert echo.identifier == race.identifier and echo.source == home_agent
            assert echo.destination == winner.address and echo.data.startswith(PROBE_MARKER)
    if race.candidates[port].rtt is None:
        reply = echo_reply_for(sent[port])  # the home agent's answer wins
        assert reply is not None and race.receive(port, reply, 10.5) is race.candidates[port]
