"""A bare Python TUN <-> UDP forwarder: the reference the tunnel benchmark compares m6t with.

No checks, no state table, no keepalives: two threads per side, each a blocking loop of one
read and one write (the kind of forwarder the issue's "about 0.23 of the ceiling" was measured
with). The benchmark (bench/tunnel.py) runs it beside m6t in the same lab, on its own TUN
devices, prefix and UDP port, so both are measured in the same invocation.

    python bench/bare_forwarder.py client TUN GATEWAY_IPV4 PORT   # on the mobile node
    python bench/bare_forwarder.py server TUN PORT                # on the gateway host

With M6T_BARE_MODE=poll in the environment (bench/tunnel.py passes its own on), one thread
per side polls both descriptors and drains each, m6t's shape: what that shape costs in latency,
apart from m6t's work (docs/performance.md).

With M6T_BARE_MODE=offload-poll, offload or offload-block, issue 10's experiment: the same bare
forwarding with the four techniques the issue names, on m6t's own adapters (UDP GSO on send,
UDP GRO on receive, 4 MiB socket buffers, super-packets into an IFF_VNET_HDR TUN through
m6t.protocol.gso.Coalescer), still no checks: the most these techniques give a Python
forwarder on this machine. The three modes are its thread shapes: one thread per side polling
both descriptors (m6t's), one thread per direction polling its own, one thread per direction
blocked in its read and draining the queue without waiting. bench/tunnel.py runs it beside
m6t as "bare+offloads" (--experiment-shape).

The benchmark gives the TUN its address and routes; the forwarder only moves packets. It runs
until killed.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from collections.abc import Callable

import pytun

from m6t.linux.offload import (
    GRO_CONTROL_SPACE,
    MAX_DATAGRAM,
    enable_udp_gro,
    gro_segment_size,
    split_gro,
    wanted_features,
)
from m6t.linux.tun import READ_SIZE, TunDevice
from m6t.linux.udp import UdpGso, open_tunnel_socket
from m6t.protocol.gso import (
    VNET_HEADER_LENGTH,
    Coalescer,
    SegmentError,
    VirtioNetHeader,
    segment,
)

MTU = 1472


def open_tun(name: str) -> int:
    device = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    device.mtu = MTU
    device.up()
    open_tun.keep = device  # type: ignore[attr-defined]  # closing it would delete the device
    return int(device.fileno())


def client(tun: int, gateway: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((gateway, port))

    def up() -> None:
        while True:
            try:  # noqa: SIM105 (suppress() would cost a context manager per packet)
                sock.send(os.read(tun, 65536))
            except ConnectionRefusedError:  # an ICMP error about an earlier datagram
                pass

    threading.Thread(target=up, daemon=True).start()
    while True:
        try:  # noqa: SIM105
            os.write(tun, sock.recv(65535))
        except ConnectionRefusedError:
            pass


def server(tun: int, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    peer: list[tuple[str, int]] = []

    def down() -> None:
        while True:
            packet = os.read(tun, 65536)
            if peer:
                sock.sendto(packet, peer[0])

    threading.Thread(target=down, daemon=True).start()
    while True:
        packet, address = sock.recvfrom(65535)
        if not peer:
            peer.append(address)
        os.write(tun, packet)


def polled(tun: int, sock: socket.socket, peer: list[tuple[str, int]]) -> None:
    """M6T_BARE_MODE=poll: one thread, both descriptors non-blocking in one poll, each drained
    until empty, as m6t's daemons do; for comparing the two shapes' latency."""
    os.set_blocking(tun, False)
    sock.setblocking(False)
    poller = select.poll()
    poller.register(tun, select.POLLIN)
    poller.register(sock.fileno(), select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            while True:
                try:
                    if fd == tun:
                        packet = os.read(tun, 65536)
                        if peer:
                            sock.sendto(packet, peer[0])
                    else:
                        packet, address = sock.recvfrom(65535)
                        if not peer:
                            peer.append(address)
                        os.write(tun, packet)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    pass


class Offloaded:
    """M6T_BARE_MODE=offload-*: the client (`gateway` given) or the server, with the issue's
    techniques on m6t's adapters and no checks. Each batch is handled as m6t handles one: its
    first packet goes out at once, the rest once the queue is empty (runs of one size as one
    UDP GSO send; datagrams for the TUN through the coalescer)."""

    def __init__(self, name: str, gateway: tuple[str, int] | None, port: int) -> None:
        wanted = wanted_features()  # M6T_OFFLOADS, as for m6t: +tun_tso,+tun_uso for TSO reads
        self.device = TunDevice(name, MTU, offloads=wanted)
        self.tun = self.device.fileno()
        self.sock = open_tunnel_socket(("0.0.0.0", 0 if gateway else port), gateway)
        self.gro = enable_udp_gro(self.sock, wanted, self.device.report)
        self.gso = UdpGso(self.sock)
        self.client = gateway is not None
        self.peer = gateway  # the server answers whoever sent last
        offloads = self.device.offloads
        self.skip = VNET_HEADER_LENGTH if offloads.vnet_header else 0
        self.coalescer = Coalescer(tcp=offloads.coalesce_tcp, udp=offloads.coalesce_udp,
                                   local_delivery=self.client)
        self.buffer = bytearray(READ_SIZE)

    def run(self, shape: str) -> None:
        if shape == "offload-block":  # one thread per direction, blocked in its read
            os.set_blocking(self.tun, True)
            self.sock.setblocking(True)
            threading.Thread(target=self._forever, args=(self.up,), daemon=True).start()
            self._forever(self.down)
        elif shape == "offload":  # one thread per direction, each polling its descriptor
            threading.Thread(target=self._polled, args=({self.tun: self.up},),
                             daemon=True).start()
            self._polled({self.sock.fileno(): self.down})
        else:  # offload-poll: one thread polling both, as m6t's daemons do
            self._polled({self.tun: self.up, self.sock.fileno(): self.down})

    @staticmethod
    def _forever(handler: Callable[[], None]) -> None:
        while True:
            handler()

    @staticmethod
    def _polled(handlers: dict[int, Callable[[], None]]) -> None:
        poller = select.poll()
        for fd in handlers:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                handlers[fd]()

    def up(self) -> None:
        """TUN -> UDP: one packet (waiting for it if the descriptor blocks), then the queue."""
        try:
            first = os.read(self.tun, READ_SIZE)
        except BlockingIOError:
            return
        if self.peer is None:
            return
        to = None if self.client else self.peer
        self.gso.send(self._packets(first), to)
        view, batch = memoryview(self.buffer), []
        for _ in range(127):
            try:  # RWF_NOWAIT: never waits, whether the descriptor blocks or not
                size = os.preadv(self.tun, [self.buffer], -1, os.RWF_NOWAIT)
            except BlockingIOError:
                break
            batch.extend(self._packets(view[:size]))
        if batch:
            self.gso.send(batch, to)

    def _packets(self, raw: bytes | memoryview) -> list[bytes]:
        """What a read gives for the wire: the packet, or a TSO/USO super-packet (or a packet
        whose checksum the kernel left to us) cut by m6t's segmenter at the tunnel MTU."""
        if not self.skip or not (raw[0] or raw[1]):
            return [bytes(raw[self.skip:])]
        try:
            return segment(VirtioNetHeader.unpack(bytes(raw[:self.skip])),
                           bytes(raw[self.skip:]), MTU)
        except SegmentError:
            return []

    def down(self) -> None:
        """UDP -> TUN: one receive written at once, then the queue through the coalescer."""
        for flags in (0, *(socket.MSG_DONTWAIT,) * 127):
            try:
                data, ancillary, _, sender = self.sock.recvmsg(MAX_DATAGRAM, GRO_CONTROL_SPACE,
                                                               flags)
            except BlockingIOError:
                break
            except OSError:  # an ICMP error about an earlier datagram
                continue
            self.peer = sender
            size = gro_segment_size(ancillary) if self.gro and ancillary else 0
            datagrams = split_gro(data, size) if size else (data,)
            if not self.skip or (not size and not flags):  # a plain TUN, or a lone datagram
                for datagram in datagrams:                 # first: straight to the device
                    self.device.write(datagram)
                continue
            for datagram in datagrams:
                self.coalescer.add(datagram)
            if not flags:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        for write in self.coalescer.flush():
            self.device.writev(write)


def main(argv: list[str]) -> int:
    mode = os.environ.get("M6T_BARE_MODE")
    poll = mode == "poll"
    if mode and mode.startswith("offload") and len(argv) == 4 and argv[0] == "client":
        Offloaded(argv[1], (argv[2], int(argv[3])), 0).run(mode)
    elif mode and mode.startswith("offload") and len(argv) == 3 and argv[0] == "server":
        Offloaded(argv[1], None, int(argv[2])).run(mode)
    if len(argv) == 4 and argv[0] == "client":
        if poll:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect((argv[2], int(argv[3])))
            polled(open_tun(argv[1]), sock, [(argv[2], int(argv[3]))])
        client(open_tun(argv[1]), argv[2], int(argv[3]))
    elif len(argv) == 3 and argv[0] == "server":
        if poll:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", int(argv[2])))
            polled(open_tun(argv[1]), sock, [])
        server(open_tun(argv[1]), int(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
