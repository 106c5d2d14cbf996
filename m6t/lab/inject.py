"""Inject what a router on the path (or an attacker) would send: an ICMPv4 error about a UDP
datagram. By default a "fragmentation needed", for tests of path-MTU handling (the lab's veths
never send one themselves, since the tunnel never sets DF); --type and --code forge any other
error, for tests that no ICMP error can harm a daemon.

    python -m m6t.lab.inject --from 198.51.100.2 --quoted-src 198.51.100.1:3544 \\
        --quoted-dst 198.51.100.2:40001 --mtu 1300
    python -m m6t.lab.inject --from 198.51.100.3 --quoted-src 198.51.100.1:3544 \\
        --quoted-dst 198.51.100.2:40001 --type 3 --code 7
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys

from m6t.protocol.packets import internet_checksum


def ipv4(src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, protocol, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:] + payload


def icmp_error(quoted_src: tuple[str, int], quoted_dst: tuple[str, int], mtu: int = 0,
               icmp_type: int = 3, code: int = 4) -> bytes:
    """The ICMP error (by default type 3, code 4: fragmentation needed, with the next-hop
    MTU) quoting an IPv4/UDP datagram's first 28 bytes."""
    udp = struct.pack("!HHHH", quoted_src[1], quoted_dst[1], 1480, 0)
    quoted = ipv4(quoted_src[0], quoted_dst[0], socket.IPPROTO_UDP, udp)
    message = struct.pack("!BBHHH", icmp_type, code, 0, 0, mtu) + quoted
    return message[:2] + struct.pack("!H", internet_checksum(message)) + message[4:]


# Every ICMPv4 error Linux turns into a socket error for UDP, as (type, code): destination
# unreachable (net/ipv4/icmp.c icmp_err_convert, all but "fragmentation needed"), time
# exceeded and parameter problem. Tests forge each one at the daemons.
UDP_SOCKET_ERRORS = [(3, code) for code in (0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)]
UDP_SOCKET_ERRORS += [(11, 0), (12, 0)]


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m6t-lab-inject", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="router", required=True, help="the router's address")
    parser.add_argument("--quoted-src", type=_endpoint, required=True, help="IPV4:PORT")
    parser.add_argument("--quoted-dst", type=_endpoint, required=True, help="IPV4:PORT")
    parser.add_argument("--mtu", type=int, default=0, help="next-hop MTU (fragmentation needed)")
    parser.add_argument("--type", type=int, default=3, help="ICMP type (default 3, unreachable)")
    parser.add_argument("--code", type=int, default=4,
                        help="ICMP code (default 4, fragmentation needed)")
    args = parser.parse_args(argv)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        raw.bind((args.router, 0))
        # The error goes back to whoever sent the quoted datagram.
        raw.sendto(icmp_error(args.quoted_src, args.quoted_dst, args.mtu, args.type, args.code),
                   (args.quoted_src[0], 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
