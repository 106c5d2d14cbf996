"""One tunnel's life on the client (sans-I/O): the ClientSession.

    connecting --race won--> connected --(network changed | path dead | regenerate)--> connecting
        |  no IPv4 route / no port answered / name not resolved          ^
        v                                                                 |
     waiting ---------------- network event or back-off timer -----------+

The session decides; the helper carries out. It takes events (`handle(event, now)`) and the
passing of time (`handle_timer(now)` at `next_deadline()`), and returns actions: resolve this
name, send this probe through that port, use this address, apply this MTU, send a keepalive, say
this state. It owns the port race, the back-off, the choice of cause, the keepalive and liveness
timing and the MTU policy; it reads no clock and touches no socket, so a test drives it against
the gateway core through a fake link on a fake clock (tests/unit/test_session_pair.py), in the
style of aioquic's `QuicConnection`.

States and transitions are data: `TRANSITIONS` says which events each phase takes and which
method handles them; an event a phase does not take is ignored (a late race answer once
connected, say), never an error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.client import (
    Liveness,
    LivenessMonitor,
    PortRace,
    RaceCandidate,
    random_fraction,
    tunnel_mtu_for_link,
    tunnel_mtu_for_route,
)
from m6t.protocol.constants import DEFAULT_TUNNEL_MTU, KEEPALIVE_INTERVAL
from m6t.protocol.packets import build_keepalive

# Implementation choices the draft leaves open (seconds).
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
RACE_TIMEOUT = 4.0
RACE_REPORT_GRACE = 0.25  # after the winner, how long the other ports may still answer
RESUME_WINDOW = 30.0  # a dead path this soon after a resume is blamed on the resume
ACTIVITY_CHECK = 1.0  # how often a connected session looks at the data path's activity
HEAD_START = 0.5  # on a known network, the remembered port races alone for this long
PORTAL_RECHECK = 3.0  # behind a captive portal, how often to look whether it let us through


class TunnelState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"
    ERROR = "error"


class Cause(enum.StrEnum):
    """Why a tunnel is in its state (docs/control-api.md, "TunnelStatus")."""

    USER_REQUEST = "user_request"
    NETWORK_CHANGED = "network_changed"
    NAT_MAPPING_CHANGED = "nat_mapping_changed"
    RESUME = "resume"
    RETRYING = "retrying"
    PORT_RACE_WON = "port_race_won"
    PORT_FALLBACK = "port_fallback"
    NO_IPV4_NETWORK = "no_ipv4_network"
    GATEWAY_UNREACHABLE = "gateway_unreachable"
    RESOLVE_FAILED = "resolve_failed"
    CAPTIVE_PORTAL = "captive_portal"
    SETUP_FAILED = "setup_failed"
    HELPER_STOPPING = "helper_stopping"


class AddressReason(enum.StrEnum):
    """Why the tunnel took a new address."""

    CONNECT = "connect"
    NETWORK_CHANGED = "network_changed"
    NAT_MAPPING_CHANGED = "nat_mapping_changed"
    USER_REQUEST = "user_request"
    RESUME = "resume"


class MtuReason(enum.StrEnum):
    """Why the tunnel MTU changed."""

    FRAGMENTATION_NEEDED = "fragmentation_needed"
    USER_REQUEST = "user_request"
    AUTO = "auto"
    NETWORK_CHANGED = "network_changed"  # a new network: the lowered MTU of the old one is gone
    REMEMBERED = "remembered"  # a network seen before: what it taught last time, at once


class Phase(enum.Enum):
    """The session's own states; `TunnelState` is what users see of them."""

    IDLE = "idle"
    RESOLVING = "resolving"
    RACING = "racing"
    CONNECTED = "connected"
    WAITING = "waiting"
    ERROR = "error"
    STOPPED = "stopped"


SHOWN_AS = {
    Phase.IDLE: TunnelState.DISCONNECTED, Phase.RESOLVING: TunnelState.CONNECTING,
    Phase.RACING: TunnelState.CONNECTING, Phase.CONNECTED: TunnelState.CONNECTED,
    Phase.WAITING: TunnelState.WAITING, Phase.ERROR: TunnelState.ERROR,
    Phase.STOPPED: TunnelState.DISCONNECTED,
}


