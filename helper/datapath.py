"""The data path of one tunnel: one thread moving packets TUN -> UDP and UDP -> TUN.

It polls both descriptors and drains each in batches. (Two threads, one per direction, were
measured too: no faster in the lab, since the GIL serialises the per-packet checks and the
kernel work already runs on the other core; one thread is simpler.) Packets the helper itself
must see (keepalive replies, replies to its probes) are handed to the asyncio loop; every
other packet that is not forwarded is dropped with a named reason and counted.

The UDP socket is connected to the gateway's address and port: the kernel delivers only the
gateway's datagrams (nothing else ever reaches us) and sends without a route lookup per
packet. The address and socket can be swapped while running (a new address after a network
change): `retarget()` replaces them in one assignment, which the thread picks up at once.

Offloads (m6t.linux.offload), each where the kernel has it, else the plain path: runs of
same-size packets leave in one UDP GSO send; one UDP GRO receive brings a run of datagrams;
the datagrams for the TUN device, each checked alone, are written as super-packets of a flow
(m6t.protocol.gso.Coalescer, with the complete TCP checksum so that the stack still verifies
every byte); with `tun_tso`, super-packets read from the device are cut into packets of the
tunnel MTU first. Whatever is coalesced is written at the latest when the queue is empty, and
the first read of a batch goes out at once: a ping never waits for bulk traffic.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from m6t.control.schema import DatapathStatus
from m6t.linux.offload import (
    GRO_CONTROL_SPACE,
    MAX_DATAGRAM,
    TUN_COALESCE_TCP,
    TUN_COALESCE_UDP,
    UDP_GSO,
    OffloadConfigError,
    OffloadReport,
    enable_udp_gro,
    gro_segment_size,
    not_wanted,
    report_tun,
    split_gro,
    wanted_features,
)
from m6t.linux.tun import READ_SIZE, PacketDevice
from m6t.linux.udp import UdpGso, read_icmp_errors
from m6t.protocol.client import Inbound, check_from_tun, classify_from_gateway
from m6t.protocol.constants import IPV6_HEADER_LENGTH, NEXT_HEADER_NONE
from m6t.protocol.drops import DropReason
from m6t.protocol.gso import (
    GSO_TCPV6,
    PLAIN_HEADER,
    VNET_HEADER_LENGTH,
    Coalescer,
    SegmentError,
    VirtioNetHeader,
    Write,
    segment,
)

log = logging.getLogger("m6t.helper")

POLL_MS = 250  # how soon a thread notices a stop or a new socket
BATCH = 128


@dataclass(frozen=True)
class Target:
    """Where the tunnel goes now; replaced as a whole."""

    address: bytes  # our IPv6 address (16 bytes)
    sock: socket.socket
    gateway: tuple[str, int]


ControlHandler = Callable[[Inbound, bytes], None]


class Pump:
    def __init__(self, tun: PacketDevice, target: Target, on_control: ControlHandler,
                 offloads: frozenset[str] | None = None) -> None:
        self.tun = tun
        self.target = target
        self.on_control = on_control  # called in a pump thread: must be thread-safe
        self.running = False
        # Each counter is written by one thread only.
        self.tx_packets = self.tx_bytes = 0
        self.rx_packets = self.rx_bytes = 0
        self.tx_drops: Counter[str] = Counter()
        self.rx_drops: Counter[str] = Counter()
        self.coalesced = 0  # packets written to the TUN inside super-packets
        self.segmented = 0  # packets cut from super-packets read from the TUN
        self.last_sent = self.last_received = time.monotonic()
        self._threads: list[threading.Thread] = []
        if offloads is None:
            try:
                offloads = wanted_features()
            except OffloadConfigError as exc:  # a debugging knob must not break the tunnel
                log.error("%s; using the default offloads", exc)
                offloads = wanted_features({})
        self.wanted = offloads
        # What is in use and why not the rest: the TUN device's, then each socket's.
        self.offload = OffloadReport()
        report_tun(tun.offloads, tun.report, self.offload)
        self._vnet_header = tun.offloads.vnet_header
        self._coalescer = (Coalescer(tcp=tun.offloads.coalesce_tcp,
                                     udp=tun.offloads.coalesce_udp, local_delivery=True)
                           if self._vnet_header else None)
        self._gro = False  # UDP GRO on the current socket
        self._gso = UdpGso(enabled=False)  # made for each new socket in _tun_batch

    def start(self) -> None:
        self.running = True
        thread = threading.Thread(target=self._guard, args=(self._loop,), name="pump",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)

    def _loop(self) -> None:
        tun_fd = self.tun.fileno()
        sock: socket.socket | None = None
        poller = select.poll()
        while self.running:
            target = self.target
            if target.sock is not sock:
                sock = target.sock
                self._adopt(sock)
                poller = select.poll()
                poller.register(tun_fd, select.POLLIN)
                poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
            for fd, _ in poller.poll(POLL_MS):
                if self.target is not target:
                    break  # a new address while we polled: its packets must not meet the old
                if fd == tun_fd:
                    self._tun_batch(target)
                else:
                    self._udp_batch(target, sock)

    def stop(self) -> None:
        self.running = False
        for thread in self._threads:
            thread.join(2)
        self._threads.clear()

    def retarget(self, target: Target) -> None:
        self.target = target

    def datapath(self) -> DatapathStatus:
        """What the status shows of this data path: offloads in use and why not the rest."""
        on, off = self.offload.snapshot()
        return DatapathStatus(offloads=on, off=off, fallbacks=self.offload.fallbacks(),
                              coalesced_packets=self.coalesced,
                              segmented_packets=self.segmented)

    def drops(self) -> dict[str, int]:
        merged = Counter(dict(self.tx_drops))
        merged.update(dict(self.rx_drops))
        return dict(merged)

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except Exception:  # a bug must not silently kill the tunnel: log it loudly
            log.exception("data path thread %s crashed", threading.current_thread().name)

    def _adopt(self, sock: socket.socket) -> None:
        """A new path (a new socket): what the old one could not do (GRO, GSO, a segment
        size) may work on this one."""
        self._gro = enable_udp_gro(sock, self.wanted, self.offload, "the tunnel socket")
        self._gso = UdpGso(sock, self._send_failed, enabled=UDP_GSO in self.wanted,
                           on_disabled=lambda why: self.offload.disabled(UDP_GSO, why))
        if self._gso.enabled:
            self.offload.enabled(UDP_GSO)
        else:
            self.offload.disabled(UDP_GSO, not_wanted(UDP_GSO))

    def _tun_batch(self, target: Target) -> None:
        read = os.read
        tun_fd = self.tun.fileno()
        vnet_header = self._vnet_header
        drops = self.tx_drops
        address, sock = target.address, target.sock
        if sock is not self._gso.sock:
            self._adopt(sock)
        gso = self._gso
        # The first packet of a batch leaves at once, so that a lone packet (a ping, an ACK, an
        # IKE message) does not wait for the read that finds the queue empty; the others leave
        # together after the batch, runs of one size as one UDP GSO message (see UdpGso).
        later: list[bytes] | None = None  # None until the first packet has left
        packets = octets = 0
        for _ in range(BATCH):
            try:
                raw = read(tun_fd, READ_SIZE)
            except BlockingIOError:
                break
            if not vnet_header:
                packet = raw
            elif raw[0] or raw[1]:  # a super-packet, or a checksum left to us: rare
                cut = self._segment(raw, address)
                if cut and later is None:
                    packets, octets = gso.send(cut[:1], None)
                    later = cut[1:]
                elif cut:
                    later.extend(cut)  # type: ignore[union-attr]
                continue
            else:
                packet = raw[VNET_HEADER_LENGTH:]
            if packet.startswith(address, 8) and len(packet) >= IPV6_HEADER_LENGTH:
                if later is None:
                    packets, octets = gso.send([packet], None)
                    later = []
                else:
                    later.append(packet)
            else:
                drops[check_from_tun(packet, address) or DropReason.SRC_NOT_OURS] += 1
        if later:
            sent, sent_octets = gso.send(later, None)
            packets += sent
            octets += sent_octets
        if packets:
            self.tx_packets += packets
            self.tx_bytes += octets
            self.last_sent = time.monotonic()

    def _segment(self, raw: bytes, address: bytes) -> list[bytes]:
        """A read that is a super-packet (TSO/USO), or a packet whose checksum the kernel left
        to us: the packets for the wire, none larger than the tunnel MTU, each checked."""
        header = VirtioNetHeader.unpack(raw)
        try:
            cut = segment(header, raw[VNET_HEADER_LENGTH:], self.tun.mtu)
        except SegmentError as exc:
            self.tx_drops[exc.reason] += 1
            return []
        if header.gso_type:
            self.segmented += len(cut)
        ours = [packet for packet in cut if packet.startswith(address, 8)]
        for packet in cut:
            if not packet.startswith(address, 8):
                self.tx_drops[check_from_tun(packet, address) or DropReason.SRC_NOT_OURS] += 1
        return ours

    def _send_failed(self, exc: OSError, lost: int) -> None:
        self.tx_drops[_send_error(exc)] += lost

    def _udp_batch(self, target: Target, sock: socket.socket) -> None:
        write = os.write
        tun_fd = self.tun.fileno()
        drops = self.rx_drops
        address, recv, recvmsg = target.address, sock.recv, sock.recvmsg
        gro = self._gro
        coalescer = self._coalescer
        vnet_header, writev = self._vnet_header, self.tun.writev
        startswith, repeat = bytes.startswith, itertools.repeat
        packets = octets = 0
        budget = BATCH
        first = True
        # A datagram of the size of the last one for the TUN, with the same first 41 bytes
        # (version, payload length, next header, destination; and the first byte after the
        # header, which tells an echo reply), is for the TUN too: one comparison for the next
        # packet of a run.
        same_head, same_size = b"\0", 0
        while budget > 0:
            try:
                if gro:
                    data, ancillary, _, _ = recvmsg(MAX_DATAGRAM, GRO_CONTROL_SPACE)
                    size = gro_segment_size(ancillary) if ancillary else 0
                    datagrams = split_gro(data, size) if size else (data,)
                else:
                    datagrams = (recv(MAX_DATAGRAM),)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    break
                read_icmp_errors(sock)
                drops["icmp_error"] += 1
                budget -= 1
                continue
            budget -= len(datagrams)
            count = len(datagrams)
            # A lone datagram (a ping, an ACK) goes straight to the device: the coalescer would
            # only add its bookkeeping to the latency.
            coalesce = coalescer is not None and not (first and count == 1)
            # A stretch of datagrams of the last one's size that all start with its first 41
            # bytes (the rest of a GRO receive, usually) is for the TUN: recognised in one pass
            # in C and handed to the coalescer whole; one failed try and the rest goes packet
            # by packet.
            stretches = coalesce and count > 2
            at = 0
            while at < count:
                if stretches and len(datagrams[at]) == same_size:
                    end = count if len(datagrams[-1]) == same_size else count - 1
                    stretch = datagrams[at:end]
                    if len(stretch) > 1 and all(map(startswith, stretch, repeat(same_head))):
                        coalescer.add_all(stretch)  # type: ignore[union-attr]
                        packets += len(stretch)
                        octets += same_size * len(stretch)
                        at = end
                        continue
                    stretches = False
                data = datagrams[at]
                at += 1
                if data.startswith(same_head) and len(data) == same_size:
                    kind: Inbound | DropReason = Inbound.TO_TUN
                elif (data.startswith(address, 24) and len(data) > IPV6_HEADER_LENGTH
                        and data[0] >> 4 == 6 and (data[4] << 8 | data[5]) + 40 == len(data)
                        and data[6] != NEXT_HEADER_NONE
                        and not (data[6] == 58 and data.startswith(b"\x81", 40))):
                    kind = Inbound.TO_TUN
                    same_head, same_size = data[:41], len(data)
                else:
                    kind = classify_from_gateway(data, address)
                if kind is Inbound.TO_TUN:
                    if coalesce:
                        coalescer.add(data)  # type: ignore[union-attr]
                    else:
                        try:
                            if vnet_header:
                                if not writev((PLAIN_HEADER, data)):
                                    raise OSError(errno.EINVAL, "refused")
                            else:
                                write(tun_fd, data)
                        except OSError:
                            drops["tun_write_failed"] += 1
                            continue
                    packets += 1
                    octets += len(data)
                elif isinstance(kind, Inbound):
                    self.last_received = time.monotonic()
                    self.on_control(kind, data)
                else:
                    drops[kind] += 1
            if first and coalescer:
                # The first receive goes to the TUN at once; the rest once the queue is empty.
                self._write_tun(coalescer.flush())
            first = False
        if coalescer:
            self._write_tun(coalescer.flush())
        if packets:
            self.rx_packets += packets
            self.rx_bytes += octets
            self.last_received = time.monotonic()

    def _write_tun(self, writes: list[Write]) -> None:
        writev = self.tun.writev
        for write in writes:
            try:
                if writev(write):
                    if write[0] is not PLAIN_HEADER:
                        self.coalesced += len(write) - 3
                elif write[0] is not PLAIN_HEADER:
                    self._refused_super_packet(write)
                else:
                    self.rx_drops["tun_write_failed"] += 1
            except OSError:
                self.rx_drops["tun_write_failed"] += 1

    def _refused_super_packet(self, write: Write) -> None:
        """The kernel would not take a super-packet (EINVAL): its packets go one by one, and
        that kind is not coalesced again on this device."""
        header = VirtioNetHeader.unpack(write[0])
        coalescer = self._coalescer
        assert coalescer is not None
        if header.gso_type == GSO_TCPV6:
            coalescer.tcp = False
            feature = TUN_COALESCE_TCP
        else:
            coalescer.udp = False
            feature = TUN_COALESCE_UDP
        self.offload.disabled(feature, "the TUN device refused a super-packet (EINVAL)",
                              self.tun.name)
        try:
            packets = segment(header, b"".join(write[1:]), 65535)
        except SegmentError as exc:
            self.rx_drops[exc.reason] += 1
            return
        for packet in packets:
            if not self.tun.writev((PLAIN_HEADER, packet)):
                self.rx_drops["tun_write_failed"] += 1


def _send_error(exc: OSError) -> str:
    if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
        return "send_buffer_full"
    if exc.errno == errno.EMSGSIZE:
        return "too_big_for_udp"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return "no_ipv4_route"
    if exc.errno == errno.ECONNREFUSED:
        return "gateway_refused"
    return "send_failed"
