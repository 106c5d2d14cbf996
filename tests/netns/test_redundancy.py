"""Gateways operators can trust: a keepalived (VRRP) pair, and two gateways side by side.

The pair runs the sample configuration the package ships (m6t.lab.redundancy says what the lab
changes in it): the master is killed with SIGKILL, then its host loses its link, and each time
the time until ping6 from the mobile node to the home agent flows again is measured and printed
(`pytest -s` shows it). The backup has no state when it takes over: the client's next packet
makes a temporary one there and the home agent's answer activates it, so a client with traffic
keeps its address; an idle client finds out with its keepalive and takes a new address.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from m6t.control.client import HelperClient
from m6t.lab.lab import missing_tools, wait_for
from m6t.lab.redundancy import GATEWAYS, PUBLIC_IF, GatewayPairLab

pytestmark = pytest.mark.netns

TARGET = 10.0  # s from the failure to ping flowing again (issue 12)


@pytest.fixture
def pair() -> Iterator[GatewayPairLab]:
    with GatewayPairLab() as built:
        yield built
    assert not built.namespaces_exist(), f"namespaces left behind: {built.namespaces_exist()}"
    assert not built.leftover_processes(), f"processes left behind: {built.leftover_processes()}"


def call(lab: GatewayPairLab, method: str, **params: Any) -> Any:
    with HelperClient(lab.helper_socket) as client:
        return msgspec.to_builtins(client.call(method, **params))


def tunnel(lab: GatewayPairLab, name: str | None = None) -> dict[str, Any]:
    tunnels = call(lab, "status")["tunnels"]
    if name is None:
        assert len(tunnels) == 1
        return dict(tunnels[0])
    return dict(next(t for t in tunnels if t["profile"] == name))


def other(role: str) -> str:
    return GATEWAYS[1 - GATEWAYS.index(role)]


def active_states(lab: GatewayPairLab, role: str) -> float:
    metrics = lab.gateway_metrics(role)
    assert metrics is not None
    return metrics['m6t_gateway_states{kind="active"}']


def report(what: str, seconds: float, before: str, after: str) -> None:
    address = "same address" if before == after else f"new address {after}"
    print(f"\n[failover] {what}: ping6 flows again after {seconds:.2f} s ({address})")


def require_keepalived() -> None:
    """keepalived is a lab tool like nft (make setup installs it): missing, the test skips on
    a developer's box and fails where netns tests must run (M6T_REQUIRE_NETNS=1)."""
    if missing_tools(("keepalived",)):
        if os.environ.get("M6T_REQUIRE_NETNS") == "1":
            pytest.fail("keepalived is missing and M6T_REQUIRE_NETNS=1 (run make setup)")
        pytest.skip("keepalived is missing (make setup installs it)")


def test_failover_keeps_the_tunnel_within_10_s(pair: GatewayPairLab) -> None:
    require_keepalived()
    master = pair.start_pair()
    assert master == "gw-a"  # the higher priority of the sample, both starting as backup
    assert pair.vrrp_state("gw-b") == "BACKUP"
    pair.start_helper()
    connected = call(pair, "connect", profile=pair.profile(keepalive=5))
    assert connected["state"] == "connected"
    address = connected["address"]
    ping = pair.start_ping()
    ping.wait_replies(3, since=time.time())
    assert active_states(pair, "gw-a") >= 1  # the port race confirms one state per port
    assert active_states(pair, "gw-b") == 0
    started_a = pair.gateway_metrics("gw-a")["m6t_gateway_start_time_seconds"]  # type: ignore[index]

    # 1. The master's gateway dies (SIGKILL: no teardown). Its health check fails, keepalived
    # gives the addresses up, the backup takes them; the ping's next packet makes a state there.
    killed = time.time()
    os.kill(pair.gateways["gw-a"].pid, signal.SIGKILL)
    flowing = ping.first_reply_after(killed, timeout=30)
    assert pair.wait_master(5) == "gw-b"
    after = tunnel(pair)
    report("SIGKILL of the master's m6t-gateway", flowing - killed, address, after["address"])
    assert flowing - killed < TARGET
    assert after["state"] == "connected"
    assert active_states(pair, "gw-b") >= 1  # the backup had no state: it made one
    address = after["address"]

    # Restored: the gateway restarts (a new start time: the alert's trigger) and passes its
    # check again; keepalived does not preempt, so traffic never stops.
    pair.stop(pair.gateways["gw-a"])
    restored = time.time()
    pair.start_gateway_on("gw-a")
    wait_for(lambda: pair.vrrp_state("gw-a") == "BACKUP", 15, "gw-a back as backup")
    assert pair.master() == "gw-b"
    restarted = pair.gateway_metrics("gw-a")
    assert restarted is not None
    assert restarted["m6t_gateway_start_time_seconds"] > started_a
    assert restarted["m6t_gateway_ready"] == 1
    ping.wait_replies(5, since=time.time())
    assert ping.last_gap(restored) < 1.0, "restoring the old master interrupted traffic"

    # 2. The master's host loses its public link. keepalived there goes to FAULT; the other
    # one (restarted: no state) misses three adverts and takes over.
    assert active_states(pair, "gw-a") == 0
    pulled = time.time()
    pair.ip("gw-b", "link", "set", PUBLIC_IF, "down")
    flowing = ping.first_reply_after(pulled, timeout=30)
    assert pair.wait_master(5) == "gw-a"
    after = tunnel(pair)
    report("public link of the master down", flowing - pulled, address, after["address"])
    assert flowing - pulled < TARGET
    assert after["state"] == "connected"
    assert not pair.holds_home_vip("gw-b")  # the home-side address left with the master role
    address = after["address"]

    pair.ip("gw-b", "link", "set", PUBLIC_IF, "up")
    relinked = time.time()
    wait_for(lambda: pair.vrrp_state("gw-b") == "BACKUP", 15, "gw-b back as backup")
    assert pair.master() == "gw-a"
    ping.wait_replies(5, since=time.time())
    assert ping.last_gap(relinked) < 1.0
    ping.close()

    # 3. An idle client whose state the new master never saw (gw-b still remembers the
    # address of step 1, so a fresh one first): nothing to send, so nothing makes a state
    # there; its keepalive goes unanswered and the helper takes a new address by itself.
    address = call(pair, "regenerate", profile="lab")["address"]
    assert pair.master() == "gw-a"
    killed = time.time()
    os.kill(pair.gateways["gw-a"].pid, signal.SIGKILL)
    assert pair.wait_master(10, other_than="gw-a") == "gw-b"
    renewed = wait_for(lambda: (t := tunnel(pair))["address"] != address
                       and t["state"] == "connected" and t, 30, "a new address")
    took = time.time() - killed
    reason = renewed["history"][-1]["reason"]
    print(f"\n[failover] idle client (keepalive 5 s), SIGKILL of the master's m6t-gateway: "
          f"a new address after {took:.2f} s (reason {reason})")
    assert took < 5 + TARGET  # at most one keepalive period, then the usual probes
    assert renewed["address"].startswith("fd6d:6d74:1:1:1:")
    check = pair.run("mn", ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2",
                            pair.addr.home_agent], check=False)
    assert check.returncode == 0, check.stdout


