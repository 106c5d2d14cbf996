"""The m6t-helper daemon: tunnels, the control API, the network watch and the ICMP listener,
all on one asyncio loop (the data path runs in each tunnel's own threads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any, Literal

import msgspec
from m6t_helper.control import Connection, ControlServer, Method, RpcError
from m6t_helper.netwatch import NetworkWatch
from m6t_helper.system import free_name, remove_leftovers
from m6t_helper.tunnel import Tunnel, race_ports, resolve_ipv4

from m6t import __version__
from m6t.control import schema
from m6t.control.schema import Profile, ProfileError, validate_profile
from m6t.linux import systemd
from m6t.linux.netlink import Netlink
from m6t.linux.udp import open_fragmentation_needed_listener, read_fragmentation_needed
from m6t.protocol.client import tunnel_mtu_for_route
from m6t.protocol.constants import IPV6_MINIMUM_MTU

log = logging.getLogger("m6t.helper")

FIRST_OUTCOME_TIMEOUT = 20.0
TRAFFIC_INTERVAL = 1.0


class ConnectParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: Profile


class ProbeParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: Profile
    timeout: float = 3.0


class NameParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: str


class OptionalNameParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: str | None = None


class SetMtuParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: str
    mtu: int | Literal["auto"]


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


def _valid(profile: Profile) -> Profile:
    try:
        return validate_profile(profile)
    except ProfileError as exc:
        raise RpcError(schema.INVALID_PARAMS, f"invalid profile: {exc}",
                       {"field": f"profile.{exc.field}"}) from None


class Helper:
    def __init__(self, socket_path: str, group: str, others: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.netlink = Netlink()
        self.tunnels: dict[str, Tunnel] = {}
        self.started = time.time()
        self._stop = asyncio.Event()
        methods = {
            "version": Method(self.version, None, writes=False),
            "status": Method(self.status, None, writes=False),
            "subscribe": Method(self.subscribe, None, writes=False),
            "connect": Method(self.connect, ConnectParams, writes=True),
            "disconnect": Method(self.disconnect, OptionalNameParams, writes=True),
            "probe": Method(self.probe, ProbeParams, writes=True),
            "probe_mtu": Method(self.probe_mtu, NameParams, writes=True),
            "set_mtu": Method(self.set_mtu, SetMtuParams, writes=True),
            "regenerate": Method(self.regenerate, NameParams, writes=True),
        }
        self.control = ControlServer(socket_path, group, others, methods)
        self._traffic: dict[str, tuple[float, int, int]] = {}

    # --- running ---

    async def run(self) -> None:
        removed = remove_leftovers(self.netlink)
        if removed:
            log.warning("removed leftovers of a previous run: %s", ", ".join(removed))
        await self.control.start()
        watch = NetworkWatch(self.loop, self._network_changed, self._resumed)
        icmp = open_fragmentation_needed_listener()
        self.loop.add_reader(icmp.fileno(), self._fragmentation_needed, icmp)
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
                await tunnel.stop("helper_stopping")
            self.tunnels.clear()
            await self.control.close()
            self.loop.remove_reader(icmp.fileno())
            icmp.close()
            watch.close()
            self.netlink.close()

    def publish(self, event: dict[str, Any]) -> None:
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

    def _fragmentation_needed(self, icmp: Any) -> None:
        for error in read_fragmentation_needed(icmp):
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
                self.publish({"type": "traffic", "tunnel": tunnel.name,
                              "profile": tunnel.profile.name, "rx_bytes": rx, "tx_bytes": tx,
                              "rx_packets": pump.rx_packets, "tx_packets": pump.tx_packets,
                              "rx_rate": round(rx_rate, 1), "tx_rate": round(tx_rate, 1),
                              "rtt_ms": tunnel_status.rtt_ms})

    def _tunnel(self, name: str) -> Tunnel:
        tunnel = self.tunnels.get(name)
        if tunnel is None:
            known = ", ".join(sorted(self.tunnels)) or "none"
            raise RpcError(schema.NOT_FOUND, f"no tunnel for profile {name!r} (connected: "
                                             f"{known})")
        return tunnel

    # --- methods ---

    async def version(self, connection: Connection, params: None) -> dict[str, Any]:
        return {"version": __version__, "api": schema.API_VERSION}

    async def status(self, connection: Connection, params: None) -> dict[str, Any]:
        return {"tunnels": [msgspec.to_builtins(t.status()) for t in self.tunnels.values()],
                "access": "read-write" if connection.can_write else "read-only"}

    async def subscribe(self, connection: Connection, params: None) -> dict[str, Any]:
        result = await self.status(connection, None)
        connection.subscribed = True  # events queue up behind this answer, in order
        return result

    async def connect(self, connection: Connection, params: ConnectParams) -> Any:
        profile = _valid(params.profile)
        existing = self.tunnels.get(profile.name)
        if existing is not None:
            if existing.profile == profile and existing.state != "error":
                return existing.status()
            await existing.stop("user_request")
            del self.tunnels[profile.name]
        name = free_name(self.netlink, {t.name for t in self.tunnels.values()})
        tunnel = Tunnel(self, profile, name)
        self.tunnels[profile.name] = tunnel
        tunnel.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(tunnel.first_outcome), FIRST_OUTCOME_TIMEOUT)
        return tunnel.status()

    async def disconnect(self, connection: Connection, params: OptionalNameParams) -> Any:
        names = [params.profile] if params.profile else list(self.tunnels)
        for name in names:
            self._tunnel(name)
        for name in names:
            tunnel = self.tunnels.pop(name)
            await tunnel.stop("user_request")
            self.publish({"type": "removed", "tunnel": tunnel.name, "profile": name})
        return {"disconnected": names}

    async def probe(self, connection: Connection, params: ProbeParams) -> Any:
        profile = _valid(params.profile)
        if not 0.2 <= params.timeout <= 30:
            raise RpcError(schema.INVALID_PARAMS, "timeout must be 0.2-30 s",
                           {"field": "timeout"})
        try:
            gateway = await resolve_ipv4(self.loop, profile.gateway)
        except OSError as exc:
            raise RpcError(schema.UNAVAILABLE, f"cannot resolve {profile.gateway}: {exc}",
                           {"cause": "resolve_failed"}) from None
        if self.netlink.route_to(gateway) is None:
            raise RpcError(schema.UNAVAILABLE, f"no IPv4 route to {gateway}",
                           {"cause": "no_ipv4_network"})
        taken = self.taken_suffixes(profile.prefix, None)
        _, ports = await race_ports(self.loop, gateway, profile, taken, first_wins=False,
                                    timeout=params.timeout)
        return {"gateway_address": gateway, "ports": ports}

    async def probe_mtu(self, connection: Connection, params: NameParams) -> Any:
        tunnel = self._tunnel(params.profile)
        if tunnel.state != "connected":
            raise RpcError(schema.UNAVAILABLE, f"tunnel {tunnel.name} is {tunnel.state}")
        return await tunnel.probe_mtu()

    async def set_mtu(self, connection: Connection, params: SetMtuParams) -> Any:
        tunnel = self._tunnel(params.profile)
        if params.mtu == "auto":
            route = (self.netlink.route_to(tunnel.gateway_address)
                     if tunnel.gateway_address else None)
            mtu = tunnel_mtu_for_route(route.mtu if route else None, tunnel.mtu)
            reason = "auto"
        else:
            try:
                schema.check_mtu(params.mtu)
            except ProfileError as exc:
                raise RpcError(schema.INVALID_PARAMS, str(exc), {"field": "mtu"}) from None
            mtu, reason = max(IPV6_MINIMUM_MTU, params.mtu), "user_request"
        tunnel.set_mtu(mtu, reason)
        return tunnel.status()

    async def regenerate(self, connection: Connection, params: NameParams) -> Any:
        tunnel = self._tunnel(params.profile)
        if tunnel.state != "connected":
            raise RpcError(schema.UNAVAILABLE, f"tunnel {tunnel.name} is {tunnel.state}")
        tunnel.request("user_request")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(tunnel.next_outcome(), FIRST_OUTCOME_TIMEOUT)
        return tunnel.status()
