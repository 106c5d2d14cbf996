"""TUN devices (python-pytun), read and written as plain non-blocking file descriptors."""

from __future__ import annotations

import errno
import os
from typing import Protocol

import pytun


class PacketDevice(Protocol):
    """What a daemon needs from a TUN device. Tests substitute m6t.linux.tuntest.ChannelTun,
    whose descriptor reads and writes packet by packet like this one's."""

    name: str
    mtu: int

    def fileno(self) -> int: ...
    def read(self) -> bytes | None: ...
    def write(self, packet: bytes) -> None: ...
    def close(self) -> None: ...


class TunError(OSError):
    pass


class TunDevice:
    """An IFF_TUN | IFF_NO_PI device: each read is one IPv6 packet, no header in front.

    os.read/os.write on the descriptor instead of pytun's read/write: they raise the usual
    BlockingIOError (pytun raises its own Error with errno 11) and cost less per packet.
    """

    def __init__(self, name: str, mtu: int, up: bool = True) -> None:
        try:
            self._device = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            raise TunError(errno.EPERM, f"cannot create TUN device {name}: {exc}") from None
        self.name: str = self._device.name
        self._fd: int = self._device.fileno()
        os.set_blocking(self._fd, False)
        self._device.mtu = mtu
        if up:
            self._device.up()

    def up(self) -> None:
        self._device.up()

    def fileno(self) -> int:
        return self._fd

    @property
    def mtu(self) -> int:
        return int(self._device.mtu)

    @mtu.setter
    def mtu(self, value: int) -> None:
        self._device.mtu = value

    def read(self) -> bytes | None:
        """One packet, or None when the queue is empty."""
        try:
            return os.read(self._fd, 65536)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        try:
            os.write(self._fd, packet)
        except BlockingIOError:
            pass  # the kernel's queue is full: a drop, as a router would do
        except OSError as exc:
            # EINVAL: not a packet the kernel accepts (it checks the IP header); ENOMEM or
            # ENOBUFS: no memory for it now. Drop it, as a router would.
            if exc.errno not in (errno.EINVAL, errno.EIO, errno.ENOMEM, errno.ENOBUFS):
                raise

    def close(self) -> None:
        self._device.close()
