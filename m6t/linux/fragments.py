"""Hand-made IPv4 fragments of a UDP datagram, to test whether fragments cross a network.

The tunnel never sets DF ("MTU considerations"), so on a path narrower than the datagram the
IPv4 routers fragment it; some networks drop fragments, which black-holes large packets. The
helper's MTU probe sends one echo this way (from the tunnel socket's own port, so the NAT
mapping and the gateway state match) and sees whether the answer comes back.
"""

from __future__ import annotations

import secrets
import socket
import struct

from m6t.protocol.packets import internet_checksum

IPPROTO_UDP = 17


def fragment_udp(src: str, sport: int, dst: str, dport: int, payload: bytes,
                 fragment_payload: int = 512) -> list[bytes]:
    """The IPv4 fragments (with headers) of one UDP datagram; `fragment_payload` is rounded
    down to a multiple of 8 as RFC 791 requires."""
    step = max(8, fragment_payload // 8 * 8)
    src_bytes, dst_bytes = socket.inet_aton(src), socket.inet_aton(dst)
    length = 8 + len(payload)
    pseudo = src_bytes + dst_bytes + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    udp_header = struct.pack("!HHHH", sport, dport, length, 0)
    checksum = internet_checksum(pseudo + udp_header + payload) or 0xFFFF
    datagram = struct.pack("!HHHH", sport, dport, length, checksum) + payload
    identification = secrets.randbits(16)
    fragments = []
    for offset in range(0, len(datagram), step):
        chunk = datagram[offset:offset + step]
        more = offset + step < len(datagram)
        flags_offset = (0x2000 if more else 0) | offset // 8
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), identification,
                             flags_offset, 64, IPPROTO_UDP, 0, src_bytes, dst_bytes)
        header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
        fragments.append(header + chunk)
    return fragments


def send_fragments(fragments: list[bytes], dst: str) -> None:
    """Send ready-made IPv4 packets (IPPROTO_RAW implies IP_HDRINCL). Needs CAP_NET_RAW."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for fragment in fragments:
            raw.sendto(fragment, (dst, 0))
