"""Issue 11 end to end: the helper's memory of networks and captive portals, with the real
helper, gateway and NAT (and the lab's portal on the NAT box)."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from m6t.control.client import HelperClient
from m6t.lab.lab import Lab, wait_for

pytestmark = pytest.mark.netns


def call(lab: Lab, method: str, **params: Any) -> Any:
    with HelperClient(lab.helper_socket) as client:
        return msgspec.to_builtins(client.call(method, **params))


def status(lab: Lab) -> dict[str, Any]:
    tunnels = call(lab, "status")["tunnels"]
    assert len(tunnels) == 1
    return dict(tunnels[0])


def ping(lab: Lab, count: int = 2, timeout: float = 2) -> bool:
    result = lab.run("mn", ["ping", "-6", "-c", str(count), "-i", "0.2", "-W", str(timeout),
                            lab.addr.home_agent], check=False, timeout=30)
    return result.returncode == 0


@pytest.fixture
def world(lab: Lab) -> Iterator[Lab]:
    lab.start_gateway()
    yield lab


def test_a_known_network_with_a_blocked_port_is_rejoined_on_the_remembered_port(
        world: Lab) -> None:
    world.start_helper()
    world.set_nat_rules(extra="udp dport 3544 drop")  # this network filters the first port
    first = call(world, "connect", profile=world.profile())
    assert (first["port"], first["cause"]) == (4500, "port_fallback")
    home = first["network"]
    assert home and "router" in first["network_label"]
    state_file = world.workdir / "state" / "networks.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    world.roam()  # another LAN: another router address, another network
    wait_for(lambda: status(world)["network"] not in (None, home)
             and status(world)["state"] == "connected", 15, "connected on the other LAN")
    world.roam()  # back
    back_at = time.monotonic()
    back = wait_for(lambda: (s := status(world))["network"] == home
                    and s["state"] == "connected" and s, 15, "back on the first LAN")
    print(f"\nrejoined the known network on its remembered port in "
          f"{time.monotonic() - back_at:.2f} s (including the 0.3 s netlink debounce)")
    assert back["port"] == 4500
    by_port = {p["port"]: p for p in back["ports"]}
    assert by_port[3544]["error"].startswith("not tried")  # no waiting for the blocked one
    assert ping(world)
    known = call(world, "networks")["networks"]
    assert {n["id"] for n in known} == {home, status(world)["network"]} or len(known) == 2
    assert [n["current"] for n in known if n["id"] == home] == [True]


def test_a_corrupt_memory_file_is_set_aside_and_the_helper_works(world: Lab) -> None:
    state = world.workdir / "state"
    state.mkdir(mode=0o755)
    (state / "networks.json").write_bytes(b'{"version": 1, "networks": {"x": 5}}')
    world.start_helper()
    assert call(world, "connect", profile=world.profile())["state"] == "connected"
    aside = [name for name in os.listdir(state) if name.startswith("networks.json.corrupt-")]
    assert len(aside) == 1
    assert "unreadable" in world.log("helper")
    assert len(call(world, "networks")["networks"]) == 1  # a fresh memory, written


def test_a_captive_portal_is_reported_then_passed_after_the_login(world: Lab) -> None:
    world.start_helper()
    world.start_portal()
    result = call(world, "connect", profile=world.profile())
    assert result["state"] == "waiting"
    held = wait_for(lambda: (s := status(world))["cause"] == "captive_portal" and s, 15,
                    "the helper to notice the portal")
    assert held["portal_url"] == f"http://{world.addr.nat_lan}/login"
    assert not ping(world, count=1, timeout=1)
    world.portal_login()
    logged_in = time.monotonic()
    wait_for(lambda: status(world)["state"] == "connected", 15, "the tunnel after the login")
    print(f"\ntunnel up {time.monotonic() - logged_in:.2f} s after the portal login")
    assert status(world)["portal_url"] is None
    assert ping(world)
    assert re.search(r"captive_portal", world.log("helper"))
