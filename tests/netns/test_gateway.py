"""m6t-gateway end to end: the real daemon, the real NAT, the lab's scripted client.

Each test builds its own lab (mn behind an nftables NAT, gw, ha) and drives the gateway with
raw IPv6-in-UDP from the mobile node, then reads the gateway's drop counters from its metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from m6t.lab.inject import UDP_SOCKET_ERRORS
from m6t.lab.lab import Lab, frozen, wait_for

pytestmark = pytest.mark.netns

SRC = "fd6d:6d74:1:1:1:0:0:1"
OTHER_SRC = "fd6d:6d74:1:1:1:0:0:2"


def client(lab: Lab, command: str, *args: str, role: str = "mn", bind: str = "0.0.0.0:40001",
           port: int = 3544) -> dict[str, Any]:
    result = lab.python(role, "m6t.lab.client", "--gateway", f"{lab.addr.gw_wan}:{port}",
                        "--bind", bind, command, *args)
    return json.loads(result.stdout)


def drops(lab: Lab, reason: str) -> float:
    return lab.metrics()[f'm6t_gateway_drops_total{{reason="{reason}"}}']


def states(lab: Lab, kind: str) -> float:
    return lab.metrics()[f'm6t_gateway_states{{kind="{kind}"}}']


def wait_metric(lab: Lab, predicate: Any, what: str, timeout: float = 5) -> None:
    """Metrics are a snapshot refreshed once a second: wait for the condition, not a sleep."""
    wait_for(lambda: predicate(lab.metrics()), timeout, what, interval=0.2)


def test_first_packet_reaches_home_agent_and_answer_comes_back(lab: Lab) -> None:
    lab.start_gateway()
    result = client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent, "--count", "3")
    assert result["received"] == 3
    wait_metric(lab, lambda m: m['m6t_gateway_states{kind="active"}'] == 1, "an active state")
    # The HA saw the client's tunnel address, not the NAT's: nothing of IPv4 leaks to IPv6.
    neighbours = lab.ip("ha", "-6", "route", "get", SRC).stdout
    assert "fd48:4100::1" in neighbours


def test_a_fresh_gateway_counts_no_drops_of_its_own_kernels_making(lab: Lab) -> None:
    # With a link-local address on m6tgw0 the kernel sent MLD reports and router solicitations
    # into it as it came up, which the gateway read and counted as no_state drops: an operator
    # saw drops on an idle gateway. The TUN device has no link-local address now.
    lab.start_gateway()
    assert "fe80" not in lab.ip("gw", "-6", "addr", "show", "dev", "m6tgw0").stdout
    time.sleep(3)  # MLD reports repeat within 1-2 s, RS after 4 s: three seconds catch them
    metrics = lab.metrics()
    assert {name: value for name, value in metrics.items()
            if name.startswith("m6t_gateway_drops_total") and value} == {}
    assert metrics["m6t_gateway_packets_total{direction=\"to_client\"}"] == 0


def test_ike_like_udp_exchange_passes_unchanged(lab: Lab) -> None:
    lab.start_gateway()
    lab.start_udp_echo(500)
    result = client(lab, "udp", "--src", SRC, "--dst", lab.addr.home_agent,
                    "--sport", "500", "--dport", "500", "--payload", "0123456789abcdef")
    assert result == {"answered": True, "payload": "efcdab8967452301", "local": result["local"]}


def test_same_source_from_another_port_or_address_is_dropped(lab: Lab) -> None:
    lab.start_gateway()
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    # Same IPv6 source, another UDP port behind the same NAT.
    spoofed = client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent, "--timeout", "0.5",
                     bind="0.0.0.0:40002")
    assert spoofed["received"] == 0
    # Same IPv6 source from another IPv4 address (an attacker on the public side).
    spoofed = client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent, "--timeout",
                     "0.5", role="nat", bind=f"{lab.addr.outsider}:40003")
    assert spoofed["received"] == 0
    wait_metric(lab, lambda m: m['m6t_gateway_drops_total{reason="ipv4_mismatch"}'] == 2,
                "two ipv4_mismatch drops")
    # The real client is undisturbed: its state was not updated.
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent,
                  "--count", "3")["received"] == 3


def test_keepalive_answered_only_for_an_active_state(lab: Lab) -> None:
    lab.start_gateway(temporary_lifetime=5.0)
    assert client(lab, "keepalive", "--src", SRC)["answered"] is False  # no state at all
    # A temporary state (the HA never answers a next-header-59 packet) is not enough.
    client(lab, "send", "--src", SRC, "--dst", lab.addr.home_agent)
    assert client(lab, "keepalive", "--src", SRC)["answered"] is False
    wait_metric(lab, lambda m: m['m6t_gateway_drops_total{reason="keepalive_no_state"}'] == 2,
                "two keepalive_no_state drops")
    # The HA answers an echo: the state becomes active, keepalives are answered.
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    assert client(lab, "keepalive", "--src", SRC)["answered"] is True
    # ...but not when they come from another IPv4 port.
    assert client(lab, "keepalive", "--src", SRC, bind="0.0.0.0:40002")["answered"] is False
    wait_metric(lab, lambda m: m['m6t_gateway_drops_total{reason="keepalive_ipv4_mismatch"}']
                == 1, "a keepalive_ipv4_mismatch drop")


def test_temporary_state_without_answer_expires(lab: Lab) -> None:
    lab.start_gateway(temporary_lifetime=0.5)
    client(lab, "send", "--src", SRC, "--dst", lab.addr.home_agent)
    wait_metric(lab, lambda m: m['m6t_gateway_states{kind="temporary"}'] == 1,
                "a temporary state")
    wait_metric(lab, lambda m: m['m6t_gateway_states{kind="temporary"}'] == 0,
                "the temporary state to expire", timeout=4)
    # Gone for real: the same address from another port now creates a fresh state and works.
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent,
                  bind="0.0.0.0:40002")["received"] == 1
    assert drops(lab, "ipv4_mismatch") == 0


def test_flood_of_new_addresses_is_rate_limited_and_client_keeps_working(lab: Lab) -> None:
    lab.start_gateway(new_states_per_second=5, new_states_burst=10, temporary_lifetime=30.0)
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    flood = lab.spawn("mn", [sys.executable, "-m", "m6t.lab.client", "--gateway",
                             f"{lab.addr.gw_wan}:3544", "--bind", "0.0.0.0:40009", "flood",
                             "--prefix", "fd6d:6d74:1::/48", "--dst", lab.addr.home_agent,
                             "--count", "20000", "--duration", "2"], log_name="flood")
    during = client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent, "--count", "5",
                    "--interval", "0.1")
    assert flood.wait(10) == 0
    assert during["received"] == 5
    metrics = lab.metrics()
    temporary = metrics['m6t_gateway_states{kind="temporary"}']
    limited = metrics['m6t_gateway_drops_total{reason="rate_limited"}']
    # The budget of the NAT's one IPv4 address: the burst (less the token the real client
    # spent) plus 5/s over the flood's at most 2 s (plus slack for start-up), whatever the
    # number of datagrams sent.
    assert 9 <= temporary <= 10 + 5 * 4
    assert limited >= 1000
    assert metrics["m6t_gateway_rate_limit_hits_total"] == limited
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1


def test_malformed_datagrams_are_dropped_by_name_and_gateway_stays_up(lab: Lab) -> None:
    gateway = lab.start_gateway()
    client(lab, "malformed")
    wait_metric(lab, lambda m: m['m6t_gateway_drops_total{reason="short_packet"}'] == 2
                and m['m6t_gateway_drops_total{reason="bad_version"}'] == 1
                and m['m6t_gateway_drops_total{reason="bad_length"}'] == 2,
                "empty and 39-byte datagrams as short_packet, version 4 as bad_version, "
                "wrong payload length and 64 KiB of junk as bad_length")
    assert gateway.poll() is None
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1


def test_packets_outside_prefix_or_not_to_home_agent_are_dropped(lab: Lab) -> None:
    lab.start_gateway()
    outside = client(lab, "echo", "--src", "fd00:bad::1", "--dst", lab.addr.home_agent,
                     "--timeout", "0.5")
    elsewhere = client(lab, "echo", "--src", SRC, "--dst", lab.addr.gw_home, "--timeout", "0.5")
    assert outside["received"] == elsewhere["received"] == 0
    wait_metric(lab, lambda m: m['m6t_gateway_drops_total{reason="src_outside_prefix"}'] == 1
                and m['m6t_gateway_drops_total{reason="dst_not_home_agent"}'] == 1,
                "src_outside_prefix and dst_not_home_agent drops")


def test_every_listen_port_serves(lab: Lab) -> None:
    lab.start_gateway()
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent,
                  port=4500)["received"] == 1


def test_home_side_packet_too_big_for_tunnel_mtu(lab: Lab) -> None:
    """A packet from the HA larger than the tunnel MTU gets an ICMPv6 Packet Too Big."""
    lab.start_gateway(mtu=1400)
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    result = lab.run("ha", ["ping", "-6", "-c", "1", "-W", "2", "-s", "1450", "-M", "do", SRC],
                     check=False)
    assert "mtu = 1400" in result.stdout + result.stderr or "Packet too big" in result.stdout
    cached = lab.ip("ha", "-6", "route", "get", SRC).stdout
    assert "mtu 1400" in cached


def test_sigterm_leaves_nothing_behind(lab: Lab) -> None:
    before = lab.run("gw", ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip()
    gateway = lab.start_gateway()
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    assert "m6tgw0" in lab.ip("gw", "link").stdout
    assert lab.stop(gateway, signal.SIGTERM) == 0
    assert "m6tgw0" not in lab.ip("gw", "link").stdout
    assert "fd6d:6d74:1::/48" not in lab.ip("gw", "-6", "route").stdout
    after = lab.run("gw", ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip()
    assert after == before
    assert lab.run("gw", ["ss", "-Hlun"]).stdout.strip() == ""


def test_sighup_reloads_listen_ports(lab: Lab) -> None:
    gateway = lab.start_gateway()
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    config = lab.gateway_config(listen=[f"{lab.addr.gw_wan}:3544", f"{lab.addr.gw_wan}:53"])
    lab.write_toml("gateway.toml", config)
    gateway.send_signal(signal.SIGHUP)  # ip netns exec replaced itself with the daemon
    wait_for(lambda: ":53 " in lab.run("gw", ["ss", "-Hlun"]).stdout, 5, "port 53 to open")
    assert ":4500 " not in lab.run("gw", ["ss", "-Hlun"]).stdout
    # The existing client (port 3544) kept its state; a new one uses port 53.
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    assert client(lab, "echo", "--src", OTHER_SRC, "--dst", lab.addr.home_agent,
                  bind="0.0.0.0:40002", port=53)["received"] == 1
    wait_metric(lab, lambda m: m["m6t_gateway_reloads_total"] == 1, "one reload")
    assert gateway.poll() is None


def test_fragmentation_needed_lowers_one_clients_mtu(lab: Lab) -> None:
    """ICMPv4 "fragmentation needed" about our datagrams to a client lowers that client's
    tunnel MTU at the gateway; bigger packets from the HA then get a Packet Too Big."""
    lab.start_gateway()
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    # The gateway sees the client as the NAT's public address and the mapped port (40001 kept).
    lab.python("nat", "m6t.lab.inject", "--from", lab.addr.nat_wan, "--quoted-src",
               f"{lab.addr.gw_wan}:3544", "--quoted-dst", f"{lab.addr.nat_wan}:40001",
               "--mtu", "1300")
    wait_metric(lab, lambda m: m["m6t_gateway_client_mtu_lowered_total"] == 1,
                "the client's MTU to be lowered")
    result = lab.run("ha", ["ping", "-6", "-c", "1", "-W", "2", "-s", "1300", "-M", "do", SRC],
                     check=False)
    assert "Packet too big: mtu=1280" in result.stdout  # 1300 - 28, floored at 1280
    assert drops(lab, "too_big") >= 1
    # Small packets still go through.
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1


def test_a_batch_of_one_flow_with_bad_twins_mixed_in(lab: Lab) -> None:
    """Within one batch the gateway skips the core for the rest of a flow it forwarded; every
    malformed or spoofed packet with the flow's addresses must still be dropped by name."""
    gateway = lab.start_gateway()
    with frozen(gateway):  # everything below then arrives in one batch
        client(lab, "burst", "--src", SRC, "--dst", lab.addr.home_agent, "--count", "20")
    wait_metric(lab, lambda m: m['m6t_gateway_drops_total{reason="ipv4_mismatch"}'] == 20,
                "the spoofed copies to be dropped")
    metrics = lab.metrics()
    assert metrics['m6t_gateway_packets_total{direction="from_client"}'] == 20
    assert metrics['m6t_gateway_drops_total{reason="bad_length"}'] == 20
    assert metrics['m6t_gateway_drops_total{reason="bad_version"}'] == 20


