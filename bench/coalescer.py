"""Benchmark of userspace GRO (m6t.protocol.gso.Coalescer): what one packet costs the daemons.

    .venv/bin/python bench/coalescer.py [--reps N]   # about half a minute

The gateway (client -> home) and the helper (gateway -> its own stack) hand the coalescer the
datagrams of each UDP GRO receive (`add_all`) and write what `flush` returns. Measured in one
invocation, on one core, best of `--reps`, with a baseline taking turns with it:

* TCP: 1,400-byte segments of one flow, in order, 40 per receive (what one GRO receive brings
  under iperf3), forwarding (partial checksum, the gateway) and local delivery (complete
  checksum, the helper);
* UDP: 64-byte datagrams of one flow, 64 per receive;

the baseline being a bare Python loop that only appends each packet to a list (what any
per-packet Python costs on this machine). Printed: nanoseconds per packet (`add_all` and
`flush`) and the ratio to the bare loop. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable

from m6t.protocol.gso import Coalescer
from m6t.protocol.packets import build_ipv6

SRC = bytes.fromhex("fd6d6d740001000100015b2ff44b1470")
DST = bytes.fromhex("fd484100000000000000000000000002")
RECEIVES = 2_000


def tcp_segments(count: int, size: int = 1400) -> list[bytes]:
    packets, seq = [], 1_000_000
    for _ in range(count):
        header = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, (32 // 4) << 4, 0x10, 512,
                             0, 0) + bytes(12)
        packets.append(build_ipv6(SRC, DST, 6, header + bytes(size)))
        seq += size
    return packets


def udp_datagrams(count: int, size: int = 64) -> list[bytes]:
    header = struct.pack("!HHHH", 4500, 4500, 8 + size, 0x1234)
    return [build_ipv6(SRC, DST, 17, header + bytes(size)) for _ in range(count)]


def interleaved(reps: int, bodies: list[Callable[[], None]]) -> list[float]:
    """The best time of each body, the bodies taking turns (this VM drifts by half from one
    second to the next: a body timed only in its own seconds would measure the drift)."""
    best = [float("inf")] * len(bodies)
    for _ in range(reps):
        for index, body in enumerate(bodies):
            started = time.perf_counter()
            body()
            best[index] = min(best[index], time.perf_counter() - started)
    return best


def measure(name: str, receives: list[list[bytes]], reps: int, **options: bool) -> None:
    packets = sum(len(r) for r in receives)
    coalescer = Coalescer(udp=True, **options)

    def coalesce() -> None:
        for receive in receives:
            coalescer.add_all(receive)
            coalescer.flush()

    def bare() -> None:
        out: list[bytes] = []
        for receive in receives:
            for packet in receive:
                out.append(packet)
            out.clear()

    baseline, seconds = interleaved(reps, [bare, coalesce])
    per = 1e9 / packets
    print(f"{name}: {seconds * per:5.0f} ns/packet, {seconds / baseline:4.0f} x the bare loop "
          f"({baseline * per:.0f} ns)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    tcp = tcp_segments(40 * RECEIVES)
    tcp_receives = [tcp[i:i + 40] for i in range(0, len(tcp), 40)]
    udp = udp_datagrams(64 * RECEIVES)
    udp_receives = [udp[i:i + 64] for i in range(0, len(udp), 64)]
    measure("TCP 1400 bytes, 40 per receive, forwarding (gateway)", tcp_receives, args.reps)
    measure("TCP 1400 bytes, 40 per receive, local delivery (helper)", tcp_receives, args.reps,
            local_delivery=True)
    measure("UDP 64 bytes, 64 per receive", udp_receives, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
