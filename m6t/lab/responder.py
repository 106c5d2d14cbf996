"""The lab home agent's IKE-like UDP responder: answers each datagram with its bytes reversed."""

from __future__ import annotations

import argparse
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m6t-lab-responder")
    parser.add_argument("--port", type=int, default=500)
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind(("::", args.port))
    while True:
        data, address = sock.recvfrom(65535)
        sock.sendto(data[::-1], address)


if __name__ == "__main__":
    sys.exit(main())