def test_a_batch_from_home_still_gets_packet_too_big_past_the_clients_mtu(lab: Lab) -> None:
    """Within one batch from home, the shortcut for a flow to a client must not let through a
    packet larger than that client's MTU: it gets a Packet Too Big, as without the shortcut."""
    gateway = lab.start_gateway()
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    lab.python("nat", "m6t.lab.inject", "--from", lab.addr.nat_wan, "--quoted-src",
               f"{lab.addr.gw_wan}:3544", "--quoted-dst", f"{lab.addr.nat_wan}:40001",
               "--mtu", "1308")  # the client's tunnel MTU becomes 1280
    wait_metric(lab, lambda m: m["m6t_gateway_client_mtu_lowered_total"] == 1, "MTU 1280")
    before = lab.metrics()
    with frozen(gateway):
        for size in ("56", "1300", "56"):  # 104, 1348 and 104 bytes
            lab.run("ha", ["ping", "-6", "-n", "-c", "3", "-i", "0.01", "-W", "0.2", "-s", size,
                           "-M", "do", SRC], check=False)

    def grew(metrics: dict[str, float], name: str) -> float:
        return metrics[name] - before[name]

    wait_metric(lab, lambda m: grew(m, 'm6t_gateway_drops_total{reason="too_big"}') == 3,
                "three Packet Too Big")
    assert grew(lab.metrics(), 'm6t_gateway_packets_total{direction="to_client"}') == 6


