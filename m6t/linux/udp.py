"""UDP/IPv4 sockets for the tunnel: never DF, large buffers, ICMP errors.

"implementation of this specification SHOULD NOT set the DF bit of the encapsulating IPv4
header" (MTU considerations): IP_PMTUDISC_DONT makes the kernel fragment instead.

"Reception of ICMP Packet too big messages from IPv4 routers on the path may be used to locally
update the MTU of the path." With IP_PMTUDISC_DONT, Linux does not queue "fragmentation needed"
on the socket's error queue (checked in the lab: only the other ICMP errors arrive there), so
`FragmentationNeededListener` reads them from a raw ICMP socket filtered to destination
unreachable, and matches them to our UDP sockets by the quoted headers.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

# Python 3.11's socket module lacks these (linux/in.h, linux/errqueue.h).
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IP_MTU = getattr(socket, "IP_MTU", 14)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_EE_ORIGIN_ICMP = 2
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
_EXTENDED_ERR = struct.Struct("=IBBBBII")

# The default 208 KiB receive buffer overflows under TCP load through the tunnel.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class IcmpError:
    """An ICMPv4 error the kernel matched to one of our datagrams (struct sock_extended_err)."""

    errno: int
    icmp_type: int
    icmp_code: int
    info: int  # for "fragmentation needed": the next-hop MTU
    destination: tuple[str, int] | None  # where our datagram was going

    @property
    def is_fragmentation_needed(self) -> bool:
        return self.icmp_type == ICMP_DEST_UNREACH and self.icmp_code == ICMP_FRAG_NEEDED


@dataclass(frozen=True, slots=True)
class FragmentationNeeded:
    """An ICMPv4 "fragmentation needed" about a UDP datagram we sent from `local` to `remote`."""

    local: tuple[str, int]
    remote: tuple[str, int]
    mtu: int


ICMP_FILTER = 1  # linux/icmp.h, a SOL_RAW option: bit N set = drop ICMP type N
SOL_RAW = 255
_IPV4_MIN_HEADER = 20
MIN_IPV4_MTU = 68  # RFC 791: every IPv4 link carries 68 bytes


def parse_fragmentation_needed(packet: bytes) -> FragmentationNeeded | None:
    """Parse what a raw ICMP socket reads (outer IPv4 header + ICMP); None unless it is a
    well-formed "fragmentation needed" quoting a UDP datagram."""
    if len(packet) < _IPV4_MIN_HEADER or packet[0] >> 4 != 4:
        return None
    outer = (packet[0] & 0x0F) * 4
    if outer < _IPV4_MIN_HEADER:
        return None
    icmp = packet[outer:]
    if len(icmp) < 8 + _IPV4_MIN_HEADER + 8:
        return None
    if icmp[0] != ICMP_DEST_UNREACH or icmp[1] != ICMP_FRAG_NEEDED:
        return None
    mtu = int.from_bytes(icmp[6:8], "big")
    inner = icmp[8:]
    inner_length = (inner[0] & 0x0F) * 4
    if (inner_length < _IPV4_MIN_HEADER or inner[0] >> 4 != 4
            or inner[9] != socket.IPPROTO_UDP or len(inner) < inner_length + 4):
        return None
    if mtu < MIN_IPV4_MTU:
        return None  # pre-RFC 1191 router: no usable figure
    sport, dport = struct.unpack_from("!HH", inner, inner_length)
    return FragmentationNeeded((socket.inet_ntoa(inner[12:16]), sport),
                               (socket.inet_ntoa(inner[16:20]), dport), mtu)


def open_fragmentation_needed_listener() -> socket.socket:
    """A raw ICMP socket that only sees destination-unreachable messages (needs CAP_NET_RAW)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~(1 << ICMP_DEST_UNREACH) & 0xFFFFFFFF))
    sock.setblocking(False)
    return sock


def read_fragmentation_needed(sock: socket.socket, limit: int = 64) -> list[FragmentationNeeded]:
    found: list[FragmentationNeeded] = []
    for _ in range(limit):
        try:
            packet = sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            break
        parsed = parse_fragmentation_needed(packet)
        if parsed is not None:
            found.append(parsed)
    return found


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root may exceed net.core.*mem_max
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def open_tunnel_socket(bind: tuple[str, int] = ("0.0.0.0", 0),
                       connect: tuple[str, int] | None = None,
                       buffer_bytes: int = SOCKET_BUFFER_BYTES) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer_bytes)
        _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer_bytes)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.bind(bind)
        if connect is not None:
            sock.connect(connect)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def read_icmp_errors(sock: socket.socket, limit: int = 64) -> list[IcmpError]:
    """Drain the socket's error queue (IP_RECVERR)."""
    errors: list[IcmpError] = []
    for _ in range(limit):
        try:
            # msg_name is the destination of the datagram that caused the error; the
            # offender address after sock_extended_err is the router that complained.
            flags = socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
            _, ancillary, _, address = sock.recvmsg(1, 512, flags)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                break
            raise
        for level, kind, data in ancillary:
            if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(data) < _EXTENDED_ERR.size:
                continue
            err, origin, icmp_type, code, _, info, _ = _EXTENDED_ERR.unpack_from(data)
            if origin != SO_EE_ORIGIN_ICMP:
                continue
            destination = address if isinstance(address, tuple) else None
            errors.append(IcmpError(err, icmp_type, code, info, destination))
    return errors


