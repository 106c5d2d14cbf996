"""The gateway's state machine, driven with a fake clock through every transition of the draft.

`now` is a plain float; nothing sleeps. Each test names the rule of draft-ebalard-mext-m6t-02
it checks ("Route management on the tunnel GW", "Maintaining NAT states", "Against the GW",
"Protocol operations", "MTU considerations").
"""

from __future__ import annotations

import inspect
import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from m6t.protocol import gateway as gateway_module
from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.constants import (
    IPV6_MINIMUM_MTU,
    KEEPALIVE_ADDRESS,
    NEXT_HEADER_ICMPV6,
    NEXT_HEADER_NONE,
)
from m6t.protocol.drops import DropReason
from m6t.protocol.gateway import (
    EXPIRY_TICK,
    FORWARD,
    Drop,
    Gateway,
    GatewayPolicy,
    Peer,
    Reply,
    StateKind,
    StateView,
    pack_peer,
    peer_ipv4,
    unpack_peer,
)
from m6t.protocol.limits import PACKET_TOO_BIG_BURST
from m6t.protocol.packets import (
    IPv6Header,
    PacketTooBig,
    build_ipv6,
    build_keepalive,
    build_keepalive_reply,
    parse_packet_too_big,
)

PREFIX = ipaddress.IPv6Network("fd6d:6d74:1::/48")
HOME_AGENT = ipaddress.IPv6Address("fd48:4100::2")
SECOND_HOME_AGENT = ipaddress.IPv6Address("fd48:4100::3")
HOME_HOST = ipaddress.IPv6Address("fd48:4100::99")  # on the home side, but not a home agent
TEMPORARY_LIFETIME = 2.0
ACTIVE_LIFETIME = 90.0
ESP = 50

PEER = pack_peer(bytes([198, 51, 100, 7]), 40000)
SAME_IPV4_OTHER_PORT = pack_peer(bytes([198, 51, 100, 7]), 40001)
SAME_IPV4_AND_PORT_OTHER_LISTENER = pack_peer(bytes([198, 51, 100, 7]), 40000, 1)
OTHER_IPV4_SAME_PORT = pack_peer(bytes([203, 0, 113, 9]), 40000)
OTHER_PEERS = [SAME_IPV4_OTHER_PORT, SAME_IPV4_AND_PORT_OTHER_LISTENER, OTHER_IPV4_SAME_PORT]
OTHER_PEER_IDS = ["other_port", "other_listener", "other_ipv4"]


def client_address(mn_id: int, suffix: int = 0xA1B2_C3D4_E5F6) -> bytes:
    return TunnelPrefix.compose(PREFIX, 0, mn_id).address(suffix).packed


CLIENT = client_address(1)
SECOND_CLIENT = client_address(2)


def peer_number(index: int, port: int = 40000) -> Peer:
    """A distinct IPv4 address (198.18.x.y) per index, so that rate limits stay out of the way
    of tests about something else."""
    return pack_peer((0xC6120000 + index).to_bytes(4, "big"), port)


def make_gateway(**overrides: Any) -> Gateway:
    settings: dict[str, Any] = {
        "client_prefix": PREFIX,
        "home_agents": frozenset({HOME_AGENT, SECOND_HOME_AGENT}),
        "temporary_lifetime": TEMPORARY_LIFETIME,
        "active_lifetime": ACTIVE_LIFETIME,
    }
    settings.update(overrides)
    return Gateway(GatewayPolicy(**settings))


def to_home(src: bytes = CLIENT, dst: bytes = HOME_AGENT.packed, next_header: int = ESP,
            payload: bytes = b"esp payload") -> bytes:
    """What a client sends through the tunnel (an IPsec-protected BU, say)."""
    return build_ipv6(src, dst, next_header, payload)


def from_home(dst: bytes = CLIENT, src: bytes = HOME_AGENT.packed, size: int = 60,
              next_header: int = ESP) -> bytes:
    """A packet of `size` bytes from the home side to a client (the BA, say)."""
    return build_ipv6(src, dst, next_header, bytes(size - 40))


def view(gateway: Gateway, address: bytes = CLIENT) -> StateView | None:
    return gateway.lookup(ipaddress.IPv6Address(address))


def active_gateway(**overrides: Any) -> Gateway:
    """A gateway with CLIENT known from PEER: temporary at t=0, active since t=1 (until 91)."""
    gateway = make_gateway(**overrides)
    assert gateway.receive_from_client(to_home(), PEER, 0.0) is FORWARD
    assert gateway.receive_from_home(from_home(), 1.0) == PEER
    return gateway


# --- peers ------------------------------------------------------------------------------------


def test_peer_packs_ipv4_port_and_listener_into_one_int() -> None:
    peer = pack_peer(bytes([198, 51, 100, 7]), 40000, 3)
    assert unpack_peer(peer) == (bytes([198, 51, 100, 7]), 40000, 3)
    assert peer_ipv4(peer) == 0xC6336407
    assert peer_ipv4(SAME_IPV4_OTHER_PORT) == peer_ipv4(SAME_IPV4_AND_PORT_OTHER_LISTENER)
    assert len({PEER, *OTHER_PEERS}) == 4


# --- temporary state --------------------------------------------------------------------------


