"""The client's side of m6t (sans-I/O): packet checks both ways, the port race, keepalive and
liveness timers, the MTU probe. The helper daemon feeds these bytes and `now`.

Addresses are 16-byte `bytes`; times are seconds on a monotonic clock chosen by the caller.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from m6t.protocol.addressing import TunnelPrefix, new_random_suffix
from m6t.protocol.constants import (
    ENCAPSULATION_OVERHEAD,
    ICMPV6_ECHO_REPLY,
    IPV6_HEADER_LENGTH,
    IPV6_MINIMUM_MTU,
    KEEPALIVE_ADDRESS,
    KEEPALIVE_INTERVAL,
    NEXT_HEADER_ICMPV6,
    NEXT_HEADER_NONE,
)
from m6t.protocol.drops import DropReason
from m6t.protocol.packets import build_echo, check_ipv6, parse_echo

_ECHO_REPLY_TYPE = bytes([ICMPV6_ECHO_REPLY])

# Probes carry this marker so an application's own ping to the HA is never mistaken for ours.
PROBE_MARKER = b"m6t-probe"


class Inbound(enum.Enum):
    """What to do with a datagram from the gateway."""

    TO_TUN = "to_tun"
    KEEPALIVE_REPLY = "keepalive_reply"
    PROBE_REPLY = "probe_reply"


def classify_from_gateway(packet: bytes, address: bytes) -> Inbound | DropReason:
    """Only IPv6 packets addressed to us go to the TUN; keepalive replies and replies to our
    own probes are the helper's. The caller has already checked the sender is the gateway."""
    reason = check_ipv6(packet)
    if reason is not None:
        return reason
    if packet[6] == NEXT_HEADER_NONE and packet.startswith(KEEPALIVE_ADDRESS, 8):
        # "it replies with a similar message but with the addresses reversed"
        if packet[24:40] != address:
            return DropReason.NOT_FOR_US
        return Inbound.KEEPALIVE_REPLY
    if packet[24:40] != address:
        return DropReason.NOT_FOR_US
    if (packet[6] == NEXT_HEADER_ICMPV6
            and packet.startswith(_ECHO_REPLY_TYPE, IPV6_HEADER_LENGTH)
            and packet.startswith(PROBE_MARKER, IPV6_HEADER_LENGTH + 8)):
        return Inbound.PROBE_REPLY
    return Inbound.TO_TUN


def check_from_tun(packet: bytes, address: bytes) -> DropReason | None:
    """None if the packet may go to the gateway. The kernel writes router solicitations and
    MLD reports into a fresh TUN; the tunnel never carries link-local or multicast."""
    reason = check_ipv6(packet)
    if reason is not None:
        return reason
    link_local = packet[8] == 0xFE and packet[9] & 0xC0 == 0x80  # fe80::/10
    if packet[24] == 0xFF or link_local or packet[8:24] == bytes(16):
        return DropReason.UNEXPECTED_FROM_TUN
    if packet[8:24] != address:
        return DropReason.SRC_NOT_OURS
    return None


def build_probe(address: bytes, home_agent: bytes, identifier: int, sequence: int,
                size: int = 0) -> bytes:
    """An ICMPv6 echo request to the HA, `size` bytes in all (at least the headers)."""
    filler = max(0, size - IPV6_HEADER_LENGTH - 8 - len(PROBE_MARKER))
    return build_echo(address, home_agent, identifier, sequence, PROBE_MARKER + bytes(filler))


# --- the port race ---


@dataclass
class RaceCandidate:
    port: int
    suffix: int
    address: bytes
    sent_at: float = 0.0
    attempts: int = 0
    rtt: float | None = None


