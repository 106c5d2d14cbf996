"""The real m6t-helper (control server, tunnels, ClientSession loop, data path threads) against
the real gateway loop, in one process on fake I/O (tests/helper_world.py): no root, no
namespace. What the netns tests prove on a real kernel, checked here on every run in seconds.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from m6t.control.client import HelperClient
from m6t.control.errors import NotFound, Unavailable
from m6t.control.schema import AddressEvent, MtuEvent, RemovedEvent, StateEvent, TunnelStatus
from m6t.linux.udp import FragmentationNeeded
from m6t.protocol.packets import build_echo
from m6t.protocol.session import AddressReason, Cause, MtuReason, TunnelState
from tests.helper_world import GATEWAY, HOME_AGENT, WIFI, WIRED, HelperWorld, wait_until


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HelperWorld]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with HelperWorld(tmp_path) as world:
        yield world


def status(world: HelperWorld) -> TunnelStatus:
    tunnels = world.call("status").tunnels
    assert len(tunnels) == 1
    return tunnels[0]


def test_connect_gives_an_address_on_the_interface_and_pings_reach_the_home_agent(
        world: HelperWorld) -> None:
    result = world.call("connect", profile=world.profile())
    assert (result.state, result.cause) == (TunnelState.CONNECTED, Cause.PORT_RACE_WON)
    assert ipaddress.IPv6Address(result.address) in ipaddress.IPv6Network(result.prefix)
    interface = world.interface()
    assert interface.addresses == [result.address]
    assert interface.routes == [result.home_agent]
    assert interface.mtu == 1472
    for sequence in range(1, 4):
        world.ping(size=1000, sequence=sequence)
    assert status(world).tx_packets >= 3 and status(world).rx_packets >= 3


def test_a_port_the_gateway_does_not_serve_falls_back_to_the_next(tmp_path: Path) -> None:
    with HelperWorld(tmp_path, gateway_ports=(4500,)) as world:
        result = world.call("connect", profile=world.profile())
        assert (result.state, result.cause, result.port) == (
            TunnelState.CONNECTED, Cause.PORT_FALLBACK, 4500)
        reachable = {probe.port: probe.reachable for probe in result.ports}
        assert reachable == {3544: False, 4500: True}
        world.ping()


def test_a_new_network_gives_a_new_address_and_traffic_flows(world: HelperWorld) -> None:
    first = world.call("connect", profile=world.profile()).address
    world.move_to(WIRED)
    new = wait_until(lambda: (s := status(world)).address != first and
                     s.state == TunnelState.CONNECTED and s.address, "a new address")
    assert world.interface().addresses == [new]  # one interface, its address replaced
    assert [change.reason for change in status(world).history] == [
        AddressReason.CONNECT, AddressReason.NETWORK_CHANGED]
    world.ping()


def test_no_ipv4_network_waits_and_comes_back_by_itself(world: HelperWorld) -> None:
    world.call("connect", profile=world.profile())
    world.lose_network()
    wait_until(lambda: status(world).cause == Cause.NO_IPV4_NETWORK, "waiting for a network")
    assert status(world).state == TunnelState.WAITING
    world.move_to(WIRED)
    wait_until(lambda: status(world).state == TunnelState.CONNECTED, "connected again")
    world.ping()


def test_a_gateway_name_that_does_not_resolve_waits(world: HelperWorld) -> None:
    result = world.call("connect", profile=world.profile(gateway="gw.invalid"))
    assert (result.state, result.cause) == (TunnelState.WAITING, Cause.RESOLVE_FAILED)
    world.io.names["gw.invalid"] = GATEWAY
    world.move_to(WIRED)  # any network event retries at once
    wait_until(lambda: status(world).state == TunnelState.CONNECTED, "connected by name")


def test_regenerate_set_mtu_and_fragmentation_needed(world: HelperWorld) -> None:
    old = world.call("connect", profile=world.profile()).address
    regenerated = world.call("regenerate", profile="lab")
    assert regenerated.address != old
    assert regenerated.history[-1].reason == AddressReason.USER_REQUEST
    assert world.call("set_mtu", profile="lab", mtu=1400).mtu == 1400
    assert world.interface().mtu == 1400
    helper = world.helper
    assert helper is not None
    tunnel = helper.tunnels["lab"]
    port = tunnel.local_port()
    assert port is not None
    too_big = FragmentationNeeded(local=(world.io.local_ip, port), remote=(GATEWAY, 3544),
                                  mtu=1300)
    assert world.io.on_icmp is not None
    on_icmp = world.io.on_icmp
    world.in_helper(lambda: on_icmp([too_big]))
    assert status(world).mtu == 1280 and world.interface().mtu == 1280  # 1300 - 28, floor 1280
    world.ping(size=1200)


def test_subscribers_see_the_state_then_each_change_as_records(world: HelperWorld) -> None:
    with HelperClient(world.socket_path) as watcher:
        assert watcher.call("subscribe").tunnels == []
        world.call("connect", profile=world.profile())
        world.call("set_mtu", profile="lab", mtu=1400)
        world.call("disconnect", profile="lab")
        seen = []
        for event in watcher.events():
            seen.append(event)
            if isinstance(event, RemovedEvent):
                break
    states = [(e.state, e.cause) for e in seen if isinstance(e, StateEvent)]
    assert states[0] == (TunnelState.CONNECTING, Cause.USER_REQUEST)
    assert (TunnelState.CONNECTED, Cause.PORT_RACE_WON) in states
    assert states[-1] == (TunnelState.DISCONNECTED, Cause.USER_REQUEST)
    assert [e.reason for e in seen if isinstance(e, AddressEvent)] == [AddressReason.CONNECT]
    assert [(e.mtu, e.reason) for e in seen if isinstance(e, MtuEvent)] == [
        (1400, MtuReason.USER_REQUEST)]


def test_an_offload_refused_mid_session_is_told_to_subscribers_with_the_new_status(
        world: HelperWorld) -> None:
    """IPsec appearing on the IPv4 path makes the kernel refuse UDP GSO (EIO): the plain path
    takes over at once, and subscribers hear of it within a second, as a state event with the
    same state and cause and the status whose data path says so."""
    with HelperClient(world.socket_path) as watcher:
        watcher.call("subscribe")
        address = world.call("connect", profile=world.profile()).address
        world.network.gso = False
        source = ipaddress.IPv6Address(address).packed
        home = ipaddress.IPv6Address(HOME_AGENT).packed

        def a_run_of_packets() -> bool:  # a run read in one batch leaves as one GSO send
            for sequence in range(16):
                world.interface().tun.inbound(build_echo(source, home, 7, sequence, bytes(500)))
            datapath = status(world).datapath
            return datapath is not None and "udp_gso" in datapath.fallbacks

        wait_until(a_run_of_packets, "UDP GSO refused")
        told: StateEvent | None = None
        deadline = time.monotonic() + 5  # traffic events come every second: the loop turns
        for event in watcher.events():
            if isinstance(event, StateEvent) and event.message \
                    and "udp_gso refused" in event.message:
                told = event
            if told is not None or time.monotonic() > deadline:
                break
    assert told is not None, "no state event told of the refused offload"
    assert (told.state, told.cause) == (TunnelState.CONNECTED, Cause.PORT_RACE_WON)
    assert told.status.datapath is not None
    assert "udp_gso" in told.status.datapath.fallbacks
    assert "udp_gso" not in told.status.datapath.offloads
    world.ping()  # and the tunnel goes on, one datagram per packet


def test_disconnect_removes_the_interface_and_a_second_is_not_found(world: HelperWorld) -> None:
    world.call("connect", profile=world.profile())
    assert world.call("disconnect", profile="lab").disconnected == ["lab"]
    assert all(interface.closed for interface in world.io.interfaces)
    with pytest.raises(NotFound) as raised:
        world.call("disconnect", profile="lab")
    assert raised.value.data.tunnels == []


def test_a_waiting_tunnel_cannot_regenerate_or_probe_its_mtu(world: HelperWorld) -> None:
    world.call("connect", profile=world.profile(gateway="gw.invalid"))
    for method in ("regenerate", "probe_mtu"):
        with pytest.raises(Unavailable, match="waiting"):
            world.call(method, profile="lab")


def test_an_interface_that_cannot_be_made_is_an_error_with_its_message_then_a_retry(
        world: HelperWorld, caplog: pytest.LogCaptureFixture) -> None:
    world.io.fail_interface = "Operation not permitted"
    with caplog.at_level(logging.CRITICAL, logger="m6t"):
        result = world.call("connect", profile=world.profile())
    assert (result.state, result.cause) == (TunnelState.ERROR, Cause.SETUP_FAILED)
    assert result.message is not None and "Operation not permitted" in result.message
    world.io.fail_interface = None
    wait_until(lambda: status(world).state == TunnelState.CONNECTED, "the retry after 1 s")
    world.ping()


def test_probe_reports_each_port_and_connects_nothing(tmp_path: Path) -> None:
    with HelperWorld(tmp_path, gateway_ports=(3544,)) as world:
        result = world.call("probe", profile=world.profile(), timeout=0.5)
        assert result.gateway_address == GATEWAY
        assert {p.port: p.reachable for p in result.ports} == {3544: True, 4500: False}
        assert world.call("status").tunnels == []
        assert world.io.interfaces == []


def test_stopping_the_helper_closes_every_interface(tmp_path: Path) -> None:
    with HelperWorld(tmp_path) as world:
        world.call("connect", profile=world.profile())
        world.call("connect", profile=world.profile(name="second"))
        assert len(world.io.interfaces) == 2
    assert all(interface.closed for interface in world.io.interfaces)
    assert world.io.closed


# --- per-network memory and captive portals ---------------------------------------------------


def test_a_known_network_is_joined_on_its_remembered_port(world: HelperWorld) -> None:
    world.io.blocked = {3544}  # this network filters the first port
    first = world.call("connect", profile=world.profile())
    assert (first.port, first.cause) == (4500, Cause.PORT_FALLBACK)
    [known] = world.call("networks").networks
    assert (known.id, known.port, known.profile, known.current) == (first.network, 4500,
                                                                    "lab", True)
    assert known.label == first.network_label and "02:fc:00:00:00:01" in known.label
    world.move_to(WIRED)
    wait_until(lambda: status(world).network not in (None, first.network)
               and status(world).state == TunnelState.CONNECTED, "connected on the wire")
    world.move_to(WIFI)  # back on the network that filters 3544
    back = wait_until(lambda: (s := status(world)).network == first.network
                      and s.state == TunnelState.CONNECTED and s, "back on the Wi-Fi")
    assert back.port == 4500
    tried = {probe.port: probe.error for probe in back.ports}
    assert tried[3544] is not None and tried[3544].startswith("not tried")
    world.ping()


def test_networks_can_be_forgotten_one_or_all(world: HelperWorld) -> None:
    world.call("connect", profile=world.profile())
    world.move_to(WIRED)
    wait_until(lambda: len(world.call("networks").networks) == 2, "two known networks")
    wired = next(n for n in world.call("networks").networks if n.current)
    left = world.call("forget_network", network=wired.id).networks
    assert [n.id for n in left] != [] and wired.id not in [n.id for n in left]
    with pytest.raises(NotFound, match="no known network"):
        world.call("forget_network", network=wired.id)
    assert world.call("forget_network").networks == []
    assert world.call("networks").saved is True


def test_a_captive_portal_is_said_and_the_tunnel_comes_after_the_login(
        world: HelperWorld) -> None:
    world.io.blocked = {3544, 4500}  # the portal lets no UDP through...
    world.io.portal = "http://192.168.1.1/login"  # ...and answers HTTP with its login page
    result = world.call("connect", profile=world.profile())
    assert result.state == TunnelState.WAITING
    held = wait_until(lambda: (s := status(world)).cause == Cause.CAPTIVE_PORTAL and s,
                      "the portal to be noticed")
    assert held.portal_url == "http://192.168.1.1/login"
    world.io.blocked, world.io.portal = set(), None  # the user logged in
    wait_until(lambda: status(world).state == TunnelState.CONNECTED,
               "the tunnel after the login", timeout=10)
    assert status(world).portal_url is None
    world.ping()


def test_a_failing_status_is_logged_and_never_loops(world: HelperWorld,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A bug that makes every state announcement fail (seen once: status() raising) must not
    turn into an endless chain of set-up failures that spins the helper's loop."""
    from m6t_helper.tunnel import Tunnel

    def broken(self: Tunnel) -> TunnelStatus:
        raise AttributeError("status is broken")

    monkeypatch.setattr(Tunnel, "status", broken)
    with caplog.at_level(logging.CRITICAL, logger="m6t"):
        with HelperClient(world.socket_path) as client:
            client.call("version")  # the control loop answers
            with pytest.raises(Exception, match="status is broken"):
                client.call("connect", profile=world.profile())
        monkeypatch.undo()
        wait_until(lambda: status(world).state == TunnelState.CONNECTED, "the tunnel, still up")
    world.ping()
