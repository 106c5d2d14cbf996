"""A fake link for pair tests: the real gateway core behind a fake NAT, with a fake HA and a
fake clock. Client -> gateway is instant; gateway -> client takes RTT; each direction may lose
datagrams (seeded, so every run loses the same ones). Shared by test_client_pair.py (the
client's pieces) and test_session_pair.py (the whole ClientSession)."""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass, field
from typing import Any

from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.gateway import (
    FORWARD,
    Drop,
    Forward,
    Gateway,
    GatewayPolicy,
    Peer,
    Reply,
    pack_peer,
)
from m6t.protocol.packets import echo_reply_for

SITE = ipaddress.IPv6Network("fd6d:6d74:1::/48")
PREFIX = TunnelPrefix.compose(SITE, 0, 1)  # this MN's /80
HOME_AGENT = ipaddress.IPv6Address("fd48:4100::2")
GATEWAY_PORTS = [3544, 4500, 53]  # the gateway listens on each; listener index = position
ACTIVE_LIFETIME = 90.0
RTT = 0.04
NAT_IPV4 = bytes([198, 51, 100, 7])
ESP = 50
T0 = 1000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def advance_to(self, when: float) -> None:
        assert when >= self.now, "time never goes back"
        self.now = when


@dataclass
class Nat:
    """One outside IPv4 address; each client socket (one per gateway port) gets its own
    outside port. `rebind` is the NAT forgetting a mapping and making a new one."""

    ipv4: bytes = NAT_IPV4
    next_port: int = 40000
    mappings: dict[int, int] = field(default_factory=dict)  # gateway port -> outside port

    def outside(self, gateway_port: int) -> Peer:
        if gateway_port not in self.mappings:
            self.mappings[gateway_port] = self.next_port
            self.next_port += 1
        return pack_peer(self.ipv4, self.mappings[gateway_port],
                         GATEWAY_PORTS.index(gateway_port))

    def inside(self, peer: Peer) -> int | None:
        """The client socket (named by its gateway port) a datagram to `peer` reaches."""
        for gateway_port in self.mappings:
            if self.outside(gateway_port) == peer:
                return gateway_port
        return None  # the NAT has no such mapping any more: the datagram is lost

    def rebind(self, gateway_port: int) -> None:
        del self.mappings[gateway_port]
        self.outside(gateway_port)


@dataclass
class FakeLink:
    """Client -> gateway is instant; gateway -> client takes RTT. The HA answers echoes."""

    gateway: Gateway
    nat: Nat
    clock: Clock
    blocked: set[int] = field(default_factory=set)  # gateway ports the client's network filters
    loss: float = 0.0  # share of datagrams lost, each direction
    rng: random.Random = field(default_factory=lambda: random.Random(4193))
    lost: int = 0
    in_flight: list[tuple[float, int, bytes]] = field(default_factory=list)
    from_home: list[Peer | Reply | Drop] = field(default_factory=list)

    def client_sends(self, gateway_port: int, packet: bytes) -> Forward | Reply | Drop | None:
        if gateway_port in self.blocked or self._lose():
            return None
        peer = self.nat.outside(gateway_port)
        decision = self.gateway.receive_from_client(packet, peer, self.clock.now)
        if decision is FORWARD:
            reply = echo_reply_for(packet)  # the HA answers a ping; ESP just goes home
            if reply is not None:
                self.home_sends(reply)
        elif isinstance(decision, Reply):
            self._towards(peer, decision.packet)
        return decision

    def home_sends(self, packet: bytes) -> Peer | Reply | Drop:
        out = self.gateway.receive_from_home(packet, self.clock.now)
        self.from_home.append(out)
        if isinstance(out, int):
            self._towards(out, packet)
        return out

    def _lose(self) -> bool:
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return True
        return False

    def _towards(self, peer: Peer, packet: bytes) -> None:
        gateway_port = self.nat.inside(peer)
        if gateway_port is not None and gateway_port not in self.blocked and not self._lose():
            self.in_flight.append((self.clock.now + RTT, gateway_port, packet))

    def next_arrival(self) -> float:
        return min((at for at, _, _ in self.in_flight), default=math.inf)

    def arrivals(self) -> list[tuple[int, bytes]]:
        """Datagrams that reached the client by now, in order."""
        due = sorted((item for item in self.in_flight if item[0] <= self.clock.now),
                     key=lambda item: item[0])
        self.in_flight = [item for item in self.in_flight if item[0] > self.clock.now]
        return [(port, packet) for _, port, packet in due]


def make_world(**policy: Any) -> FakeLink:
    settings: dict[str, Any] = {"client_prefix": SITE,
                                   "home_agents": frozenset({HOME_AGENT}),
                                   "active_lifetime": ACTIVE_LIFETIME}
    settings.update(policy)
    gateway = Gateway(GatewayPolicy(**settings))
    return FakeLink(gateway, Nat(), Clock())