# With IP_RECVERR, an ICMP error about an earlier datagram (a client's closed port, a host
# that became unreachable, or one forged by anyone who knows our address and port) also fails
# the next send on the socket, whoever it is for, and that datagram is not sent: on a gateway's
# shared socket, one client's closed port would cost another client a packet (or a whole GSO
# run). Such a send is tried once more. These are the errors Linux makes of ICMP errors for UDP
# (net/ipv4/icmp.c icmp_err_convert; time exceeded; parameter problem).
EARLIER_DATAGRAM_ERRORS = frozenset({
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENOPROTOOPT, errno.ECONNREFUSED,
    errno.EOPNOTSUPP, errno.EHOSTDOWN, errno.ENONET, errno.EPROTO,
})


def send_datagram(sock: socket.socket, data: bytes, to: tuple[str, int] | None,
                  control: list[tuple[int, int, bytes]] | None = None) -> None:
    """One datagram (with ancillary `control`, if any) to `to`, or to where `sock` is
    connected; an error that only reports an earlier datagram's fate gets a second try."""
    for last in (False, True):
        try:
            if control:
                if to is None:
                    sock.sendmsg([data], control)
                else:
                    sock.sendmsg([data], control, 0, to)
            elif to is None:
                sock.send(data)
            else:
                sock.sendto(data, to)
            return
        except OSError as exc:
            if last or exc.errno not in EARLIER_DATAGRAM_ERRORS:
                raise


# --- UDP GSO: one system call for a run of same-size datagrams ----------------------------------

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = 103  # linux/udp.h, Linux 4.18: the segment size of a UDP GSO send
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS before Linux 6.3 (128 since)
GSO_MAX_BYTES = 65_000  # the whole message is one UDP datagram to the stack: under 64 KiB

SendErrorHandler = Callable[[OSError, int], None]


def gso_limit(size: int) -> int:
    """How many datagrams of `size` bytes one GSO message may carry."""
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // max(size, 1)))


class UdpGso:
    """Sends runs of datagrams of one size, each run with one `sendmsg(UDP_SEGMENT)`.

    The kernel cuts the message into one datagram per segment just before the device (in
    software if the device cannot), so the wire is the same as with one send per datagram, but
    the system call and the trip down the UDP/IP stack are paid once per run: this is most of a
    tunnel's cost per packet (wireguard-go and Tailscale do the same). Where the kernel cannot,
    the run goes out one datagram at a time, as before:
    - EMSGSIZE (EINVAL before Linux 6.x): a segment needs IPv4 fragmentation on the local link
      (we never set DF), which GSO does not do; sizes from the smallest refused one up are then
      sent one by one, and the kernel fragments them;
    - EIO (no checksum offload before Linux 6.11, or IPsec on the IPv4 path) or ENOPROTOOPT
      (no UDP GSO): never again on this socket.
    Other errors lose the run and are reported to `on_error(exc, lost)`.
    """

    def __init__(self, sock: socket.socket | None = None,
                 on_error: SendErrorHandler | None = None, enabled: bool = True,
                 on_disabled: Callable[[str], None] | None = None) -> None:
        self.sock = sock
        self.on_error = on_error
        self.enabled = enabled
        self.on_disabled = on_disabled  # told why, once, when the kernel refuses GSO for good
        self.refused_size = 1 << 16  # the smallest segment size the kernel refused

    def send(self, datagrams: list[bytes], to: tuple[str, int] | None,
             sock: socket.socket | None = None) -> tuple[int, int]:
        """Send `datagrams` in order, each run of same-size ones (up to gso_limit) as one
        message. Returns how many datagrams, and how many bytes, went out."""
        count = octets = 0
        start, end = 0, len(datagrams)
        while start < end:
            size = len(datagrams[start])
            stop = min(end, start + gso_limit(size))
            last = start + 1
            while last < stop and len(datagrams[last]) == size:
                last += 1
            sent = self.send_run(datagrams[start:last], size, to, sock)
            count += sent
            octets += sent * size
            start = last
        return count, octets

    def send_run(self, run: list[bytes], size: int, to: tuple[str, int] | None,
                 sock: socket.socket | None = None) -> int:
        """Send `run` (datagrams of `size` bytes) on `sock` (default: this sender's socket),
        to `to` or, if None, to where the socket is connected. Returns how many went out."""
        sock = sock or self.sock
        assert sock is not None
        if len(run) > 1 and self.enabled and size < self.refused_size:
            control = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
            try:
                send_datagram(sock, b"".join(run), to, control)
                return len(run)
            except OSError as exc:
                if exc.errno in (errno.EMSGSIZE, errno.EINVAL):
                    self.refused_size = size
                elif exc.errno in (errno.EIO, errno.ENOPROTOOPT):
                    self.enabled = False
                    if self.on_disabled is not None:
                        name = errno.errorcode.get(exc.errno, str(exc.errno))
                        self.on_disabled(f"sendmsg(UDP_SEGMENT) refused: {name}: "
                                         f"{exc.strerror}")
                else:
                    self._failed(exc, len(run))
                    return 0
        sent = 0
        for datagram in run:
            try:
                send_datagram(sock, datagram, to)
                sent += 1
            except OSError as exc:
                self._failed(exc, 1)
        return sent

    def _failed(self, exc: OSError, lost: int) -> None:
        if self.on_error is None:
            raise exc
        self.on_error(exc, lost)
