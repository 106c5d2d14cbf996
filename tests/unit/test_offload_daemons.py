"""The offloaded data paths of both daemons on m6t.linux.tuntest's fakes (a TUN device with a
virtio-net header, a network with UDP GSO and GRO): no root, no namespace.

What they must keep: every packet of a GRO receive is checked alone (a malformed or spoofed one
in the middle of a run is dropped by name and never merged); runs of one flow reach the TUN as
super-packets the kernel cuts back into the same packets; nothing waits for company; a super-
packet the device refuses goes as its packets, and that kind is not tried again.
"""

from __future__ import annotations

import ipaddress
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from m6t_helper.datapath import Pump, Target
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from m6t.gateway.config import load_config
from m6t.gateway.daemon import GatewayDaemon, GatewayIO
from m6t.linux.offload import TunOffloads
from m6t.linux.tuntest import ChannelTun, FakeNetlink, FakeNetwork, FakeUdpSocket
from m6t.linux.udp import UdpGso
from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.gso import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV6,
    PLAIN_HEADER,
    VirtioNetHeader,
    transport_checksum_ok,
)
from m6t.protocol.packets import build_echo, echo_reply_for, internet_checksum
from tests.unit.test_offload_gso import data, tcp

GW = "198.51.100.1"
PORT = 3544
PREFIX = ipaddress.IPv6Network("fd6d:6d74:1::/48")
HOME_AGENT = ipaddress.IPv6Address("fd48:4100::2").packed
SRC = TunnelPrefix.compose(PREFIX, 1, 1).address(0xA1B2_C3D4_E5F6).packed
OTHER_SRC = TunnelPrefix.compose(PREFIX, 1, 2).address(0xA1B2_C3D4_E5F6).packed
CLIENT = ("203.0.113.7", 40001)
OTHER_CLIENT = ("192.0.2.66", 40001)
TIMEOUT = 2.0
COALESCING = TunOffloads(vnet_header=True, coalesce_tcp=True, coalesce_udp=True)
EVERYTHING = TunOffloads(vnet_header=True, coalesce_tcp=True, coalesce_udp=True, tso=True,
                         uso=True)


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.001)


def super_tcp(src: bytes, dst: bytes, seq: int, payload: bytes, gso_size: int) -> bytes:
    """A TSO read from the device: the virtio-net header, one header, a partial checksum."""
    options = bytes.fromhex("0101080a000003e8000007d0")
    length = 32 + len(payload)
    header = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 8 << 4, 0x10, 512, 0, 0)
    pseudo = src + dst + struct.pack("!I3xB", length, 6)
    partial = (~internet_checksum(pseudo)) & 0xFFFF
    packet = struct.pack("!IHBB16s16s", 6 << 28, length, 6, 64, src, dst) + \
        header[:16] + partial.to_bytes(2, "big") + header[18:] + options + payload
    return VirtioNetHeader(F_NEEDS_CSUM, GSO_TCPV6, 72, gso_size, 40, 16).pack() + packet


# --- the gateway -------------------------------------------------------------------------------

class RefusingTun(ChannelTun):
    """A device that takes no super-packet (EINVAL), as a kernel might refuse one kind."""

    def writev(self, buffers: Sequence[bytes]) -> bool:
        if buffers[0] != PLAIN_HEADER:
            return False
        return super().writev(buffers)


class Gateway:
    def __init__(self, tmp_path: Path, tun: type[ChannelTun] = ChannelTun,
                 offloads: TunOffloads = COALESCING, gro: bool = True) -> None:
        self.network = FakeNetwork(gro=gro)
        path = tmp_path / "gateway.toml"
        path.write_text(f'listen = ["{GW}:{PORT}"]\nclient_prefix = "{PREFIX}"\n'
                        'home_agents = ["fd48:4100::2"]\ntun = "m6tfake0"\n')
        io = GatewayIO(open_tun=lambda name, mtu: tun(name, mtu, offloads=offloads),
                       open_listener=self.network.open,
                       open_icmp_listener=self.network.icmp_listener,
                       open_routing=FakeNetlink)
        self.daemon = GatewayDaemon(load_config(path), path, io)
        self.daemon.setup()
        self.sockets: list[FakeUdpSocket] = []
        self.thread: threading.Thread | None = None

    @property
    def tun(self) -> ChannelTun:
        assert isinstance(self.daemon.tun, ChannelTun)
        return self.daemon.tun

    def start(self) -> None:
        """The loop, from now on: what was queued before comes in the first receive."""
        self.thread = threading.Thread(target=self.daemon.run, kwargs={"handle_signals": False},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.daemon.stop()
            self.thread.join(TIMEOUT)
        self.daemon.teardown()
        for sock in self.sockets:
            sock.close()
        self.network.close()

    def client(self, address: tuple[str, int] = CLIENT) -> FakeUdpSocket:
        sock = self.network.open(bind=address)
        sock.settimeout(TIMEOUT)
        self.sockets.append(sock)
        return sock

    def metrics(self) -> str:
        registry = CollectorRegistry()
        registry.register(self.daemon.collector)
        return generate_latest(registry).decode()

    def drops(self, reason: str) -> int:
        return self.daemon.snapshot().drops[reason]


@pytest.fixture
def gateway_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Callable[..., Gateway]]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("M6T_OFFLOADS", raising=False)
    made: list[Gateway] = []

    def make(**kwargs: Any) -> Gateway:
        made.append(Gateway(tmp_path, **kwargs))
        return made[-1]

    yield make
    for gateway in made:
        gateway.stop()


