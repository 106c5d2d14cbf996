"""A client and a gateway over a fake link, with a fake NAT, a fake HA and a fake clock.

The client's pieces (PortRace, LivenessMonitor, classify_from_gateway) and the real Gateway
exchange bytes the way the helper and the gateway daemon would, through "Protocol operations",
"Maintaining NAT states", "Route management on the tunnel GW" and "Multiple tunnel interfaces
on a MN" of draft-ebalard-mext-m6t-02. Time only moves when a test says so; nothing sleeps.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field

import pytest

from m6t.protocol.client import (
    Inbound,
    Liveness,
    LivenessMonitor,
    PortRace,
    RaceCandidate,
    classify_from_gateway,
)
from m6t.protocol.drops import DropReason
from m6t.protocol.gateway import (
    EXPIRY_TICK,
    FORWARD,
    Drop,
    Forward,
    Peer,
    Reply,
    StateKind,
)
from m6t.protocol.packets import build_ipv6, build_keepalive
from tests.unit.fake_link import (
    ACTIVE_LIFETIME,
    ESP,
    GATEWAY_PORTS,
    HOME_AGENT,
    PREFIX,
    RTT,
    T0,
    FakeLink,
    Nat,
    make_world,
)
from tests.unit.helpers import ScriptedRandbits


def run_race(link: FakeLink, race: PortRace) -> RaceCandidate | None:
    """The helper's race loop, on the fake clock: send what is due, take what arrives, wake
    at the next deadline or arrival. Returns the first candidate answered."""
    clock = link.clock
    winner = None
    for _ in range(100):
        if race.finished(clock.now):
            return winner
        if clock.now >= race.next_deadline():
            for port, packet in race.due(clock.now):
                link.client_sends(port, packet)
        for port, packet in link.arrivals():
            candidate = race.candidates.get(port)
            if candidate is not None:
                # What the race sockets read is what the pump would classify as ours.
                assert classify_from_gateway(packet, candidate.address) is Inbound.PROBE_REPLY
            answered = race.receive(port, packet, clock.now)
            if answered is not None and winner is None:
                winner = answered
        clock.advance_to(min(race.next_deadline(), link.next_arrival()))
    raise AssertionError("the race never finished")


@dataclass
class Tunnel:
    """The client's connected state: the winner's address and port, and its monitor."""

    address: bytes
    port: int
    monitor: LivenessMonitor
    inbox: list[bytes] = field(default_factory=list)  # what went to the TUN


def connect(link: FakeLink, taken: frozenset[int] = frozenset(),
            identifier: int = 0x6D36) -> tuple[Tunnel, PortRace]:
    race = PortRace(PREFIX, HOME_AGENT.packed, list(GATEWAY_PORTS), link.clock.now, taken,
                    identifier=identifier)
    winner = run_race(link, race)
    assert winner is not None
    monitor = LivenessMonitor(random=lambda: 0.5)  # 1.5 s of jitter: keepalive at 28.5 s
    monitor.start(link.clock.now)
    return Tunnel(winner.address, winner.port, monitor), race


def deliver(link: FakeLink, tunnel: Tunnel) -> list[Inbound | DropReason]:
    """The pump's receive side: classify what arrived, feed the monitor, fill the TUN."""
    kinds = []
    for port, packet in link.arrivals():
        if port != tunnel.port:
            continue  # a losing race socket, closed by now
        kind = classify_from_gateway(packet, tunnel.address)
        kinds.append(kind)
        if isinstance(kind, Inbound):
            tunnel.monitor.last_received = link.clock.now
            if kind is Inbound.TO_TUN:
                tunnel.inbox.append(packet)
    return kinds


def keep_alive(link: FakeLink, tunnel: Tunnel, until: float
               ) -> list[tuple[float, Liveness, Forward | Reply | Drop | None]]:
    """The helper's monitor loop: poll at each deadline (or arrival), send keepalives, take
    replies. Stops at `until` or when the path is declared dead."""
    clock = link.clock
    log: list[tuple[float, Liveness, Forward | Reply | Drop | None]] = []
    for _ in range(1000):
        deliver(link, tunnel)
        action = tunnel.monitor.poll(clock.now)
        if action is Liveness.PATH_DEAD:
            log.append((clock.now, action, None))
            return log
        if action is Liveness.SEND_KEEPALIVE:
            log.append((clock.now, action,
                        link.client_sends(tunnel.port, build_keepalive(tunnel.address))))
        wake = min(tunnel.monitor.next_deadline(), link.next_arrival())
        if wake > until:
            clock.advance_to(until)
            deliver(link, tunnel)
            return log
        clock.advance_to(wake)
    raise AssertionError("the monitor loop never ended")


