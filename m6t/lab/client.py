"""A scripted m6t client for the lab: raw IPv6-in-UDP from the mobile node, no TUN.

It drives the gateway before (and besides) the real helper: pings through the encapsulation,
keepalives, floods of new addresses, malformed datagrams. Each command prints one JSON object.

    python -m m6t.lab.client --gateway 198.51.100.1:3544 --bind 0.0.0.0:40001 \\
        echo --src fd6d:6d74:1:1:1:0:0:1 --dst fd48:4100::2 --count 3
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import select
import socket
import struct
import sys
import time
from typing import Any

from m6t.protocol.constants import NEXT_HEADER_NONE
from m6t.protocol.packets import (
    build_echo,
    build_ipv6,
    build_keepalive,
    check_ipv6,
    internet_checksum,
    is_keepalive_reply,
    parse_echo,
)

NEXT_HEADER_UDP = 17


def udp_in_ipv6(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    pseudo = src + dst + struct.pack("!I3xB", length, NEXT_HEADER_UDP)
    checksum = internet_checksum(pseudo + header + payload) or 0xFFFF  # RFC 768: 0 -> all ones
    return build_ipv6(src, dst, NEXT_HEADER_UDP,
                      struct.pack("!HHHH", sport, dport, length, checksum) + payload)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _receive(sock: socket.socket, timeout: float) -> bytes | None:
    ready, _, _ = select.select([sock], [], [], max(timeout, 0))
    if not ready:
        return None
    try:
        return sock.recv(65535)
    except OSError:
        return None


def echo(sock: socket.socket, args: argparse.Namespace) -> dict[str, Any]:
    src, dst = ipaddress.IPv6Address(args.src).packed, ipaddress.IPv6Address(args.dst).packed
    identifier = os.getpid() & 0xFFFF
    rtts: list[float] = []
    payload = bytes(max(0, args.size - 48))
    for sequence in range(args.count):
        started = time.monotonic()
        sock.send(build_echo(src, dst, identifier, sequence, payload))
        deadline = started + args.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            packet = _receive(sock, remaining)
            if packet is None:
                break
            reply = parse_echo(packet)
            if (reply and not reply.is_request and reply.identifier == identifier
                    and reply.sequence == sequence and reply.destination == src):
                rtts.append((time.monotonic() - started) * 1000)
                break
        if args.interval:
            time.sleep(args.interval)
    return {"sent": args.count, "received": len(rtts), "rtt_ms": rtts}


def keepalive(sock: socket.socket, args: argparse.Namespace) -> dict[str, Any]:
    src = ipaddress.IPv6Address(args.src).packed
    sock.send(build_keepalive(src))
    deadline = time.monotonic() + args.timeout
    while (remaining := deadline - time.monotonic()) > 0:
        packet = _receive(sock, remaining)
        if packet is None:
            break
        if check_ipv6(packet) is None and is_keepalive_reply(packet) and packet[24:40] == src:
            return {"answered": True}
    return {"answered": False}


def send(sock: socket.socket, args: argparse.Namespace) -> dict[str, Any]:
    src, dst = ipaddress.IPv6Address(args.src).packed, ipaddress.IPv6Address(args.dst).packed
    for _ in range(args.count):
        sock.send(build_ipv6(src, dst, NEXT_HEADER_NONE, b""))
    return {"sent": args.count}


def udp(sock: socket.socket, args: argparse.Namespace) -> dict[str, Any]:
    """An IKE-like exchange: one UDP datagram to the HA, expect the responder's answer."""
    src, dst = ipaddress.IPv6Address(args.src).packed, ipaddress.IPv6Address(args.dst).packed
    payload = bytes.fromhex(args.payload)
    sock.send(udp_in_ipv6(src, dst, args.sport, args.dport, payload))
    deadline = time.monotonic() + args.timeout
    while (remaining := deadline - time.monotonic()) > 0:
        packet = _receive(sock, remaining)
        if packet is None:
            break
        if check_ipv6(packet) is None and packet[6] == NEXT_HEADER_UDP and packet[24:40] == src:
            sport, dport = struct.unpack_from("!HH", packet, 40)
            if sport == args.dport and dport == args.sport:
                return {"answered": True, "payload": packet[48:].hex()}
    return {"answered": False}


def flood(sock: socket.socket, args: argparse.Namespace) -> dict[str, Any]:
    """New random addresses from one IPv4 source, as fast as allowed, bounded by count and time."""
    network = ipaddress.IPv6Network(args.prefix)
    dst = ipaddress.IPv6Address(args.dst).packed
    base = int(network.network_address)
    sent = 0
    stop = time.monotonic() + args.duration
    while sent < args.count and time.monotonic() < stop:
        src = (base | secrets.randbits(128 - network.prefixlen)).to_bytes(16, "big")
        try:
            sock.send(build_ipv6(src, dst, NEXT_HEADER_NONE, b""))
        except BlockingIOError:
            time.sleep(0.001)
            continue
        sent += 1
    return {"sent": sent}


def burst(sock: socket.socket, args: argparse.Namespace) -> dict[str, Any]:
    """One flow's packets back to back, each followed by its malformed twins (same addresses)
    and by a copy from another UDP port: sent while the gateway is stopped, they reach it in one
    batch, where it takes a shortcut for the rest of a flow the core has forwarded."""
    src, dst = ipaddress.IPv6Address(args.src).packed, ipaddress.IPv6Address(args.dst).packed
    good = build_ipv6(src, dst, NEXT_HEADER_NONE, b"")
    bad_length = good[:4] + (8).to_bytes(2, "big") + good[6:]
    bad_version = bytes([0x40]) + good[1:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
        spoofer.connect(sock.getpeername())  # same IPv4 address, other port: ipv4_mismatch
        for _ in range(args.count):
            sock.send(good)
            sock.send(bad_length)
            sock.send(bad_version)
            spoofer.send(good)
    return {"sent": args.count}


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "39_bytes": bytes([0x60]) + bytes(38),
    "version_4": bytes([0x45]) + bytes(39),
    "wrong_payload_length": bytes([0x60, 0, 0, 0, 0, 8, 59, 64]) + bytes(32),
    "junk_64k": bytes([0x60]) + secrets.token_bytes(65506),  # looks like IPv6 at first
}


def malformed(sock: socket.socket, args: argparse.Namespace) -> dict[str, Any]:
    for datagram in MALFORMED.values():
        sock.send(datagram)
    return {"sent": list(MALFORMED)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m6t-lab-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", required=True, type=_endpoint, help="IPV4:PORT")
    parser.add_argument("--bind", default="0.0.0.0:0", type=_endpoint, help="local IPV4:PORT")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("echo")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--interval", type=float, default=0.0)
    p = commands.add_parser("keepalive")
    p.add_argument("--src", required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p = commands.add_parser("send")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--count", type=int, default=1)
    p = commands.add_parser("udp")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--sport", type=int, default=500)
    p.add_argument("--dport", type=int, default=500)
    p.add_argument("--payload", default="00" * 28)
    p.add_argument("--timeout", type=float, default=2.0)
    p = commands.add_parser("flood")
    p.add_argument("--prefix", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--duration", type=float, default=2.0)
    p = commands.add_parser("burst")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--count", type=int, default=20)
    commands.add_parser("malformed")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(args.bind)
    sock.connect(args.gateway)
    handler = {"echo": echo, "keepalive": keepalive, "send": send, "udp": udp, "flood": flood,
               "burst": burst, "malformed": malformed}[args.command]
    result = handler(sock, args)
    result["local"] = "{}:{}".format(*sock.getsockname())
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
