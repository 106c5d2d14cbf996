"""In-process fakes of a daemon's TUN device, UDP/IPv4 network and netlink, for tests without
root (the habit of wireguard-go's `tun/tuntest` ChannelTUN).

Each fake has a real file descriptor where the daemon expects one, so that the daemon's own
loop (epoll, os.read/os.write, recvfrom/sendto/sendmsg) runs unchanged:

- `ChannelTun`: a TUN device. The daemon's side reads and writes one packet per call; the test
  puts packets in with `inbound(packet)` (as if the kernel routed them into the device) and
  takes out what the daemon wrote with `outbound(timeout)`. Given `offloads` (a virtio-net
  header on every read and write, m6t.linux.offload.TunOffloads), `outbound_packets(timeout)`
  cuts what the daemon wrote back into packets, as the kernel would.
- `FakeNetwork`: an IPv4 "network" of UDP sockets (`open(bind, connect)`, the signature of
  m6t.linux.udp.open_tunnel_socket) that deliver to each other by (address, port), with UDP GSO
  and (`gro=True`) UDP GRO, plus the raw ICMP listener (`icmp_listener()`, fed by
  `deliver_icmp(packet)`).
- `FakeNetlink`: records routes and sysctls.

Nothing here touches a real interface or sends to a real address: every descriptor is one end of
an AF_UNIX socketpair.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from typing import Any

from m6t.linux.offload import PLAIN_TUN, UDP_GRO_OPTION, OffloadReport, TunOffloads
from m6t.linux.udp import GSO_MAX_SEGMENTS, SOL_UDP, UDP_SEGMENT
from m6t.protocol.gso import PLAIN_HEADER, VNET_HEADER_LENGTH, VirtioNetHeader, segment

# What the test side of a fake waits for at most before a full queue is an error rather than
# a hang: the daemon under test stopped reading.
WIRE_TIMEOUT = 5.0

MAX_UDP_PAYLOAD = 65_507  # 65535 - 20 (IPv4) - 8 (UDP)
EPHEMERAL_PORTS = range(32768, 61000)  # Linux's default net.ipv4.ip_local_port_range
WILDCARD = "0.0.0.0"

_ENDPOINT = struct.Struct("!4sH")  # in front of each datagram on a fake wire: the peer


class ChannelTun:
    """A TUN device with no kernel behind it (satisfies m6t.linux.tun.PacketDevice).

    The descriptor is one end of an AF_UNIX SOCK_SEQPACKET pair: like a TUN descriptor it is
    non-blocking, each read returns one whole packet and each write sends one, and poll/epoll
    see it readable while a packet waits. Unlike the kernel, it neither checks packets written to
    it nor enforces `mtu` on packets put in with `inbound`: a test decides what arrives.

    With `offloads.vnet_header`, every read and write carries a virtio-net header, as on a
    device opened with IFF_VNET_HDR: `inbound` puts a plain header in front of a packet
    (`inbound_raw` takes header and packet as they are, a super-packet say), `outbound` returns
    what the daemon wrote, header included, and `outbound_packets` the packets in it.
    """

    def __init__(self, name: str = "m6tfake0", mtu: int = 1472, up: bool = True,
                 offloads: TunOffloads = PLAIN_TUN) -> None:
        self.name = name
        self.mtu = mtu
        self.is_up = up
        self.offloads = offloads
        self.report = OffloadReport()
        self._device, self._wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._device.setblocking(False)
        self._wire.settimeout(WIRE_TIMEOUT)
        self._fd = self._device.fileno()

    # --- the daemon's side: TunDevice's interface ---

    def up(self) -> None:
        self.is_up = True

    def fileno(self) -> int:
        return self._fd

    def read(self) -> bytes | None:
        """One packet, or None when the queue is empty."""
        try:
            return os.read(self._fd, 65536)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        # A full queue drops the packet, as the kernel's TUN queue would.
        if self.offloads.vnet_header:
            packet = PLAIN_HEADER + packet
        with contextlib.suppress(BlockingIOError):
            os.write(self._fd, packet)

    def writev(self, buffers: Sequence[bytes]) -> bool:
        with contextlib.suppress(BlockingIOError):
            os.write(self._fd, b"".join(buffers))
        return True

    def close(self) -> None:
        self._device.close()
        self._wire.close()

    @property
    def closed(self) -> bool:
        return self._device.fileno() == -1

    # --- the test's side ---

    def inbound(self, packet: bytes) -> None:
        """Queue `packet` for the daemon to read, as if the kernel routed it into the device."""
        self._wire.send(PLAIN_HEADER + packet if self.offloads.vnet_header else packet)

    def inbound_raw(self, data: bytes) -> None:
        """Queue `data` as it is (with offloads: a virtio-net header and a packet)."""
        self._wire.send(data)

    def outbound(self, timeout: float = 1.0) -> bytes | None:
        """The next packet the daemon wrote to the device, or None if none comes in `timeout`
        seconds."""
        if not select.select([self._wire], [], [], timeout)[0]:
            return None
        return self._wire.recv(1 << 17)

    def outbound_packets(self, timeout: float = 1.0) -> list[bytes] | None:
        """The packets in the next write of the daemon (a super-packet cut as the kernel would
        cut it), or None if nothing comes in `timeout` seconds."""
        data = self.outbound(timeout)
        if data is None or not self.offloads.vnet_header:
            return None if data is None else [data]
        return segment(VirtioNetHeader.unpack(data), data[VNET_HEADER_LENGTH:], 65535)


class FakeUdpSocket(socket.socket):
    """A UDP/IPv4 socket on a `FakeNetwork`, made by `FakeNetwork.open`.

    What a daemon does with a tunnel socket works as on Linux: sendto/recvfrom with
    (address, port) tuples, connect then send/recv (a connected socket only receives from its
    peer), sendmsg with a UDP_SEGMENT control message (UDP GSO: the receiver gets one datagram
    per segment), non-blocking or with a timeout, fileno() for poll/epoll. The error queue
    (MSG_ERRQUEUE) is always empty: the fake network sends no ICMP errors. Underneath, it is an
    AF_UNIX datagram socket whose peer end the network writes to.
    """

    def __init__(self, network: FakeNetwork, local: tuple[str, int]) -> None:
        mine, wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        super().__init__(socket.AF_UNIX, socket.SOCK_DGRAM, fileno=mine.detach())
        wire.setblocking(False)
        wire.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)  # capped by wmem_max
        self._wire = wire
        self._network = network
        self._local = local
        self._peer: tuple[str, int] | None = None
        self._gro = False

    # --- addresses ---

    def getsockname(self) -> tuple[str, int]:
        return self._local

    def getpeername(self) -> tuple[str, int]:
        if self._peer is None:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        return self._peer

    def connect(self, address: Any) -> None:
        self._peer = _endpoint(address)

    # --- receiving ---

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        while True:
            framed = super().recv(bufsize + _ENDPOINT.size, flags)
            host, port = _ENDPOINT.unpack_from(framed)
            sender = (socket.inet_ntoa(host), port)
            if self._peer is None or sender == self._peer:
                return framed[_ENDPOINT.size:], sender

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self.recvfrom(bufsize, flags)[0]

    def recvmsg(self, bufsize: int, ancbufsize: int = 0,
                flags: int = 0) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        if flags & socket.MSG_ERRQUEUE:
            raise BlockingIOError(errno.EAGAIN, "no ICMP errors on a fake network")
        data, sender = self.recvfrom(bufsize, flags)
        if not self._gro:
            return data, [], 0, sender
        # UDP GRO: the datagrams queued behind this one from the same sender and of its size
        # (the last may be shorter) come in the same receive, at most 64 and 64 KiB.
        size, glued = len(data), [data]
        total = size
        while len(glued) < GSO_MAX_SEGMENTS and len(glued[-1]) == size:
            try:
                framed = super().recv(bufsize + _ENDPOINT.size,
                                      socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            host, port = _ENDPOINT.unpack_from(framed)
            follower = framed[_ENDPOINT.size:]
            if ((socket.inet_ntoa(host), port) != sender or not 0 < len(follower) <= size
                    or total + len(follower) > min(bufsize, MAX_UDP_PAYLOAD)):
                break
            super().recv(bufsize + _ENDPOINT.size)  # take it
            glued.append(follower)
            total += len(follower)
        if len(glued) == 1:
            return data, [], 0, sender
        return (b"".join(glued), [(SOL_UDP, UDP_GRO_OPTION, size.to_bytes(4, sys.byteorder))],
                0, sender)

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        """UDP_GRO where the network has it (ENOPROTOOPT where not, as on Linux before 5.0);
        other options go to the AF_UNIX socket underneath."""
        if level == SOL_UDP and option == UDP_GRO_OPTION:
            if not self._network.gro:
                raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))
            self._gro = bool(value)
            return
        super().setsockopt(level, option, value, *rest)

    # --- sending ---

    def sendto(self, data: Any, *flags_and_address: Any) -> int:
        address = flags_and_address[-1]
        self._network._deliver(self, bytes(data), _endpoint(address))
        return len(data)

    def send(self, data: Any, flags: int = 0) -> int:
        return self.sendto(data, self._connected_peer())

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0,
                address: Any = None) -> int:
        data = b"".join(bytes(buffer) for buffer in buffers)
        to = self._connected_peer() if address is None else _endpoint(address)
        segment = 0
        for level, kind, value in ancdata:
            if level == SOL_UDP and kind == UDP_SEGMENT:
                segment = int.from_bytes(value, sys.byteorder)
        if segment and len(data) > segment:
            if not self._network.gso:
                raise OSError(errno.EIO, "no UDP GSO on this fake network")
            if -(-len(data) // segment) > GSO_MAX_SEGMENTS:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            for start in range(0, len(data), segment):
                self._network._deliver(self, data[start:start + segment], to)
        else:
            self._network._deliver(self, data, to)
        return len(data)

    def _connected_peer(self) -> tuple[str, int]:
        if self._peer is None:
            raise OSError(errno.EDESTADDRREQ, os.strerror(errno.EDESTADDRREQ))
        return self._peer

    def close(self) -> None:
        if self.fileno() != -1:
            self._network._unbind(self)
            self._wire.close()
        super().close()


class FakeNetwork:
    """An in-process IPv4 network of UDP sockets, each bound to an (address, port).

    `open(bind, connect)` makes a socket as m6t.linux.udp.open_tunnel_socket does: pass it
    where a daemon opens its tunnel sockets, and open more for the test's clients. A datagram
    sent to (address, port) goes to the socket bound there, or to one bound to 0.0.0.0 on that
    port; to nobody (or to a socket whose queue is full), it is lost and counted in `lost`, as a
    network would. A socket bound to 0.0.0.0 sends from `default_address`. With `gso=False`,
    a UDP GSO send fails with EIO, as on a kernel without checksum offload for it. With
    `gro=True`, a socket may turn UDP_GRO on, and then receives a run of same-size datagrams
    from one sender in one recvmsg, as Linux does; without, setsockopt(UDP_GRO) fails.

    `icmp_listener()` stands in for the raw ICMP socket of m6t.linux.udp's
    open_fragmentation_needed_listener; `deliver_icmp(packet)` gives each one `packet` (an IPv4
    header and its ICMP message, what a raw socket reads).
    """

    def __init__(self, default_address: str = "192.0.2.1", gso: bool = True,
                 gro: bool = False) -> None:
        self.default_address = default_address
        self.gso = gso
        self.gro = gro
        self.lost = 0
        self._bound: dict[tuple[str, int], FakeUdpSocket] = {}
        self._icmp: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self, bind: tuple[str, int] = (WILDCARD, 0),
             connect: tuple[str, int] | None = None) -> FakeUdpSocket:
        """A non-blocking socket bound to `bind` (port 0: a free one), connected if asked."""
        host, port = _endpoint(bind)
        with self._lock:
            if port == 0:
                port = next(p for p in EPHEMERAL_PORTS if (host, p) not in self._bound)
            if (host, port) in self._bound:
                raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
            sock = FakeUdpSocket(self, (host, port))
            self._bound[host, port] = sock
        sock.setblocking(False)
        if connect is not None:
            sock.connect(connect)
        return sock

    def bound(self) -> set[tuple[str, int]]:
        """Where open sockets listen."""
        return set(self._bound)

    def icmp_listener(self) -> socket.socket:
        device, wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        device.setblocking(False)
        wire.setblocking(False)
        with self._lock:
            self._icmp.append(wire)
        return device

    def deliver_icmp(self, packet: bytes) -> int:
        """Give `packet` to every open ICMP listener; returns how many got it."""
        delivered = 0
        with self._lock:
            for wire in list(self._icmp):
                try:
                    wire.send(packet)
                    delivered += 1
                except ConnectionRefusedError:  # the listener was closed
                    self._icmp.remove(wire)
                    wire.close()
                except BlockingIOError:
                    self.lost += 1
        return delivered

    def close(self) -> None:
        """Close what the network itself holds (sockets from `open` are their owners')."""
        with self._lock:
            for wire in self._icmp:
                wire.close()
            self._icmp.clear()

    def _deliver(self, sender: FakeUdpSocket, data: bytes, to: tuple[str, int]) -> None:
        if len(data) > MAX_UDP_PAYLOAD:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        receiver = self._bound.get(to) or self._bound.get((WILDCARD, to[1]))
        if receiver is None:
            self.lost += 1
            return
        host, port = sender.getsockname()
        if host == WILDCARD:
            host = self.default_address
        try:
            receiver._wire.send(_ENDPOINT.pack(socket.inet_aton(host), port) + data)
        except OSError:  # a full queue, or a socket closing meanwhile
            self.lost += 1

    def _unbind(self, sock: FakeUdpSocket) -> None:
        with self._lock:
            if self._bound.get(sock.getsockname()) is sock:
                del self._bound[sock.getsockname()]


def _endpoint(address: Any) -> tuple[str, int]:
    """An (IPv4 address, port) tuple, checked as the kernel would check a sockaddr_in."""
    try:
        host, port = address
        socket.inet_aton(host)
    except (TypeError, ValueError, OSError):
        raise TypeError(f"expected (IPv4 address, port), got {address!r}") from None
    if not 0 <= port <= 65535:
        raise OverflowError("port must be 0-65535")
    return str(host), int(port)


class FakeNetlink:
    """Routes and sysctls of a fake network namespace, recorded for tests to inspect.

    The subset of m6t.linux.netlink.Netlink a gateway uses, plus read_sysctl/write_sysctl.
    `routes` holds (destination, ifname) pairs (the metric is accepted and ignored); adding one
    twice or deleting a missing one is tolerated and returns False, as Netlink does.
    """

    def __init__(self, sysctls: dict[str, str] | None = None) -> None:
        self.routes: set[tuple[str, str]] = set()
        self.sysctls: dict[str, str] = (
            {"net/ipv6/conf/all/forwarding": "0"} if sysctls is None else dict(sysctls))
        self.closed = False

    def add_route(self, destination: str, ifname: str, metric: int = 1024,
                  source: str | None = None) -> bool:
        if (destination, ifname) in self.routes:
            return False
        self.routes.add((destination, ifname))
        return True

    def delete_route(self, destination: str, ifname: str, metric: int = 1024) -> bool:
        if (destination, ifname) not in self.routes:
            return False
        self.routes.discard((destination, ifname))
        return True

    def read_sysctl(self, name: str) -> str:
        try:
            return self.sysctls[name]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, f"no sysctl {name}") from None

    def write_sysctl(self, name: str, value: str) -> None:
        self.sysctls[name] = value

    def close(self) -> None:
        self.closed = True

