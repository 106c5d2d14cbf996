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

The benchmark gives the TUN its address and routes; the forwarder only moves packets. It runs
until killed.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading

import pytun

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


def main(argv: list[str]) -> int:
    poll = os.environ.get("M6T_BARE_MODE") == "poll"
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
