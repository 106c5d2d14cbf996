"""The m6t-gateway packet loop: UDP listeners <-> state table <-> TUN.

One thread moves packets (epoll, batches per wake-up, one clock read per batch); the protocol
core decides; prometheus_client serves a snapshot from its own thread. Set-up gets its
descriptors and namespace changes from a `GatewayIO` (the real Linux adapters unless a test
passes the fakes of m6t.linux.tuntest); the packet loop works on what those return.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from m6t.files import write_atomically
from m6t.gateway.config import ConfigError, GatewayConfig, load_config
from m6t.gateway.metrics import GatewayCollector, Snapshot
from m6t.linux import systemd
from m6t.linux.netlink import ChangeLog, Netlink, network_namespace_id, write_sysctl
from m6t.linux.offload import (
    FEATURES,
    GRO_CONTROL_SPACE,
    MAX_DATAGRAM,
    TUN_COALESCE_TCP,
    TUN_COALESCE_UDP,
    UDP_GSO,
    OffloadReport,
    enable_udp_gro,
    gro_segment_size,
    not_wanted,
    report_tun,
    split_gro,
    wanted_features,
)
from m6t.linux.tun import READ_SIZE, PacketDevice, TunDevice
from m6t.linux.udp import (
    EARLIER_DATAGRAM_ERRORS,
    UdpGso,
    open_fragmentation_needed_listener,
    open_tunnel_socket,
    read_fragmentation_needed,
    read_icmp_errors,
    send_datagram,
)
from m6t.protocol.gateway import FORWARD, Gateway, Reply, pack_peer, unpack_peer
from m6t.protocol.gso import (
    GSO_TCPV6,
    PLAIN_HEADER,
    SEGMENT_ERRORS,
    VNET_HEADER_LENGTH,
    Coalescer,
    SegmentError,
    VirtioNetHeader,
    Write,
    segment,
)
from m6t.protocol.packets import check_ipv6

log = logging.getLogger("m6t.gateway")

BATCH = 256  # packets drained per readable descriptor before looking at the others
DIRECTIONS = ("to_home", "from_home")  # of super-packets: written to, read from the TUN
PEER_CACHE_GENERATION = 8_192
_FORWARDING = "net/ipv6/conf/all/forwarding"


class PeerCache(dict[tuple[str, int], int]):
    """One listener's senders and their peer ints (packing one costs more per packet than a
    lookup): `get` for the ones in the current generation, `peer` for the rest. Two
    generations of at most PEER_CACHE_GENERATION senders: when the current one is full it
    becomes the old one, and a sender found there moves back. So senders that keep sending stay
    cached, and a churn of new ports (NAT rebindings, new clients, spoofers, floods) costs at
    most two generations, about 5 MB at some 290 bytes a sender, instead of growing."""

    __slots__ = ("old",)

    def __init__(self) -> None:
        super().__init__()
        self.old: dict[tuple[str, int], int] = {}

    def peer(self, address: tuple[str, int], index: int) -> int:
        peer = self.old.get(address)
        if peer is None:
            peer = pack_peer(socket.inet_aton(address[0]), address[1], index)
        if len(self) >= PEER_CACHE_GENERATION:
            self.old = dict(self)
            self.clear()
        self[address] = peer
        return peer


class Routing(Protocol):
    """What the gateway changes in its network namespace: the route of the client prefix into
    the TUN device, and the IPv6 forwarding sysctl."""

    def add_route(self, destination: str, ifname: str) -> object: ...
    def delete_route(self, destination: str, ifname: str) -> object: ...
    def read_sysctl(self, name: str) -> str: ...
    def write_sysctl(self, name: str, value: str) -> None: ...
    def close(self) -> None: ...


class LinuxRouting(Netlink):
    """Netlink, plus the sysctls of the same network namespace under /proc/sys."""

    def read_sysctl(self, name: str) -> str:
        return Path("/proc/sys", name).read_text().strip()

    def write_sysctl(self, name: str, value: str) -> None:
        write_sysctl(name, value)


def _open_listener(endpoint: tuple[str, int]) -> socket.socket:
    return open_tunnel_socket(bind=endpoint)


@dataclass(frozen=True)
class GatewayIO:
    """Where the daemon's devices, sockets and namespace changes come from: the real Linux
    adapters by default; m6t.linux.tuntest's fakes in tests, which then run the real loop
    without root. Only set-up, reload and teardown call these."""

    open_tun: Callable[[str, int], PacketDevice] = TunDevice  # (name, mtu), up
    open_listener: Callable[[tuple[str, int]], socket.socket] = _open_listener  # UDP, bound
    open_icmp_listener: Callable[[], socket.socket] = open_fragmentation_needed_listener
    open_routing: Callable[[], Routing] = LinuxRouting
    # Where the forwarding sysctl's value from before the first gateway of this namespace is
    # noted (see GatewayDaemon._forwarding_before); None: not noted (tests with fakes).
    runtime_dir: Path | None = None


class GatewayDaemon:
    def __init__(self, config: GatewayConfig, config_path: Path | None = None,
                 io: GatewayIO | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.io = io or GatewayIO()
        self.gateway = Gateway(config.policy)
        self.changes = ChangeLog()
        self.listeners: list[socket.socket | None] = []
        self._peers: list[PeerCache] = []  # per listener
        self.collector = GatewayCollector(self.snapshot)
        self.packets = dict.fromkeys(("from_client", "to_client"), 0)
        self.octets = dict.fromkeys(("from_client", "to_client"), 0)
        self.mtu_lowered = 0
        self.reloads = 0
        self.send_failures = {errno.errorcode[code]: 0 for code in sorted(SEND_FAILURES)}
        # Offloads (m6t.linux.offload): what is tried comes from M6T_OFFLOADS; what is in use,
        # and why the rest is not, from the TUN device and each listener.
        self._wanted = wanted_features()
        self.offload = OffloadReport()
        self.super_packets = dict.fromkeys(DIRECTIONS, 0)
        self.super_packet_segments = dict.fromkeys(DIRECTIONS, 0)
        self.offload_drops = dict.fromkeys(SEGMENT_ERRORS, 0)
        self._gro: list[bool] = []  # per listener: UDP GRO on
        self._coalescer: Coalescer | None = None
        self._gso = UdpGso(on_error=self._send_failed, enabled=UDP_GSO in self._wanted,
                           on_disabled=lambda why: self.offload.disabled(UDP_GSO, why))
        self._stop = False
        self._reload = False
        self._wake_write: socket.socket | None = None
        # Failover metrics: when this process started (a restart loses every state) and
        # whether its loop serves (m6t.gateway.health reads both for keepalived).
        self.started = time.time()
        self.serving = False

    # --- set-up and teardown ---------------------------------------------------------------------

    def setup(self) -> None:
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise

    def _setup(self) -> None:
        config, io = self.config, self.io
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self.changes.record("close wake-up sockets", self._close_wake_up)
        self.routing = io.open_routing()
        self.changes.record("close netlink", self.routing.close)
        # Leftover of a crashed run in this namespace (a persistent device cannot be, but a
        # route to a stale device name can): the TUN name must be ours.
        self.tun = io.open_tun(config.tun, config.policy.mtu)
        self.changes.record(f"delete {config.tun}", self.tun.close)
        self._use_tun_offloads()
        prefix = str(config.policy.client_prefix)
        self.routing.add_route(prefix, self.tun.name)
        self.changes.record(f"route {prefix}",
                            lambda: self.routing.delete_route(prefix, self.tun.name))
        previous = self._forwarding_before()
        self.routing.write_sysctl(_FORWARDING, "1")
        self.changes.record("restore forwarding", lambda: self._restore_forwarding(previous))
        self._open_listeners(config.listen)
        self.icmp = io.open_icmp_listener()
        self.changes.record("close ICMP listener", self.icmp.close)
        if config.metrics_listen:
            registry = CollectorRegistry()
            registry.register(self.collector)
            host, port = config.metrics_listen
            server, _thread = start_http_server(port, addr=host, registry=registry)
            self.changes.record("stop metrics", server.shutdown)
        log.info("gateway up: tun %s mtu %d, prefix %s, home agents %s, listening on %s",
                 self.tun.name, config.policy.mtu, prefix,
                 ", ".join(sorted(str(a) for a in config.policy.home_agents)),
                 ", ".join(f"{h}:{p}" for h, p in config.listen))
        on, off = self.offload.snapshot()
        log.info("offloads in use: %s%s", ", ".join(on) or "none",
                 "".join(f"; {feature} off: {why}" for feature, why in off.items()))

    def _forwarding_before(self) -> str:
        """The forwarding sysctl's value from before any gateway of this network namespace set
        it. A gateway killed with SIGKILL cannot restore it, so the value is noted under the
        runtime directory (one note per namespace) and the next gateway restores the noted
        value, not the 1 the killed one left. A note is believed only while the sysctl is still
        1: anything else means someone set it since."""
        current = self.routing.read_sysctl(_FORWARDING)
        note = self._forwarding_note
        if note is None:
            return current
        try:
            noted = note.read_text().strip()
        except FileNotFoundError:
            noted = ""
        except OSError as exc:
            log.warning("cannot read %s: %s", note, exc.strerror)
            noted = ""
        if noted.isdigit() and current == "1":
            log.warning("IPv6 forwarding was %s before a gateway that stopped without restoring "
                        "it (%s); restoring %s at stop", noted, note, noted)
            return noted
        try:
            note.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomically(note, current + "\n", 0o644)
        except OSError as exc:
            log.warning("cannot note IPv6 forwarding=%s in %s (%s): if this gateway is killed, "
                        "the next one will not know to restore it", current, note, exc.strerror)
        return current

    def _restore_forwarding(self, previous: str) -> None:
        self.routing.write_sysctl(_FORWARDING, previous)
        if self._forwarding_note is not None:
            self._forwarding_note.unlink(missing_ok=True)

    @property
    def _forwarding_note(self) -> Path | None:
        directory = self.io.runtime_dir
        return None if directory is None else directory / f"forwarding.{network_namespace_id()}"

    def _use_tun_offloads(self) -> None:
        """Coalesce into the TUN device what it takes (per device: a fake or an old kernel
        takes none), and note the rest."""
        offloads = self.tun.offloads
        report_tun(offloads, self.tun.report, self.offload)
        if self._gso.enabled:
            self.offload.enabled(UDP_GSO)
        else:
            self.offload.disabled(UDP_GSO, not_wanted(UDP_GSO))
        if offloads.vnet_header:
            self._coalescer = Coalescer(tcp=offloads.coalesce_tcp, udp=offloads.coalesce_udp)

    def _open_listeners(self, endpoints: tuple[tuple[str, int], ...]) -> None:
        for endpoint in endpoints:
            try:
                sock = self.io.open_listener(endpoint)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {endpoint[0]}:{endpoint[1]}: "
                                         f"{exc.strerror}") from None
            self.listeners.append(sock)
            self._peers.append(PeerCache())
            self._gro.append(enable_udp_gro(sock, self._wanted, self.offload,
                                            f"{endpoint[0]}:{endpoint[1]}"))
        self.changes.record("close listeners", self._close_listeners)

    def _close_listeners(self) -> None:
        for sock in self.listeners:
            if sock is not None:
                sock.close()
        self.listeners = []
        self._peers = []
        self._gro = []

    def _close_wake_up(self) -> None:
        wake_write, self._wake_write = self._wake_write, None
        if wake_write is not None:
            wake_write.close()
        self._wake_read.close()

    def teardown(self) -> None:
        self.changes.undo()
        log.info("gateway down")

    # --- reload ---

    def reload(self) -> None:
        """SIGHUP: re-read the file; adopt the policy and listen set, keep states. systemd
        (Type=notify) shows the unit "reloading" until READY=1 says the new set listens."""
        systemd.notify(systemd.reloading())
        try:
            self._adopt_file()
        finally:
            systemd.notify("READY=1")

    def _adopt_file(self) -> None:
        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        if new.tun != self.config.tun or new.metrics_listen != self.config.metrics_listen:
            log.warning("reload: tun and metrics_listen changes need a restart; ignored")
        if new.policy.client_prefix != self.config.policy.client_prefix:
            log.warning("reload: client_prefix changes need a restart; ignored")
            return
        if new.policy.mtu != self.config.policy.mtu:
            self.tun.mtu = new.policy.mtu
        # Listener indexes are part of every state's peer: keep existing ones in place, close
        # removed ones (their slot stays None) and append new ones.
        current = {ep: i for i, ep in enumerate(self.config.listen)}
        listen = list(self.config.listen)
        for endpoint, index in current.items():
            if endpoint not in new.listen and self.listeners[index] is not None:
                self._unregister(self.listeners[index])
                self.listeners[index].close()  # type: ignore[union-attr]
                self.listeners[index] = None
        for endpoint in new.listen:
            if endpoint not in current:
                try:
                    sock = self.io.open_listener(endpoint)
                except OSError as exc:
                    log.error("reload: cannot listen on %s:%d: %s", *endpoint, exc.strerror)
                    continue
                listen.append(endpoint)
                self.listeners.append(sock)
                self._peers.append(PeerCache())
                self._gro.append(enable_udp_gro(sock, self._wanted, self.offload,
                                                f"{endpoint[0]}:{endpoint[1]}"))
                self._register(len(self.listeners) - 1, sock)
        self.gateway.apply_policy(new.policy, time.monotonic())
        self.config = GatewayConfig(tuple(listen), self.config.tun, self.config.metrics_listen,
                                    new.log_level, new.policy)
        logging.getLogger("m6t").setLevel(new.log_level.upper())
        self.reloads += 1
        log.warning("configuration reloaded from %s", self.config_path)

    # --- the loop ---

    def _register(self, index: int, sock: socket.socket) -> None:
        self._poll.register(sock.fileno(), select.EPOLLIN | select.EPOLLERR)
        self._by_fd[sock.fileno()] = index

    def _unregister(self, sock: socket.socket | None) -> None:
        if sock is not None:
            self._poll.unregister(sock.fileno())
            self._by_fd.pop(sock.fileno(), None)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def stop(self) -> None:
        """What SIGTERM does, from any thread: run() returns (teardown is the caller's)."""
        self._stop = True
        self._wake()

    def request_reload(self) -> None:
        """What SIGHUP does, from any thread: the loop reloads at its next wake-up."""
        self._reload = True
        self._wake()

    def _wake(self) -> None:
        wake_write = self._wake_write
        if wake_write is None:
            return  # not set up: run() sees the flag before it first waits
        # Full: a wake-up is pending anyway. Closed: the loop is gone.
        with contextlib.suppress(OSError):
            wake_write.send(b"\0")

    def run(self, handle_signals: bool = True) -> None:
        """Move packets until SIGTERM or SIGINT, reload on SIGHUP. With handle_signals=False
        (a loop in a thread other than the main one, as in tests) the process's signals are
        left alone, and stop() and request_reload() are the way in."""
        wake_read, wake_write = self._wake_read, self._wake_write
        assert wake_write is not None, "run() after setup()"
        if handle_signals:
            signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, self._on_signal)
        self._poll = select.epoll()
        self._by_fd: dict[int, int] = {}
        tun_fd = self.tun.fileno()
        self._poll.register(tun_fd, select.EPOLLIN)
        self._poll.register(wake_read.fileno(), select.EPOLLIN)
        self._poll.register(self.icmp.fileno(), select.EPOLLIN)
        for index, sock in enumerate(self.listeners):
            if sock is not None:
                self._register(index, sock)
        gateway = self.gateway
        # Every listener is bound, the TUN device up, the metrics endpoint listening and the
        # signals handled: systemd (Type=notify) may now call the unit active.
        systemd.notify("READY=1")
        self.serving = True
        try:
            while not self._stop:
                deadline = gateway.next_deadline()
                timeout = -1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
                events = self._poll.poll(timeout)
                now = time.monotonic()
                for fd, mask in events:
                    if fd == tun_fd:
                        self._from_home(now)
                    elif fd == self.icmp.fileno():
                        self._fragmentation_needed()
                    elif fd == wake_read.fileno():
                        try:
                            while wake_read.recv(64):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        listener = self._by_fd.get(fd)
                        if listener is None:
                            continue
                        if mask & select.EPOLLERR:
                            self._icmp_errors(listener)
                        if mask & select.EPOLLIN:
                            self._from_clients(listener, now)
                if self._reload:
                    self._reload = False
                    self.reload()
                if deadline is not None and now >= deadline:
                    gateway.expire(now)
            systemd.notify("STOPPING=1")  # SIGTERM or SIGINT: teardown follows
        finally:
            self.serving = False
            if handle_signals:
                signal.set_wakeup_fd(-1)
            self._poll.close()

    def _from_clients(self, index: int, now: float) -> None:
        sock = self.listeners[index]
        assert sock is not None
        receive = self.gateway.receive_from_client
        recvfrom, recvmsg = sock.recvfrom, sock.recvmsg
        gro = self._gro[index]
        coalescer = self._coalescer
        # Forwarded packets go into the TUN one by one, or through the coalescer, which makes
        # super-packets of runs of one flow (each packet checked by the core first, alone).
        tun_write = self.tun.write
        add = tun_write if coalescer is None else coalescer.add
        add_stretch = None if coalescer is None else coalescer.add_all
        startswith, repeat = bytes.startswith, itertools.repeat
        peers = self._peers[index]
        # Within a batch, a packet from the sender of a packet the core forwarded, with the same
        # IPv6 source and destination, gets the same decision (Gateway.receive_from_client says
        # why), so only its well-formedness is checked again; and a packet of the same size
        # whose first 40 bytes are those of the last one forwarded is well-formed as that one
        # was (the same version and payload length, for the same size): the common case, the
        # next packet of a run, costs one comparison.
        flow_sender: tuple[str, int] | None = None
        flow_key = flow_head = b""
        flow_size = 0
        packets = octets = 0
        budget = BATCH
        first = True
        while budget > 0:
            try:
                if gro:
                    # One receive may hold a run of datagrams from one sender, each its own
                    # IPv6 packet: each is checked on its own below.
                    data, ancillary, _, address = recvmsg(MAX_DATAGRAM, GRO_CONTROL_SPACE)
                    size = gro_segment_size(ancillary) if ancillary else 0
                    datagrams = split_gro(data, size) if size else (data,)
                else:
                    data, address = recvfrom(MAX_DATAGRAM)
                    datagrams = (data,)
            except BlockingIOError:
                break
            except OSError:
                # With IP_RECVERR an ICMP error surfaces as a failed receive once; read it.
                self._icmp_errors(index)
                budget -= 1
                continue
            budget -= len(datagrams)
            count = len(datagrams)
            # A lone datagram (a ping, an ACK) goes straight to the device: the coalescer would
            # only add its bookkeeping to the latency.
            deliver = tun_write if first and count == 1 else add
            same_sender = address == flow_sender
            # A stretch of datagrams of the flow's size that all start with its first 40 bytes
            # (the rest of a GRO receive, usually) is recognised in one pass in C and handed to
            # the coalescer whole; one failed try and the rest goes packet by packet.
            stretches = add_stretch is not None and count > 2
            at = 0
            while at < count:
                if stretches and same_sender and len(datagrams[at]) == flow_size:
                    end = count if len(datagrams[-1]) == flow_size else count - 1
                    stretch = datagrams[at:end]
                    if len(stretch) > 1 and all(map(startswith, stretch, repeat(flow_head))):
                        add_stretch(stretch)  # type: ignore[misc]
                        packets += len(stretch)
                        octets += flow_size * len(stretch)
                        at = end
                        continue
                    stretches = False
                data = datagrams[at]
                at += 1
                if same_sender and data.startswith(flow_head) and len(data) == flow_size:
                    decision: object = FORWARD
                elif same_sender and data.startswith(flow_key, 8) and check_ipv6(data) is None:
                    decision = FORWARD
                    flow_head, flow_size = data[:40], len(data)
                else:
                    peer = peers.get(address)
                    if peer is None:
                        peer = peers.peer(address, index)
                    decision = receive(data, peer, now)
                    if decision is FORWARD:
                        flow_sender, flow_key = address, data[8:40]
                        flow_head, flow_size = data[:40], len(data)
                        same_sender = True
                if decision is FORWARD:
                    deliver(data)
                    packets += 1
                    octets += len(data)
                elif type(decision) is Reply:
                    try:
                        send_datagram(sock, decision.packet, address)
                    except OSError as exc:
                        self._send_failed(exc, 1)
            if first and coalescer:
                # The first receive goes home at once (a ping, an ACK); the rest waits for the
                # queue to be empty, to be coalesced as much as it can.
                self._write_home(coalescer.flush())
            first = False
        if coalescer:
            self._write_home(coalescer.flush())
        self.packets["from_client"] += packets
        self.octets["from_client"] += octets

    def _write_home(self, writes: list[Write]) -> None:
        writev = self.tun.writev
        for write in writes:
            if write[0] is PLAIN_HEADER:
                writev(write)
                continue
            self.super_packets["to_home"] += 1
            self.super_packet_segments["to_home"] += len(write) - 3
            if not writev(write):
                self._refused_super_packet(write)

    def _refused_super_packet(self, write: Write) -> None:
        """The kernel would not take a super-packet (EINVAL): its packets go one by one, and
        that kind is not coalesced again on this device."""
        header = VirtioNetHeader.unpack(write[0])
        packet = b"".join(write[1:])
        coalescer = self._coalescer
        assert coalescer is not None
        tcp = header.gso_type == GSO_TCPV6
        if tcp:
            coalescer.tcp = False
        else:
            coalescer.udp = False
        self.offload.disabled(TUN_COALESCE_TCP if tcp else TUN_COALESCE_UDP,
                              "the TUN device refused a super-packet (EINVAL)", self.tun.name)
        try:
            segments = segment(header, packet, 65535)
        except SegmentError as exc:
            self.offload_drops[exc.reason] += 1
            return
        for one in segments:
            self.tun.write(one)

    def _send_failed(self, exc: OSError, lost: int) -> None:
        if exc.errno not in SEND_FAILURES:
            raise exc
        self.send_failures[errno.errorcode[exc.errno]] += lost

    def _from_home(self, now: float) -> None:
        receive, client_mtu = self.gateway.receive_from_home, self.gateway.client_mtu
        read, tun_fd, tun_write = os.read, self.tun.fileno(), self.tun.write
        vnet_header = self.tun.offloads.vnet_header
        send = self._gso.send
        listeners = self.listeners
        ntoa, unpack = socket.inet_ntoa, unpack_peer
        last_peer = -1
        target: tuple[str, int] = ("", 0)
        sock: socket.socket | None = None
        # Within a batch, a packet to the destination of a packet the core sent to a client, no
        # larger than that client's MTU, goes to the same client (Gateway.receive_from_home
        # says why), so only its well-formedness is checked again; a packet of the size of the
        # last one sent there, with the same first 40 bytes, is that and well-formed: the next
        # packet of a flow costs one comparison.
        flow_dst = b""
        flow_limit = flow_peer = 0  # nothing matches until the core has decided once
        same_head, same_size = b"\0", 0
        # The first packet of a batch leaves at once, not after the read that finds the queue
        # empty; the others leave per client, runs of one size as one UDP GSO message.
        later: list[bytes] | None = None  # None until the first packet has left
        packets = octets = 0
        budget = BATCH
        cut: list[bytes] = []  # packets of a super-packet read (TSO/USO), last first
        while True:
            if cut:
                packet = cut.pop()
            else:
                if budget <= 0:
                    break
                budget -= 1
                try:
                    raw = read(tun_fd, READ_SIZE)
                except BlockingIOError:
                    break
                if not vnet_header:
                    packet = raw
                elif raw[0] or raw[1]:
                    cut = self._segment_from_home(raw)
                    cut.reverse()
                    continue
                else:
                    packet = raw[VNET_HEADER_LENGTH:]
            if packet.startswith(same_head) and len(packet) == same_size:
                decision: object = flow_peer
            elif len(packet) <= flow_limit and packet.startswith(flow_dst, 24) and \
                    check_ipv6(packet) is None:
                decision = flow_peer
                same_head, same_size = packet[:40], len(packet)
            else:
                decision = receive(packet, now)
                if type(decision) is int:
                    flow_peer, flow_dst = decision, packet[24:40]
                    flow_limit = client_mtu(decision)
                    same_head, same_size = packet[:40], len(packet)
            if type(decision) is int:
                if decision != last_peer:
                    if later and sock is not None:
                        sent, sent_octets = send(later, target, sock)
                        packets += sent
                        octets += sent_octets
                        later = []
                    last_peer = decision
                    ipv4, port, index = unpack(decision)
                    target = (ntoa(ipv4), port)
                    sock = listeners[index]
                if sock is None:
                    continue  # its listener was removed by a reload; the state will age out
                if later is None:
                    packets, octets = send([packet], target, sock)
                    later = []
                else:
                    later.append(packet)
            elif type(decision) is Reply:
                tun_write(decision.packet)
        if later and sock is not None:
            sent, sent_octets = send(later, target, sock)
            packets += sent
            octets += sent_octets
        self.packets["to_client"] += packets
        self.octets["to_client"] += octets

    def _segment_from_home(self, raw: bytes) -> list[bytes]:
        """The packets of a read that is a super-packet (TSO/USO) or needs its checksum: each
        then goes through the core like any other packet."""
        header = VirtioNetHeader.unpack(raw)
        try:
            packets = segment(header, raw[VNET_HEADER_LENGTH:], self.config.policy.mtu)
        except SegmentError as exc:
            self.offload_drops[exc.reason] += 1
            return []
        if header.gso_type:
            self.super_packets["from_home"] += 1
            self.super_packet_segments["from_home"] += len(packets)
        return packets

    def _icmp_errors(self, index: int) -> None:
        """Drain the error queue (port unreachable and the like): nothing to learn from them
        that the draft acts on, but left queued they would fail the next receive."""
        sock = self.listeners[index]
        if sock is not None:
            read_icmp_errors(sock)

    def _fragmentation_needed(self) -> None:
        for error in read_fragmentation_needed(self.icmp):
            index = self._listener_index(error.local)
            if index is None:
                continue
            host, port = error.remote
            lowered = self.gateway.lower_client_mtu(pack_peer(socket.inet_aton(host), port, index),
                                                    error.mtu)
            if lowered is not None:
                self.mtu_lowered += 1
                log.info("path MTU to %s:%d is %d: tunnel MTU %d for that client",
                         host, port, error.mtu, lowered)

    def _listener_index(self, local: tuple[str, int]) -> int | None:
        for index, endpoint in enumerate(self.config.listen):
            if self.listeners[index] is not None and endpoint[1] == local[1] and \
                    endpoint[0] in (local[0], "0.0.0.0"):
                return index
        return None

    def snapshot(self) -> Snapshot:
        """Called from the metrics thread: only atomic reads of the loop's dicts."""
        return Snapshot(
            states={kind.value: count for kind, count in self.gateway.counts().items()},
            packets=dict(self.packets), bytes=dict(self.octets),
            drops={reason.value: count for reason, count in self.gateway.drops.items()},
            client_mtu_lowered=self.mtu_lowered, reloads=self.reloads,
            send_failures=dict(self.send_failures), offloads=self._offload_states(),
            offload_fallbacks=self.offload.snapshot()[1],
            super_packets=dict(self.super_packets),
            super_packet_segments=dict(self.super_packet_segments),
            offload_drops=dict(self.offload_drops), start_time=self.started,
            ready=self.serving and any(sock is not None for sock in list(self.listeners)))

    def _offload_states(self) -> dict[str, int]:
        on, _ = self.offload.snapshot()
        return {feature: int(feature in on) for feature in FEATURES}


# A datagram to a client that cannot leave is lost like any packet a router cannot forward,
# and counted by error: a full send buffer, a local firewall (EPERM), or an ICMP error that
# reached us again on the second try. Any other error is a bug and stops the gateway.
SEND_FAILURES = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE, errno.EPERM,
                           *EARLIER_DATAGRAM_ERRORS})


def check_privileges() -> str | None:
    """Why this process cannot run a gateway, or None."""
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: load the tun module (modprobe tun)"
    return None