@dataclass
class PortRace:
    """Every port at once, each with its own fresh address; the first echo reply wins.

    "When a MN gets IPv4 connectivity ... it selects a random 48 bits value" (Protocol
    operations). Each candidate's echo, once answered by the HA, has already turned its
    gateway state active, so the winner's address is ready to use.
    """

    prefix: TunnelPrefix
    home_agent: bytes
    ports: list[int]
    now: float
    taken: Collection[int] = ()
    retransmit: float = 0.5
    timeout: float = 4.0
    identifier: int = field(default_factory=lambda: secrets.randbits(16))
    # Ports that start later (seconds): the others get a head start (a remembered port).
    delays: dict[int, float] = field(default_factory=dict)
    candidates: dict[int, RaceCandidate] = field(init=False)
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.now
        used = set(self.taken)
        self.candidates = {}
        for port in self.ports:
            suffix = new_random_suffix(used)
            used.add(suffix)
            address = self.prefix.address(suffix).packed
            self.candidates[port] = RaceCandidate(port, suffix, address)

    def due(self, now: float) -> list[tuple[int, bytes]]:
        """(port, packet) to send now: first attempts (a delayed port's once its head start
        is over), then retransmissions."""
        out = []
        for candidate in self.candidates.values():
            if candidate.rtt is None and (
                    (candidate.attempts == 0
                     and now >= self.started + self.delays.get(candidate.port, 0.0))
                    or (candidate.attempts
                        and now >= candidate.sent_at + self.retransmit * candidate.attempts)):
                if candidate.attempts == 0:
                    candidate.sent_at = now
                candidate.attempts += 1
                out.append((candidate.port, build_probe(candidate.address, self.home_agent,
                                                        self.identifier, candidate.attempts)))
        return out

    def next_deadline(self) -> float:
        return min([self.started + self.timeout] + [
            c.sent_at + self.retransmit * c.attempts if c.attempts
            else self.started + self.delays.get(c.port, 0.0)
            for c in self.candidates.values() if c.rtt is None])

    def receive(self, port: int, packet: bytes, now: float) -> RaceCandidate | None:
        """The candidate this datagram answers (its RTT set), or None."""
        candidate = self.candidates.get(port)
        if candidate is None or candidate.rtt is not None:
            return None
        echo = parse_echo(packet)
        if (echo is None or echo.is_request or echo.identifier != self.identifier
                or echo.destination != candidate.address or echo.source != self.home_agent
                or not echo.data.startswith(PROBE_MARKER)):
            return None
        candidate.rtt = now - candidate.sent_at
        return candidate

    def finished(self, now: float) -> bool:
        return now >= self.started + self.timeout or all(
            c.rtt is not None for c in self.candidates.values())


# --- keepalive and liveness ---


def random_fraction() -> float:
    """A fraction in [0, 1) for the keepalive jitter."""
    return secrets.randbelow(1000) / 1000


class Liveness(enum.Enum):
    IDLE = "idle"
    SEND_KEEPALIVE = "send_keepalive"
    PATH_DEAD = "path_dead"