@dataclass(frozen=True)
class Ipv4Path:
    """The route to the gateway. Its interface, next hop and source address identify the
    network the laptop is on; its MTU is what "auto" works from."""

    interface: str | None
    next_hop: str | None
    source: str | None
    mtu: int | None = None

    def same_network(self, other: Ipv4Path | None) -> bool:
        return other is not None and (self.interface, self.next_hop, self.source) == (
            other.interface, other.next_hop, other.source)


# --- events: what the helper tells the session ---


@dataclass(frozen=True)
class Remembered:
    """What a network taught this profile last time (the helper's per-network memory)."""

    port: int
    mtu: int
    gateway: str | None = None  # which of the profile's gateways won (host as configured)


@dataclass(frozen=True)
class Gateway:
    host: str  # as the profile names it
    address: str  # its IPv4 address


@dataclass(frozen=True)
class Resolved:
    gateways: tuple[Gateway, ...]  # those that resolved, in the profile's order
    path: Ipv4Path | None  # the route to the first; None: no IPv4 route
    taken: frozenset[int] = frozenset()  # suffixes other tunnels on the same /80 use
    network: str | None = None  # which IPv4 network this is, if the helper could tell
    remembered: Remembered | None = None  # and what it taught this profile before


@dataclass(frozen=True)
class PortalChecked:
    """The answer to CheckPortal: the login page's URL, or None when nothing is in the way."""

    url: str | None


@dataclass(frozen=True)
class ResolveFailed:
    message: str


@dataclass(frozen=True)
class RaceDatagram:
    gateway: str  # IPv4 address
    port: int
    data: bytes


@dataclass(frozen=True)
class RaceError:
    gateway: str
    port: int
    error: str


@dataclass(frozen=True)
class Traffic:
    """When the data path last sent and received (monotonic), read just before a timer."""

    sent_at: float
    received_at: float


@dataclass(frozen=True)
class KeepaliveAnswered:
    pass


@dataclass(frozen=True)
class NetworkChanged:
    path: Ipv4Path | None  # the route to the gateway now


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class RegenerateRequested:
    pass


@dataclass(frozen=True)
class FragmentationNeeded:
    ipv4_mtu: int


@dataclass(frozen=True)
class MtuRequested:
    mtu: int | Literal["auto"]
    path: Ipv4Path | None = None  # the route now, for "auto"


@dataclass(frozen=True)
class SetupFailed:
    message: str


@dataclass(frozen=True)
class Stop:
    cause: Cause = Cause.USER_REQUEST


Event = (Resolved | ResolveFailed | RaceDatagram | RaceError | Traffic | KeepaliveAnswered
         | NetworkChanged | Resumed | RegenerateRequested | FragmentationNeeded | MtuRequested
         | PortalChecked | SetupFailed | Stop)


# --- actions: what the session asks the helper to do, in order ---


@dataclass(frozen=True)
class Resolve:
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class OpenRace:
    """Open one UDP socket per port, connected to (gateway, port)."""

    gateway: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class SendRaceProbe:
    gateway: str
    port: int
    packet: bytes


Endpoint = tuple[str, int]  # (gateway IPv4 address, UDP port)


@dataclass(frozen=True)
class CloseRace:
    """Close the race's sockets, all but `keep` (the winner's, which carries the tunnel)."""

    keep: Endpoint | None


@dataclass(frozen=True)
class UseAddress:
    """Put `address` on the tunnel interface (creating it, with the session's MTU, if there is
    none) and move the data path onto the race socket of (`gateway`, `port`)."""

    address: bytes
    suffix: int
    gateway: str
    port: int
    previous: bytes | None
    reason: AddressReason


@dataclass(frozen=True)
class ApplyMtu:
    mtu: int
    previous: int
    reason: MtuReason


@dataclass(frozen=True)
class SendKeepalive:
    packet: bytes


@dataclass(frozen=True)
class StateChanged:
    state: TunnelState
    cause: Cause
    message: str | None = None


