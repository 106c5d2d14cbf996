"""One tunnel: carries out what its ClientSession (m6t.protocol.session) decides.

The session owns the lifecycle (the port race, back-off, causes, keepalive and liveness timing,
the MTU policy); this is the loop around it: it feeds the session what happens (a race answer, a
network event, a keepalive reply, the data path's activity, the passing of time) and does what
it asks (open the race sockets, put an address on the interface, apply an MTU, send a keepalive,
publish a state). The TUN device is created on the first success and kept across new
addresses, so the interface a user (or the MIPv6 daemon) sees stays m6tN while its address
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol

from m6t.control.schema import (
    AddressChange,
    AddressEvent,
    Event,
    MtuEvent,
    MtuReport,
    PortProbe,
    Profile,
    StateEvent,
    TunnelStatus,
)
from m6t.linux.fragments import fragment_udp, send_fragments
from m6t.linux.udp import send_datagram
from m6t.protocol import session as s
from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.client import Inbound, build_probe, mtu_probe_sizes
from m6t.protocol.constants import DEFAULT_TUNNEL_MTU, IPV6_MINIMUM_MTU
from m6t.protocol.packets import parse_echo

from .datapath import Pump, Target
from .io import HelperIO, Interface
from .memory import NetworkMemory

log = logging.getLogger("m6t.helper")

HISTORY = 50
MTU_PROBE_WAIT = 1.5
OLD_SOCKET_GRACE = 1.0  # the pump thread may still poll the old socket for a moment
SETUP_ACTIONS = (s.UseAddress, s.ApplyMtu)  # what fails when the system refuses a tunnel


class HelperContext(Protocol):
    loop: asyncio.AbstractEventLoop
    io: HelperIO
    memory: NetworkMemory

    def publish(self, event: Event) -> None: ...
    def taken_suffixes(self, prefix: str, exclude: Tunnel | None) -> set[int]: ...


def port_probes(results: list[s.PortResult]) -> list[PortProbe]:
    return [PortProbe(port=r.port, reachable=r.rtt is not None,
                      rtt_ms=None if r.rtt is None else round(r.rtt * 1000, 3), error=r.error,
                      gateway=r.gateway)
            for r in results]


def session_config(profile: Profile) -> s.SessionConfig:
    return s.SessionConfig(hosts=tuple(profile_gateways(profile)), ports=tuple(profile.ports),
                           prefix=TunnelPrefix.parse(profile.prefix),
                           home_agent=ipaddress.IPv6Address(profile.home_agent).packed,
                           mtu=profile.mtu, keepalive=profile.keepalive,
                           reply_timeout=profile.liveness.reply_timeout,
                           probe_interval=profile.liveness.probe_interval,
                           probes=profile.liveness.probes)


def profile_gateways(profile: Profile) -> list[str]:
    """The profile's gateway and the others it lists, raced together."""
    return [profile.gateway, *profile.more_gateways]