def opened(pid: int, path: str) -> bool:
    """Whether process `pid` has `path` open (`ip netns exec` execs the daemon in place)."""
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == path:
                    return True
    return False


def test_sigterm_while_starting_leaves_nothing_behind(lab: Lab) -> None:
    """systemctl stop can arrive while the unit is still starting: the gateway then undoes
    what it has set up so far (the TUN device, its route, the forwarding sysctl), instead of
    dying with them left behind. The signal is sent the moment the daemon opens /dev/net/tun,
    the first step of its set-up."""
    before = lab.run("gw", ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip()
    path = lab.write_toml("gateway.toml", lab.gateway_config())
    process = lab.spawn("gw", lab.gateway_command(path), log_name="gateway")
    wait_for(lambda: opened(process.pid, "/dev/net/tun"), 10, "the TUN device to be opened",
             interval=0.0005)
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 128 + signal.SIGTERM, lab.log("gateway")
    assert "SIGTERM during start-up" in lab.log("gateway")
    assert "m6tgw0" not in lab.ip("gw", "link").stdout
    assert "fd6d:6d74:1::/48" not in lab.ip("gw", "-6", "route").stdout
    after = lab.run("gw", ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip()
    assert after == before
    assert lab.run("gw", ["ss", "-Hlun"]).stdout.strip() == ""
    assert "Traceback" not in lab.log("gateway")


def test_one_clients_closed_port_costs_no_other_packet(lab: Lab) -> None:
    """With IP_RECVERR, an ICMP "port unreachable" from one client fails the gateway's next
    send on that socket, whoever it is for: that datagram must be sent anyway. Both clients
    here have closed their ports, so every datagram the gateway sends raises such an error."""
    gateway = lab.start_gateway()
    for src, bind in ((SRC, "0.0.0.0:40001"), (OTHER_SRC, "0.0.0.0:40002")):
        assert client(lab, "echo", "--src", src, "--dst", lab.addr.home_agent,
                      bind=bind)["received"] == 1
    before = lab.metrics()["m6t_gateway_packets_total{direction=\"to_client\"}"]
    with frozen(gateway):  # six packets for two clients, in one batch
        for dst in (SRC, OTHER_SRC):
            lab.run("ha", ["ping", "-6", "-n", "-c", "3", "-i", "0.01", "-W", "0.2", dst],
                    check=False)
    wait_metric(lab, lambda m: m['m6t_gateway_packets_total{direction="to_client"}'] - before
                >= 6, "all six packets sent")


def test_no_forged_icmp_error_stops_the_gateway_or_costs_a_packet(lab: Lab) -> None:
    """Anyone can forge an ICMP error quoting a datagram from the gateway's port to anywhere;
    with IP_RECVERR one that arrives while the gateway is busy fails its next send. The gateway
    must neither stop nor lose that packet, whatever the error. It is frozen while a packet for
    the client and then the forged error arrive, so that the send meets the error."""
    gateway = lab.start_gateway()
    assert client(lab, "echo", "--src", SRC, "--dst", lab.addr.home_agent)["received"] == 1
    sent = 'm6t_gateway_packets_total{direction="to_client"}'
    for icmp_type, code in UDP_SOCKET_ERRORS:
        before = lab.metrics()[sent]
        with frozen(gateway):
            lab.run("ha", ["ping", "-6", "-n", "-c", "1", "-W", "0.1", SRC], check=False)
            lab.python("nat", "m6t.lab.inject", "--from", lab.addr.outsider, "--quoted-src",
                       f"{lab.addr.gw_wan}:3544", "--quoted-dst", "203.0.113.7:9",
                       "--type", str(icmp_type), "--code", str(code))
        wait_for(lambda before=before: gateway.poll() is not None
                 or (lab.metrics(check=False) or {}).get(sent) == before + 1, 5,
                 f"the packet queued with ICMP type {icmp_type} code {code} to be sent",
                 interval=0.2)
        assert gateway.poll() is None, f"ICMP {icmp_type}/{code}: {lab.log('gateway')}"
    failures = {k: v for k, v in lab.metrics().items() if "send_failures" in k}
    assert 'm6t_gateway_send_failures_total{error="ENOPROTOOPT"}' in failures
    assert sum(failures.values()) == 0  # each forged error cost a second try, not a packet
