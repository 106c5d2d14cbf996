"""Which IPv4 network the laptop is on, without asking the user: what the helper's per-network
memory is keyed by.

A network is its router: the default gateway's MAC address (asked of the kernel, which resolves
it with an ARP request if it has to), its IPv4 address, and the Wi-Fi SSID when the interface
is wireless (nl80211 through pyroute2). The public IPv4 address is not used: nothing on the
path tells it to the client without a third-party server. Two networks that share a router
MAC and address and SSID are the same network for m6t, which is what roaming between access
points of one Wi-Fi looks like too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from m6t.linux.netlink import Netlink
from m6t.protocol.session import Ipv4Path

log = logging.getLogger("m6t.helper")

ARP_WAIT = 0.3  # seconds to wait for the router's MAC address when the kernel lacks it
ARP_POLL = 0.02


@dataclass(frozen=True)
class NetworkIdentity:
    id: str  # 16 hex digits, stable for the network
    label: str  # for people


def network_identity(path: Ipv4Path, mac: str | None, ssid: str | None) -> NetworkIdentity:
    """Pure: the identity of the network behind `path` from what could be learned of it."""
    router = path.next_hop or f"link {path.interface}"
    key = "|".join(("m6t-network-1", mac or f"no-mac:{path.interface}", router, ssid or ""))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    words = []
    if ssid:
        words.append(f"Wi-Fi {ssid}")
    words.append(f"router {router}" + (f" ({mac})" if mac else ""))
    words.append(f"on {path.interface}" if path.interface else "")
    return NetworkIdentity(digest, ", ".join(w for w in words if w))


async def identify(netlink: Netlink, path: Ipv4Path) -> NetworkIdentity | None:
    if path.interface is None:
        return None
    mac = None
    if path.next_hop is not None:
        mac = netlink.neighbour_mac(path.interface, path.next_hop)
        if mac is None:
            netlink.resolve_neighbour(path.interface, path.next_hop)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ARP_WAIT
            while mac is None and loop.time() < deadline:
                await asyncio.sleep(ARP_POLL)
                mac = netlink.neighbour_mac(path.interface, path.next_hop)
    # pyroute2's nl80211 client runs an event loop of its own: not in this thread's.
    ssid = await asyncio.to_thread(wifi_ssid, path.interface)
    return network_identity(path, mac, ssid)


def wifi_ssid(interface: str, sys_class_net: Path = Path("/sys/class/net")) -> str | None:
    """The SSID a wireless interface is associated with; None for anything else. Only a
    wireless device (it has `phy80211`) is asked: pyroute2's nl80211 client leaves sockets
    behind when the kernel has no nl80211 to offer."""
    if not (sys_class_net / interface / "phy80211").exists():
        return None
    with contextlib.suppress(Exception):  # a driver that will not say: no SSID
        from pyroute2 import IW

        iw = IW()
        try:
            for message in iw.get_interface_by_ifname(interface):
                ssid = message.get_attr("NL80211_ATTR_SSID")
                if ssid:
                    return str(ssid)
        finally:
            iw.close()
    return None