class Tunnel:
    def __init__(self, context: HelperContext, profile: Profile, name: str) -> None:
        self.context = context
        self.loop = context.loop
        self.io = context.io
        self.profile = profile
        self.name = name
        self.session = s.ClientSession(session_config(profile))
        self.since = time.time()
        self.history: deque[AddressChange] = deque(maxlen=HISTORY)
        self.interface: Interface | None = None
        self.pump: Pump | None = None
        self._told_fallbacks: dict[str, str] = {}  # as the last state event gave them
        self.first_outcome: asyncio.Future[None] = self.loop.create_future()
        self._outcome_waiters: list[asyncio.Future[None]] = []
        self._race_sockets: dict[s.Endpoint, socket.socket] = {}
        self._kept: tuple[s.Endpoint, socket.socket] | None = None  # the race winner's socket
        self._timer: asyncio.TimerHandle | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._portal_check: asyncio.Task[None] | None = None
        self.network_label: str | None = None
        self._work: deque[Callable[[float], list[s.Action]]] = deque()
        self._busy = False
        self._probe_waiters: dict[int, asyncio.Future[None]] = {}
        self._probe_identifier = secrets.randbits(16)

    # --- what the outside sees ---

    @property
    def state(self) -> s.TunnelState:
        return self.session.state

    @property
    def suffix(self) -> int | None:
        return self.session.suffix

    @property
    def gateway_address(self) -> str | None:
        return self.session.gateway_address

    def status(self) -> TunnelStatus:
        session, pump = self.session, self.pump
        return TunnelStatus(
            name=self.name, profile=self.profile.name, state=session.state,
            cause=session.cause,
            address=str(ipaddress.IPv6Address(session.address)) if session.address else None,
            prefix=self.profile.prefix,
            suffix=None if session.suffix is None else s.suffix_text(session.suffix),
            gateway=session.gateway or self.profile.gateway,
            gateway_address=session.gateway_address,
            port=session.port, home_agent=self.profile.home_agent, mtu=session.mtu,
            rtt_ms=None if session.rtt is None else round(session.rtt * 1000, 3),
            rx_bytes=pump.rx_bytes if pump else 0, tx_bytes=pump.tx_bytes if pump else 0,
            rx_packets=pump.rx_packets if pump else 0, tx_packets=pump.tx_packets if pump else 0,
            drops=pump.drops() if pump else {}, since=self.since, history=list(self.history),
            ports=port_probes(session.ports),
            message=session.message if session.state == s.TunnelState.ERROR else None,
            network=session.network, network_label=self.network_label,
            portal_url=session.portal_url, datapath=pump.datapath() if pump else None)

    def next_outcome(self) -> asyncio.Future[None]:
        """Resolves when the next connection attempt is decided (connected/waiting/error)."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._outcome_waiters.append(waiter)
        return waiter

    def local_port(self) -> int | None:
        if self.pump is None:
            return None
        with contextlib.suppress(OSError):
            return int(self.pump.target.sock.getsockname()[1])
        return None

    # --- what happens to it (from the helper, netlink, the pump) ---

    def start(self) -> None:
        self._step(self.session.start)

    async def stop(self, cause: s.Cause = s.Cause.USER_REQUEST) -> None:
        self.feed(s.Stop(cause))
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._resolving, self._portal_check):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._settle_outcomes(force=True)

    def network_changed(self) -> None:
        """Netlink said something changed: tell the session the route to our gateway now."""
        gateway = self.session.gateway_address
        self.feed(s.NetworkChanged(self.io.route_to(gateway) if gateway else None))

    def resumed(self) -> None:
        self.feed(s.Resumed())

    def regenerate(self) -> None:
        self.feed(s.RegenerateRequested())

    def fragmentation_needed(self, ipv4_mtu: int) -> None:
        self.feed(s.FragmentationNeeded(ipv4_mtu))

    def set_mtu(self, mtu: int | Literal["auto"]) -> None:
        gateway = self.session.gateway_address
        self.feed(s.MtuRequested(mtu, self.io.route_to(gateway) if gateway else None))

    # --- the loop around the session ---

    def feed(self, event: s.Event) -> None:
        self._step(partial(self.session.handle, event))

    def _on_timer(self) -> None:
        self._timer = None
        pump = self.pump
        if pump is not None and self.session.phase is s.Phase.CONNECTED:
            self.feed(s.Traffic(pump.last_sent, pump.last_received))
        self._step(self.session.handle_timer)

    def _step(self, decide: Callable[[float], list[s.Action]]) -> None:
        """Let the session decide, then carry out its actions in order. An event that arrives
        while actions run (a send that fails, say) waits its turn: the session never sees two
        things at once. A failed set-up (the interface, its address or MTU) ends its batch (a
        tunnel whose address could not be set up must not be announced connected) and becomes
        SetupFailed; any other action that fails is a bug, logged, and the batch goes on, so
        that no failure can feed itself through the session forever."""
        self._work.append(decide)
        if self._busy:
            return
        self._busy = True
        try:
            while self._work:
                for action in self._work.popleft()(self.loop.time()):
                    try:
                        self._carry_out(action)
                    except Exception as exc:
                        log.exception("%s: %s failed", self.name, type(action).__name__)
                        if isinstance(action, SETUP_ACTIONS):
                            self._work.append(partial(self.session.handle,
                                                      s.SetupFailed(str(exc))))
                            break
        finally:
            self._busy = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.session.next_deadline()
        if deadline is not None:
            self._timer = self.loop.call_at(max(deadline, self.loop.time()), self._on_timer)

    def _carry_out(self, action: s.Action) -> None:
        match action:
            case s.Resolve(hosts):
                self._resolving = self.loop.create_task(self._resolve(hosts))
            case s.OpenRace(gateway, ports):
                self._open_race(gateway, ports)
            case s.SendRaceProbe(gateway, port, packet):
                sock = self._race_sockets.get((gateway, port))
                if sock is not None:
                    try:
                        sock.send(packet)
                    except OSError as exc:
                        self.feed(s.RaceError(gateway, port, exc.strerror or str(exc)))
            case s.CloseRace(keep):
                self._close_race(keep)
            case s.UseAddress():
                self._use_address(action)
            case s.ApplyMtu(mtu, previous, reason):
                if self.interface is not None:
                    self.interface.set_mtu(mtu)
                log.info("%s: MTU %d -> %d (%s)", self.name, previous, mtu, reason)
                self.context.publish(MtuEvent(tunnel=self.name, profile=self.profile.name,
                                              mtu=mtu, previous=previous, reason=reason))
            case s.SendKeepalive(packet):
                if self.pump is not None:
                    with contextlib.suppress(OSError):
                        send_datagram(self.pump.target.sock, packet, None)
            case s.StateChanged(state, cause, message):
                self.since = time.time()
                log.info("%s (%s): %s, %s%s", self.name, self.profile.name, state, cause,
                         f" ({message})" if message else "")
                try:
                    status = self.status()
                    self._told_fallbacks = status.datapath.fallbacks if status.datapath else {}
                    self.context.publish(StateEvent(
                        tunnel=self.name, profile=self.profile.name, state=state, cause=cause,
                        status=status, message=message))
                finally:
                    self._settle_outcomes()  # a caller waiting for this outcome is answered
            case s.Remember(network, gateway, port, mtu):
                self.context.memory.remember(network, self.network_label or network,
                                             self.profile.name, port, mtu, gateway)
            case s.CheckPortal():
                if self._portal_check is None or self._portal_check.done():
                    self._portal_check = self.loop.create_task(self._check_portal())
            case s.Teardown():
                self._teardown()

    def tell_datapath_changes(self) -> None:
        """An offload the data path lost or got back since the last state event (UDP GSO
        refused once IPsec is on the IPv4 path, a super-packet the device refused; or a new
        socket where it works again) is told as a state event, same state and cause, with the
        new status and what changed: clients show the data path from the status they have."""
        if self.pump is None:
            return
        fallbacks = self.pump.offload.fallbacks()
        if fallbacks == self._told_fallbacks:
            return
        changes = [f"{feature} refused: {reason}; the plain path instead"
                   for feature, reason in fallbacks.items()
                   if self._told_fallbacks.get(feature) != reason]
        changes += [f"{feature} works again" for feature in self._told_fallbacks
                    if feature not in fallbacks]
        self._told_fallbacks = fallbacks
        status = self.status()
        log.info("%s: data path: %s", self.name, "; ".join(changes))
        self.context.publish(StateEvent(
            tunnel=self.name, profile=self.profile.name, state=status.state, cause=status.cause,
            status=status, message="data path: " + "; ".join(changes)))

    def _settle_outcomes(self, force: bool = False) -> None:
        if not force and self.session.phase not in (s.Phase.CONNECTED, s.Phase.WAITING,
                                                    s.Phase.ERROR):
            return
        waiters = [self.first_outcome, *self._outcome_waiters]
        self._outcome_waiters.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- carrying out ---

    async def _resolve(self, hosts: tuple[str, ...]) -> None:
        gateways, errors = [], []
        for host in hosts:
            try:
                gateways.append(s.Gateway(host, await self.io.resolve(host)))
            except OSError as exc:
                errors.append(f"{host}: {exc}")
        if not gateways:
            self.feed(s.ResolveFailed("; ".join(errors)))
            return
        if errors:
            log.warning("%s: some gateways did not resolve: %s", self.name, "; ".join(errors))
        taken = frozenset(self.context.taken_suffixes(self.profile.prefix, self))
        path = self.io.route_to(gateways[0].address)
        identity = await self.io.identify_network(path) if path is not None else None
        remembered = None
        if identity is not None:
            self.network_label = identity.label
            remembered = self.context.memory.recall(identity.id, self.profile.name)
        self.feed(s.Resolved(tuple(gateways), path, taken, identity.id if identity else None,
                             remembered))

    async def _check_portal(self) -> None:
        self.feed(s.PortalChecked(await self.io.check_portal()))

    def _open_race(self, gateway: str, ports: tuple[int, ...]) -> None:
        """One socket per port, each connected: the kernel lets only the gateway in."""
        for port in ports:
            try:
                sock = self.io.open_udp(gateway, port)
            except OSError as exc:
                self.feed(s.RaceError(gateway, port, exc.strerror or str(exc)))
                continue
            self._race_sockets[gateway, port] = sock
            self.loop.add_reader(sock.fileno(), self._race_readable, gateway, port, sock)

    def _race_readable(self, gateway: str, port: int, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:
                self.feed(s.RaceError(gateway, port, exc.strerror or str(exc)))
                return
            self.feed(s.RaceDatagram(gateway, port, data))
            if (gateway, port) not in self._race_sockets:
                return  # that answer ended the race

    def _close_race(self, keep: s.Endpoint | None) -> None:
        if self._kept is not None:  # a winner whose address could not be set up
            self._kept[1].close()
            self._kept = None
        sockets, self._race_sockets = self._race_sockets, {}
        for endpoint, sock in sockets.items():
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())  # the winner's is read by its pump now
            if endpoint == keep:
                self._kept = (endpoint, sock)
            else:
                sock.close()

    def _use_address(self, action: s.UseAddress) -> None:
        assert self._kept is not None and self._kept[0] == (action.gateway, action.port)
        gateway = action.gateway
        _, sock = self._kept
        self._kept = None
        address_text = str(ipaddress.IPv6Address(action.address))
        if self.interface is None:
            self.interface = self.io.create_interface(self.name, self.session.mtu)
            self.interface.set_address(address_text)
            self.interface.set_routes(self.profile.routes, self.profile.home_agent)
        else:
            self.interface.set_address(address_text)
        target = Target(action.address, sock, (gateway, action.port))
        if self.pump is None:
            self.pump = Pump(self.interface.tun, target, self._from_pump)
            self.pump.start()
        else:
            old = self.pump.target.sock
            self.pump.retarget(target)
            self.loop.call_later(OLD_SOCKET_GRACE, old.close)
        now = time.monotonic()
        self.pump.last_received = self.pump.last_sent = now
        previous = (str(ipaddress.IPv6Address(action.previous))
                    if action.previous is not None else None)
        change = AddressChange(address=address_text, previous=previous, reason=action.reason,
                               at=time.time())
        self.history.append(change)
        self.context.publish(AddressEvent(
            tunnel=self.name, profile=self.profile.name, address=change.address,
            previous=change.previous, reason=change.reason, at=change.at))

    def _teardown(self) -> None:
        self._close_race(None)
        if self.pump is not None:
            self.pump.stop()
            self.pump.target.sock.close()
            self.pump = None
        if self.interface is not None:
            self.interface.close()
            self.interface = None

    # --- packets the pump hands over (called in a pump thread) ---

    def _from_pump(self, kind: Inbound, packet: bytes) -> None:
        self.loop.call_soon_threadsafe(self._control_packet, kind, packet)

    def _control_packet(self, kind: Inbound, packet: bytes) -> None:
        if kind is Inbound.KEEPALIVE_REPLY:
            self.feed(s.KeepaliveAnswered())
            return
        echo = parse_echo(packet)
        if echo is None or echo.identifier != self._probe_identifier:
            return
        waiter = self._probe_waiters.get(echo.sequence)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the MTU probe (a diagnostic: the session is not involved) ---

    async def probe_mtu(self) -> MtuReport:
        pump, address = self.pump, self.session.address
        gateway_address = self.session.gateway_address
        if pump is None or address is None or gateway_address is None:
            raise RuntimeError("not connected")
        target = pump.target
        home_agent = self.session.config.home_agent
        highest = self.profile.mtu if isinstance(self.profile.mtu, int) else DEFAULT_TUNNEL_MTU
        sizes = mtu_probe_sizes(max(highest, self.session.mtu), beyond=())
        waiters = {size: self.loop.create_future() for size in sizes}
        fragment_sequence = 1  # sizes are >= 1280, so 1 is free
        waiters[fragment_sequence] = self.loop.create_future()
        self._probe_waiters = waiters
        path = self.io.route_to(gateway_address)
        try:
            for size in sizes:
                packet = build_probe(address, home_agent, self._probe_identifier, size, size)
                with contextlib.suppress(OSError):
                    send_datagram(target.sock, packet, None)
            # One echo in hand-made IPv4 fragments, from the tunnel socket's own port.
            probe = build_probe(address, home_agent, self._probe_identifier,
                                fragment_sequence, IPV6_MINIMUM_MTU)
            port = self.local_port()
            if path is not None and path.source and port:
                with contextlib.suppress(OSError):
                    gateway_ip, gateway_port = target.gateway
                    send_fragments(fragment_udp(path.source, port, gateway_ip, gateway_port,
                                                probe), gateway_ip)
            await asyncio.wait([*waiters.values()], timeout=MTU_PROBE_WAIT)
        finally:
            self._probe_waiters = {}
        answered = sorted(size for size in sizes if _answered(waiters[size]))
        fragments_pass = _answered(waiters[fragment_sequence])
        if self.session.network is not None:
            self.context.memory.note_fragments(self.session.network, self.profile.name,
                                               fragments_pass)
        for waiter in waiters.values():
            waiter.cancel()
        return MtuReport(mtu=max(answered) if answered else 0, fragments_pass=fragments_pass,
                         ipv4_path_mtu=path.mtu if path else None, tried=sizes,
                         answered=answered)


def _answered(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled()


async def probe_ports(context: HelperContext, gateways: list[s.Gateway], profile: Profile,
                      timeout: float) -> list[PortProbe]:
    """Every port of every gateway of `profile` at once, each from its own fresh address and
    socket, until all answered or `timeout`: what the `probe` method reports. No tunnel is
    touched."""
    loop, io = context.loop, context.io
    config = session_config(profile)
    config.race_timeout = timeout
    race = s.Race([g.address for g in gateways], config, loop.time(),
                  context.taken_suffixes(profile.prefix, None), {})
    hosts = {g.address: g.host for g in gateways}
    sockets: dict[s.Endpoint, socket.socket] = {}
    errors: dict[s.Endpoint, str] = {}
    progress = asyncio.Event()

    def readable(endpoint: s.Endpoint, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:
                errors[endpoint] = exc.strerror or str(exc)
                return
            if race.receive(*endpoint, data, loop.time()) is not None:
                progress.set()

    try:
        for endpoint in ((g.address, port) for g in gateways for port in profile.ports):
            try:
                sockets[endpoint] = io.open_udp(*endpoint)
            except OSError as exc:
                errors[endpoint] = exc.strerror or str(exc)
                continue
            loop.add_reader(sockets[endpoint].fileno(), readable, endpoint, sockets[endpoint])
        while not race.finished(loop.time()):
            for gateway, port, packet in race.due(loop.time()):
                if (gateway, port) in sockets:
                    try:
                        sockets[gateway, port].send(packet)
                    except OSError as exc:
                        errors[gateway, port] = exc.strerror or str(exc)
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(),
                                       max(0.0, race.next_deadline() - loop.time()))
    finally:
        for sock in sockets.values():
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
    return port_probes([s.PortResult(hosts[address], c.port, c.rtt, None if c.rtt is not None
                                     else errors.get((address, c.port), "no answer"))
                        for address, c in race.candidates()])