def view(link: FakeLink, address: bytes) -> tuple[StateKind, Peer, float] | None:
    state = link.gateway.lookup(ipaddress.IPv6Address(address))
    return None if state is None else (state.kind, state.peer, state.expires_at)


def must_view(link: FakeLink, address: bytes) -> tuple[StateKind, Peer, float]:
    state = view(link, address)
    assert state is not None, "the gateway has no state for this address"
    return state


# --- connecting -------------------------------------------------------------------------------


def test_the_race_goes_through_the_gateway_and_the_ha_reply_activates_every_state() -> None:
    # "It creates a temporary state ... and forwards the packet to the final destination (the
    # HA)." ... "If no active state exists, then, a lookup at the temporary states is
    # performed: if one is found, it is marked active and used." (Protocol operations)
    link = make_world()
    race = PortRace(PREFIX, HOME_AGENT.packed, list(GATEWAY_PORTS), T0, identifier=7)
    sent = race.due(T0)
    decisions = [link.client_sends(port, packet) for port, packet in sent]
    assert decisions == [FORWARD] * 3
    # The HA answered each probe; the gateway sent each answer to that probe's own peer.
    assert link.from_home == [link.nat.outside(port) for port in GATEWAY_PORTS]
    for port, candidate in race.candidates.items():
        assert view(link, candidate.address) == (StateKind.ACTIVE, link.nat.outside(port),
                                                 T0 + ACTIVE_LIFETIME)
    link.clock.advance_to(T0 + RTT)
    answered = [race.receive(port, packet, link.clock.now) for port, packet in link.arrivals()]
    assert answered == list(race.candidates.values())
    assert all(c.rtt == pytest.approx(RTT) for c in race.candidates.values())
    assert race.finished(link.clock.now)
    assert sum(link.gateway.drops.values()) == 0


def test_a_filtered_port_loses_the_race_and_never_reaches_the_gateway() -> None:
    link = make_world()
    link.blocked = {3544}
    tunnel, race = connect(link)
    assert tunnel.port == 4500  # the first port that answered
    assert link.clock.now == pytest.approx(T0 + 4.0)  # the race ran to its timeout for 3544
    assert race.candidates[3544].rtt is None
    assert race.candidates[3544].attempts > 1  # it was retransmitted
    assert view(link, race.candidates[3544].address) is None
    assert view(link, tunnel.address) is not None


def test_a_temporary_state_that_the_ha_does_not_confirm_is_gone_after_its_lifetime() -> None:
    link = make_world(temporary_lifetime=2.0)
    address = PREFIX.address(0x1234_5678_9ABC).packed
    esp = build_ipv6(address, HOME_AGENT.packed, ESP, b"binding update")
    assert link.client_sends(4500, esp) is FORWARD  # ESP: the fake HA stays silent
    assert view(link, address) == (StateKind.TEMPORARY, link.nat.outside(4500), T0 + 2.0)
    link.gateway.expire(T0 + 2.0 + 2 * EXPIRY_TICK)  # expiry runs on ticks
    assert view(link, address) is None


# --- keeping the NAT state --------------------------------------------------------------------


def test_keepalives_are_answered_while_the_mapping_holds() -> None:
    # "If the MN has not sent and received traffic via the tunnel for 30 seconds ... send an
    # empty IPv6 packet" ... "It verifies an active state exists for the source address in the
    # packet and that the IPv4 parameters match the state. If this is the case, it replies with
    # a similar message but with the addresses reversed." (Maintaining NAT states)
    link = make_world()
    tunnel, _ = connect(link)
    connected_at = link.clock.now
    log = keep_alive(link, tunnel, until=connected_at + 100.0)
    # Each interval counts from the last reply: 28.5 s (30 s less 1.5 s of jitter).
    assert [at - connected_at for at, _, _ in log] == pytest.approx(
        [28.5, 28.5 + RTT + 28.5, 2 * (28.5 + RTT) + 28.5])
    assert [action for _, action, _ in log] == [Liveness.SEND_KEEPALIVE] * 3
    assert all(isinstance(decision, Reply) for _, _, decision in log)
    assert tunnel.monitor.probe_sent is None  # the last one was answered too
    # Each keepalive extended the gateway's state.
    last_keepalive = log[-1][0]
    assert view(link, tunnel.address) == (StateKind.ACTIVE, link.nat.outside(tunnel.port),
                                          last_keepalive + ACTIVE_LIFETIME)
    assert tunnel.inbox == []  # keepalive replies are the helper's, never the TUN's


