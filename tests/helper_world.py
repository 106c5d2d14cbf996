"""A whole m6t world in one process, without root: the real m6t-helper (its asyncio loop and its
data path threads) and the real m6t-gateway loop, joined by m6t.linux.tuntest's fake UDP
network, with a fake home agent that answers pings behind the gateway's fake TUN device.

    with HelperWorld(tmp_path) as world:
        status = world.call("connect", profile=world.profile())
        world.ping()                       # through the helper's TUN, the gateway, the HA

The helper's system calls come from `FakeHelperIO` (m6t_helper.io.HelperIO): the route to the
gateway is whatever the test says (`world.move_to(...)`, `world.lose_network()`), the tunnel
interface is a ChannelTun that records its address, routes and MTU. The netns tests
(tests/netns/test_helper.py) remain the proof on a real kernel and a real NAT.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from m6t_helper.daemon import Helper

from m6t.control.client import HelperClient
from m6t.control.schema import Profile
from m6t.gateway.config import load_config
from m6t.gateway.daemon import GatewayDaemon, GatewayIO
from m6t.linux.netident import NetworkIdentity, network_identity
from m6t.linux.tuntest import ChannelTun, FakeNetlink, FakeNetwork
from m6t.linux.udp import FragmentationNeeded
from m6t.protocol.packets import build_echo, echo_reply_for, parse_echo
from m6t.protocol.session import Ipv4Path

GATEWAY = "198.51.100.1"
PORTS = (3544, 4500)
CLIENT_PREFIX = "fd6d:6d74:1::/48"
HOME_AGENT = "fd48:4100::2"
WIFI = (Ipv4Path("wlan0", "192.168.1.1", "192.168.1.20", 1500), "192.168.1.20")
WIRED = (Ipv4Path("eth0", "10.0.0.1", "10.0.0.5", 1500), "10.0.0.5")
TIMEOUT = 5.0


def wait_until(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.005)
    return value


class FakeInterface:
    """A tunnel interface: a ChannelTun plus what netlink would have been told."""

    def __init__(self, name: str, mtu: int, fail: str | None) -> None:
        if fail:
            raise OSError(1, fail)
        self.name = name
        self.tun = ChannelTun(name, mtu)
        self.addresses: list[str] = []
        self.routes: list[str] = []
        self.closed = False

    @property
    def mtu(self) -> int:
        return self.tun.mtu

    def set_mtu(self, mtu: int) -> None:
        self.tun.mtu = mtu

    def set_address(self, address: str) -> None:
        self.addresses = [address]  # the new one replaces the old, as TunnelInterface does

    def set_routes(self, routes: str | list[str], home_agent: str) -> None:
        self.routes = [home_agent] if routes == "home-agent" else list(routes)

    def close(self) -> None:
        self.tun.close()
        self.closed = True


class _Handle:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeHelperIO:
    def __init__(self, network: FakeNetwork) -> None:
        self.network = network
        self.path: Ipv4Path | None
        self.path, self.local_ip = WIFI
        self.names: dict[str, str] = {}  # host names the resolver knows
        self.interfaces: list[FakeInterface] = []
        self.fail_interface: str | None = None  # create_interface raises this
        self.router_mac: str | None = "02:fc:00:00:00:01"
        self.portal: str | None = None  # a captive portal's login page, while it holds us
        self.portal_checks = 0
        self.blocked: set[int] = set()  # gateway ports this network filters
        self.on_change: Callable[[], None] | None = None
        self.on_resume: Callable[[float], None] | None = None
        self.on_icmp: Callable[[Iterable[FragmentationNeeded]], None] | None = None
        self.closed = False

    async def resolve(self, host: str) -> str:
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv4Address(host))
        if host in self.names:
            return self.names[host]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def route_to(self, address: str) -> Ipv4Path | None:
        return self.path

    async def identify_network(self, path: Ipv4Path) -> NetworkIdentity | None:
        return network_identity(path, self.router_mac, None)

    async def check_portal(self) -> str | None:
        self.portal_checks += 1
        return self.portal

    def open_udp(self, gateway: str, port: int) -> socket.socket:
        if self.path is None:
            raise OSError(101, "Network is unreachable")
        if port in self.blocked:  # this network filters that port: datagrams go nowhere
            return self.network.open(bind=(self.local_ip, 0), connect=("192.0.2.254", port))
        return self.network.open(bind=(self.local_ip, 0), connect=(gateway, port))

    def create_interface(self, name: str, mtu: int) -> FakeInterface:
        interface = FakeInterface(name, mtu, self.fail_interface)
        self.interfaces.append(interface)
        return interface

    def free_name(self, taken: set[str]) -> str:
        return next(f"m6t{i}" for i in range(1000) if f"m6t{i}" not in taken)

    def remove_leftovers(self) -> list[str]:
        return []

    def watch_network(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None],
                      on_resume: Callable[[float], None]) -> _Handle:
        self.on_change, self.on_resume = on_change, on_resume
        return _Handle()

    def listen_fragmentation_needed(
            self, loop: asyncio.AbstractEventLoop,
            on_error: Callable[[Iterable[FragmentationNeeded]], None]) -> _Handle:
        self.on_icmp = on_error
        return _Handle()

    def close(self) -> None:
        self.closed = True


class HelperWorld:
    def __init__(self, tmp_path: Path, gateway_ports: tuple[int, ...] = PORTS) -> None:
        self.network = FakeNetwork()
        config = tmp_path / "gateway.toml"
        listen = ", ".join(f'"{GATEWAY}:{port}"' for port in gateway_ports)
        config.write_text(f'listen = [{listen}]\nclient_prefix = "{CLIENT_PREFIX}"\n'
                          f'home_agents = ["{HOME_AGENT}"]\ntun = "m6tgwfake"\n')
        self.gateway = GatewayDaemon(load_config(config), config, GatewayIO(
            open_tun=ChannelTun, open_listener=self.network.open,
            open_icmp_listener=self.network.icmp_listener, open_routing=FakeNetlink))
        self.io = FakeHelperIO(self.network)
        self.socket_path = str(tmp_path / "helper.sock")
        self.state_dir = tmp_path / "state"
        self.group = grp.getgrgid(os.getgid()).gr_name  # so that this user may change things
        self.loop = asyncio.new_event_loop()
        self.helper: Helper | None = None
        self._threads: list[threading.Thread] = []
        self._running = threading.Event()
        self._stopping = False
        self.home_received: list[bytes] = []

    # --- running ---

    def __enter__(self) -> HelperWorld:
        self.gateway.setup()
        self._start(self.gateway.run, False, name="gateway")
        self._start(self._home_agent, name="home-agent")
        self._start(self._helper_loop, name="helper")
        wait_until(lambda: os.path.exists(self.socket_path), "the helper's control socket")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        if self.helper is not None:
            self.loop.call_soon_threadsafe(self.helper.stop)
        self.gateway.stop()
        for thread in self._threads:
            thread.join(3 * TIMEOUT)  # a loaded machine: tearing down tunnels joins threads
            assert not thread.is_alive(), f"{thread.name} did not stop"
        self.gateway.teardown()
        self.network.close()
        self.loop.close()

    def _start(self, target: Callable[..., object], *args: object, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _helper_loop(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.helper = Helper(self.socket_path, self.group, "read", io=self.io,
                                 state_dir=self.state_dir)
            await self.helper.run(handle_signals=False)

        self.loop.run_until_complete(main())

    def _home_agent(self) -> None:
        """Behind the gateway's TUN: answer pings, keep everything else."""
        while not self._stopping:
            packet = self.gateway.tun.outbound(0.05)
            if packet is None:
                continue
            self.home_received.append(packet)
            reply = echo_reply_for(packet)
            if reply is not None:
                self.gateway.tun.inbound(reply)

    # --- the test's handles ---

    def call(self, method: str, **params: Any) -> Any:
        with HelperClient(self.socket_path, timeout=TIMEOUT * 4) as client:
            return client.call(method, **params)

    def profile(self, **overrides: Any) -> Profile:
        fields: dict[str, Any] = {"name": "lab", "gateway": GATEWAY, "ports": list(PORTS),
                                  "prefix": "fd6d:6d74:1:1:1::/80", "home_agent": HOME_AGENT}
        fields.update(overrides)
        return Profile(**fields)

    def interface(self) -> FakeInterface:
        live = [i for i in self.io.interfaces if not i.closed]
        assert len(live) == 1, f"{len(live)} live tunnel interfaces"
        return live[0]

    def in_helper(self, action: Callable[[], object]) -> None:
        """Run `action` on the helper's loop (where netlink and ICMP callbacks run)."""
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(TIMEOUT)

    def move_to(self, network: tuple[Ipv4Path, str]) -> None:
        """The laptop joins another IPv4 network; netlink says so."""
        self.io.path, self.io.local_ip = network
        assert self.io.on_change is not None
        self.in_helper(self.io.on_change)

    def lose_network(self) -> None:
        self.io.path = None
        assert self.io.on_change is not None
        self.in_helper(self.io.on_change)

    def ping(self, size: int = 0, sequence: int = 1) -> bytes:
        """An echo request from the tunnel address to the HA, through the helper's TUN; the
        reply the helper writes back into the TUN."""
        interface = self.interface()
        source = ipaddress.IPv6Address(interface.addresses[0]).packed
        request = build_echo(source, ipaddress.IPv6Address(HOME_AGENT).packed, 0x4D4E,
                             sequence, bytes(size))
        interface.tun.inbound(request)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            packet = interface.tun.outbound(deadline - time.monotonic())
            echo = parse_echo(packet) if packet else None
            if packet is not None and echo is not None and echo.sequence == sequence \
                    and not echo.is_request:
                return packet
        raise AssertionError("no echo reply came back through the tunnel")