def test_valid_client_packet_from_unknown_source_creates_a_temporary_state() -> None:
    # "A temporary state is created when a valid UDP-encapsulated IPv6 packet is received from
    # a MN and the IPv6 address is not already known." ... "forwards the packet to the final
    # destination (the HA)." (Protocol operations)
    gateway = make_gateway()
    assert gateway.next_deadline() is None
    assert gateway.receive_from_client(to_home(), PEER, 10.0) is FORWARD
    assert view(gateway) == StateView(ipaddress.IPv6Address(CLIENT), StateKind.TEMPORARY, PEER,
                                      10.0 + TEMPORARY_LIFETIME)
    assert gateway.counts() == {StateKind.TEMPORARY: 1, StateKind.ACTIVE: 0}
    assert gateway.drops == Counter()


def test_a_temporary_state_does_not_grow_with_retransmissions() -> None:
    gateway = make_gateway()
    gateway.receive_from_client(to_home(), PEER, 0.0)
    assert gateway.receive_from_client(to_home(), PEER, 1.5) is FORWARD
    state = view(gateway)
    assert state is not None
    assert (state.kind, state.expires_at) == (StateKind.TEMPORARY, TEMPORARY_LIFETIME)


def test_packet_from_the_home_agent_promotes_temporary_to_active() -> None:
    # "A temporary state becomes active when a packet from the HA to the MN is processed by
    # the tunnel gateway." (Route management on the tunnel GW)
    gateway = make_gateway()
    gateway.receive_from_client(to_home(), PEER, 0.0)
    assert gateway.receive_from_home(from_home(), 0.5) == PEER
    assert view(gateway) == StateView(ipaddress.IPv6Address(CLIENT), StateKind.ACTIVE, PEER,
                                      0.5 + ACTIVE_LIFETIME)
    assert gateway.counts() == {StateKind.TEMPORARY: 0, StateKind.ACTIVE: 1}
    assert gateway.drops == Counter()


def test_any_configured_home_agent_may_promote() -> None:
    gateway = make_gateway()
    gateway.receive_from_client(to_home(dst=SECOND_HOME_AGENT.packed), PEER, 0.0)
    assert gateway.receive_from_home(from_home(src=SECOND_HOME_AGENT.packed), 0.5) == PEER
    assert view(gateway).kind is StateKind.ACTIVE  # type: ignore[union-attr]


@pytest.mark.parametrize("source", [HOME_HOST, ipaddress.IPv6Address(CLIENT),
                                    ipaddress.IPv6Address("2001:db8::1")],
                         ids=["home_host", "the_client_itself", "internet_host"])
def test_only_a_home_agent_promotes_a_temporary_state(source: ipaddress.IPv6Address) -> None:
    gateway = make_gateway()
    gateway.receive_from_client(to_home(), PEER, 0.0)
    before = view(gateway)
    assert gateway.receive_from_home(from_home(src=source.packed), 0.5) == Drop(
        DropReason.NOT_FROM_HOME_AGENT)
    assert view(gateway) == before
    assert gateway.drops == Counter({DropReason.NOT_FROM_HOME_AGENT: 1})
    # The real reply still confirms it afterwards.
    assert gateway.receive_from_home(from_home(), 0.6) == PEER


def test_packet_from_home_to_an_unknown_address_is_dropped() -> None:
    gateway = active_gateway()
    assert gateway.receive_from_home(from_home(dst=SECOND_CLIENT), 2.0) == Drop(
        DropReason.NO_STATE)
    assert gateway.drops == Counter({DropReason.NO_STATE: 1})
    assert view(gateway, SECOND_CLIENT) is None


# --- active state lifetime --------------------------------------------------------------------


def test_active_lifetime_is_extended_by_traffic_either_way_and_by_keepalives() -> None:
    # "An active state has a longer lifetime which is extended each time traffic is exchanged
    # with the MN (data or keep-alive messages)." (Route management on the tunnel GW)
    gateway = active_gateway()

    def expires_at() -> float:
        state = view(gateway)
        assert state is not None
        assert state.kind is StateKind.ACTIVE
        return state.expires_at

    assert expires_at() == 1.0 + ACTIVE_LIFETIME
    assert gateway.receive_from_client(to_home(), PEER, 30.0) is FORWARD  # client -> HA
    assert expires_at() == 30.0 + ACTIVE_LIFETIME
    assert gateway.expire(100.0) == 0  # past the first lifetime, but refreshed since
    assert gateway.receive_from_home(from_home(), 110.0) == PEER  # HA -> client
    assert expires_at() == 110.0 + ACTIVE_LIFETIME
    assert gateway.expire(150.0) == 0
    keepalive = gateway.receive_from_client(build_keepalive(CLIENT), PEER, 150.0)
    assert isinstance(keepalive, Reply)
    assert expires_at() == 150.0 + ACTIVE_LIFETIME
    assert gateway.expire(230.0) == 0
    assert gateway.expire(239.99) == 0
    assert view(gateway) is not None
    deadline = gateway.next_deadline()
    assert deadline is not None
    assert 240.0 <= deadline <= 240.0 + EXPIRY_TICK + 1e-9
    assert gateway.expire(deadline) == 1
    assert view(gateway) is None
    assert gateway.drops == Counter()


def test_active_state_goes_after_active_lifetime_of_idleness() -> None:
    gateway = active_gateway()  # active since t=1: until 91
    first = gateway.next_deadline()  # still the temporary deadline: refiled lazily
    assert first is not None
    assert TEMPORARY_LIFETIME <= first <= TEMPORARY_LIFETIME + EXPIRY_TICK + 1e-9
    assert gateway.expire(first) == 0
    assert view(gateway) is not None
    deadline = gateway.next_deadline()
    assert deadline is not None
    assert 91.0 <= deadline <= 91.0 + EXPIRY_TICK + 1e-9
    assert gateway.expire(90.99) == 0
    assert view(gateway) is not None
    assert gateway.expire(deadline) == 1
    assert view(gateway) is None
    assert gateway.next_deadline() is None
    assert gateway.receive_from_home(from_home(), deadline) == Drop(DropReason.NO_STATE)


