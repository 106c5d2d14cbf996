"""Addresses, routes and links through netlink (pyroute2), idempotent and undoable.

Every change is recorded in a `ChangeLog` so it can be undone in reverse, on failure and on
shutdown (the wg-quick `cmd_up` trap habit). "Already exists" and "no such device/address" are
tolerated by errno, so setup and teardown can run twice.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

_GONE = (errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT)
RTM_F_CLONED = 0x200  # cached PMTU entries show up in route dumps: not real routes
# Neighbour states (linux/neighbour.h): entries whose link-layer address can be trusted.
NUD_NONE = 0x00
_NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # reachable, stale, delay, probe, ...
NTF_USE = 0x01


def _tolerate(codes: tuple[int, ...], action: Callable[[], object]) -> bool:
    """Run a netlink request; False if it failed with one of `codes` (already done)."""
    try:
        action()
    except NetlinkError as exc:
        if exc.code in codes:
            return False
        raise
    return True


@dataclass(frozen=True, slots=True)
class RouteInfo:
    ifname: str | None
    gateway: str | None
    source: str | None
    mtu: int | None  # the route's MTU metric if set, else the device MTU


class _ThreadBound:
    """An IPRoute that lives in a thread of its own and runs every request there.

    pyroute2 0.9's synchronous IPRoute drives an asyncio loop internally: it cannot be created
    inside a running loop (the helper's), and one bound in another thread hangs. A private
    thread sidesteps both; each request is a few hundred microseconds.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._ipr: IPRoute = self._executor.submit(IPRoute).result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._ipr, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._executor.submit(method, *args, **kwargs).result()

        return call

    def shutdown(self) -> None:
        self._executor.submit(self._ipr.close).result()
        self._executor.shutdown()


class Netlink:
    """Netlink requests in the network namespace of the process."""

    def __init__(self) -> None:
        self._ipr = _ThreadBound()

    def close(self) -> None:
        self._ipr.shutdown()

    def index(self, ifname: str) -> int | None:
        found = self._ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def _require_index(self, ifname: str) -> int:
        index = self.index(ifname)
        if index is None:
            raise OSError(errno.ENODEV, f"no interface {ifname}")
        return index

    def link_names(self) -> list[str]:
        return [link.get("ifname") for link in self._ipr.get_links()]

    def link_mtu(self, ifname: str) -> int | None:
        index = self.index(ifname)
        if index is None:
            return None
        return int(self._ipr.get_links(index)[0].get("mtu"))

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self._ipr.link("set", index=self._require_index(ifname), mtu=mtu)

    def delete_link(self, ifname: str) -> bool:
        index = self.index(ifname)
        if index is None:
            return False
        return _tolerate(_GONE, lambda: self._ipr.link("del", index=index))

    def add_address(self, ifname: str, address: str, prefixlen: int) -> bool:
        index = self._require_index(ifname)
        # IFA_F_NODAD (0x02): the address is ours alone on a point-to-point tunnel; waiting for
        # duplicate address detection would only delay the first packet.
        return _tolerate((errno.EEXIST,), lambda: self._ipr.addr(
            "add", index=index, address=address, prefixlen=prefixlen, flags=0x02))

    def delete_address(self, ifname: str, address: str, prefixlen: int) -> bool:
        index = self.index(ifname)
        if index is None:
            return False
        return _tolerate(_GONE, lambda: self._ipr.addr(
            "del", index=index, address=address, prefixlen=prefixlen))

    def addresses(self, ifname: str, family: int) -> list[str]:
        index = self.index(ifname)
        if index is None:
            return []
        return [a.get("IFA_ADDRESS") for a in self._ipr.get_addr(index=index, family=family)]

    def add_route(self, destination: str, ifname: str, metric: int = 1024,
                  source: str | None = None) -> bool:
        index = self._require_index(ifname)
        extra = {"prefsrc": source} if source else {}
        return _tolerate((errno.EEXIST,), lambda: self._ipr.route(
            "add", dst=destination, oif=index, priority=metric, **extra))

    def replace_route(self, destination: str, ifname: str, metric: int = 1024,
                      source: str | None = None) -> None:
        index = self._require_index(ifname)
        extra = {"prefsrc": source} if source else {}
        self._ipr.route("replace", dst=destination, oif=index, priority=metric, **extra)

    def delete_route(self, destination: str, ifname: str, metric: int = 1024) -> bool:
        index = self.index(ifname)
        if index is None:
            return False
        return _tolerate(_GONE, lambda: self._ipr.route(
            "del", dst=destination, oif=index, priority=metric))

    def route_to(self, address: str) -> RouteInfo | None:
        """The route the kernel would use to reach an IPv4 address, or None (unreachable)."""
        try:
            routes = self._ipr.route("get", dst=address)
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                return None
            raise
        if not routes:
            return None
        route = routes[0]
        oif = route.get("RTA_OIF")
        ifname = None
        mtu = None
        if oif is not None:
            links = self._ipr.get_links(oif)
            if links:
                ifname = links[0].get("ifname")
                mtu = links[0].get("mtu")
        metrics = route.get("RTA_METRICS")
        if metrics is not None and metrics.get("RTAX_MTU"):
            mtu = metrics.get("RTAX_MTU")
        return RouteInfo(ifname, route.get("RTA_GATEWAY"), route.get("RTA_PREFSRC"), mtu)


    def neighbour_mac(self, ifname: str, address: str) -> str | None:
        """The link-layer address of an IPv4 neighbour (the router), if the kernel knows it."""
        index = self.index(ifname)
        if index is None:
            return None
        for entry in self._ipr.get_neighbours(ifindex=index, dst=address):
            mac = entry.get("NDA_LLADDR")
            if mac and entry["state"] & _NUD_VALID:
                return str(mac)
        return None

    def resolve_neighbour(self, ifname: str, address: str) -> None:
        """Ask the kernel to resolve a neighbour now (an ARP request), as a packet to it would:
        NTF_USE on a neighbour entry triggers the kernel's own resolution."""
        index = self.index(ifname)
        if index is None:
            return
        _tolerate((errno.EINVAL, errno.EEXIST, errno.EPERM), lambda: self._ipr.neigh(
            "replace", dst=address, ifindex=index, flags=NTF_USE, state=NUD_NONE))


def write_sysctl(name: str, value: str) -> None:
    """Write a sysctl of the current network namespace (e.g. net/ipv6/conf/all/forwarding)."""
    Path("/proc/sys", name).write_text(value)


SO_NETNS_COOKIE = 71  # Linux 5.14+; not in Python's socket module


def network_namespace_id() -> str:
    """A name for the current network namespace that no other namespace of this boot ever had:
    its cookie (a 64-bit counter, never reused), or on older kernels the namespace's inode
    (reused once the namespace is gone)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            cookie = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
            return f"cookie-{int.from_bytes(cookie, sys.byteorder)}"
        except OSError:
            return f"inode-{os.stat('/proc/self/ns/net').st_ino}"


class ChangeLog:
    """Undo steps recorded as changes are made; `undo()` runs them newest first, once."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def record(self, description: str, undo: Callable[[], object]) -> None:
        self._undo.append((description, undo))

    def undo(self) -> None:
        while self._undo:
            description, step = self._undo.pop()
            try:
                step()
            except Exception as exc:  # keep undoing the rest; a half-clean host is worse
                log.warning("undo %s failed: %s", description, exc)