def test_the_keepalive_reply_is_classified_as_such() -> None:
    link = make_world()
    tunnel, _ = connect(link)
    link.clock.advance_to(tunnel.monitor.next_deadline())
    assert tunnel.monitor.poll(link.clock.now) is Liveness.SEND_KEEPALIVE
    assert isinstance(link.client_sends(tunnel.port, build_keepalive(tunnel.address)), Reply)
    link.clock.advance_to(link.clock.now + RTT)
    assert deliver(link, tunnel) == [Inbound.KEEPALIVE_REPLY]
    assert tunnel.monitor.poll(link.clock.now) is Liveness.IDLE
    assert tunnel.monitor.probe_sent is None


def test_traffic_from_home_postpones_the_keepalive() -> None:
    link = make_world()
    tunnel, _ = connect(link)
    start = link.clock.now
    link.clock.advance_to(start + 20.0)
    assert link.home_sends(build_ipv6(HOME_AGENT.packed, tunnel.address, ESP, b"ba")) == \
        link.nat.outside(tunnel.port)
    log = keep_alive(link, tunnel, until=start + 60.0)
    assert len(tunnel.inbox) == 1  # the data went to the TUN
    assert [at for at, _, _ in log] == [pytest.approx(start + 20.0 + RTT + 28.5)]


# --- the NAT changes its mind -----------------------------------------------------------------


def test_a_nat_mapping_change_kills_the_path_and_a_new_race_gets_a_new_address() -> None:
    link = make_world()
    gateway = link.gateway
    old, first_race = connect(link)
    keep_alive(link, old, until=link.clock.now + 40.0)  # one answered keepalive
    old_peer = link.nat.outside(old.port)
    assert must_view(link, old.address)[1] == old_peer

    link.nat.rebind(old.port)  # the NAT forgot us; our next datagram gets a new outside port
    new_peer = link.nat.outside(old.port)
    assert new_peer != old_peer
    # The home side still reaches the old mapping, which leads nowhere now.
    assert link.home_sends(build_ipv6(HOME_AGENT.packed, old.address, ESP, b"lost")) == old_peer
    last_refresh = link.clock.now

    log = keep_alive(link, old, until=link.clock.now + 60.0)
    # "Otherwise, it silently drops the packet." (Maintaining NAT states): three keepalives
    # from the new mapping, one probe_timeout apart, then the monitor gives up.
    assert [action for _, action, _ in log] == [Liveness.SEND_KEEPALIVE] * 3 + [
        Liveness.PATH_DEAD]
    assert [decision for _, _, decision in log[:3]] == [
        Drop(DropReason.KEEPALIVE_IPV4_MISMATCH)] * 3
    assert gateway.drops[DropReason.KEEPALIVE_IPV4_MISMATCH] == 3
    assert [b[0] - a[0] for a, b in itertools.pairwise(log)] == pytest.approx([1.0] * 3)
    assert old.inbox == []  # "lost" never arrived
    # States are never updated: the old address from the new mapping is refused outright.
    esp = build_ipv6(old.address, HOME_AGENT.packed, ESP, b"binding update")
    assert link.client_sends(old.port, esp) == Drop(DropReason.IPV4_MISMATCH)
    assert view(link, old.address) == (StateKind.ACTIVE, old_peer,
                                       last_refresh + ACTIVE_LIFETIME)

    # "When the MN registers from a new IPv4-only network, it generates a new IPv6 address and
    # uses it." (Route management on the tunnel GW)
    new, second_race = connect(link, identifier=0x1111)
    assert new.address != old.address
    assert new.port == old.port  # the same socket's port, through the new mapping
    assert must_view(link, new.address)[:2] == (StateKind.ACTIVE, new_peer)
    log = keep_alive(link, new, until=link.clock.now + 30.0)
    assert [type(decision) for _, _, decision in log] == [Reply]

    # "As no traffic is exchanged after some point via the tunnel for that address, it is
    # garbage collected automatically." The first race's other states went earlier.
    expiry = last_refresh + ACTIVE_LIFETIME
    gateway.expire(expiry - 1.0)
    assert view(link, old.address) is not None
    gateway.expire(expiry + 2 * EXPIRY_TICK)
    assert view(link, old.address) is None
    assert all(view(link, c.address) is None for c in first_race.candidates.values())
    assert all(view(link, c.address) is not None for c in second_race.candidates.values())