# --- states are never updated -----------------------------------------------------------------


@pytest.mark.parametrize("intruder", OTHER_PEERS, ids=OTHER_PEER_IDS)
@pytest.mark.parametrize("kind", [StateKind.TEMPORARY, StateKind.ACTIVE])
def test_same_ipv6_source_from_another_ipv4_peer_is_dropped_and_changes_nothing(
        kind: StateKind, intruder: Peer) -> None:
    # "address-related information (IPv6 address, IPv4 address, UDP port) in states (active
    # or temporary) are never updated ... the packet should be dropped and no modification to
    # existing should occur." (Route management on the tunnel GW)
    gateway = active_gateway() if kind is StateKind.ACTIVE else make_gateway()
    if kind is StateKind.TEMPORARY:
        gateway.receive_from_client(to_home(), PEER, 0.0)
    before = view(gateway)
    assert before is not None
    assert before.kind is kind
    assert gateway.receive_from_client(to_home(), intruder, 1.5) == Drop(DropReason.IPV4_MISMATCH)
    assert view(gateway) == before
    assert gateway.drops == Counter({DropReason.IPV4_MISMATCH: 1})
    # "it is not possible for the attacker to cause the m6t gateway to redirect the MN's
    # traffic to a different IPv4 address and UDP port" (Against the MN)
    assert gateway.receive_from_home(from_home(), 1.6) == PEER
    assert gateway.receive_from_client(to_home(), PEER, 1.7) is FORWARD


# --- keepalives -------------------------------------------------------------------------------


def test_keepalive_for_an_active_state_gets_the_reversed_reply() -> None:
    # "It verifies an active state exists for the source address in the packet and that the
    # IPv4 parameters match the state. If this is the case, it replies with a similar message
    # but with the addresses reversed." (Maintaining NAT states)
    gateway = active_gateway()
    keepalive = build_keepalive(CLIENT)
    decision = gateway.receive_from_client(keepalive, PEER, 20.0)
    assert decision == Reply(build_keepalive_reply(keepalive))
    assert isinstance(decision, Reply)
    reply = IPv6Header.unpack(decision.packet)
    assert (reply.source, reply.destination) == (KEEPALIVE_ADDRESS, CLIENT)
    assert (reply.next_header, reply.payload_length) == (NEXT_HEADER_NONE, 0)
    assert gateway.drops == Counter()


def test_keepalive_for_a_temporary_state_is_dropped_and_neither_promotes_nor_refreshes() -> None:
    gateway = make_gateway()
    gateway.receive_from_client(to_home(), PEER, 0.0)
    before = view(gateway)
    assert gateway.receive_from_client(build_keepalive(CLIENT), PEER, 1.0) == Drop(
        DropReason.KEEPALIVE_NO_STATE)
    assert view(gateway) == before
    assert gateway.drops == Counter({DropReason.KEEPALIVE_NO_STATE: 1})


def test_keepalive_for_an_unknown_address_is_dropped_and_creates_nothing() -> None:
    gateway = make_gateway()
    assert gateway.receive_from_client(build_keepalive(CLIENT), PEER, 0.0) == Drop(
        DropReason.KEEPALIVE_NO_STATE)
    assert gateway.states() == []
    assert gateway.next_deadline() is None
    assert gateway.drops == Counter({DropReason.KEEPALIVE_NO_STATE: 1})


@pytest.mark.parametrize("intruder", OTHER_PEERS, ids=OTHER_PEER_IDS)
def test_keepalive_from_another_ipv4_peer_is_dropped_and_does_not_refresh(intruder: Peer) -> None:
    gateway = active_gateway()
    before = view(gateway)
    assert gateway.receive_from_client(build_keepalive(CLIENT), intruder, 50.0) == Drop(
        DropReason.KEEPALIVE_IPV4_MISMATCH)
    assert view(gateway) == before
    assert gateway.drops == Counter({DropReason.KEEPALIVE_IPV4_MISMATCH: 1})


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(build_ipv6(CLIENT, KEEPALIVE_ADDRESS, NEXT_HEADER_ICMPV6, bytes(8)),
                     id="icmpv6_to_fe80_1"),
        pytest.param(build_ipv6(CLIENT, KEEPALIVE_ADDRESS, NEXT_HEADER_NONE, b"x"),
                     id="next_header_59_with_payload"),
        pytest.param(build_ipv6(CLIENT, KEEPALIVE_ADDRESS, 17, b""), id="empty_udp"),
    ],
)
def test_malformed_keepalive_is_dropped(packet: bytes) -> None:
    gateway = active_gateway()
    before = view(gateway)
    assert gateway.receive_from_client(packet, PEER, 50.0) == Drop(DropReason.BAD_KEEPALIVE)
    assert view(gateway) == before
    assert gateway.drops == Counter({DropReason.BAD_KEEPALIVE: 1})


# --- sanity checks on client packets ----------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "fd6d:6d75::1",  # next /48
        "fd6d:6d74::1",  # the /32 around the prefix
        "2001:db8::1",
        str(HOME_AGENT),
        "fe80::1",
    ],
)
def test_source_outside_the_client_prefix_is_dropped(source: str) -> None:
    # "initial sanity checks are performed on the packet (IPv6 destination address is HA
    # address, IPv6 address is from the configured ULA prefix, ...)" (Against the GW)
    gateway = make_gateway()
    packet = to_home(src=ipaddress.IPv6Address(source).packed)
    assert gateway.receive_from_client(packet, PEER, 0.0) == Drop(DropReason.SRC_OUTSIDE_PREFIX)
    assert gateway.states() == []
    assert gateway.drops == Counter({DropReason.SRC_OUTSIDE_PREFIX: 1})


