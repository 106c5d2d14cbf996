"""A bare Python TUN <-> UDP forwarder: the reference the tunnel benchmark compares m6t with.

No checks, no state table, no keepalives: two threads per side, each a blocking loop of one
read and one write (the kind of forwarder the issue's "about 0.23 of the ceiling" was measured
with). The benchmark (bench/tunnel.py) runs it beside m6t in the same lab, on its own TUN
devices, prefix and UDP port, so both are measured in the same invocation.

    python bench/bare_forwarder.py client TUN GATEWAY_IPV4 PORT   # on the mobile node
    python bench/bare_forwarder.py server TUN PORT                # on the gateway host

The benchmark gives the TUN its address and routes; the forwarder only moves packets. It runs
until killed.
"""

from __future__ import annotations

import os
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


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "client":
        client(open_tun(argv[1]), argv[2], int(argv[3]))
    elif len(argv) == 3 and argv[0] == "server":
        server(open_tun(argv[1]), int(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
