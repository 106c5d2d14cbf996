"""The m6t-helper daemon: tunnels, the control API, the network watch and the ICMP listener,
all on one asyncio loop (the data path runs in each tunnel's own threads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from m6t import __version__
from m6t.control import schema
from m6t.control.errors import ErrorData, InvalidParams, NotFound, Unavailable
from m6t.control.schema import (
    Access,
    ConnectParams,
    DisconnectResult,
    Event,
    ForgetNetworkParams,
    MtuReport,
    NameParams,
    NetworksResult,
    NoParams,
    OptionalNameParams,
    ProbeParams,
    ProbeResult,
    Profile,
    ProfileError,
    RemovedEvent,
    SetMtuParams,
    StatusResult,
    TrafficEvent,
    TunnelStatus,
    VersionResult,
    validate_profile,
)
from m6t.linux import systemd
from m6t.linux.udp import FragmentationNeeded
from m6t.protocol.session import Cause, Gateway

from .control import Connection, ControlServer, Handler
from .io import HelperIO, LinuxIO
from .memory import NetworkMemory
from .tunnel import Tunnel, probe_ports, profile_gateways

log = logging.getLogger("m6t.helper")

DEFAULT_STATE_DIR = Path("/var/lib/m6t")
FIRST_OUTCOME_TIMEOUT = 20.0
TRAFFIC_INTERVAL = 1.0


def _valid(profile: Profile) -> Profile:
    try:
        return validate_profile(profile)
    except ProfileError as exc:
        raise InvalidParams(f"invalid profile: {exc}",
                            ErrorData(field=f"profile.{exc.field}")) from None


class Helper:
    def __init__(self, socket_path: str, group: str, others: str,
                 io: HelperIO | None = None, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.loop = asyncio.get_running_loop()
        self.io: HelperIO = io if io is not None else LinuxIO()
        self.memory = NetworkMemory(state_dir)
        self.tunnels: dict[str, Tunnel] = {}
        self.started = time.time()
        self._stop = asyncio.Event()
        # Which methods exist, their params and who may call them: schema.METHODS.
        handlers: dict[str, Handler] = {
            "version": self.version, "status": self.status, "subscribe": self.subscribe,
            "connect": self.connect, "disconnect": self.disconnect, "probe": self.probe,
            "probe_mtu": self.probe_mtu, "set_mtu": self.set_mtu, "regenerate": self.regenerate,
            "networks": self.networks, "forget_network": self.forget_network,
        }
        self.control = ControlServer(socket_path, group, others, handlers)
        self._traffic: dict[str, tuple[float, int, int]] = {}

    # --- running ---

    async def run(self, handle_signals: bool = True) -> None:
        """Serve until SIGTERM/SIGINT or `stop()`. Without `handle_signals` (a loop in another
        thread than the main one, in tests), only `stop()` ends it."""
        removed = self.io.remove_leftovers()
        if removed:
            log.warning("removed leftovers of a previous run: %s", ", ".join(removed))
        await self.control.start()
        watch = self.io.watch_network(self.loop, self._network_changed, self._resumed)
        icmp = self.io.listen_fragmentation_needed(self.loop, self._fragmentation_needed)
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(signum, self._stop.set)
        ticker = self.loop.create_task(self._traffic_ticker())
        log.info("m6t-helper %s ready on %s", __version__, self.control.path)
        # Type=notify: a client started after the unit never races the control socket.
        systemd.notify("READY=1")
        try:
            await self._stop.wait()
        finally:
            systemd.notify("STOPPING=1")
            log.info("stopping: tearing down %d tunnel(s)", len(self.tunnels))
            ticker.cancel()
            for tunnel in list(self.tunnels.values()):
                await tunnel.stop(Cause.HELPER_STOPPING)
            self.tunnels.clear()
            await self.control.close()
            icmp.close()
            watch.close()
            self.io.close()

    def stop(self) -> None:
        """Stop `run()` as SIGTERM does (for embedding and tests)."""
        self._stop.set()

    def publish(self, event: Event) -> None:
        self.control.broadcast(event)

    def taken_suffixes(self, prefix: str, exclude: Tunnel | None) -> set[int]:
        """"some local synchronization is required to prevent the simultaneous use of
        identical 48 bits random values" (Multiple tunnel interfaces on a MN)"""
        return {t.suffix for t in self.tunnels.values()
                if t is not exclude and t.profile.prefix == prefix and t.suffix is not None}

    def _network_changed(self) -> None:
        for tunnel in self.tunnels.values():
            tunnel.network_changed()

    def _resumed(self, slept: float) -> None:
        for tunnel in self.tunnels.values():
            tunnel.resumed()

    def _fragmentation_needed(self, errors: Iterable[FragmentationNeeded]) -> None:
        for error in errors:
            for tunnel in self.tunnels.values():
                if (tunnel.local_port() == error.local[1] and tunnel.pump is not None
                        and tunnel.pump.target.gateway == error.remote):
                    tunnel.fragmentation_needed(error.mtu)

    async def _traffic_ticker(self) -> None:
        while True:
            await asyncio.sleep(TRAFFIC_INTERVAL)
            if not self.control.has_subscribers:
                continue
            now = time.monotonic()
            for tunnel in self.tunnels.values():
                tunnel.tell_datapath_changes()
                pump = tunnel.pump
                if pump is None:
                    continue
                before = self._traffic.get(tunnel.name)
                rx, tx = pump.rx_bytes, pump.tx_bytes
                rx_rate = tx_rate = 0.0
                if before is not None and now > before[0]:
                    rx_rate = (rx - before[1]) / (now - before[0])
                    tx_rate = (tx - before[2]) / (now - before[0])
                self._traffic[tunnel.name] = (now, rx, tx)
                tunnel_status = tunnel.status()
                self.publish(TrafficEvent(
                    tunnel=tunnel.name, profile=tunnel.profile.name, rx_bytes=rx, tx_bytes=tx,
                    rx_packets=pump.rx_packets, tx_packets=pump.tx_packets,
                    rx_rate=round(rx_rate, 1), tx_rate=round(tx_rate, 1),
                    rtt_ms=tunnel_status.rtt_ms))

    def _tunnel(self, name: str) -> Tunnel:
        tunnel = self.tunnels.get(name)
        if tunnel is None:
            known = ", ".join(sorted(self.tunnels)) or "none"
            raise NotFound(f"no tunnel for profile {name!r} (connected: {known})",
                           ErrorData(tunnels=sorted(self.tunnels)))
        return tunnel

    # --- methods ---

    async def version(self, connection: Connection, params: NoParams) -> VersionResult:
        return VersionResult(version=__version__, api=schema.API_VERSION)

    async def status(self, connection: Connection, params: NoParams) -> StatusResult:
        return StatusResult(tunnels=[t.status() for t in self.tunnels.values()],
                            access=Access.READ_WRITE if connection.can_write
                            else Access.READ_ONLY, group=self.control.group)

    async def subscribe(self, connection: Connection, params: NoParams) -> StatusResult:
        result = await self.status(connection, params)
        connection.subscribed = True  # events queue up behind this answer, in order
        return result

    async def connect(self, connection: Connection, params: ConnectParams) -> TunnelStatus:
        profile = _valid(params.profile)
        existing = self.tunnels.get(profile.name)
        if existing is not None:
            if existing.profile == profile and existing.state != "error":
                return existing.status()
            await existing.stop(Cause.USER_REQUEST)
            del self.tunnels[profile.name]
        name = self.io.free_name({t.name for t in self.tunnels.values()})
        tunnel = Tunnel(self, profile, name)
        self.tunnels[profile.name] = tunnel
        tunnel.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(tunnel.first_outcome), FIRST_OUTCOME_TIMEOUT)
        return tunnel.status()

    async def disconnect(self, connection: Connection,
                         params: OptionalNameParams) -> DisconnectResult:
        names = [params.profile] if params.profile else list(self.tunnels)
        for name in names:
            self._tunnel(name)
        for name in names:
            tunnel = self.tunnels.pop(name)
            await tunnel.stop(Cause.USER_REQUEST)
            self.publish(RemovedEvent(tunnel=tunnel.name, profile=name))
        return DisconnectResult(disconnected=names)

    async def probe(self, connection: Connection, params: ProbeParams) -> ProbeResult:
        profile = _valid(params.profile)
        if not 0.2 <= params.timeout <= 30:
            raise InvalidParams("timeout must be 0.2-30 s", ErrorData(field="timeout"))
        gateways = []
        for host in profile_gateways(profile):
            try:
                gateways.append(Gateway(host, await self.io.resolve(host)))
            except OSError as exc:
                if host == profile.gateway:
                    raise Unavailable(f"cannot resolve {host}: {exc}",
                                      ErrorData(cause=Cause.RESOLVE_FAILED)) from None
        first = gateways[0].address
        if self.io.route_to(first) is None:
            raise Unavailable(f"no IPv4 route to {first}",
                              ErrorData(cause=Cause.NO_IPV4_NETWORK))
        ports = await probe_ports(self, gateways, profile, params.timeout)
        return ProbeResult(gateway_address=first, ports=ports)

    async def probe_mtu(self, connection: Connection, params: NameParams) -> MtuReport:
        tunnel = self._tunnel(params.profile)
        if tunnel.state != "connected":
            raise Unavailable(f"tunnel {tunnel.name} is {tunnel.state}")
        return await tunnel.probe_mtu()

    async def set_mtu(self, connection: Connection, params: SetMtuParams) -> TunnelStatus:
        tunnel = self._tunnel(params.profile)
        try:
            schema.check_mtu(params.mtu)
        except ProfileError as exc:
            raise InvalidParams(str(exc), ErrorData(field="mtu")) from None
        tunnel.set_mtu(params.mtu)
        return tunnel.status()

    async def regenerate(self, connection: Connection, params: NameParams) -> TunnelStatus:
        tunnel = self._tunnel(params.profile)
        if tunnel.state != "connected":
            raise Unavailable(f"tunnel {tunnel.name} is {tunnel.state}")
        outcome = tunnel.next_outcome()
        tunnel.regenerate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(outcome, FIRST_OUTCOME_TIMEOUT)
        return tunnel.status()

    async def networks(self, connection: Connection, params: NoParams) -> NetworksResult:
        current = {t.session.network for t in self.tunnels.values()
                   if t.state == "connected" and t.session.network}
        return NetworksResult(networks=self.memory.known(current), saved=self.memory.saved)

    async def forget_network(self, connection: Connection,
                             params: ForgetNetworkParams) -> NetworksResult:
        if not self.memory.forget(params.network) and params.network is not None:
            known = sorted({n.id for n in self.memory.known()})
            raise NotFound(f"no known network {params.network!r} (known: "
                           f"{', '.join(known) or 'none'})")
        log.info("forgot %s", f"network {params.network}" if params.network else "every network")
        return await self.networks(connection, NoParams())