def test_prefix_check_is_exact_for_prefixes_not_on_a_byte_boundary() -> None:
    gateway = make_gateway(client_prefix=ipaddress.IPv6Network("fd6d:6d74:10::/44"))
    inside = ipaddress.IPv6Address("fd6d:6d74:1f:ffff::1").packed
    outside = ipaddress.IPv6Address("fd6d:6d74:20::1").packed
    below = ipaddress.IPv6Address("fd6d:6d74:f:ffff::1").packed
    assert gateway.receive_from_client(to_home(src=inside), PEER, 0.0) is FORWARD
    assert gateway.receive_from_client(to_home(src=outside), PEER, 0.0) == Drop(
        DropReason.SRC_OUTSIDE_PREFIX)
    assert gateway.receive_from_client(to_home(src=below), PEER, 0.0) == Drop(
        DropReason.SRC_OUTSIDE_PREFIX)


@pytest.mark.parametrize("destination", [HOME_HOST, ipaddress.IPv6Address("2001:db8::1"),
                                         ipaddress.IPv6Address(SECOND_CLIENT)],
                         ids=["home_host", "internet_host", "another_client"])
def test_destination_other_than_a_home_agent_is_dropped(
        destination: ipaddress.IPv6Address) -> None:
    gateway = make_gateway()
    packet = to_home(dst=destination.packed)
    assert gateway.receive_from_client(packet, PEER, 0.0) == Drop(DropReason.DST_NOT_HOME_AGENT)
    assert gateway.states() == []
    assert gateway.drops == Counter({DropReason.DST_NOT_HOME_AGENT: 1})


UPPER_LAYERS = {"tcp": 6, "udp": 17, "fragment_header": 44, "esp": 50, "icmpv6": 58,
                "mobility_header": 135}


@pytest.mark.parametrize("next_header", UPPER_LAYERS.values(), ids=UPPER_LAYERS.keys())
def test_every_upper_layer_is_forwarded_both_ways(next_header: int) -> None:
    gateway = make_gateway()
    assert gateway.receive_from_client(to_home(next_header=next_header), PEER, 0.0) is FORWARD
    assert gateway.receive_from_home(from_home(next_header=next_header), 0.1) == PEER
    assert gateway.drops == Counter()


# --- rate limit on new states -----------------------------------------------------------------


def test_new_states_are_rate_limited_per_ipv4_address_not_per_port() -> None:
    # "Creation of such states should also be rate-limited on a per IPv4 address basis (not
    # considering the source port)" (Against the GW)
    gateway = make_gateway(new_states_per_second=4.0, new_states_burst=3)
    ipv4 = bytes([198, 51, 100, 7])

    def new_state(n: int, now: float, ipv4: bytes = ipv4) -> object:
        return gateway.receive_from_client(to_home(src=client_address(n)),
                                           pack_peer(ipv4, 1000 + n, n % 2), now)

    assert [new_state(n, 0.0) for n in range(1, 4)] == [FORWARD] * 3  # the burst
    assert new_state(4, 0.0) == Drop(DropReason.RATE_LIMITED)
    assert view(gateway, client_address(4)) is None
    # Another IPv4 address has its own budget.
    other = bytes([203, 0, 113, 9])
    assert [new_state(n, 0.0, other) for n in range(10, 13)] == [FORWARD] * 3
    assert new_state(13, 0.0, other) == Drop(DropReason.RATE_LIMITED)
    # Packets of existing states are not new states: never rate limited.
    assert gateway.receive_from_client(to_home(src=client_address(1)),
                                       pack_peer(ipv4, 1001, 1), 0.0) is FORWARD
    # Refill at 4 per second: half a token after 1/8 s, one after 1/4 s.
    assert new_state(4, 0.125) == Drop(DropReason.RATE_LIMITED)
    assert new_state(4, 0.25) is FORWARD
    assert new_state(5, 0.25) == Drop(DropReason.RATE_LIMITED)
    # After a long quiet time, the budget is the burst again, not more.
    assert [new_state(n, 100.0) for n in range(20, 23)] == [FORWARD] * 3
    assert new_state(23, 100.0) == Drop(DropReason.RATE_LIMITED)
    assert gateway.drops == Counter({DropReason.RATE_LIMITED: 5})


# --- table caps -------------------------------------------------------------------------------


def test_max_states_counts_temporary_and_active_states() -> None:
    gateway = make_gateway(max_states=3, max_temporary_states=3)
    for n in range(3):
        assert gateway.receive_from_client(to_home(src=client_address(n)), peer_number(n),
                                           0.0) is FORWARD
    assert gateway.receive_from_home(from_home(dst=client_address(0)), 0.5) == peer_number(0)
    assert gateway.receive_from_home(from_home(dst=client_address(1)), 0.5) == peer_number(1)
    assert gateway.receive_from_client(to_home(src=client_address(3)), peer_number(3),
                                       1.0) == Drop(DropReason.TABLE_FULL)
    assert gateway.counts() == {StateKind.TEMPORARY: 1, StateKind.ACTIVE: 2}
    # Existing states keep working when the table is full.
    assert gateway.receive_from_client(to_home(src=client_address(0)), peer_number(0),
                                       1.0) is FORWARD
    # The unconfirmed one ages out, which makes room.
    assert gateway.expire(2.5) == 1
    assert gateway.receive_from_client(to_home(src=client_address(3)), peer_number(3),
                                       2.5) is FORWARD
    assert gateway.drops == Counter({DropReason.TABLE_FULL: 1})