def test_the_old_state_keeps_being_refreshed_by_the_home_side_only_while_it_talks() -> None:
    # An active state "is extended each time traffic is exchanged with the MN": home traffic
    # to a dead mapping keeps it alive; when home stops, it ages out.
    link = make_world()
    old, _ = connect(link)
    link.nat.rebind(old.port)
    for seconds in (30.0, 60.0, 90.0):
        link.clock.advance_to(T0 + seconds)
        link.home_sends(build_ipv6(HOME_AGENT.packed, old.address, ESP, b"retransmission"))
    link.gateway.expire(T0 + 90.0 + ACTIVE_LIFETIME - 1.0)
    assert view(link, old.address) is not None
    link.gateway.expire(T0 + 90.0 + ACTIVE_LIFETIME + 2 * EXPIRY_TICK)
    assert view(link, old.address) is None


# --- two tunnels on one /80 -------------------------------------------------------------------


def test_two_tunnels_on_one_prefix_never_share_a_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    # "if the same prefix, subnet ID and MN ID are used for all the tunnel interfaces of the MN
    # (i.e. the same /80 prefix), then some local synchronization is required to prevent the
    # simultaneous use of identical 48 bits random values" (Multiple tunnel interfaces on a MN)
    wifi = make_world()
    first, _ = connect(wifi)
    first_suffix = PREFIX.suffix_of(ipaddress.IPv6Address(first.address))
    # The second tunnel's generator happens to draw the first tunnel's value first.
    randbits = ScriptedRandbits([first_suffix, 0x2222, 0x3333, 0x4444])
    monkeypatch.setattr("m6t.protocol.addressing.secrets.randbits", randbits)
    race = PortRace(PREFIX, HOME_AGENT.packed, list(GATEWAY_PORTS), wifi.clock.now,
                    taken=frozenset({first_suffix}), identifier=0x2)
    assert [c.suffix for c in race.candidates.values()] == [0x2222, 0x3333, 0x4444]
    assert set(randbits.requested_bits) == {48}


def test_without_the_taken_set_a_shared_suffix_collides_at_the_gateway(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Why the synchronization matters: the gateway never updates a state, so a second tunnel
    # (another socket, another NAT mapping) reusing the first one's address is refused.
    link = make_world()
    first, _ = connect(link)
    first_suffix = PREFIX.suffix_of(ipaddress.IPv6Address(first.address))
    monkeypatch.setattr("m6t.protocol.addressing.secrets.randbits",
                        ScriptedRandbits([first_suffix, 0x2222, 0x3333]))
    first_state = must_view(link, first.address)
    # The second tunnel's sockets: same NAT address, other outside ports.
    second = FakeLink(link.gateway, Nat(next_port=50000), link.clock)
    careless = PortRace(PREFIX, HOME_AGENT.packed, list(GATEWAY_PORTS), link.clock.now,
                        identifier=0x3)
    colliding_port = next(port for port, c in careless.candidates.items()
                          if c.suffix == first_suffix)
    decisions = {port: second.client_sends(port, packet)
                 for port, packet in careless.due(link.clock.now)}
    assert decisions[colliding_port] == Drop(DropReason.IPV4_MISMATCH)
    assert [d for port, d in decisions.items() if port != colliding_port] == [FORWARD] * 2
    assert must_view(link, first.address) == first_state  # "never updated"


def test_two_tunnels_on_one_prefix_both_stay_connected() -> None:
    link = make_world()
    first, _ = connect(link)
    first_suffix = PREFIX.suffix_of(ipaddress.IPv6Address(first.address))
    second_link = FakeLink(link.gateway, Nat(ipv4=bytes([203, 0, 113, 9])), link.clock)
    second, race = connect(second_link, taken=frozenset({first_suffix}), identifier=0x4)
    assert first_suffix not in {c.suffix for c in race.candidates.values()}
    assert second.address != first.address
    assert link.gateway.counts()[StateKind.ACTIVE] == 2 * len(GATEWAY_PORTS)
    # Each tunnel's keepalive is answered on its own path.
    link.clock.advance_to(link.clock.now + 29.0)
    for tunnel, its_link in ((first, link), (second, second_link)):
        assert tunnel.monitor.poll(link.clock.now) is Liveness.SEND_KEEPALIVE
        reply = its_link.client_sends(tunnel.port, build_keepalive(tunnel.address))
        assert isinstance(reply, Reply)
        assert classify_from_gateway(reply.packet, tunnel.address) is Inbound.KEEPALIVE_REPLY
        other = second if tunnel is first else first
        assert classify_from_gateway(reply.packet, other.address) is DropReason.NOT_FOR_US
