"""The data path of one tunnel: two threads, TUN -> UDP and UDP -> TUN.

Each direction blocks in its own thread, so the kernel work of one (a TUN write runs the whole
receive path of the IPv6 stack) overlaps the other on a second core; the GIL is held only for
the few checks per packet. Packets the helper itself must see (keepalive replies, replies to
its probes) are handed to the asyncio loop; every other packet that is not forwarded is
dropped with a named reason and counted.

The address, socket and gateway can be swapped while running (a new address after a network
change): `retarget()` replaces them in one assignment, which both threads pick up at once.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from m6t.linux.tun import TunDevice
from m6t.linux.udp import read_icmp_errors
from m6t.protocol.client import Inbound, check_from_tun, classify_from_gateway
from m6t.protocol.constants import IPV6_HEADER_LENGTH, NEXT_HEADER_NONE
from m6t.protocol.drops import DropReason

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
    def __init__(self, tun: TunDevice, target: Target, on_control: ControlHandler) -> None:
        self.tun = tun
        self.target = target
        self.on_control = on_control  # called in a pump thread: must be thread-safe
        self.running = False
        # Each counter is written by one thread only.
        self.tx_packets = self.tx_bytes = 0
        self.rx_packets = self.rx_bytes = 0
        self.tx_drops: Counter[str] = Counter()
        self.rx_drops: Counter[str] = Counter()
        self.last_sent = self.last_received = time.monotonic()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.running = True
        for name, body in (("tun->udp", self._tun_to_udp), ("udp->tun", self._udp_to_tun)):
            thread = threading.Thread(target=self._guard, args=(body,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.running = False
        for thread in self._threads:
            thread.join(2)
        self._threads.clear()

    def retarget(self, target: Target) -> None:
        self.target = target

    def drops(self) -> dict[str, int]:
        merged = Counter(dict(self.tx_drops))
        merged.update(dict(self.rx_drops))
        return dict(merged)

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except Exception:  # a bug must not silently kill the tunnel: log it loudly
            log.exception("data path thread %s crashed", threading.current_thread().name)

    def _tun_to_udp(self) -> None:
        poller = select.poll()
        tun_fd = self.tun.fileno()
        poller.register(tun_fd, select.POLLIN)
        read = os.read
        drops = self.tx_drops
        while self.running:
            if not poller.poll(POLL_MS):
                continue
            target = self.target
            address, sendto, gateway = target.address, target.sock.sendto, target.gateway
            packets = octets = 0
            for _ in range(BATCH):
                try:
                    packet = read(tun_fd, 65536)
                except BlockingIOError:
                    break
                # Fast path: our source address. Anything else gets the full check and a name.
                if packet.startswith(address, 8) and len(packet) >= IPV6_HEADER_LENGTH:
                    try:
                        sendto(packet, gateway)
                    except OSError as exc:
                        drops[_send_error(exc)] += 1
                        continue
                    packets += 1
                    octets += len(packet)
                else:
                    drops[check_from_tun(packet, address) or DropReason.SRC_NOT_OURS] += 1
            if packets:
                self.tx_packets += packets
                self.tx_bytes += octets
                self.last_sent = time.monotonic()

    def _udp_to_tun(self) -> None:
        poller = select.poll()
        sock: socket.socket | None = None
        write = os.write
        tun_fd = self.tun.fileno()
        drops = self.rx_drops
        while self.running:
            target = self.target
            if target.sock is not sock:
                # A fresh poller: the old socket may be closed already, its number reused.
                sock = target.sock
                poller = select.poll()
                poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
            if not poller.poll(POLL_MS):
                continue
            address, gateway, recvfrom = target.address, target.gateway, sock.recvfrom
            packets = octets = 0
            for _ in range(BATCH):
                try:
                    data, sender = recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        break  # swapped out and closed under us: the next loop takes the new one
                    read_icmp_errors(sock)  # e.g. port unreachable while the gateway is down
                    drops["icmp_error"] += 1
                    continue
                if sender != gateway:
                    drops[DropReason.NOT_FROM_GATEWAY] += 1
                    continue
                # Fast path: a well-formed data packet for us that is neither a keepalive
                # reply nor a reply to one of our probes.
                if (data.startswith(address, 24) and len(data) >= IPV6_HEADER_LENGTH
                        and data[0] >> 4 == 6 and (data[4] << 8 | data[5]) + 40 == len(data)
                        and data[6] != NEXT_HEADER_NONE
                        and not (data[6] == 58 and data.startswith(b"\x81", 40))):
                    kind: Inbound | DropReason = Inbound.TO_TUN
                else:
                    kind = classify_from_gateway(data, address)
                if kind is Inbound.TO_TUN:
                    try:
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
            if packets:
                self.rx_packets += packets
                self.rx_bytes += octets
                self.last_received = time.monotonic()


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
