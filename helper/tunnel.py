"""One tunnel: connect (port race), keep alive, follow the network, regenerate, disconnect.

The lifecycle runs as one asyncio task per tunnel:

    connecting --race won--> connected --(network changed | path dead | regenerate)--> connecting
        |  no IPv4 route / no port answered / name not resolved          ^
        v                                                                 |
     waiting ---------------- network event or back-off timer -----------+

The TUN device is created on the first success and kept across regenerations, so the
interface a user (or the MIPv6 daemon) sees stays m6tN while its address changes.
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
from dataclasses import dataclass
from typing import Protocol

from m6t_helper.datapath import Pump, Target
from m6t_helper.system import TunnelInterface

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
from m6t.linux.netlink import Netlink, RouteInfo
from m6t.linux.udp import open_tunnel_socket, send_datagram
from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.client import (
    Inbound,
    Liveness,
    LivenessMonitor,
    PortRace,
    build_probe,
    mtu_probe_sizes,
    tunnel_mtu_for_route,
)
from m6t.protocol.constants import (
    DEFAULT_TUNNEL_MTU,
    ENCAPSULATION_OVERHEAD,
    IPV6_MINIMUM_MTU,
)
from m6t.protocol.packets import build_keepalive, parse_echo

log = logging.getLogger("m6t.helper")

HISTORY = 50
MAX_BACKOFF = 60.0
MTU_PROBE_WAIT = 1.5
RACE_REPORT_GRACE = 0.25
RESUME_WINDOW = 30.0
ADDRESS_CHANGE_REASONS = ("network_changed", "nat_mapping_changed", "user_request", "resume")


class HelperContext(Protocol):
    loop: asyncio.AbstractEventLoop
    netlink: Netlink

    def publish(self, event: Event) -> None: ...
    def taken_suffixes(self, prefix: str, exclude: Tunnel | None) -> set[int]: ...


@dataclass
class RaceOutcome:
    port: int
    suffix: int
    address: bytes
    sock: socket.socket
    rtt: float
    ports: list[PortProbe]


async def resolve_ipv4(loop: asyncio.AbstractEventLoop, host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    infos = await loop.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    return str(infos[0][4][0])


async def race_ports(loop: asyncio.AbstractEventLoop, gateway: str, profile: Profile,
                     taken: set[int], *, first_wins: bool = True, timeout: float = 4.0
                     ) -> tuple[RaceOutcome | None, list[PortProbe]]:
    """Send an echo to the HA through every port at once, each from a fresh address and its
    own socket. With `first_wins`, stop at the first answer and keep that socket."""
    prefix = TunnelPrefix.parse(profile.prefix)
    home_agent = ipaddress.IPv6Address(profile.home_agent).packed
    race = PortRace(prefix, home_agent, list(profile.ports), loop.time(), taken,
                    timeout=timeout)
    sockets: dict[int, socket.socket] = {}
    errors: dict[int, str] = {}
    answered: list[int] = []  # ports in the order their answers came
    progress = asyncio.Event()

    def readable(port: int, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65535)  # connected: the kernel lets only the gateway in
            except BlockingIOError:
                return
            except OSError as exc:
                errors[port] = exc.strerror or str(exc)
                return
            if race.receive(port, data, loop.time()) is not None:
                answered.append(port)
                progress.set()

    try:
        for port in profile.ports:
            sock = open_tunnel_socket(connect=(gateway, port))
            sockets[port] = sock
            loop.add_reader(sock.fileno(), readable, port, sock)
        while not race.finished(loop.time()):
            for port, packet in race.due(loop.time()):
                try:
                    sockets[port].send(packet)
                except OSError as exc:
                    errors[port] = exc.strerror or str(exc)
            progress.clear()
            wait = max(0.0, race.next_deadline() - loop.time())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(progress.wait(), wait)
            if answered and first_wins:
                # The winner is decided; give the others a moment to answer so the report of
                # which ports work is honest, without delaying the tunnel noticeably.
                grace = loop.time() + RACE_REPORT_GRACE
                while not race.finished(loop.time()) and loop.time() < grace:
                    progress.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(progress.wait(), grace - loop.time())
                break
        results = [PortProbe(port=c.port, reachable=c.rtt is not None,
                             rtt_ms=None if c.rtt is None else round(c.rtt * 1000, 3),
                             error=None if c.rtt is not None else errors.get(c.port, "no answer"))
                   for c in race.candidates.values()]
        if not first_wins or not answered:
            return None, results
        won = race.candidates[answered[0]]
        assert won.rtt is not None
        return RaceOutcome(won.port, won.suffix, won.address, sockets[won.port], won.rtt,
                           results), results
    finally:
        kept = answered[0] if first_wins and answered else None
        for port, sock in sockets.items():
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())  # the winner's is read by its pump from now on
            if port != kept:
                sock.close()


class Tunnel:
    def __init__(self, context: HelperContext, profile: Profile, name: str) -> None:
        self.context = context
        self.profile = profile
        self.name = name
        self.prefix = TunnelPrefix.parse(profile.prefix)
        self.home_agent = ipaddress.IPv6Address(profile.home_agent).packed
        self.state = "connecting"
        self.cause = "user_request"
        self.since = time.time()
        self.gateway_address: str | None = None
        self.route: RouteInfo | None = None
        self.port: int | None = None
        self.suffix: int | None = None
        self.address: bytes | None = None
        self.rtt: float | None = None
        self.ports: list[PortProbe] = []
        self.history: deque[AddressChange] = deque(maxlen=HISTORY)
        self.interface: TunnelInterface | None = None
        self.pump: Pump | None = None
        self.mtu = profile.mtu if isinstance(profile.mtu, int) else DEFAULT_TUNNEL_MTU
        self.mtu_floor_reason: str | None = None
        self.liveness = LivenessMonitor(keepalive=profile.keepalive)
        self.first_outcome: asyncio.Future[None] = context.loop.create_future()
        self._outcome_waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._reason: str | None = None  # why the running connection must be replaced
        self._probe_waiters: dict[int, asyncio.Future[None]] = {}
        self._probe_identifier = secrets.randbits(16)
        self._keepalive_sent_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._resumed_at = -RESUME_WINDOW
        self.last_error: str | None = None

    # --- status ---

    def status(self) -> TunnelStatus:
        pump = self.pump
        address = str(ipaddress.IPv6Address(self.address)) if self.address else None
        suffix = None
        if self.suffix is not None:
            suffix = ":".join(f"{self.suffix >> shift & 0xFFFF:x}" for shift in (32, 16, 0))
        return TunnelStatus(
            name=self.name, profile=self.profile.name, state=self.state,  # type: ignore[arg-type]
            cause=self.cause, address=address, prefix=self.profile.prefix, suffix=suffix,
            gateway=self.profile.gateway, gateway_address=self.gateway_address, port=self.port,
            home_agent=self.profile.home_agent, mtu=self.mtu,
            rtt_ms=None if self.rtt is None else round(self.rtt * 1000, 3),
            rx_bytes=pump.rx_bytes if pump else 0, tx_bytes=pump.tx_bytes if pump else 0,
            rx_packets=pump.rx_packets if pump else 0, tx_packets=pump.tx_packets if pump else 0,
            drops=pump.drops() if pump else {}, since=self.since, history=list(self.history),
            ports=list(self.ports))

    def _set_state(self, state: str, cause: str) -> None:
        changed = (state, cause) != (self.state, self.cause)
        self.state, self.cause = state, cause
        if changed:
            self.since = time.time()
            log.info("%s (%s): %s, %s", self.name, self.profile.name, state, cause)
            self.context.publish(StateEvent(
                tunnel=self.name, profile=self.profile.name, state=state, cause=cause,
                status=self.status(), message=self.last_error if state == "error" else None))
        if state in ("connected", "waiting", "error"):
            if not self.first_outcome.done():
                self.first_outcome.set_result(None)
            for waiter in self._outcome_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._outcome_waiters.clear()

    def next_outcome(self) -> asyncio.Future[None]:
        """Resolves when the next connection attempt is decided (connected/waiting/error)."""
        waiter: asyncio.Future[None] = self.context.loop.create_future()
        self._outcome_waiters.append(waiter)
        return waiter

    # --- lifecycle ---

    def start(self) -> None:
        self._task = self.context.loop.create_task(self._run(), name=f"tunnel {self.name}")

    async def stop(self, cause: str = "user_request") -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._teardown()
        self._set_state("disconnected", cause)
        if not self.first_outcome.done():
            self.first_outcome.set_result(None)

    def _teardown(self) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump.target.sock.close()
            self.pump = None
        if self.interface is not None:
            self.interface.close()
            self.interface = None

    def request(self, reason: str) -> None:
        """Replace the connection (new address) for `reason`, from any coroutine."""
        self._reason = reason
        self._wake.set()

    def network_changed(self) -> None:
        """Netlink said something changed: look at the route to our gateway again."""
        self._wake.set()

    def resumed(self) -> None:
        """Back from suspend: the NAT has probably forgotten us. Probe at once; if the path
        turns out dead, the new address is attributed to the resume."""
        self._resumed_at = time.monotonic()
        self.liveness.check_now(self._resumed_at)
        self._wake.set()

    async def _run(self) -> None:
        reason = "user_request"
        backoff = 1.0
        while True:
            try:
                connected = await self._connect_once(reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("%s: setup failed", self.name)
                self.last_error = str(exc)
                self._set_state("error", "setup_failed")
                connected = False
            if connected:
                backoff = 1.0
                reason = await self._monitor()
                continue
            if self.state == "waiting" and self.cause == "no_ipv4_network":
                await self._wait_for(None)  # a netlink event brings us back
            else:
                await self._wait_for(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            reason = "retrying" if self.address is None else (self._reason or "network_changed")
            self._reason = None

    async def _wait_for(self, timeout: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _connect_once(self, reason: str) -> bool:
        loop = self.context.loop
        self._set_state("connecting", reason)
        try:
            gateway = await resolve_ipv4(loop, self.profile.gateway)
        except OSError as exc:
            self.last_error = str(exc)
            self._set_state("waiting", "resolve_failed")
            return False
        self.gateway_address = gateway
        route = self.context.netlink.route_to(gateway)
        if route is None:
            self.route = None
            self._set_state("waiting", "no_ipv4_network")
            return False
        taken = self.context.taken_suffixes(self.profile.prefix, self)
        outcome, ports = await race_ports(loop, gateway, self.profile, taken)
        self.ports = ports
        if outcome is None:
            self._set_state("waiting", "gateway_unreachable")
            return False
        self.route = route
        self._install(outcome, gateway, reason)
        first = self.profile.ports[0]
        if not any(p.reachable and p.port == first for p in ports):
            cause = "port_fallback"  # the preferred port did not answer: say so
        elif reason in ADDRESS_CHANGE_REASONS:
            cause = reason  # connected again, with a new address, because of this
        else:
            cause = "port_race_won"
        self._set_state("connected", cause)
        return True

    def _install(self, outcome: RaceOutcome, gateway: str, reason: str) -> None:
        address_text = str(ipaddress.IPv6Address(outcome.address))
        previous = str(ipaddress.IPv6Address(self.address)) if self.address else None
        if self.interface is None:
            if self.profile.mtu == "auto":
                self.mtu = tunnel_mtu_for_route(self.route.mtu if self.route else None,
                                                DEFAULT_TUNNEL_MTU)
            self.interface = TunnelInterface(self.context.netlink, self.name, self.mtu)
            self.interface.set_address(address_text)
            self.interface.set_routes(self.profile.routes, self.profile.home_agent)
        else:
            self.interface.set_address(address_text)
        target = Target(outcome.address, outcome.sock, (gateway, outcome.port))
        if self.pump is None:
            self.pump = Pump(self.interface.tun, target, self._from_pump)
            self.pump.start()
        else:
            old = self.pump.target.sock
            self.pump.retarget(target)
            # The receive thread may still be polling the old socket: close it a bit later.
            self.context.loop.call_later(1.0, old.close)
        self.address, self.suffix, self.port, self.rtt = (outcome.address, outcome.suffix,
                                                          outcome.port, outcome.rtt)
        change_reason = "connect" if previous is None else reason
        change = AddressChange(address=address_text, previous=previous, reason=change_reason,
                               at=time.time())
        self.history.append(change)
        now = time.monotonic()
        self.liveness.start(now)
        self.pump.last_received = self.pump.last_sent = now
        self.context.publish(AddressEvent(
            tunnel=self.name, profile=self.profile.name, address=change.address,
            previous=change.previous, reason=change.reason, at=change.at))

    async def _monitor(self) -> str:
        """Keep the connection alive; return why it must be replaced."""
        assert self.pump is not None
        while True:
            self._wake.clear()
            liveness = self.liveness
            liveness.last_received = max(liveness.last_received, self.pump.last_received)
            liveness.last_sent = max(liveness.last_sent, self.pump.last_sent)
            action = liveness.poll(time.monotonic())
            if action is Liveness.SEND_KEEPALIVE:
                self._send_keepalive()
            elif action is Liveness.PATH_DEAD:
                if time.monotonic() - self._resumed_at < RESUME_WINDOW:
                    log.warning("%s: path dead after resume", self.name)
                    return "resume"
                log.warning("%s: no answer from the gateway: NAT mapping probably changed",
                            self.name)
                return "nat_mapping_changed"
            timeout = max(0.05, liveness.next_deadline() - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._reason is not None:
                reason, self._reason = self._reason, None
                return reason
            if self._wake.is_set():
                changed = self._route_changed()
                if changed is not None:
                    return changed

    def _route_changed(self) -> str | None:
        if self.gateway_address is None:
            return None
        route = self.context.netlink.route_to(self.gateway_address)
        if route is None:
            return "network_changed"
        old = self.route
        if old is None or (route.ifname, route.gateway, route.source) != \
                (old.ifname, old.gateway, old.source):
            return "network_changed"
        return None

    def _send_keepalive(self) -> None:
        pump = self.pump
        if pump is None or self.address is None:
            return
        target = pump.target
        self._keepalive_sent_at = time.monotonic()
        with contextlib.suppress(OSError):
            send_datagram(target.sock, build_keepalive(self.address), None)

    # --- packets the pump hands over (called in a pump thread) ---

    def _from_pump(self, kind: Inbound, packet: bytes) -> None:
        self.context.loop.call_soon_threadsafe(self._control_packet, kind, packet,
                                               time.monotonic())

    def _control_packet(self, kind: Inbound, packet: bytes, at: float) -> None:
        self.liveness.last_received = max(self.liveness.last_received, at)
        if kind is Inbound.KEEPALIVE_REPLY:
            if self._keepalive_sent_at is not None:
                self.rtt = at - self._keepalive_sent_at
                self._keepalive_sent_at = None
            return
        echo = parse_echo(packet)
        if echo is None or echo.identifier != self._probe_identifier:
            return
        waiter = self._probe_waiters.get(echo.sequence)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- MTU ---

    def set_mtu(self, mtu: int, reason: str) -> None:
        previous = self.mtu
        self.mtu = mtu
        if self.interface is not None:
            self.interface.set_mtu(mtu)
        if mtu != previous:
            log.info("%s: MTU %d -> %d (%s)", self.name, previous, mtu, reason)
            self.context.publish(MtuEvent(tunnel=self.name, profile=self.profile.name, mtu=mtu,
                                          previous=previous, reason=reason))

    def fragmentation_needed(self, ipv4_mtu: int) -> None:
        """An ICMPv4 "fragmentation needed" about our datagrams: "Reception of ICMP Packet too
        big messages from IPv4 routers on the path may be used to locally update the MTU of
        the path." (MTU considerations)"""
        lowered = max(IPV6_MINIMUM_MTU, ipv4_mtu - ENCAPSULATION_OVERHEAD)
        if lowered < self.mtu:
            self.set_mtu(lowered, "fragmentation_needed")

    def local_port(self) -> int | None:
        if self.pump is None:
            return None
        with contextlib.suppress(OSError):
            return int(self.pump.target.sock.getsockname()[1])
        return None

    async def probe_mtu(self) -> MtuReport:
        pump = self.pump
        if pump is None or self.address is None or self.gateway_address is None:
            raise RuntimeError("not connected")
        loop = self.context.loop
        target = pump.target
        highest = self.profile.mtu if isinstance(self.profile.mtu, int) else DEFAULT_TUNNEL_MTU
        sizes = mtu_probe_sizes(max(highest, self.mtu), beyond=())
        waiters = {size: loop.create_future() for size in sizes}
        fragment_sequence = 1  # sizes are >= 1280, so 1 is free
        waiters[fragment_sequence] = loop.create_future()
        self._probe_waiters = waiters
        try:
            for size in sizes:
                packet = build_probe(self.address, self.home_agent, self._probe_identifier,
                                     size, size)
                with contextlib.suppress(OSError):
                    send_datagram(target.sock, packet, None)
            # One echo in hand-made IPv4 fragments, from the tunnel socket's own port.
            probe = build_probe(self.address, self.home_agent, self._probe_identifier,
                                fragment_sequence, IPV6_MINIMUM_MTU)
            route = self.context.netlink.route_to(self.gateway_address)
            source = route.source if route and route.source else None
            port = self.local_port()
            if source and port:
                with contextlib.suppress(OSError):
                    gateway_ip, gateway_port = target.gateway
                    send_fragments(fragment_udp(source, port, gateway_ip, gateway_port, probe),
                                   gateway_ip)
            await asyncio.wait([*waiters.values()], timeout=MTU_PROBE_WAIT)
        finally:
            self._probe_waiters = {}
        answered = sorted(size for size in sizes if _answered(waiters[size]))
        fragments_pass = _answered(waiters[fragment_sequence])
        for waiter in waiters.values():
            waiter.cancel()
        return MtuReport(mtu=max(answered) if answered else 0, fragments_pass=fragments_pass,
                         ipv4_path_mtu=route.mtu if route else None, tried=sizes,
                         answered=answered)


def _answered(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled()