def test_max_temporary_states_caps_unconfirmed_states_only() -> None:
    # "Unconfirmed (temporary) peers get less than confirmed ones" (STYLE), bounded table.
    gateway = make_gateway(max_states=10, max_temporary_states=2)
    for n in range(2):
        assert gateway.receive_from_client(to_home(src=client_address(n)), peer_number(n),
                                           0.0) is FORWARD
    assert gateway.receive_from_client(to_home(src=client_address(2)), peer_number(2),
                                       0.0) == Drop(DropReason.TOO_MANY_TEMPORARY)
    assert gateway.receive_from_home(from_home(dst=client_address(0)), 0.1) == peer_number(0)
    assert gateway.receive_from_client(to_home(src=client_address(2)), peer_number(2),
                                       0.2) is FORWARD
    assert gateway.receive_from_client(to_home(src=client_address(3)), peer_number(3),
                                       0.2) == Drop(DropReason.TOO_MANY_TEMPORARY)
    assert gateway.counts() == {StateKind.TEMPORARY: 2, StateKind.ACTIVE: 1}
    assert gateway.drops == Counter({DropReason.TOO_MANY_TEMPORARY: 2})


def test_max_temporary_states_defaults_to_a_tenth_of_max_states() -> None:
    assert make_gateway(max_states=50).policy.max_temporary_states == 5
    assert make_gateway(max_states=5).policy.max_temporary_states == 1


def test_a_full_table_does_not_burn_the_rate_limit_budget() -> None:
    gateway = make_gateway(max_states=1, new_states_burst=1, new_states_per_second=0.001)
    assert gateway.receive_from_client(to_home(src=client_address(0)), OTHER_IPV4_SAME_PORT,
                                       0.0) is FORWARD
    for _ in range(5):
        assert gateway.receive_from_client(to_home(), PEER, 1.0) == Drop(DropReason.TABLE_FULL)
    assert gateway.expire(2.5) == 1
    assert gateway.receive_from_client(to_home(), PEER, 2.5) is FORWARD


# --- expiry -----------------------------------------------------------------------------------


def test_temporary_state_goes_after_temporary_lifetime() -> None:
    # "Such a state has a short lifetime (some milli-seconds to a few seconds) and either
    # become active or is deleted." (Route management on the tunnel GW)
    gateway = make_gateway()
    gateway.receive_from_client(to_home(), PEER, 0.0)
    deadline = gateway.next_deadline()
    assert deadline is not None
    assert TEMPORARY_LIFETIME <= deadline <= TEMPORARY_LIFETIME + EXPIRY_TICK + 1e-9
    assert gateway.expire(1.99) == 0
    assert view(gateway) is not None
    assert gateway.expire(deadline) == 1
    assert view(gateway) is None
    assert gateway.counts() == {StateKind.TEMPORARY: 0, StateKind.ACTIVE: 0}
    assert gateway.next_deadline() is None
    # Too late for the HA's reply: nothing to promote.
    assert gateway.receive_from_home(from_home(), deadline) == Drop(DropReason.NO_STATE)
    # The address is free again: "it is garbage collected automatically", so another peer
    # may now use it.
    assert gateway.receive_from_client(to_home(), OTHER_IPV4_SAME_PORT, 3.0) is FORWARD
    assert view(gateway).peer == OTHER_IPV4_SAME_PORT  # type: ignore[union-attr]


def test_expire_removes_only_what_is_due() -> None:
    gateway = make_gateway()
    for n in range(4):
        gateway.receive_from_client(to_home(src=client_address(n)), peer_number(n), n * 1.0)
    # Deadlines 2, 3, 4, 5; client 1 is confirmed (until 91).
    gateway.receive_from_home(from_home(dst=client_address(1)), 1.5)
    assert gateway.expire(3.5) == 1
    assert {state.address.packed for state in gateway.states()} == {
        client_address(1), client_address(2), client_address(3)}
    assert gateway.expire(5.5) == 2
    assert [state.address.packed for state in gateway.states()] == [client_address(1)]


