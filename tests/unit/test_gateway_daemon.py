"""The real gateway loop (GatewayDaemon.run, in a thread) over m6t.linux.tuntest's fakes: a TUN
device, a UDP/IPv4 network and netlink, all in this process. No root, no namespace, no sleep.

The netns tests (tests/netns/test_gateway.py) prove the same on a real kernel through a real
NAT; these check, on every run, that the daemon glues the core to its descriptors rightly:
which packet goes where, from which port, what is dropped under which name, and that a reload
or a teardown leaves the namespace as it found it. A negative ("nothing came out") is checked
without waiting for a timeout: a later packet on the same descriptor comes out first, since a
socket queue is FIFO and the loop drains it in order.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from m6t.gateway.config import load_config
from m6t.gateway.daemon import PEER_CACHE_GENERATION, GatewayDaemon, GatewayIO, PeerCache
from m6t.lab.inject import icmp_error, ipv4
from m6t.linux.netlink import network_namespace_id
from m6t.linux.tuntest import ChannelTun, FakeNetlink, FakeNetwork, FakeUdpSocket
from m6t.linux.udp import UdpGso
from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.gateway import pack_peer
from m6t.protocol.packets import (
    build_echo,
    build_keepalive,
    build_keepalive_reply,
    echo_reply_for,
    parse_packet_too_big,
)

GW = "198.51.100.1"
MAIN_PORT, SECOND_PORT, NEW_PORT = 3544, 4500, 53
PREFIX = ipaddress.IPv6Network("fd6d:6d74:1::/48")
HOME_AGENT = ipaddress.IPv6Address("fd48:4100::2").packed
HOME_HOST = ipaddress.IPv6Address("fd48:4100::99").packed
FORWARDING = "net/ipv6/conf/all/forwarding"
TIMEOUT = 2.0  # for what must happen; nothing here waits for what must not

NAT = "203.0.113.7"  # the client's NAT, as the gateway sees it
CLIENT = (NAT, 40001)
SAME_NAT_OTHER_PORT = (NAT, 40002)
OUTSIDER = ("192.0.2.66", 40001)


def tunnel_address(mn_id: int) -> bytes:
    return TunnelPrefix.compose(PREFIX, 1, mn_id).address(0xA1B2_C3D4_E5F6).packed


SRC = tunnel_address(1)
OTHER_SRC = tunnel_address(2)


def echo(src: bytes = SRC, sequence: int = 1, size: int = 0) -> bytes:
    """An echo request to the home agent; `sequence` tells packets apart."""
    return build_echo(src, HOME_AGENT, 0x6D36, sequence, bytes(size))


def from_home(dst: bytes = SRC, sequence: int = 1, size: int = 0) -> bytes:
    return build_echo(HOME_AGENT, dst, 0x6D36, sequence, bytes(size), request=False)


class Gateway:
    """A GatewayDaemon on fakes, its loop in a thread, and the test's view of its world."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.network = FakeNetwork()
        self.netlink = FakeNetlink()
        self.config_path = tmp_path / "gateway.toml"
        self.configure(**settings)
        self.icmp_listener: Callable[[], Any] = self.network.icmp_listener
        io = GatewayIO(open_tun=ChannelTun, open_listener=self.network.open,
                       open_icmp_listener=lambda: self.icmp_listener(),
                       open_routing=lambda: self.netlink)
        self.daemon = GatewayDaemon(load_config(self.config_path), self.config_path, io)
        self._sockets: list[FakeUdpSocket] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def configure(self, listen: tuple[int, ...] = (MAIN_PORT, SECOND_PORT),
                  **settings: Any) -> None:
        endpoints = ", ".join(f'"{GW}:{port}"' for port in listen)
        lines = [f"listen = [{endpoints}]", f'client_prefix = "{PREFIX}"',
                 'home_agents = ["fd48:4100::2"]', 'tun = "m6tfake0"']
        lines += [f"{key} = {value!r}" for key, value in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.daemon.setup()
        self._thread = threading.Thread(target=self._run, name="gateway-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.daemon.run(handle_signals=False)
        except BaseException as exc:  # handed to the test by stop()
            self._error = exc

    def stop(self) -> None:
        """Stop the loop as SIGTERM does and tear down; a failure of the loop fails the test."""
        if self._thread is not None:
            self.daemon.stop()
            self._thread.join(TIMEOUT)
            assert not self._thread.is_alive(), "the loop did not stop"
            self._thread = None
        self.daemon.teardown()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self.network.close()

    def listening(self) -> set[tuple[str, int]]:
        """Where the daemon's sockets are bound on the fake network."""
        return self.network.bound() - {sock.getsockname() for sock in self._sockets}

    @property
    def tun(self) -> ChannelTun:
        assert isinstance(self.daemon.tun, ChannelTun)
        return self.daemon.tun

    def client(self, address: tuple[str, int] = CLIENT) -> FakeUdpSocket:
        sock = self.network.open(bind=address)
        sock.settimeout(TIMEOUT)
        self._sockets.append(sock)
        return sock

    def home_gets(self) -> bytes:
        packet = self.tun.outbound(TIMEOUT)
        assert packet is not None, "nothing reached the TUN device"
        return packet

    def drops(self, reason: str) -> int:
        return self.daemon.snapshot().drops[reason]

    def metrics(self) -> str:
        registry = CollectorRegistry()
        registry.register(self.daemon.collector)
        return generate_latest(registry).decode()


def eventually(condition: Callable[[], bool], what: str) -> None:
    """For counters the loop updates after a batch: checked until true or TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.001)


@pytest.fixture
def gateway_with(tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Gateway]]:
    """Gateway(settings...) started; stopped and checked for a clean teardown afterwards."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)  # never tell a real systemd anything
    level = logging.getLogger("m6t").level  # a reload sets it from the file
    made: list[Gateway] = []

    def make(start: bool = True, **settings: Any) -> Gateway:
        gateway = Gateway(tmp_path, **settings)
        made.append(gateway)
        if start:
            gateway.start()
        return gateway

    yield make
    for gateway in made:
        try:
            gateway.stop()
        finally:
            gateway.close()
            logging.getLogger("m6t").setLevel(level)


@pytest.fixture
def gateway(gateway_with: Callable[..., Gateway]) -> Gateway:
    return gateway_with()


def activate(gateway: Gateway, sock: FakeUdpSocket, src: bytes = SRC,
             port: int = MAIN_PORT) -> None:
    """A round trip through the gateway: the client's state is active."""
    request = echo(src, sequence=100)
    sock.sendto(request, (GW, port))
    assert gateway.home_gets() == request
    reply = echo_reply_for(request)
    assert reply is not None
    gateway.tun.inbound(reply)
    assert sock.recvfrom(65535) == (reply, (GW, port))


# --- the data path ---------------------------------------------------------------------------

def test_a_clients_packet_goes_home_and_the_answer_returns_to_its_address_and_port(
        gateway: Gateway) -> None:
    sock = gateway.client()
    request = echo()
    sock.sendto(request, (GW, MAIN_PORT))
    assert gateway.home_gets() == request  # unchanged: nothing of IPv4 reaches the IPv6 side
    assert gateway.daemon.snapshot().states == {"temporary": 1, "active": 0}

    reply = echo_reply_for(request)
    assert reply is not None
    gateway.tun.inbound(reply)
    assert sock.recvfrom(65535) == (reply, (GW, MAIN_PORT))
    assert gateway.daemon.snapshot().states == {"temporary": 0, "active": 1}
    eventually(lambda: gateway.daemon.snapshot().packets == {"from_client": 1, "to_client": 1},
               "one packet counted each way")
    assert gateway.daemon.snapshot().bytes == {"from_client": len(request),
                                               "to_client": len(reply)}


def test_each_client_is_answered_from_the_port_it_talks_to(gateway: Gateway) -> None:
    first, second = gateway.client(CLIENT), gateway.client(OUTSIDER)
    activate(gateway, first, SRC, MAIN_PORT)
    activate(gateway, second, OTHER_SRC, SECOND_PORT)
    # Interleaved from home: each reply leaves from the listener its client uses.
    for sequence in range(3):
        gateway.tun.inbound(from_home(SRC, sequence))
        gateway.tun.inbound(from_home(OTHER_SRC, sequence))
    for sequence in range(3):
        assert first.recvfrom(65535) == (from_home(SRC, sequence), (GW, MAIN_PORT))
        assert second.recvfrom(65535) == (from_home(OTHER_SRC, sequence), (GW, SECOND_PORT))


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no_gso"])
def test_a_run_from_home_reaches_the_client_whole_and_in_order(
        gateway_with: Callable[..., Gateway], gso: bool) -> None:
    gateway = gateway_with()
    gateway.network.gso = gso  # without, UdpGso falls back to one send per datagram
    sock = gateway.client()
    activate(gateway, sock)
    run = [from_home(SRC, sequence, size=1000) for sequence in range(40)]
    for packet in run:
        gateway.tun.inbound(packet)
    assert [sock.recvfrom(65535) for _ in run] == [(packet, (GW, MAIN_PORT)) for packet in run]
    eventually(lambda: gateway.daemon.snapshot().packets["to_client"] == 41,
               "the run counted")
    assert gateway.network.lost == 0


def test_keepalive_is_answered_only_for_an_active_state_and_its_peer(gateway: Gateway) -> None:
    sock, other_port = gateway.client(), gateway.client(SAME_NAT_OTHER_PORT)
    keepalive = build_keepalive(SRC)
    sock.sendto(keepalive, (GW, MAIN_PORT))  # no state yet: dropped
    activate(gateway, sock)  # its first packet out shows the keepalive was handled
    assert gateway.drops("keepalive_no_state") == 1

    other_port.sendto(keepalive, (GW, MAIN_PORT))
    sock.sendto(keepalive, (GW, MAIN_PORT))
    assert sock.recvfrom(65535) == (build_keepalive_reply(keepalive), (GW, MAIN_PORT))
    assert gateway.drops("keepalive_ipv4_mismatch") == 1


def test_fragmentation_needed_lowers_that_clients_mtu(gateway: Gateway) -> None:
    sock = gateway.client()
    activate(gateway, sock)
    # A router between the gateway and the client's NAT: our datagrams from port 3544 to the
    # client need fragments of 1300 bytes at most.
    router = "198.51.100.254"
    gateway.network.deliver_icmp(
        ipv4(router, GW, 1, icmp_error((GW, MAIN_PORT), CLIENT, mtu=1300)))
    eventually(lambda: gateway.daemon.snapshot().client_mtu_lowered == 1, "the MTU lowered")

    too_big = from_home(size=1300 - 40 - 8)  # 1300 bytes: over 1300 - 28, floored at 1280
    gateway.tun.inbound(too_big)
    answer = parse_packet_too_big(gateway.home_gets())
    assert answer is not None
    assert (answer.destination, answer.mtu) == (HOME_AGENT, 1280)
    small = from_home(sequence=2)
    gateway.tun.inbound(small)
    assert sock.recvfrom(65535) == (small, (GW, MAIN_PORT))
    assert gateway.drops("too_big") == 1


# --- named drops -----------------------------------------------------------------------------

def test_the_same_source_from_another_port_or_address_is_dropped_as_ipv4_mismatch(
        gateway: Gateway) -> None:
    sock = gateway.client()
    activate(gateway, sock)
    for spoofer in (gateway.client(SAME_NAT_OTHER_PORT), gateway.client(OUTSIDER)):
        spoofer.sendto(echo(sequence=666), (GW, MAIN_PORT))
    sock.sendto(echo(sequence=2), (GW, MAIN_PORT))
    assert gateway.home_gets() == echo(sequence=2)  # the spoofed copies did not pass before it
    assert gateway.drops("ipv4_mismatch") == 2
    assert 'm6t_gateway_drops_total{reason="ipv4_mismatch"} 2.0' in gateway.metrics()
    # The state was not updated: home's answer still goes to the real client.
    gateway.tun.inbound(from_home(sequence=2))
    assert sock.recvfrom(65535) == (from_home(sequence=2), (GW, MAIN_PORT))


def test_malformed_datagrams_are_dropped_by_name_and_the_gateway_keeps_serving(
        gateway: Gateway) -> None:
    sock = gateway.client()
    valid = echo()
    version_4 = bytes([0x45]) + valid[1:]
    for datagram in (b"", valid[:39], version_4, valid + b"x", b"\x60" + bytes(65506)):
        sock.sendto(datagram, (GW, MAIN_PORT))
    sock.sendto(valid, (GW, MAIN_PORT))
    assert gateway.home_gets() == valid
    assert {reason: gateway.drops(reason)
            for reason in ("short_packet", "bad_version", "bad_length")} == {
        "short_packet": 2, "bad_version": 1, "bad_length": 2}
    assert gateway.daemon.snapshot().states == {"temporary": 1, "active": 0}


def test_packets_outside_the_prefix_or_not_to_a_home_agent_are_dropped(gateway: Gateway) -> None:
    sock = gateway.client()
    outside = ipaddress.IPv6Address("fd00:bad::1").packed
    sock.sendto(build_echo(outside, HOME_AGENT, 1, 1), (GW, MAIN_PORT))
    sock.sendto(build_echo(SRC, HOME_HOST, 1, 1), (GW, MAIN_PORT))
    sock.sendto(echo(), (GW, MAIN_PORT))
    assert gateway.home_gets() == echo()
    assert gateway.drops("src_outside_prefix") == gateway.drops("dst_not_home_agent") == 1


def test_new_states_from_one_ipv4_address_are_rate_limited(
        gateway_with: Callable[..., Gateway]) -> None:
    # A refill this slow adds no token while the test runs, however slow the machine. (A burst
    # of one: TokenBuckets may round a larger burst down by one token at a single instant.)
    gateway = gateway_with(new_states_per_second=0.001, new_states_burst=1)
    behind_nat = [gateway.client((NAT, 40100 + i)) for i in range(8)]
    for i, sock in enumerate(behind_nat):  # "not considering the source port"
        sock.sendto(echo(tunnel_address(10 + i)), (GW, MAIN_PORT))
    elsewhere = gateway.client(OUTSIDER)  # another IPv4 address has its own budget
    elsewhere.sendto(echo(OTHER_SRC), (GW, MAIN_PORT))
    assert [gateway.home_gets() for _ in range(2)] == [echo(tunnel_address(10)), echo(OTHER_SRC)]
    assert gateway.drops("rate_limited") == 7
    assert gateway.daemon.snapshot().states == {"temporary": 2, "active": 0}
    assert "m6t_gateway_rate_limit_hits_total 7.0" in gateway.metrics()


def test_from_home_an_unknown_destination_is_dropped_as_no_state(gateway: Gateway) -> None:
    sock = gateway.client()
    activate(gateway, sock)
    gateway.tun.inbound(from_home(OTHER_SRC))
    gateway.tun.inbound(from_home(SRC, sequence=7))
    assert sock.recvfrom(65535) == (from_home(SRC, sequence=7), (GW, MAIN_PORT))
    assert gateway.drops("no_state") == 1


# --- reload and teardown ---------------------------------------------------------------------

def test_reload_moves_listen_ports_and_keeps_states(gateway: Gateway) -> None:
    sock = gateway.client()
    activate(gateway, sock)
    gateway.configure(listen=(MAIN_PORT, NEW_PORT))
    gateway.daemon.request_reload()  # what SIGHUP does
    eventually(lambda: gateway.daemon.snapshot().reloads == 1, "the reload")
    assert gateway.listening() == {(GW, MAIN_PORT), (GW, NEW_PORT)}
    # The existing client keeps its state and port; a new one uses the new port.
    gateway.tun.inbound(from_home(sequence=3))
    assert sock.recvfrom(65535) == (from_home(sequence=3), (GW, MAIN_PORT))
    newcomer = gateway.client(OUTSIDER)
    activate(gateway, newcomer, OTHER_SRC, NEW_PORT)


def test_a_refused_reload_keeps_the_running_configuration(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    gateway.configure(listen=(NEW_PORT,), mtu=1000)  # below the IPv6 minimum: refused
    gateway.daemon.request_reload()
    # The reload runs at the end of the loop's turn that sees the request, at the latest the
    # turn that forwards this client's first packet; home's answer is handled after it.
    activate(gateway, gateway.client())
    assert "reload refused" in caplog.text
    assert gateway.daemon.snapshot().reloads == 0
    assert gateway.listening() == {(GW, MAIN_PORT), (GW, SECOND_PORT)}


def test_while_running_the_route_and_forwarding_are_set_and_teardown_undoes_them(
        gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with()
    assert gateway.netlink.routes == {(str(PREFIX), "m6tfake0")}
    assert gateway.netlink.sysctls[FORWARDING] == "1"
    activate(gateway, gateway.client())
    tun, icmp = gateway.tun, gateway.daemon.icmp
    gateway.stop()
    assert gateway.netlink.routes == set()
    assert gateway.netlink.sysctls[FORWARDING] == "0"  # as found
    assert gateway.netlink.closed
    assert tun.closed
    assert icmp.fileno() == -1
    assert gateway.listening() == set()
    gateway.daemon.teardown()  # a second teardown (as __main__ may do) finds nothing to undo


def test_forwarding_left_at_1_by_a_killed_gateway_is_restored_to_the_value_before_it(
        gateway_with: Callable[..., Gateway], tmp_path: Path) -> None:
    # What a gateway killed with SIGKILL leaves: forwarding=1 and its note of the value before.
    note = tmp_path / "run" / f"forwarding.{network_namespace_id()}"
    note.parent.mkdir()
    note.write_text("0\n")
    gateway = gateway_with(start=False)
    gateway.netlink.sysctls[FORWARDING] = "1"
    gateway.daemon.io = dataclasses.replace(gateway.daemon.io, runtime_dir=note.parent)
    gateway.start()
    assert gateway.netlink.sysctls[FORWARDING] == "1"
    gateway.stop()
    assert gateway.netlink.sysctls[FORWARDING] == "0"
    assert not note.exists()


def test_a_stale_forwarding_note_is_not_believed_once_someone_changed_the_sysctl(
        gateway_with: Callable[..., Gateway], tmp_path: Path) -> None:
    note = tmp_path / "run" / f"forwarding.{network_namespace_id()}"
    note.parent.mkdir()
    note.write_text("1\n")  # noted, but the sysctl is 0 now: the note is stale
    gateway = gateway_with(start=False)
    gateway.daemon.io = dataclasses.replace(gateway.daemon.io, runtime_dir=note.parent)
    gateway.start()
    assert note.read_text() == "0\n"  # this gateway's own note, while it runs
    gateway.stop()
    assert gateway.netlink.sysctls[FORWARDING] == "0"
    assert not note.exists()


def test_a_runtime_directory_that_cannot_be_written_only_costs_the_note(
        gateway_with: Callable[..., Gateway], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    gateway = gateway_with(start=False)
    gateway.daemon.io = dataclasses.replace(gateway.daemon.io, runtime_dir=blocked / "run")
    gateway.start()
    assert "cannot note IPv6 forwarding=0" in caplog.text
    gateway.stop()
    assert gateway.netlink.sysctls[FORWARDING] == "0"


def test_a_failed_setup_undoes_what_it_did(gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with(start=False)

    def no_raw_sockets() -> Any:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    gateway.icmp_listener = no_raw_sockets  # opened last: everything else was done
    with pytest.raises(PermissionError):
        gateway.daemon.setup()
    assert gateway.netlink.routes == set()
    assert gateway.netlink.sysctls[FORWARDING] == "0"
    assert gateway.tun.closed
    assert gateway.listening() == set()


# --- the fakes do what the daemon relies on --------------------------------------------------

def test_channel_tun_moves_whole_packets_and_reads_none_when_empty() -> None:
    tun = ChannelTun()
    try:
        assert tun.read() is None
        tun.inbound(b"\x60one")
        tun.inbound(b"\x60second")
        assert (tun.read(), tun.read(), tun.read()) == (b"\x60one", b"\x60second", None)
        tun.write(b"\x60out")
        assert tun.outbound(TIMEOUT) == b"\x60out"
        assert tun.outbound(0) is None
    finally:
        tun.close()
    assert tun.closed


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no_gso"])
def test_a_udp_gso_run_on_the_fake_network_arrives_as_separate_datagrams(gso: bool) -> None:
    network = FakeNetwork(gso=gso)
    sender, receiver = network.open((GW, MAIN_PORT)), network.open(CLIENT)
    try:
        gso_sender = UdpGso(sender)
        run = [bytes([i]) * 100 for i in range(5)]
        assert gso_sender.send(run, CLIENT) == (5, 500)
        assert gso_sender.enabled is gso  # EIO: UdpGso stops trying, as on such a kernel
        assert [receiver.recvfrom(65535) for _ in run] == [(d, (GW, MAIN_PORT)) for d in run]
    finally:
        sender.close()
        receiver.close()


def test_a_connected_fake_socket_hears_only_its_peer() -> None:
    network = FakeNetwork()
    gateway, stranger = network.open((GW, MAIN_PORT)), network.open(OUTSIDER)
    helper = network.open(connect=(GW, MAIN_PORT))  # 0.0.0.0: sends from default_address
    helper.settimeout(TIMEOUT)
    try:
        helper.send(b"hello")
        gateway.settimeout(TIMEOUT)
        data, address = gateway.recvfrom(100)
        assert (data, address[0]) == (b"hello", network.default_address)
        stranger.sendto(b"intruder", address)
        gateway.sendto(b"answer", address)
        assert helper.recv(100) == b"answer"
        with pytest.raises(OSError) as refused:
            network.open((GW, MAIN_PORT))
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        for sock in (gateway, stranger, helper):
            sock.close()
    assert network.bound() == set()


def test_the_sender_cache_stays_bounded_and_keeps_senders_that_keep_sending() -> None:
    """A churn of new senders (NAT rebindings, floods from new ports) must not grow the cache
    past two generations; a sender that goes on sending stays cached through the turnovers."""
    cache = PeerCache()
    steady = ("192.0.2.1", 4500)

    def lookup(address: tuple[str, int]) -> int:
        found = cache.get(address)
        return cache.peer(address, 1) if found is None else found

    for n in range(5 * PEER_CACHE_GENERATION):
        churn = (f"198.51.{n >> 16 & 255}.{n >> 8 & 255}", 1024 + (n & 255))
        assert lookup(churn) == pack_peer(bytes(map(int, churn[0].split("."))), churn[1], 1)
        if n % 1000 == 0:
            assert lookup(steady) == pack_peer(bytes([192, 0, 2, 1]), 4500, 1)
        assert len(cache) + len(cache.old) <= 2 * PEER_CACHE_GENERATION
    assert len(cache.old) == PEER_CACHE_GENERATION  # it did turn over
    assert steady in cache or steady in cache.old
    assert lookup(steady) == pack_peer(bytes([192, 0, 2, 1]), 4500, 1)
