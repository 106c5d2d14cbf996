"""TUN devices (python-pytun), read and written as plain non-blocking file descriptors, with
the offloads of m6t.linux.offload when the kernel has them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pytun

from m6t.linux.offload import (
    PLAIN_TUN,
    TUN_FEATURES,
    OffloadReport,
    TunOffloads,
    negotiate_tun,
    not_wanted,
    wanted_features,
)
from m6t.protocol.gso import PLAIN_HEADER

log = logging.getLogger("m6t.tun")

# A read: the largest super-packet (64 KiB of IPv6 payload, plus its header) and the
# virtio-net header in front.
READ_SIZE = 65_536 + 40 + 10 + 64
# Packets the kernel may queue for the daemon to read (the device's txqueuelen): TUN's default
# of 500 overflows under one TCP flow, whose local queue TCP Small Queues lets grow to
# tcp_limit_output_bytes (4 MB), so every burst cost drops and halved windows; 1000 is what
# Ethernet devices get.
QUEUE_PACKETS = 1000
SIOCSIFTXQLEN = 0x8943
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_MULTICAST = 0x1000


class PacketDevice(Protocol):
    """What a daemon needs from a TUN device. Tests substitute m6t.linux.tuntest.ChannelTun,
    whose descriptor reads and writes packet by packet like this one's.

    With `offloads.vnet_header`, what `read` returns and what `writev` is given start with a
    virtio-net header (m6t.protocol.gso); `write` always takes a plain IPv6 packet."""

    name: str
    mtu: int
    offloads: TunOffloads
    report: OffloadReport

    def fileno(self) -> int: ...
    def read(self) -> bytes | None: ...
    def write(self, packet: bytes) -> None: ...
    def writev(self, buffers: Sequence[bytes]) -> bool: ...
    def close(self) -> None: ...


class TunError(OSError):
    pass


def set_queue_length(name: str, packets: int) -> None:
    """The device's txqueuelen (SIOCSIFTXQLEN): how many packets wait for us to read them."""
    request = struct.pack("16si", name.encode(), packets)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock, SIOCSIFTXQLEN, request)
        except OSError as exc:  # not fatal: the kernel's default queue still works
            log.warning("cannot set the queue of %s to %d packets: %s", name, packets, exc)


# Errors that lose one write, as a router loses a packet: EINVAL, not a packet the kernel
# accepts (it checks the IP header and the virtio-net header); ENOMEM or ENOBUFS, no memory
# for it now; EIO, the device is going down.
WRITE_DROPS = frozenset({errno.EINVAL, errno.EIO, errno.ENOMEM, errno.ENOBUFS})


def quiet_ipv6(ifname: str) -> None:
    """A tunnel device is point to point with routed addresses only. Before it comes up: no
    link-local address, router solicitations, DAD probes or autoconfiguration from router
    advertisements, and no multicast (without IFF_MULTICAST the kernel sends no MLD reports
    into it). Otherwise the kernel's own packets arrive on the first reads, and the gateway
    counted them as drops. Best effort: a device works without it."""
    for key, value in (("addr_gen_mode", "1"), ("accept_ra", "0"),
                       ("router_solicitations", "0"), ("accept_dad", "0")):
        with contextlib.suppress(OSError):
            Path("/proc/sys/net/ipv6/conf", ifname, key).write_text(value)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH22x", ifname.encode(), 0))
            flags = struct.unpack_from("16sH", request)[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS,
                        struct.pack("16sH22x", ifname.encode(), flags & ~IFF_MULTICAST))
        except OSError as exc:
            log.debug("cannot turn multicast off on %s: %s", ifname, exc)


class TunDevice:
    """An IFF_TUN | IFF_NO_PI device: each read is one IPv6 packet, no header in front (or,
    with offloads, a virtio-net header and then a packet or super-packet).

    os.read/os.write on the descriptor instead of pytun's read/write: they raise the usual
    BlockingIOError (pytun raises its own Error with errno 11) and cost less per packet.

    `offloads` names the features to try (default: from the environment, see
    m6t.linux.offload); `report` says what the device ended up with, and why not the rest.
    """

    def __init__(self, name: str, mtu: int, up: bool = True,
                 offloads: frozenset[str] | None = None) -> None:
        wanted = wanted_features() if offloads is None else offloads
        self.report = OffloadReport()
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI
        device = None
        if any(feature in wanted for feature in TUN_FEATURES):
            try:
                device = pytun.TunTapDevice(name=name, flags=flags | pytun.IFF_VNET_HDR)
            except pytun.Error as exc:
                for feature in TUN_FEATURES:
                    self.report.disabled(feature, f"IFF_VNET_HDR refused: {exc}", name)
        else:
            for feature in TUN_FEATURES:
                self.report.disabled(feature, not_wanted(feature))
        vnet_header = device is not None
        if device is None:
            try:
                device = pytun.TunTapDevice(name=name, flags=flags)
            except pytun.Error as exc:
                raise TunError(errno.EPERM, f"cannot create TUN device {name}: {exc}") from None
        self._device = device
        self.name: str = device.name
        self._fd: int = device.fileno()
        self.offloads: TunOffloads = PLAIN_TUN
        try:
            if vnet_header:
                self.offloads = negotiate_tun(self._fd, wanted, self.report)
            self._vnet_header = self.offloads.vnet_header
            os.set_blocking(self._fd, False)
            self.mtu = mtu
            set_queue_length(self.name, QUEUE_PACKETS)
            quiet_ipv6(self.name)
            if up:
                device.up()
        except BaseException:
            device.close()
            raise

    def up(self) -> None:
        self._device.up()

    def fileno(self) -> int:
        return self._fd

    @property
    def mtu(self) -> int:
        """The MTU this device was given (asking the kernel costs a socket and an ioctl, 4 us:
        the segmenter reads it per super-packet)."""
        return self._mtu

    @mtu.setter
    def mtu(self, value: int) -> None:
        self._device.mtu = value
        self._mtu = value

    def read(self) -> bytes | None:
        """What the device has next (see PacketDevice), or None when the queue is empty."""
        try:
            return os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        """One plain IPv6 packet."""
        try:
            if self._vnet_header:
                os.writev(self._fd, (PLAIN_HEADER, packet))
            else:
                os.write(self._fd, packet)
        except BlockingIOError:
            pass  # the kernel's queue is full: a drop, as a router would do
        except OSError as exc:
            if exc.errno not in WRITE_DROPS:
                raise

    def writev(self, buffers: Sequence[bytes]) -> bool:
        """One write made of `buffers` (a virtio-net header first, with offloads). A write the
        device cannot take now is lost, as a router loses a packet. Returns False if the kernel
        refused it as invalid (EINVAL: a bad packet, or a super-packet it cannot take)."""
        try:
            os.writev(self._fd, buffers)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            if exc.errno not in WRITE_DROPS:
                raise
        return True

    def close(self) -> None:
        self._device.close()