@dataclass
class LivenessMonitor:
    """When to send a keepalive, and when the path is dead.

    "If the MN has not sent and received traffic via the tunnel for 30 seconds ... the
    tunneling component on the MN will send an empty IPv6 packet" (Maintaining NAT states).
    A keepalive is answered only while our gateway state exists with our current IPv4 mapping,
    so it doubles as the liveness probe. The gateway never tells a client its state is gone,
    so the client asks, on two occasions:
    - nothing received for `keepalive` seconds (an idle tunnel: one keepalive per interval,
      the draft's rule, never more);
    - data sent and nothing received for `reply_timeout` seconds since the first unanswered
      send (WireGuard's "sent data, no reply" rule): a NAT that lost our mapping is found in
      seconds while someone uses the tunnel, without probing a quiet one.
    Then `attempts` unanswered keepalives, `probe_timeout` apart, mean the path is dead.

    The data path's activity is read in `last_sent` / `last_received`; with `check_interval`
    the monitor asks to be polled that often, so that it notices the first unanswered send.
    """

    keepalive: float = KEEPALIVE_INTERVAL
    probe_timeout: float = 1.0
    attempts: int = 3
    reply_timeout: float = 3.0
    check_interval: float | None = None
    random: Callable[[], float] = field(default=lambda: random_fraction())
    last_sent: float = 0.0
    last_received: float = 0.0
    probe_sent: float | None = None
    probes: int = 0
    jitter: float = 0.0
    force: bool = False
    unanswered_since: float | None = None  # the first send nothing answered yet (estimated)
    last_look: float = 0.0  # when the activity was last looked at

    def __post_init__(self) -> None:
        self._draw_jitter()

    def _draw_jitter(self) -> None:
        # Downward only, so the interval never exceeds the configured one (at most 30 s).
        self.jitter = self.random() * min(self.keepalive * 0.1, 3.0)

    def start(self, now: float) -> None:
        self.last_sent = self.last_received = self.last_look = now
        self.probe_sent = None
        self.probes = 0
        self.unanswered_since = None

    def next_deadline(self) -> float:
        if self.probe_sent is not None and self.last_received < self.probe_sent:
            return self.probe_sent + self.probe_timeout
        if self.force or self.probe_sent is not None:
            return self.last_sent  # due now: a forced probe, or an answer to take note of
        # Nothing received for an interval covers the draft's rule (nothing sent *and*
        # received) and also probes a path on which we only send.
        deadline = self.last_received + self.keepalive - self.jitter
        if self.unanswered_since is not None:
            deadline = min(deadline, self.unanswered_since + self.reply_timeout)
        elif self.check_interval is not None:
            deadline = min(deadline, self.last_look + self.check_interval)
        return deadline

    def _look(self, now: float) -> None:
        """Note whether something sent is still unanswered. The first unanswered send came
        after both the last receive and the previous look; the later of the two is taken,
        which errs towards probing early, never late."""
        if self.last_sent > self.last_received:
            if self.unanswered_since is None:
                self.unanswered_since = min(self.last_sent,
                                            max(self.last_received, self.last_look))
        else:
            self.unanswered_since = None
        self.last_look = now

    def poll(self, now: float) -> Liveness:
        if self.probe_sent is not None:
            if self.last_received >= self.probe_sent:
                self.probe_sent = None  # answered (by the reply or by any traffic)
                self.probes = 0
                self.unanswered_since = None
                self._draw_jitter()
            elif now >= self.probe_sent + self.probe_timeout:
                if self.probes >= self.attempts:
                    return Liveness.PATH_DEAD
                return self._send(now)
            else:
                return Liveness.IDLE
        self._look(now)
        silent_sender = (self.unanswered_since is not None
                         and now >= self.unanswered_since + self.reply_timeout)
        if self.force or silent_sender or now >= self.last_received + self.keepalive - self.jitter:
            self.force = False
            return self._send(now)
        return Liveness.IDLE

    def _send(self, now: float) -> Liveness:
        self.probe_sent = now
        self.probes += 1
        self.last_sent = now
        return Liveness.SEND_KEEPALIVE

    def check_now(self, now: float) -> None:
        """Probe at the next poll (after a resume from suspend, say), unless a probe is on its
        way already. Timestamps are left alone: an answer already received still counts."""
        self.force = True


# --- MTU ---


def tunnel_mtu_for_link(ipv4_mtu: int) -> int:
    """The one MTU formula: what an IPv4 path of `ipv4_mtu` bytes leaves for IPv6 packets once
    the IPv4 and UDP headers are added, never below IPv6's minimum ("MTU considerations")."""
    return max(IPV6_MINIMUM_MTU, ipv4_mtu - ENCAPSULATION_OVERHEAD)


def tunnel_mtu_for_route(route_mtu: int | None, default: int) -> int:
    """"auto": what the route to the gateway leaves, or `default` when it says nothing."""
    if route_mtu is None:
        return default
    return tunnel_mtu_for_link(route_mtu)


def mtu_probe_sizes(highest: int, beyond: Iterable[int] = (2000, 4000)) -> list[int]:
    """Sizes to try at once: a ladder from 1280 to `highest`, and a few sizes beyond the usual
    1500-byte IPv4 path that only arrive if IPv4 fragments get through."""
    ladder = sorted({IPV6_MINIMUM_MTU, *range(1280, highest + 1, 32), highest,
                     1400, 1420, 1440, 1460, 1472})
    ladder = [size for size in ladder if size <= highest]
    return ladder + [size for size in beyond if size > highest]