class CountingDict(dict):  # type: ignore[type-arg]
    """A dict that counts key lookups and whole-table walks."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.walks = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.lookups += 1
        return super().__contains__(key)

    def __iter__(self) -> Any:
        self.walks += 1
        return super().__iter__()

    def keys(self) -> Any:
        self.walks += 1
        return super().keys()

    def values(self) -> Any:
        self.walks += 1
        return super().values()

    def items(self) -> Any:
        self.walks += 1
        return super().items()


def test_expiry_never_scans_the_whole_table() -> None:
    # The tables are replaced by counting dicts (white-box: `_temporary` and `_active` are
    # where Gateway keeps its states) to show the cost of expire() follows what is due, not
    # the size of the table.
    gateway = make_gateway(max_states=20_000, max_temporary_states=20_000)
    temporary, active = CountingDict(), CountingDict()
    gateway._temporary = temporary  # type: ignore[assignment]
    gateway._active = active  # type: ignore[assignment]
    states = 5000
    for n in range(states):
        now = 1.0 + n * 0.001  # deadlines spread over 3.0 .. 8.0
        address = TunnelPrefix.compose(PREFIX, 0, 7).address(n + 1).packed
        assert gateway.receive_from_client(to_home(src=address), peer_number(n), now) is FORWARD
    assert gateway.counts()[StateKind.TEMPORARY] == states
    lookups_before = temporary.lookups + active.lookups

    assert gateway.expire(2.5) == 0  # nothing due
    assert temporary.lookups + active.lookups == lookups_before
    deadline = gateway.next_deadline()
    assert deadline is not None
    assert 3.0 <= deadline <= 3.0 + EXPIRY_TICK + 1e-9

    removed = gateway.expire(3.0 + 0.0105)  # the first ~10 ms worth of states
    assert 5 <= removed <= 20
    assert gateway.counts()[StateKind.TEMPORARY] == states - removed
    assert temporary.lookups + active.lookups - lookups_before <= 4 * removed
    assert temporary.walks == active.walks == 0


def test_next_deadline_is_never_later_than_the_earliest_expiry() -> None:
    gateway = make_gateway()
    gateway.receive_from_client(to_home(src=client_address(1)), peer_number(1), 5.0)
    gateway.receive_from_client(to_home(src=client_address(2)), peer_number(2), 3.0)
    gateway.receive_from_client(to_home(src=client_address(3)), peer_number(3), 4.0)
    earliest = min(state.expires_at for state in gateway.states())
    deadline = gateway.next_deadline()
    assert deadline is not None
    assert earliest <= deadline <= earliest + EXPIRY_TICK + 1e-9


def test_expire_at_next_deadline_with_nothing_due_still_moves_the_deadline_on() -> None:
    gateway = active_gateway()  # filed at the temporary deadline, active until 91
    stale = gateway.next_deadline()
    assert stale is not None
    assert gateway.expire(stale) == 0
    refiled = gateway.next_deadline()
    assert refiled is not None
    assert refiled > stale
    assert 91.0 <= refiled <= 91.0 + EXPIRY_TICK + 1e-9


def test_expire_at_next_deadline_removes_the_state_that_is_due() -> None:
    # A temporary state created at t=0.05 expires at 2.05. It is filed at tick 205 and
    # next_deadline() says 2.05; but expire(2.05) computes int(2.05 / 0.01) == 204 and does
    # nothing, although the state is past its lifetime, and next_deadline() stays 2.05: a
    # caller that loops "while next_deadline() <= now: expire(next_deadline())" never ends.
    gateway = make_gateway()
    gateway.receive_from_client(to_home(), PEER, 0.05)
    deadline = gateway.next_deadline()
    assert deadline is not None
    state = view(gateway)
    assert state is not None
    assert state.expires_at <= deadline
    assert gateway.expire(deadline) == 1
    assert view(gateway) is None


def test_a_reload_with_a_shorter_lifetime_expires_states_on_time() -> None:
    # Found by tests/fuzz: filed under the old lifetime (until 91), then SIGHUP shortens it to
    # 3 s and a packet refreshes the state to 13; the wheel still held it under tick 91, so it
    # outlived its lifetime by 78 s.
    gateway = active_gateway()
    assert gateway.expire(5.0) == 0  # re-filed from its temporary deadline to 91
    gateway.apply_policy(GatewayPolicy(client_prefix=PREFIX, home_agents=frozenset({HOME_AGENT}),
                                       temporary_lifetime=2.0, active_lifetime=3.0), 10.0)
    assert gateway.receive_from_client(to_home(), PEER, 10.0) is FORWARD
    deadline = gateway.next_deadline()
    assert deadline is not None and deadline <= 13.0 + EXPIRY_TICK + 1e-9
    assert gateway.expire(13.0 + EXPIRY_TICK) == 1
    assert view(gateway) is None


def test_a_reload_keeps_a_temporary_state_promoted_under_a_shorter_active_lifetime_on_time(
        ) -> None:
    gateway = make_gateway(temporary_lifetime=50.0)
    assert gateway.receive_from_client(to_home(), PEER, 0.0) is FORWARD  # until 50
    gateway.apply_policy(GatewayPolicy(client_prefix=PREFIX, home_agents=frozenset({HOME_AGENT}),
                                       temporary_lifetime=2.0, active_lifetime=3.0), 1.0)
    assert gateway.receive_from_home(from_home(), 1.0) == PEER  # active until 4
    assert gateway.expire(4.0 + EXPIRY_TICK) == 1


# --- MTU and Packet Too Big -------------------------------------------------------------------


def test_packet_larger_than_the_tunnel_mtu_gets_a_packet_too_big() -> None:
    # "The MTU of the tunnel interface is initially set to a default value of 1472 bytes ...
    # implementations should provide a mean for administrator to set the default MTU to a
    # different value." (MTU considerations)
    gateway = active_gateway(mtu=1400)
    assert gateway.receive_from_home(from_home(size=1400), 2.0) == PEER
    big = from_home(size=1401)
    decision = gateway.receive_from_home(big, 2.0)
    assert isinstance(decision, Reply)
    assert len(decision.packet) == IPV6_MINIMUM_MTU
    assert parse_packet_too_big(decision.packet) == PacketTooBig(
        source=(PREFIX.network_address + 1).packed, destination=HOME_AGENT.packed, mtu=1400,
        invoking_packet=big[:IPV6_MINIMUM_MTU - 48])
    assert gateway.drops == Counter({DropReason.TOO_BIG: 1})


def test_default_tunnel_mtu_is_1472() -> None:
    gateway = active_gateway()
    assert gateway.client_mtu(PEER) == 1472
    assert gateway.receive_from_home(from_home(size=1472), 2.0) == PEER
    decision = gateway.receive_from_home(from_home(size=1473), 2.0)
    assert isinstance(decision, Reply)
    assert parse_packet_too_big(decision.packet).mtu == 1472  # type: ignore[union-attr]


def test_packet_too_big_comes_from_the_configured_icmp_source() -> None:
    icmp_source = ipaddress.IPv6Address("fd48:4100::1")
    gateway = active_gateway(icmp_source=icmp_source)
    decision = gateway.receive_from_home(from_home(size=1500), 2.0)
    assert isinstance(decision, Reply)
    assert parse_packet_too_big(decision.packet).source == icmp_source.packed  # type: ignore[union-attr]


def test_lower_client_mtu_then_packet_too_big_with_the_learnt_mtu() -> None:
    # "Reception of ICMP Packet too big messages from IPv4 routers on the path may be used to
    # locally update the MTU of the path." (MTU considerations)
    gateway = active_gateway()
    assert gateway.lower_client_mtu(PEER, 1400) == 1400 - 28
    assert gateway.client_mtu(PEER) == 1372
    assert gateway.client_mtu(OTHER_IPV4_SAME_PORT) == 1472  # other clients unaffected
    assert gateway.receive_from_home(from_home(size=1372), 2.0) == PEER
    big = from_home(size=1373)
    decision = gateway.receive_from_home(big, 2.0)
    assert isinstance(decision, Reply)
    assert parse_packet_too_big(decision.packet) == PacketTooBig(
        (PREFIX.network_address + 1).packed, HOME_AGENT.packed, 1372, big[:1232])
    assert gateway.drops == Counter({DropReason.TOO_BIG: 1})
    # Only ever lowered, and never below the IPv6 minimum.
    assert gateway.lower_client_mtu(PEER, 1401) is None
    assert gateway.lower_client_mtu(PEER, 1500) is None
    assert gateway.client_mtu(PEER) == 1372
    assert gateway.lower_client_mtu(PEER, 576) == IPV6_MINIMUM_MTU
    assert gateway.lower_client_mtu(PEER, 68) is None
    assert gateway.client_mtu(PEER) == IPV6_MINIMUM_MTU
    assert gateway.lower_client_mtu(OTHER_IPV4_SAME_PORT, 1500) is None


def test_a_learnt_mtu_above_a_reloaded_lower_tunnel_mtu_does_not_count_as_lowered() -> None:
    # Found by tests/fuzz: learnt 1402, then SIGHUP set mtu = 1400; an ICMP saying 1401 lowers
    # nothing the gateway uses, so it must not be reported as a new MTU.
    gateway = make_gateway(mtu=65507)
    assert gateway.lower_client_mtu(PEER, 1430) == 1402
    gateway.apply_policy(GatewayPolicy(client_prefix=PREFIX, home_agents=frozenset({HOME_AGENT}),
                                       mtu=1400), 0.0)
    assert gateway.client_mtu(PEER) == 1400
    assert gateway.lower_client_mtu(PEER, 1429) is None
    assert gateway.lower_client_mtu(PEER, 1420) == 1392 == gateway.client_mtu(PEER)


def test_learnt_client_mtu_is_forgotten_with_the_state() -> None:
    gateway = active_gateway()
    gateway.lower_client_mtu(PEER, 1400)
    assert gateway.expire(200.0) == 1
    assert gateway.client_mtu(PEER) == 1472


def test_packet_too_big_is_rate_limited() -> None:
    # RFC 4443 section 2.4 (f): ICMPv6 error messages are rate limited.
    gateway = active_gateway(packet_too_big_per_second=64.0)
    big = from_home(size=1500)
    for _ in range(PACKET_TOO_BIG_BURST):
        assert isinstance(gateway.receive_from_home(big, 5.0), Reply)
    assert gateway.receive_from_home(big, 5.0) == Drop(DropReason.PACKET_TOO_BIG_RATE_LIMITED)
    assert isinstance(gateway.receive_from_home(big, 5.0 + 1 / 64), Reply)
    assert gateway.receive_from_home(big, 5.0 + 1 / 64) == Drop(
        DropReason.PACKET_TOO_BIG_RATE_LIMITED)
    # Packets that fit are not affected by the PTB budget.
    assert gateway.receive_from_home(from_home(size=1472), 5.0 + 1 / 64) == PEER
    assert gateway.drops == Counter({DropReason.TOO_BIG: PACKET_TOO_BIG_BURST + 1,
                                     DropReason.PACKET_TOO_BIG_RATE_LIMITED: 2})


# --- every drop is named and counted ----------------------------------------------------------

Scenario = Callable[[Gateway], Callable[[], object]]


def _exhaust_packet_too_big(gateway: Gateway) -> Callable[[], object]:
    for _ in range(PACKET_TOO_BIG_BURST):
        gateway.receive_from_home(from_home(size=1500), 2.0)
    return lambda: gateway.receive_from_home(from_home(size=1500), 2.0)


def _with_temporary(gateway: Gateway) -> None:
    gateway.receive_from_client(to_home(), PEER, 0.0)


def _with_active(gateway: Gateway) -> None:
    _with_temporary(gateway)
    gateway.receive_from_home(from_home(), 1.0)


DROP_SCENARIOS: list[tuple[str, DropReason, dict[str, Any], Scenario]] = [
    ("short_from_client", DropReason.SHORT_PACKET, {},
     lambda g: lambda: g.receive_from_client(to_home()[:39], PEER, 0.0)),
    ("short_from_home", DropReason.SHORT_PACKET, {},
     lambda g: lambda: g.receive_from_home(b"", 0.0)),
    ("version_from_client", DropReason.BAD_VERSION, {},
     lambda g: lambda: g.receive_from_client(b"\x45" + to_home()[1:], PEER, 0.0)),
    ("version_from_home", DropReason.BAD_VERSION, {},
     lambda g: lambda: g.receive_from_home(b"\x45" + from_home()[1:], 0.0)),
    ("length_from_client", DropReason.BAD_LENGTH, {},
     lambda g: lambda: g.receive_from_client(to_home() + b"\x00", PEER, 0.0)),
    ("length_from_home", DropReason.BAD_LENGTH, {},
     lambda g: lambda: g.receive_from_home(from_home()[:-1], 0.0)),
    ("src_outside_prefix", DropReason.SRC_OUTSIDE_PREFIX, {},
     lambda g: lambda: g.receive_from_client(to_home(src=HOME_HOST.packed), PEER, 0.0)),
    ("dst_not_home_agent", DropReason.DST_NOT_HOME_AGENT, {},
     lambda g: lambda: g.receive_from_client(to_home(dst=HOME_HOST.packed), PEER, 0.0)),
    ("ipv4_mismatch_temporary", DropReason.IPV4_MISMATCH, {},
     lambda g: (_with_temporary(g),
                lambda: g.receive_from_client(to_home(), OTHER_IPV4_SAME_PORT, 0.5))[1]),
    ("ipv4_mismatch_active", DropReason.IPV4_MISMATCH, {},
     lambda g: (_with_active(g),
                lambda: g.receive_from_client(to_home(), SAME_IPV4_OTHER_PORT, 2.0))[1]),
    ("rate_limited", DropReason.RATE_LIMITED, {"new_states_burst": 1},
     lambda g: (_with_temporary(g),
                lambda: g.receive_from_client(to_home(src=SECOND_CLIENT),
                                              SAME_IPV4_OTHER_PORT, 0.0))[1]),
    ("table_full", DropReason.TABLE_FULL, {"max_states": 1},
     lambda g: (_with_active(g),
                lambda: g.receive_from_client(to_home(src=SECOND_CLIENT),
                                              OTHER_IPV4_SAME_PORT, 2.0))[1]),
    ("too_many_temporary", DropReason.TOO_MANY_TEMPORARY, {"max_temporary_states": 1},
     lambda g: (_with_temporary(g),
                lambda: g.receive_from_client(to_home(src=SECOND_CLIENT),
                                              OTHER_IPV4_SAME_PORT, 0.0))[1]),
    ("keepalive_unknown", DropReason.KEEPALIVE_NO_STATE, {},
     lambda g: lambda: g.receive_from_client(build_keepalive(CLIENT), PEER, 0.0)),
    ("keepalive_temporary", DropReason.KEEPALIVE_NO_STATE, {},
     lambda g: (_with_temporary(g),
                lambda: g.receive_from_client(build_keepalive(CLIENT), PEER, 0.5))[1]),
    ("keepalive_ipv4_mismatch", DropReason.KEEPALIVE_IPV4_MISMATCH, {},
     lambda g: (_with_active(g),
                lambda: g.receive_from_client(build_keepalive(CLIENT), OTHER_IPV4_SAME_PORT,
                                              2.0))[1]),
    ("bad_keepalive", DropReason.BAD_KEEPALIVE, {},
     lambda g: (_with_active(g),
                lambda: g.receive_from_client(build_ipv6(CLIENT, KEEPALIVE_ADDRESS, 59, b"?"),
                                              PEER, 2.0))[1]),
    ("no_state", DropReason.NO_STATE, {},
     lambda g: lambda: g.receive_from_home(from_home(), 0.0)),
    ("not_from_home_agent", DropReason.NOT_FROM_HOME_AGENT, {},
     lambda g: (_with_temporary(g),
                lambda: g.receive_from_home(from_home(src=HOME_HOST.packed), 0.5))[1]),
    ("packet_too_big_rate_limited", DropReason.PACKET_TOO_BIG_RATE_LIMITED, {},
     lambda g: (_with_active(g), _exhaust_packet_too_big(g))[1]),
]


@pytest.mark.parametrize(("reason", "overrides", "scenario"),
                         [entry[1:] for entry in DROP_SCENARIOS],
                         ids=[entry[0] for entry in DROP_SCENARIOS])
def test_every_drop_is_counted_once_under_its_name_and_changes_no_state(
        reason: DropReason, overrides: dict[str, Any], scenario: Scenario) -> None:
    gateway = make_gateway(**overrides)
    final_step = scenario(gateway)
    drops_before = Counter(gateway.drops)
    states_before = gateway.states()
    assert final_step() == Drop(reason)
    assert gateway.drops - drops_before == Counter({reason: 1})
    assert gateway.states() == states_before


def test_the_drop_table_covers_every_reason_the_gateway_can_give() -> None:
    # Every DropReason the gateway module names, plus those check_ipv6 returns for it.
    source = inspect.getsource(gateway_module)
    named = {DropReason[name] for name in re.findall(r"DropReason\.([A-Z0-9_]+)", source)}
    from_check_ipv6 = {DropReason.SHORT_PACKET, DropReason.BAD_VERSION, DropReason.BAD_LENGTH}
    covered = {entry[1] for entry in DROP_SCENARIOS}
    covered.add(DropReason.TOO_BIG)  # counted with its Reply: see the Packet Too Big tests
    assert DropReason.TABLE_FULL in named  # the source scan found something
    assert sorted((named | from_check_ipv6) - covered) == []


def test_forwarded_and_answered_packets_count_no_drop() -> None:
    gateway = make_gateway()
    assert gateway.receive_from_client(to_home(), PEER, 0.0) is FORWARD
    assert gateway.receive_from_home(from_home(), 0.1) == PEER
    assert isinstance(gateway.receive_from_client(build_keepalive(CLIENT), PEER, 0.2), Reply)
    assert gateway.drops == Counter()