@dataclass(frozen=True)
class Remember:
    """Store what this network taught this profile (the gateway and port that won, the MTU)."""

    network: str
    gateway: str  # host as configured
    port: int
    mtu: int


@dataclass(frozen=True)
class CheckPortal:
    """Ask whether the IPv4 network holds us behind a captive portal (answer: PortalChecked)."""


@dataclass(frozen=True)
class Teardown:
    pass


Action = (Resolve | OpenRace | SendRaceProbe | CloseRace | UseAddress | ApplyMtu
          | SendKeepalive | StateChanged | Remember | CheckPortal | Teardown)


@dataclass(frozen=True)
class PortResult:
    """What the last race saw of one port of one gateway."""

    gateway: str  # host as configured
    port: int
    rtt: float | None  # seconds, None: no answer
    error: str | None = None


@dataclass
class SessionConfig:
    hosts: tuple[str, ...]  # the gateways (IPv4 literals or names), raced like the ports
    ports: tuple[int, ...]
    prefix: TunnelPrefix
    home_agent: bytes
    mtu: int | Literal["auto"] = DEFAULT_TUNNEL_MTU
    keepalive: float = KEEPALIVE_INTERVAL
    reply_timeout: float = 3.0  # sent data, nothing back for this long: probe the path
    probe_interval: float = 1.0  # between unanswered probes
    probes: int = 3  # unanswered probes before the path is declared dead
    race_timeout: float = RACE_TIMEOUT


class Race:
    """One PortRace per gateway, raced together: every (gateway, port) at once, each from its
    own fresh address (never one another candidate or another tunnel uses)."""

    def __init__(self, gateways: list[str], config: SessionConfig, now: float,
                 taken: set[int], delays: dict[Endpoint, float]) -> None:
        self.races: dict[str, PortRace] = {}
        used = set(taken)
        for gateway in gateways:
            race = PortRace(config.prefix, config.home_agent, list(config.ports), now, used,
                            timeout=config.race_timeout,
                            delays={port: delay for (address, port), delay in delays.items()
                                    if address == gateway})
            used |= {candidate.suffix for candidate in race.candidates.values()}
            self.races[gateway] = race

    def due(self, now: float) -> list[tuple[str, int, bytes]]:
        return [(gateway, port, packet) for gateway, race in self.races.items()
                for port, packet in race.due(now)]

    def next_deadline(self) -> float:
        return min(race.next_deadline() for race in self.races.values())

    def receive(self, gateway: str, port: int, data: bytes, now: float
                ) -> RaceCandidate | None:
        race = self.races.get(gateway)
        return None if race is None else race.receive(port, data, now)

    def finished(self, now: float) -> bool:
        return all(race.finished(now) for race in self.races.values())

    def candidates(self) -> list[tuple[str, RaceCandidate]]:
        return [(gateway, candidate) for gateway, race in self.races.items()
                for candidate in race.candidates.values()]


# Causes that a new address can be "connected because of" (after the first connect).
_ADDRESS_CAUSES = {Cause.NETWORK_CHANGED, Cause.NAT_MAPPING_CHANGED, Cause.USER_REQUEST,
                   Cause.RESUME}