def test_health_check_says_why(pair: GatewayPairLab) -> None:
    """The check keepalived runs: ready, then not ready for each of its three reasons."""
    pair.ip("ha", "-6", "route", "replace", "default", "via", pair.addr.gw_a_home)
    pair.start_gateway_on("gw-a")
    healthy = pair.health("gw-a")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("ready: serving since ")
    assert "home agent fd48:4100::2 answered" in healthy.stdout

    pair.ip("gw-a", "link", "set", "m6tgw0", "down")
    down = pair.health("gw-a")
    assert (down.returncode, down.stdout.strip()) == (1, "not ready: m6tgw0 is down")
    pair.ip("gw-a", "link", "set", "m6tgw0", "up")

    pair.ip("ha", "link", "set", "to-gw-a", "down")  # the home LAN lost this gateway
    started = time.monotonic()
    lost = pair.health("gw-a")
    assert lost.returncode == 1 and "no home agent answered" in lost.stdout, lost.stdout
    assert time.monotonic() - started < 5  # bounded: 1 s, plus starting Python
    pair.ip("ha", "link", "set", "to-gw-a", "up")

    pair.stop(pair.gateways["gw-a"], signal.SIGKILL)
    dead = pair.health("gw-a")
    assert dead.returncode == 1 and "does not answer on http://127.0.0.1:9464/metrics" \
        in dead.stdout, dead.stdout


def test_scale_out_two_gateways_each_with_its_half(pair: GatewayPairLab) -> None:
    """Two gateways, each its own half of one /48; one profile per half, both listing both
    gateways: only the gateway whose prefix holds the profile's /80 answers, and both
    tunnels carry traffic at once."""
    a = pair.addr
    halves = {"gw-a": "fd6d:6d74:1::/49", "gw-b": "fd6d:6d74:1:8000::/49"}
    second_agent = "fd48:4100::3"
    pair.ip("ha", "-6", "addr", "add", f"{second_agent}/64", "dev", "eth0", "nodad")
    for role, prefix in halves.items():
        pair.route_client_prefix(prefix, role)
        pair.start_gateway_on(role, listen=[f"{a.wan(role)}:3544", f"{a.wan(role)}:4500"],
                              client_prefix=prefix, home_agents=[a.home_agent, second_agent])
    pair.start_helper()
    both = {"gateway": a.gw_a_wan, "more_gateways": [a.gw_b_wan]}
    low = call(pair, "connect", profile=pair.profile(name="low", prefix="fd6d:6d74:1:1:1::/80",
                                                     **both))
    high = call(pair, "connect", profile=pair.profile(
        name="high", prefix="fd6d:6d74:1:8001:1::/80", home_agent=second_agent, **both))
    assert (low["state"], high["state"]) == ("connected", "connected")
    assert tunnel(pair, "low")["gateway"] == a.gw_a_wan
    assert tunnel(pair, "high")["gateway"] == a.gw_b_wan
    # Both at once: each home agent address through its own tunnel.
    pings = [pair.spawn("mn", ["ping", "-6", "-c", "10", "-i", "0.1", "-W", "2", agent],
                        log_name=f"ping-{agent}") for agent in (a.home_agent, second_agent)]
    assert [p.wait(30) for p in pings] == [0, 0]
    # The race's losing halves: each gateway dropped the other half's first packets.
    for role in GATEWAYS:
        metrics = pair.gateway_metrics(role)
        assert metrics is not None
        assert metrics['m6t_gateway_states{kind="active"}'] >= 1
        assert metrics['m6t_gateway_drops_total{reason="src_outside_prefix"}'] >= 1