def segments(src: bytes, seq: int, count: int, size: int = 1000) -> list[bytes]:
    return [tcp(seq + i * size, data(size, i), src=src, dst=HOME_AGENT) for i in range(count)]


def test_a_clients_run_reaches_home_as_one_super_packet(
        gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with()
    run = segments(SRC, 1000, 20)
    UdpGso(gateway.client()).send(run, (GW, PORT))  # 20 datagrams, glued again by GRO
    gateway.start()
    written = gateway.tun.outbound(TIMEOUT)
    assert written is not None
    header = VirtioNetHeader.unpack(written)
    assert (header.gso_type, header.gso_size, header.flags) == (GSO_TCPV6, 1000, F_NEEDS_CSUM)
    eventually(lambda: gateway.daemon.snapshot().packets["from_client"] == 20, "the count")
    snapshot = gateway.daemon.snapshot()
    assert snapshot.super_packets["to_home"] == 1
    assert snapshot.super_packet_segments["to_home"] == 20
    metrics = gateway.metrics()
    assert 'm6t_gateway_offload{feature="udp_gro"} 1.0' in metrics
    assert 'm6t_gateway_offload{feature="tun_coalesce_tcp"} 1.0' in metrics
    assert 'm6t_gateway_super_packet_segments_total{direction="to_home"} 20.0' in metrics


def test_the_super_packet_is_cut_back_into_the_clients_packets(
        gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with()
    run = segments(SRC, 5, 12)
    UdpGso(gateway.client()).send(run, (GW, PORT))
    gateway.start()
    assert gateway.tun.outbound_packets(TIMEOUT) == run


def test_a_malformed_or_spoofed_packet_in_a_run_is_dropped_alone_and_never_merged(
        gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with()
    # Another client owns OTHER_SRC: the same address from our client is a spoofing attempt.
    owner = gateway.client(OTHER_CLIENT)
    first = build_echo(OTHER_SRC, HOME_AGENT, 1, 1)
    owner.sendto(first, (GW, PORT))
    run = segments(SRC, 0, 6)
    spoofed = tcp(2000, data(1000, 2), src=OTHER_SRC, dst=HOME_AGENT)  # same size as the run
    bad_version = b"\x45" + run[3][1:]
    bad_length = run[4][:4] + b"\x03\xe7" + run[4][6:]
    outside = tcp(3000, data(1000, 3), src=ipaddress.IPv6Address("fd00:bad::1").packed,
                  dst=HOME_AGENT)
    batch = [run[0], run[1], spoofed, run[2], bad_version, bad_length, outside, run[3], run[4],
             run[5]]
    assert len({len(p) for p in batch}) == 1  # one size: one GRO receive at the gateway
    UdpGso(gateway.client()).send(batch, (GW, PORT))
    gateway.start()
    assert gateway.tun.outbound_packets(TIMEOUT) == [first]
    assert gateway.tun.outbound_packets(TIMEOUT) == run  # the rest, merged, in order
    eventually(lambda: gateway.drops("bad_length") == 1, "the drops")
    assert {reason: gateway.drops(reason) for reason in
            ("ipv4_mismatch", "bad_version", "bad_length", "src_outside_prefix")} == dict.fromkeys(
        ("ipv4_mismatch", "bad_version", "bad_length", "src_outside_prefix"), 1)
    assert gateway.daemon.snapshot().super_packet_segments["to_home"] == 6


def test_a_lone_packet_is_not_held_for_company(gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with()
    gateway.start()
    sock = gateway.client()
    for sequence in range(3):  # each alone, each at once (no later packet pushes it out)
        request = build_echo(SRC, HOME_AGENT, 1, sequence)
        sock.sendto(request, (GW, PORT))
        written = gateway.tun.outbound(TIMEOUT)
        assert written == PLAIN_HEADER + request


def test_a_refused_super_packet_goes_as_its_packets_and_is_not_tried_again(
        gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with(tun=RefusingTun)
    sock = gateway.client()
    first_run = segments(SRC, 0, 4)
    UdpGso(sock).send(first_run, (GW, PORT))
    gateway.start()
    assert [gateway.tun.outbound_packets(TIMEOUT) for _ in first_run] == [[p] for p in first_run]
    second_run = segments(SRC, 4000, 3)
    UdpGso(sock).send(second_run, (GW, PORT))
    assert [gateway.tun.outbound_packets(TIMEOUT) for _ in second_run] == [
        [p] for p in second_run]
    metrics = gateway.metrics()
    assert 'm6t_gateway_offload{feature="tun_coalesce_tcp"} 0.0' in metrics
    assert ('m6t_gateway_offload_off{feature="tun_coalesce_tcp",reason="the TUN device refused '
            'a super-packet (EINVAL)"} 1.0') in metrics


def test_without_gro_each_datagram_is_a_receive_and_still_coalesced(
        gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with(gro=False)
    run = segments(SRC, 0, 5)
    sock = gateway.client()
    for packet in run:
        sock.sendto(packet, (GW, PORT))
    gateway.start()
    # The first receive leaves at once, the rest together once the queue is empty.
    assert gateway.tun.outbound_packets(TIMEOUT) == run[:1]
    assert gateway.tun.outbound_packets(TIMEOUT) == run[1:]
    assert 'm6t_gateway_offload{feature="udp_gro"} 0.0' in gateway.metrics()


def test_from_home_a_tso_super_packet_is_cut_and_each_segment_goes_through_the_core(
        gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with(offloads=EVERYTHING)
    gateway.start()
    sock = gateway.client()
    request = build_echo(SRC, HOME_AGENT, 1, 1)
    sock.sendto(request, (GW, PORT))
    assert gateway.tun.outbound_packets(TIMEOUT) == [request]
    reply = echo_reply_for(request)
    assert reply is not None
    gateway.tun.inbound(reply)  # the HA answers: the state is active
    assert sock.recvfrom(65535)[0] == reply
    payload = data(1400 * 3 + 10)
    gateway.tun.inbound_raw(super_tcp(HOME_AGENT, SRC, 7, payload, 1400))
    got = [sock.recvfrom(65535)[0] for _ in range(4)]
    assert [len(p) for p in got] == [1472, 1472, 1472, 82]
    assert all(transport_checksum_ok(p) for p in got)
    assert b"".join(p[72:] for p in got) == payload
    eventually(lambda: gateway.daemon.snapshot().super_packets["from_home"] == 1, "the count")
    # Garbage in a super-packet's clothes is dropped by name, and the loop carries on.
    bogus = VirtioNetHeader(F_NEEDS_CSUM, GSO_TCPV6, 72, 1400, 40, 16).pack() + b"\x45" * 80
    gateway.tun.inbound_raw(bogus)
    gateway.tun.inbound(reply)
    assert sock.recvfrom(65535)[0] == reply
    assert 'm6t_gateway_drops_total{reason="gso_not_ipv6"} 1.0' in gateway.metrics()


# --- the helper ---------------------------------------------------------------------------------

class Helper:
    """A Pump between a fake TUN device and a socket connected to a fake gateway."""

    def __init__(self, offloads: TunOffloads = COALESCING, gro: bool = True,
                 wanted: frozenset[str] | None = None) -> None:
        self.network = FakeNetwork(gro=gro)
        self.gateway = self.network.open((GW, PORT))
        self.gateway.settimeout(TIMEOUT)
        self.sock = self.network.open(connect=(GW, PORT))
        self.tun = ChannelTun("m6t0", 1472, offloads=offloads)
        self.control: list[object] = []
        self.pump = Pump(self.tun, Target(SRC, self.sock, (GW, PORT)),
                         lambda kind, packet: self.control.append((kind, packet)),
                         offloads=wanted)
        self.address = (self.network.default_address, self.sock.getsockname()[1])

    def close(self) -> None:
        self.pump.stop()
        for sock in (self.gateway, self.sock):
            sock.close()
        self.tun.close()
        self.network.close()


@pytest.fixture
def helper_with(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Helper]]:
    monkeypatch.delenv("M6T_OFFLOADS", raising=False)
    made: list[Helper] = []

    def make(**kwargs: Any) -> Helper:
        made.append(Helper(**kwargs))
        return made[-1]

    yield make
    for helper in made:
        helper.close()


def downloads(dst: bytes, count: int, size: int = 1400) -> list[bytes]:
    return [tcp(i * size, data(size, i), src=HOME_AGENT, dst=dst) for i in range(count)]


def test_the_helper_writes_a_run_as_one_super_packet_the_stack_can_verify(
        helper_with: Callable[..., Helper]) -> None:
    helper = helper_with()
    run = downloads(SRC, 30)
    not_for_us = tcp(5 * 1400, data(1400, 99), src=HOME_AGENT, dst=OTHER_SRC)
    UdpGso(helper.gateway).send([*run[:5], not_for_us, *run[5:]], helper.address)
    helper.pump.start()
    written = helper.tun.outbound(TIMEOUT)
    assert written is not None
    header = VirtioNetHeader.unpack(written)
    # Local delivery: no partial checksum, the complete one, so the stack still checks every
    # byte of every segment.
    assert (header.gso_type, header.flags, header.gso_size) == (GSO_TCPV6, 0, 1400)
    assert transport_checksum_ok(written[10:])
    eventually(lambda: helper.pump.rx_packets == 30, "the count")
    assert helper.pump.rx_drops == {"not_for_us": 1}
    datapath = helper.pump.datapath()
    assert set(datapath.offloads) == {"udp_gso", "udp_gro", "tun_coalesce_tcp", "tun_coalesce_udp"}
    assert datapath.coalesced_packets == 30


def test_the_helpers_super_packet_is_cut_back_into_the_packets(
        helper_with: Callable[..., Helper]) -> None:
    helper = helper_with()
    run = downloads(SRC, 10)
    UdpGso(helper.gateway).send(run, helper.address)
    helper.pump.start()
    assert helper.tun.outbound_packets(TIMEOUT) == run


def test_the_helper_cuts_a_tso_read_at_the_mtu_and_sends_it_in_one_gso_message(
        helper_with: Callable[..., Helper]) -> None:
    helper = helper_with(offloads=EVERYTHING)
    helper.pump.start()
    payload = data(1400 * 5)
    helper.tun.inbound_raw(super_tcp(SRC, HOME_AGENT, 1, payload, 1400))
    got = [helper.gateway.recvfrom(65535)[0] for _ in range(5)]
    assert all(len(p) == 1472 and transport_checksum_ok(p) for p in got)
    assert b"".join(p[72:] for p in got) == payload
    eventually(lambda: helper.pump.tx_packets == 5, "the count")
    assert helper.pump.datapath().segmented_packets == 5
    # A single packet whose checksum the kernel left to the device leaves complete.
    single = tcp(9, data(300), src=SRC, dst=HOME_AGENT)
    partial = (~internet_checksum(SRC + HOME_AGENT + struct.pack("!I3xB", 332, 6))) & 0xFFFF
    raw = VirtioNetHeader(F_NEEDS_CSUM, GSO_NONE, 0, 0, 40, 16).pack() + \
        single[:56] + partial.to_bytes(2, "big") + single[58:]
    helper.tun.inbound_raw(raw)
    assert helper.gateway.recvfrom(65535)[0] == single


def test_a_helper_without_offloads_takes_the_plain_path(
        helper_with: Callable[..., Helper]) -> None:
    helper = helper_with(offloads=TunOffloads(), gro=False, wanted=frozenset({"udp_gso"}))
    run = downloads(SRC, 3)
    for packet in run:
        helper.gateway.sendto(packet, helper.address)
    helper.pump.start()
    assert [helper.tun.outbound(TIMEOUT) for _ in run] == run
    eventually(lambda: helper.pump.datapath().offloads == ["udp_gso"], "the report")
    assert helper.pump.datapath().off["udp_gro"] == "turned off (M6T_OFFLOADS)"


def test_a_refused_offload_is_a_fallback_in_the_status_and_a_chosen_one_is_not(
        helper_with: Callable[..., Helper]) -> None:
    helper = helper_with(gro=False)  # a kernel without UDP_GRO (before Linux 5.0)
    run = downloads(SRC, 3)
    for packet in run:
        helper.gateway.sendto(packet, helper.address)
    helper.pump.start()
    written: list[bytes] = []
    while len(written) < len(run):  # each datagram received alone, then coalesced as usual
        written += helper.tun.outbound_packets(TIMEOUT) or []
    assert written == run
    datapath = helper.pump.datapath()
    assert list(datapath.fallbacks) == ["udp_gro"]
    assert datapath.fallbacks["udp_gro"].startswith("setsockopt(UDP_GRO) refused: ENOPROTOOPT")
    assert "tun_tso" in datapath.off  # not offered by this device: no fallback either
    assert "udp_gro" not in datapath.offloads
