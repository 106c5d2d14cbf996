"""A tunnel's footprint on the host: the TUN device, its /128 address and its routes.

Changes are made through netlink (pyroute2) and recorded so that `close()` undoes exactly what
was done. Closing the TUN descriptor deletes the device, and the kernel drops its addresses and
routes with it; a crashed helper's leftovers are found by name (m6tN) and deleted at start.
"""

from __future__ import annotations

import ipaddress
import logging
import re

from m6t.linux.netlink import Netlink
from m6t.linux.tun import TunDevice

log = logging.getLogger("m6t.helper")

TUNNEL_NAME = re.compile(r"m6t\d+")
# "default" routes go in at a metric above what native IPv6 uses (RA routes: 1024, Network
# Manager: 100-600), so a native IPv6 network stays preferred when there is one.
DEFAULT_ROUTE_METRIC = 4096
ROUTE_METRIC = 1024


def remove_leftovers(netlink: Netlink) -> list[str]:
    """Delete m6tN interfaces a crashed helper left behind (their routes go with them)."""
    removed = []
    for name in netlink.link_names():
        if TUNNEL_NAME.fullmatch(name or "") and netlink.delete_link(name):
            removed.append(name)
    return removed


def free_name(netlink: Netlink, taken: set[str]) -> str:
    existing = set(netlink.link_names()) | taken
    return next(f"m6t{i}" for i in range(1000) if f"m6t{i}" not in existing)


class TunnelInterface:
    def __init__(self, netlink: Netlink, name: str, mtu: int) -> None:
        self.netlink = netlink
        # Point to point with one /128: TunDevice turns off link-local, RS, DAD and RA.
        self.tun = TunDevice(name, mtu)
        self.name = self.tun.name
        self.address: str | None = None
        self.routes: list[tuple[str, int]] = []

    @property
    def mtu(self) -> int:
        return self.tun.mtu

    def set_mtu(self, mtu: int) -> None:
        self.tun.mtu = mtu

    def set_address(self, address: str) -> None:
        """Move to a new address: add it, point the routes at it, then drop the old one."""
        old = self.address
        self.netlink.add_address(self.name, address, 128)
        self.address = address
        for destination, metric in self.routes:
            self.netlink.replace_route(destination, self.name, metric, source=address)
        if old is not None and old != address:
            self.netlink.delete_address(self.name, old, 128)

    def set_routes(self, routes: str | list[str], home_agent: str) -> None:
        """"home-agent": the HA alone; "default": ::/0 below native IPv6; or prefixes."""
        if routes == "home-agent":
            wanted = [(str(ipaddress.IPv6Network(home_agent)), ROUTE_METRIC)]
        elif routes == "default":
            wanted = [("::/0", DEFAULT_ROUTE_METRIC),
                      (str(ipaddress.IPv6Network(home_agent)), ROUTE_METRIC)]
        else:
            wanted = [(str(ipaddress.IPv6Network(r)), ROUTE_METRIC) for r in routes]
        for destination, metric in self.routes:
            if (destination, metric) not in wanted:
                self.netlink.delete_route(destination, self.name, metric)
        for destination, metric in wanted:
            self.netlink.replace_route(destination, self.name, metric, source=self.address)
        self.routes = wanted

    def close(self) -> None:
        self.tun.close()  # the device, its address and its routes go away with the descriptor
        self.netlink.delete_link(self.name)  # in case the descriptor was shared (it is not)
