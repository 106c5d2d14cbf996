"""Everything the helper asks of the operating system, behind one small interface.

`HelperIO` is what the daemon and its tunnels use: resolve a name, find the route to the
gateway, tell which network this is, ask whether a captive portal is in the way, open a UDP
socket connected to a gateway port, create the tunnel interface, watch the network, and hear
ICMP "fragmentation needed". `LinuxIO` is the real thing (pyroute2, TUN,
sockets; root, tested in network namespaces); tests/helper_world.py has an in-memory one that
runs the real helper against the real gateway core without root.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Protocol

from m6t.linux import netident, portal
from m6t.linux.netident import NetworkIdentity
from m6t.linux.netlink import Netlink
from m6t.linux.tun import PacketDevice
from m6t.linux.udp import (
    FragmentationNeeded,
    open_fragmentation_needed_listener,
    open_tunnel_socket,
    read_fragmentation_needed,
)
from m6t.protocol.session import Ipv4Path

from .netwatch import NetworkWatch
from .system import TunnelInterface, free_name, remove_leftovers


class Interface(Protocol):
    """A tunnel's footprint on the host: its TUN device, one /128 address, its routes."""

    name: str

    @property
    def tun(self) -> PacketDevice: ...

    def set_mtu(self, mtu: int) -> None: ...
    def set_address(self, address: str) -> None: ...
    def set_routes(self, routes: str | list[str], home_agent: str) -> None: ...
    def close(self) -> None: ...


class Closeable(Protocol):
    def close(self) -> None: ...


class HelperIO(Protocol):
    async def resolve(self, host: str) -> str: ...
    def route_to(self, address: str) -> Ipv4Path | None: ...
    async def identify_network(self, path: Ipv4Path) -> NetworkIdentity | None: ...
    async def check_portal(self) -> str | None: ...
    def open_udp(self, gateway: str, port: int) -> socket.socket: ...
    def create_interface(self, name: str, mtu: int) -> Interface: ...
    def free_name(self, taken: set[str]) -> str: ...
    def remove_leftovers(self) -> list[str]: ...
    def watch_network(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None],
                      on_resume: Callable[[float], None]) -> Closeable: ...
    def listen_fragmentation_needed(
            self, loop: asyncio.AbstractEventLoop,
            on_error: Callable[[Iterable[FragmentationNeeded]], None]) -> Closeable: ...
    def close(self) -> None: ...


class LinuxIO:
    def __init__(self, portal_probe: portal.PortalProbe | None = None) -> None:
        self.netlink = Netlink()
        self.portal_probe = portal_probe or portal.PortalProbe()

    async def resolve(self, host: str) -> str:
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, None, family=socket.AF_INET,
                                       type=socket.SOCK_DGRAM)
        return str(infos[0][4][0])

    def route_to(self, address: str) -> Ipv4Path | None:
        route = self.netlink.route_to(address)
        if route is None:
            return None
        return Ipv4Path(route.ifname, route.gateway, route.source, route.mtu)

    async def identify_network(self, path: Ipv4Path) -> NetworkIdentity | None:
        return await netident.identify(self.netlink, path)

    async def check_portal(self) -> str | None:
        return await portal.check(self.portal_probe)

    def open_udp(self, gateway: str, port: int) -> socket.socket:
        return open_tunnel_socket(connect=(gateway, port))

    def create_interface(self, name: str, mtu: int) -> Interface:
        return TunnelInterface(self.netlink, name, mtu)

    def free_name(self, taken: set[str]) -> str:
        return free_name(self.netlink, taken)

    def remove_leftovers(self) -> list[str]:
        return remove_leftovers(self.netlink)

    def watch_network(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None],
                      on_resume: Callable[[float], None]) -> Closeable:
        return NetworkWatch(loop, on_change, on_resume)

    def listen_fragmentation_needed(
            self, loop: asyncio.AbstractEventLoop,
            on_error: Callable[[Iterable[FragmentationNeeded]], None]) -> Closeable:
        return _IcmpListener(loop, on_error)

    def close(self) -> None:
        self.netlink.close()


class _IcmpListener:
    """ICMPv4 "fragmentation needed" about our datagrams: with DF clear the kernel does not
    queue them on the UDP socket, so a raw ICMP socket hears them (docs/performance.md)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_error: Callable[[Iterable[FragmentationNeeded]], None]) -> None:
        self._loop = loop
        self._sock = open_fragmentation_needed_listener()
        loop.add_reader(self._sock.fileno(), lambda: on_error(
            read_fragmentation_needed(self._sock)))

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