@dataclass
class ClientSession:
    config: SessionConfig
    random: Callable[[], float] | None = None  # keepalive jitter source (tests pin it)
    phase: Phase = Phase.IDLE
    cause: Cause = Cause.USER_REQUEST
    message: str | None = None
    gateway: str | None = None  # the gateway in use (host as configured)
    gateway_address: str | None = None
    path: Ipv4Path | None = None  # the route of the network we are connected on
    address: bytes | None = None
    suffix: int | None = None
    port: int | None = None
    rtt: float | None = None
    ports: list[PortResult] = field(default_factory=list)
    mtu: int = DEFAULT_TUNNEL_MTU
    network: str | None = None  # the network we are connected on (or trying)
    portal_url: str | None = None  # behind a captive portal: where to log in
    liveness: LivenessMonitor = field(init=False)
    _reason: Cause = Cause.USER_REQUEST  # why the current attempt was started
    _race: Race | None = None
    _pending_path: Ipv4Path | None = None  # the route the running race goes over
    _remembered: Remembered | None = None  # what the network of the running race taught us
    _race_errors: dict[Endpoint, str] = field(default_factory=dict)
    _first: Endpoint | None = None  # the remembered endpoint, raced alone for a head start
    _winner: Endpoint | None = None
    _hosts: dict[str, str] = field(default_factory=dict)  # address -> host, this attempt
    _race_ends: float = 0.0
    _backoff: float = FIRST_BACKOFF
    _retry_at: float | None = None
    _keepalive_sent_at: float | None = None
    _resumed_at: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.config.mtu, int):
            self.mtu = self.config.mtu
        self.configured_mtu: int | Literal["auto"] = self.config.mtu
        config = self.config
        # The data path's activity is sampled once a second (a local timer, no packet), so
        # that the first unanswered send is noticed.
        self.liveness = LivenessMonitor(
            keepalive=config.keepalive, reply_timeout=config.reply_timeout,
            probe_timeout=config.probe_interval, attempts=config.probes,
            check_interval=ACTIVITY_CHECK, random=self.random or random_fraction)

    @property
    def state(self) -> TunnelState:
        return SHOWN_AS[self.phase]

    # --- the three entry points ---

    def start(self, now: float) -> list[Action]:
        return self._attempt(Cause.USER_REQUEST)

    def handle(self, event: Event, now: float) -> list[Action]:
        handler = TRANSITIONS.get((self.phase, type(event))) or ANY_PHASE.get(type(event))
        if handler is None or self.phase is Phase.STOPPED:
            return []
        return handler(self, event, now)

    def next_deadline(self) -> float | None:
        if self.phase is Phase.RACING and self._race is not None:
            if self._winner is not None:
                return self._race_ends
            return min(self._race.next_deadline(), self._race_ends)
        if self.phase is Phase.CONNECTED:
            return self.liveness.next_deadline()
        if self.phase in (Phase.WAITING, Phase.ERROR):
            return self._retry_at
        return None

    def handle_timer(self, now: float) -> list[Action]:
        if self.phase is Phase.RACING:
            return self._race_timer(now)
        if self.phase is Phase.CONNECTED:
            return self._liveness_timer(now)
        if self.phase in (Phase.WAITING, Phase.ERROR) and self._retry_at is not None \
                and now >= self._retry_at:
            if self.cause is Cause.CAPTIVE_PORTAL:
                self._retry_at = now + PORTAL_RECHECK
                return [CheckPortal()]
            return self._attempt(self._retry_reason())
        return []

    # --- connecting ---

    def _attempt(self, reason: Cause) -> list[Action]:
        self._reason = reason
        self._retry_at = None
        return [*self._enter(Phase.RESOLVING, reason), Resolve(self.config.hosts)]

    def _retry_reason(self) -> Cause:
        # A retry after a failed first attempt is "retrying"; after a lost connection, the
        # attempt keeps the reason it was started for.
        return Cause.RETRYING if self.address is None else self._reason

    def _resolved(self, event: Resolved, now: float) -> list[Action]:
        if not event.gateways:
            return self._resolve_failed(ResolveFailed("no gateway resolved"), now)
        self.gateway_address = event.gateways[0].address
        self._hosts = {g.address: g.host for g in event.gateways}
        if event.path is None:
            # "When a MN gets IPv4 connectivity (IPv4 address and route), it selects a random 48
            # bits value" (Protocol operations): without it there is nothing to try; a network
            # event brings us back.
            return self._wait(Cause.NO_IPV4_NETWORK, backoff=False)
        self._pending_path = event.path
        self.network = event.network
        endpoints = [(g.address, port) for g in event.gateways for port in self.config.ports]
        remembered = event.remembered
        first: Endpoint | None = None
        if remembered is not None:
            first = next(((address, port) for address, port in endpoints
                          if port == remembered.port
                          and self._hosts[address] == (remembered.gateway
                                                       or self._hosts[address])), None)
            if first is None:
                remembered = None  # the profile changed since
        self._remembered = remembered
        actions: list[Action] = []
        delays: dict[Endpoint, float] = {}
        if first is not None and remembered is not None:
            # A known network: its gateway and port first, the others after a head start; its
            # MTU now.
            delays = {endpoint: HEAD_START for endpoint in endpoints if endpoint != first}
            if not event.path.same_network(self.path):
                actions += self._apply_mtu(remembered.mtu, MtuReason.REMEMBERED)
        self._race = Race([g.address for g in event.gateways], self.config, now,
                          set(event.taken), delays)
        self._race_errors = {}
        self._winner = None
        self._first = first
        self._race_ends = now + self.config.race_timeout
        self.phase = Phase.RACING
        return [*actions, *(OpenRace(g.address, self.config.ports) for g in event.gateways),
                *self._race_probes(now)]

    def _resolve_failed(self, event: ResolveFailed, now: float) -> list[Action]:
        self.message = event.message
        return self._wait(Cause.RESOLVE_FAILED, now=now)

    def _race_probes(self, now: float) -> list[Action]:
        assert self._race is not None
        return [SendRaceProbe(gateway, port, packet)
                for gateway, port, packet in self._race.due(now)]

    def _race_datagram(self, event: RaceDatagram, now: float) -> list[Action]:
        assert self._race is not None
        if self._race.receive(event.gateway, event.port, event.data, now) is None:
            return []
        if self._winner is None:
            # The first answer wins; the others get a moment so the report of which ports
            # work is honest, without delaying the tunnel noticeably. The remembered port
            # winning its head start ends the race at once: nothing else was tried.
            self._winner = (event.gateway, event.port)
            self._race_ends = min(self._race_ends, now if self._winner == self._first
                                  else now + RACE_REPORT_GRACE)
        if self._race.finished(now) or now >= self._race_ends:
            return self._race_over(now)
        return []

    def _race_error(self, event: RaceError, now: float) -> list[Action]:
        self._race_errors[event.gateway, event.port] = event.error
        return []

    def _race_timer(self, now: float) -> list[Action]:
        assert self._race is not None
        if now >= self._race_ends or self._race.finished(now):
            return self._race_over(now)
        return self._race_probes(now) if self._winner is None else []

    def _race_over(self, now: float) -> list[Action]:
        race, self._race = self._race, None
        assert race is not None
        self.ports = [PortResult(self._hosts[address], c.port, c.rtt,
                                 None if c.rtt is not None
                                 else self._race_errors.get((address, c.port), "no answer")
                                 if c.attempts
                                 else "not tried: the remembered port answered first")
                      for address, c in race.candidates()]
        if self._winner is None:
            # No port answered: a captive portal that holds everything until a login is the
            # one case the user can fix; ask, while the back-off runs.
            return [CloseRace(None), *self._wait(Cause.GATEWAY_UNREACHABLE, now=now),
                    CheckPortal()]
        address, port = self._winner
        won = race.races[address].candidates[port]
        assert won.rtt is not None
        path, self._pending_path = self._pending_path, None
        assert path is not None
        previous = self.address
        reason = AddressReason.CONNECT if previous is None else AddressReason(self._reason)
        actions: list[Action] = [CloseRace(self._winner)]
        actions += self._mtu_for_network(path)
        self.path = path
        self.portal_url = None
        self.gateway, self.gateway_address = self._hosts[address], address
        self.address, self.suffix, self.port, self.rtt = won.address, won.suffix, port, won.rtt
        actions.append(UseAddress(won.address, won.suffix, address, port, previous, reason))
        actions += self._remember()
        first = next(iter(race.races.values())).candidates.get(self.config.ports[0])
        if first is None or first.rtt is None:
            cause = Cause.PORT_FALLBACK  # the preferred gateway and port did not answer
        elif previous is not None and self._reason in _ADDRESS_CAUSES:
            cause = self._reason  # connected again, with a new address, because of this
        else:
            cause = Cause.PORT_RACE_WON
        self._backoff = FIRST_BACKOFF
        self.message = None
        self.liveness.start(now)
        self._keepalive_sent_at = None
        return actions + self._enter(Phase.CONNECTED, cause)

    def _wait(self, cause: Cause, *, now: float = 0.0, backoff: bool = True) -> list[Action]:
        if backoff:
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        else:
            self._retry_at = None
        return self._enter(Phase.WAITING, cause)

    def _retry_now(self, event: NetworkChanged | Resumed, now: float) -> list[Action]:
        return self._attempt(self._retry_reason())

    def _portal_checked(self, event: PortalChecked, now: float) -> list[Action]:
        if event.url is None:
            if self.cause is Cause.CAPTIVE_PORTAL:
                self.portal_url = None
                return self._attempt(self._retry_reason())  # let through: try at once
            return []
        # "waiting, captive_portal": the user must log in; look again every few seconds
        # (an HTTP request, no tunnel traffic) and try the moment the portal lets us through.
        self.portal_url = event.url
        self.message = f"this network wants a login first: {event.url}"
        self._retry_at = now + PORTAL_RECHECK
        return self._enter(Phase.WAITING, Cause.CAPTIVE_PORTAL)

    def _enter(self, phase: Phase, cause: Cause) -> list[Action]:
        shown_before = (self.state, self.cause)
        self.phase, self.cause = phase, cause
        if (self.state, self.cause) == shown_before and phase is not Phase.ERROR:
            return []
        message = self.message if phase in (Phase.ERROR, Phase.WAITING) else None
        return [StateChanged(self.state, cause, message)]

    # --- connected: keepalive, liveness, the network ---

    def _traffic(self, event: Traffic, now: float) -> list[Action]:
        self.liveness.last_received = max(self.liveness.last_received, event.received_at)
        self.liveness.last_sent = max(self.liveness.last_sent, event.sent_at)
        return []

    def _keepalive_answered(self, event: KeepaliveAnswered, now: float) -> list[Action]:
        self.liveness.last_received = max(self.liveness.last_received, now)
        if self._keepalive_sent_at is not None:
            self.rtt = now - self._keepalive_sent_at
            self._keepalive_sent_at = None
        return []

    def _liveness_timer(self, now: float) -> list[Action]:
        verdict = self.liveness.poll(now)
        if verdict is Liveness.SEND_KEEPALIVE and self.address is not None:
            # "If the MN has not sent and received traffic via the tunnel for 30 seconds ...
            # send an empty IPv6 packet" (Maintaining NAT states); answered only while our
            # gateway state exists with our current IPv4 mapping, so it is also the probe.
            self._keepalive_sent_at = now
            return [SendKeepalive(build_keepalive(self.address))]
        if verdict is Liveness.PATH_DEAD:
            # The gateway never tells a client its state is gone: a dead path on an unchanged
            # network means the NAT mapping changed. "each time it changes its point of
            # attachment" a MN takes new random bits (Protocol operations).
            resumed = self._resumed_at is not None and now - self._resumed_at < RESUME_WINDOW
            return self._attempt(Cause.RESUME if resumed else Cause.NAT_MAPPING_CHANGED)
        return []

    def _resumed(self, event: Resumed, now: float) -> list[Action]:
        """Back from suspend: the NAT has probably forgotten us. Probe at once; if the path
        turns out dead, the new address is attributed to the resume."""
        self._resumed_at = now
        self.liveness.check_now(now)
        return []

    def _network_changed(self, event: NetworkChanged, now: float) -> list[Action]:
        if event.path is not None and event.path.same_network(self.path):
            return []
        return self._attempt(Cause.NETWORK_CHANGED)

    def _regenerate(self, event: RegenerateRequested, now: float) -> list[Action]:
        return self._attempt(Cause.USER_REQUEST)

    # --- MTU policy ---

    def _base_mtu(self, path: Ipv4Path | None) -> int:
        if self.configured_mtu == "auto":
            return tunnel_mtu_for_route(path.mtu if path else None, DEFAULT_TUNNEL_MTU)
        return self.configured_mtu

    def _apply_mtu(self, mtu: int, reason: MtuReason) -> list[Action]:
        previous, self.mtu = self.mtu, mtu
        return [ApplyMtu(mtu, previous, reason)] if mtu != previous else []

    def _mtu_for_network(self, path: Ipv4Path) -> list[Action]:
        """MTU is a property of the network: on a new one (and on the first), start again
        from the profile's value, or from the route's for "auto"; on the same network (a new
        NAT mapping, a new address on request) keep what was learned."""
        if path.same_network(self.path):
            return []
        if self._remembered is not None:
            return self._apply_mtu(self._remembered.mtu, MtuReason.REMEMBERED)
        reason = MtuReason.AUTO if self.configured_mtu == "auto" else MtuReason.NETWORK_CHANGED
        return self._apply_mtu(self._base_mtu(path), reason)

    def _remember(self) -> list[Action]:
        if self.network is None or self.port is None or self.gateway is None:
            return []
        return [Remember(self.network, self.gateway, self.port, self.mtu)]

    def _fragmentation_needed(self, event: FragmentationNeeded, now: float) -> list[Action]:
        """"Reception of ICMP Packet too big messages from IPv4 routers on the path may be used
        to locally update the MTU of the path." (MTU considerations)"""
        lowered = tunnel_mtu_for_link(event.ipv4_mtu)
        if lowered >= self.mtu:
            return []
        return [*self._apply_mtu(lowered, MtuReason.FRAGMENTATION_NEEDED), *self._remember()]

    def _mtu_requested(self, event: MtuRequested, now: float) -> list[Action]:
        self.configured_mtu = event.mtu
        path = event.path or self.path
        reason = MtuReason.AUTO if event.mtu == "auto" else MtuReason.USER_REQUEST
        return self._apply_mtu(self._base_mtu(path), reason)

    # --- failure and the end ---

    def _setup_failed(self, event: SetupFailed, now: float) -> list[Action]:
        self.message = event.message
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._race = None
        return self._enter(Phase.ERROR, Cause.SETUP_FAILED)

    def _stop(self, event: Stop, now: float) -> list[Action]:
        actions: list[Action] = [CloseRace(None)] if self._race is not None else []
        self._race = None
        self._retry_at = None
        return [*actions, Teardown(), *self._enter(Phase.STOPPED, event.cause)]


