"""The offloaded data path (m6t.linux.offload) end to end: the real helper, the real NAT, the
real gateway, iperf3 both ways, with offloads on and forced off.

What must hold whatever the offloads: the transfer works both ways; the wire between the NAT
and each side carries one IPv6 packet per UDP datagram, no larger than the tunnel MTU, never
with DF (a capture on the NAT's veths, read back here); an ICMP "fragmentation needed" still
lowers the tunnel MTU; a 1200-byte IPv4 link on the path still carries everything.
"""

from __future__ import annotations

import json
import signal
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from m6t.control.client import HelperClient
from m6t.lab.lab import Lab, wait_for

pytestmark = pytest.mark.netns

MTU = 1472
PORTS = (3544, 4500)
ON = {"udp_gso", "udp_gro", "tun_coalesce_tcp", "tun_coalesce_udp"}


@pytest.fixture(params=["on", "off"])
def world(request: pytest.FixtureRequest, lab: Lab,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """Gateway and helper connected, with the default offloads or with M6T_OFFLOADS=off."""
    if request.param == "off":
        monkeypatch.setenv("M6T_OFFLOADS", "off")
    else:
        monkeypatch.delenv("M6T_OFFLOADS", raising=False)
    lab.start_gateway()
    lab.start_helper()
    with HelperClient(lab.helper_socket) as client:
        assert client.call("connect", profile=lab.profile()).state == "connected"
    lab.start_iperf_server()
    lab.offloads = request.param  # type: ignore[attr-defined]
    yield lab


def status(lab: Lab) -> dict[str, Any]:
    with HelperClient(lab.helper_socket) as client:
        (tunnel,) = msgspec.to_builtins(client.call("status"))["tunnels"]
    return dict(tunnel)


def iperf(lab: Lab, *extra: str, seconds: float = 2) -> dict[str, Any]:
    result = lab.run("mn", ["iperf3", "-6", "-c", lab.addr.home_agent, "-t", f"{seconds:g}",
                            "-J", "--connect-timeout", "3000", *extra],
                     check=False, timeout=seconds + 30)
    report = json.loads(result.stdout)
    assert "error" not in report, report["error"]
    return dict(report["end"])


def tcp_both_ways(lab: Lab, *extra: str) -> tuple[float, float]:
    up = iperf(lab, *extra)["sum_received"]["bits_per_second"]
    down = iperf(lab, "-R", *extra)["sum_received"]["bits_per_second"]
    return up, down


def offloads_in_use(lab: Lab) -> set[str]:
    datapath = status(lab)["datapath"]
    assert datapath is not None
    return set(datapath["offloads"])


# --- iperf3 both ways, offloads on and forced off ----------------------------------------------

def test_iperf3_both_ways(world: Lab) -> None:
    # Room for a TCP flow's bursts in both TUN devices (500 by default: drops, halved windows).
    assert "qlen 1000" in world.ip("mn", "link", "show", "m6t0").stdout
    assert "qlen 1000" in world.ip("gw", "link", "show", "m6tgw0").stdout
    up, down = tcp_both_ways(world)
    assert up > 50e6 and down > 50e6  # bits/s through helper, NAT and gateway, each way
    udp = iperf(world, "-u", "-l", "64", "-b", "20M")["sum"]
    assert udp["packets"] - udp["lost_packets"] > 0.5 * udp["packets"]
    tunnel, metrics = status(world), world.metrics()
    datapath = tunnel["datapath"]
    assert tunnel["drops"] == {} or set(tunnel["drops"]) <= {"unexpected_from_tun"}
    if world.offloads == "on":  # type: ignore[attr-defined]
        assert set(datapath["offloads"]) == ON
        assert datapath["coalesced_packets"] > 1000  # downloads reach mn in super-packets
        assert metrics['m6t_gateway_super_packets_total{direction="to_home"}'] > 100
        assert metrics['m6t_gateway_offload{feature="udp_gro"}'] == 1
    else:
        assert datapath["offloads"] == ["udp_gso"]  # what the data path did before offloads
        assert set(datapath["off"]) == {"udp_gro", "tun_coalesce_tcp", "tun_coalesce_udp",
                                        "tun_tso", "tun_uso"}
        assert datapath["coalesced_packets"] == 0
        assert metrics['m6t_gateway_super_packets_total{direction="to_home"}'] == 0
        assert metrics['m6t_gateway_offload{feature="udp_gro"}'] == 0
    assert metrics['m6t_gateway_offload_off{feature="tun_tso",'
                   'reason="off by default (M6T_OFFLOADS=+tun_tso turns it on)"}'] == 1


def ping(lab: Lab, count: int) -> tuple[int, float]:
    """(replies, average RTT in ms) of `count` pings to the home agent, 50 ms apart."""
    result = lab.run("mn", ["ping", "-6", "-n", "-c", str(count), "-i", "0.05", "-W", "1",
                            lab.addr.home_agent], check=False)
    replies = result.stdout.count("bytes from")
    average = float(result.stdout.rsplit("=", 1)[1].split("/")[1]) if replies else 0.0
    return replies, average


def test_pings_among_four_streams_and_after_them(world: Lab) -> None:
    """Coalescing holds packets only until the queue is empty: a ping among bulk traffic is
    not held back for company (it may wait in the kernel's queues, or be dropped from a full
    one, as without offloads), and the last packets of a burst are never left behind."""
    iperf3 = world.spawn("mn", ["iperf3", "-6", "-c", world.addr.home_agent, "-t", "3", "-P",
                                "4", "-R"], log_name="iperf3-client")
    replies, average = ping(world, 20)
    assert iperf3.wait(30) == 0
    assert replies >= 15 and average < 100, (replies, average)
    replies, average = ping(world, 10)  # idle again: every one, promptly
    assert replies == 10 and average < 5, (replies, average)


# --- the wire -----------------------------------------------------------------------------------

def read_pcap(path: Path) -> list[tuple[int, bytes]]:
    """(original length, captured bytes) of each frame of a pcap file (tcpdump -w)."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    frames, offset = [], 24
    while offset + 16 <= len(data):
        _, _, captured, original = struct.unpack_from(order + "IIII", data, offset)
        offset += 16
        frames.append((original, data[offset:offset + captured]))
        offset += captured
    return frames


def check_datagrams(frames: list[tuple[int, bytes]], mtu: int) -> Counter[str]:
    """Every frame is one IPv4 datagram without DF, whole (no fragment), carrying exactly one
    IPv6 packet of at most `mtu` bytes. Returns counts by direction."""
    seen: Counter[str] = Counter()
    for original, frame in frames:
        assert struct.unpack_from("!H", frame, 12)[0] == 0x0800
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        total, flags = struct.unpack_from("!H2xH", ip, 2)
        assert original == 14 + total, "a buffer larger than one datagram crossed the veth"
        assert not flags & 0x4000, "DF set"
        assert not flags & 0x3FFF, "an IPv4 fragment: the datagram was larger than the link"
        assert ip[9] == 17
        _, dport, length = struct.unpack_from("!HHH", ip, header)
        inner = ip[header + 8:]
        assert inner[0] >> 4 == 6
        assert struct.unpack_from("!H", inner, 4)[0] + 40 == length - 8, \
            "the datagram does not carry exactly one IPv6 packet"
        assert length - 8 <= mtu
        seen["to_gateway" if dport in PORTS else "from_gateway"] += 1
    return seen


def capture(lab: Lab, role: str, ifname: str) -> tuple[Any, Path]:
    path = lab.workdir / f"{role}-{ifname}.pcap"
    process = lab.spawn(role, ["tcpdump", "-i", ifname, "-n", "-s", "100", "-U", "-w",
                               str(path), "udp and (port 3544 or port 4500)"],
                        log_name=f"tcpdump-{role}-{ifname}")
    wait_for(lambda: "listening on" in lab.log(f"tcpdump-{role}-{ifname}"), 10,
             "tcpdump to listen")
    return process, path


def test_the_wire_carries_one_ipv6_packet_per_datagram(world: Lab) -> None:
    # Like a real NIC (or the kernel before one), the sending side cuts UDP GSO messages into
    # datagrams before the wire; by default a veth would pass the whole message through.
    for role, ifname in (("mn", "eth0"), ("nat", "lan"), ("nat", "wan"), ("gw", "wan")):
        world.run(role, ["ethtool", "-K", ifname, "tx-udp-segmentation", "off", "gro", "off"])
    captures = [capture(world, "nat", "lan"), capture(world, "nat", "wan")]
    up, down = tcp_both_ways(world, "-b", "300M")
    iperf(world, "-u", "-l", "64", "-b", "20M", seconds=1)
    for process, _ in captures:
        world.stop(process, signal.SIGINT)
    assert up > 50e6 and down > 50e6
    for _, path in captures:
        seen = check_datagrams(read_pcap(path), MTU)
        assert seen["to_gateway"] > 5000 and seen["from_gateway"] > 5000, seen
    if world.offloads == "on":  # type: ignore[attr-defined]
        assert offloads_in_use(world) == ON
        assert status(world)["datapath"]["coalesced_packets"] > 1000


# --- path MTU -----------------------------------------------------------------------------------

def tunnel_socket_port(lab: Lab) -> int:
    sockets = lab.run("mn", ["ss", "-Huan"]).stdout
    for line in sockets.splitlines():
        if f"{lab.addr.gw_wan}:3544" in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    raise AssertionError(sockets)


def test_fragmentation_needed_still_lowers_the_mtu(world: Lab) -> None:
    tcp_both_ways(world)  # bulk traffic first: runs coalesced and sent in GSO messages
    port = tunnel_socket_port(world)
    world.python("nat", "m6t.lab.inject", "--from", world.addr.nat_lan, "--quoted-src",
                 f"{world.addr.mn}:{port}", "--quoted-dst", f"{world.addr.gw_wan}:3544",
                 "--mtu", "1400")
    wait_for(lambda: status(world)["mtu"] == 1372, 5, "the helper's MTU to drop to 1400 - 28")
    world.python("nat", "m6t.lab.inject", "--from", world.addr.nat_wan, "--quoted-src",
                 f"{world.addr.gw_wan}:3544", "--quoted-dst", f"{world.addr.nat_wan}:{port}",
                 "--mtu", "1400")
    wait_for(lambda: (world.metrics() or {}).get("m6t_gateway_client_mtu_lowered_total") == 1,
             5, "the gateway's MTU for this client to drop")
    result = world.run("ha", ["ping", "-6", "-c", "1", "-W", "2", "-s", "1400", "-M", "do",
                              status(world)["address"]], check=False)
    assert "mtu=1372" in result.stdout, result.stdout
    up, down = tcp_both_ways(world)  # TCP learns the smaller MTU both ways and carries on
    assert up > 50e6 and down > 50e6


def test_a_1200_byte_link_on_the_path(world: Lab) -> None:
    """Full-size tunnel datagrams (1500 bytes) cross a 1200-byte IPv4 link in fragments (DF is
    never set): UDP GSO cannot make fragments, so those runs go one datagram at a time."""
    world.ip("mn", "link", "set", "eth0", "mtu", "1200")
    world.ip("nat", "link", "set", "lan", "mtu", "1200")
    up, down = tcp_both_ways(world)
    assert up > 20e6 and down > 20e6
    result = world.run("mn", ["ping", "-6", "-c", "2", "-s", str(MTU - 48), "-M", "do",
                              world.addr.home_agent], check=False)
    assert " 0% packet loss" in result.stdout, result.stdout
    if world.offloads == "on":  # type: ignore[attr-defined]
        assert offloads_in_use(world) == ON  # a refused size is not a lost feature