# Which events each phase takes. Anything else is ignored: a late race answer once connected,
# a network event in the middle of a race (the race's own outcome decides), a regenerate while
# waiting (the helper refuses it before it gets here).
TRANSITIONS: dict[tuple[Phase, type[Event]], Callable[..., list[Action]]] = {
    (Phase.RESOLVING, Resolved): ClientSession._resolved,
    (Phase.RESOLVING, ResolveFailed): ClientSession._resolve_failed,
    (Phase.RACING, RaceDatagram): ClientSession._race_datagram,
    (Phase.RACING, RaceError): ClientSession._race_error,
    (Phase.CONNECTED, Traffic): ClientSession._traffic,
    (Phase.CONNECTED, KeepaliveAnswered): ClientSession._keepalive_answered,
    (Phase.CONNECTED, NetworkChanged): ClientSession._network_changed,
    (Phase.CONNECTED, Resumed): ClientSession._resumed,
    (Phase.CONNECTED, RegenerateRequested): ClientSession._regenerate,
    (Phase.CONNECTED, FragmentationNeeded): ClientSession._fragmentation_needed,
    (Phase.WAITING, NetworkChanged): ClientSession._retry_now,
    (Phase.WAITING, Resumed): ClientSession._retry_now,
    (Phase.WAITING, PortalChecked): ClientSession._portal_checked,
    (Phase.ERROR, NetworkChanged): ClientSession._retry_now,
}
# Events every phase (but STOPPED) takes.
ANY_PHASE: dict[type[Event], Callable[..., list[Action]]] = {
    MtuRequested: ClientSession._mtu_requested,
    SetupFailed: ClientSession._setup_failed,
    Stop: ClientSession._stop,
}


def suffix_text(suffix: int) -> str:
    """The 48 random bits as the address's last three groups ("8d2e:41f0:977c")."""
    return ":".join(f"{suffix >> shift & 0xFFFF:x}" for shift in (32, 16, 0))
