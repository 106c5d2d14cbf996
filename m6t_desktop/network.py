"""Which IPv4 network the laptop is on, as a short name for the per-network report card
("wlan0 via 192.168.1.1"). Read from /proc/net/route: no privilege, no waiting."""

from __future__ import annotations

import ipaddress
from pathlib import Path

NO_NETWORK = "no IPv4 network"


def parse_default_route(table: str) -> str:
    """The default route with the lowest metric, named by interface and gateway."""
    best: tuple[int, str] | None = None
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 7 or fields[1] != "00000000":
            continue
        try:
            flags, metric = int(fields[3], 16), int(fields[6])
            gateway = ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1])
        except ValueError:
            continue
        if not flags & 0x1:  # RTF_UP
            continue
        name = f"{fields[0]} via {gateway}" if int(gateway) else fields[0]
        if best is None or metric < best[0]:
            best = (metric, name)
    return best[1] if best else NO_NETWORK


def current_network(route_file: Path = Path("/proc/net/route")) -> str:
    try:
        return parse_default_route(route_file.read_text())
    except OSError:
        return NO_NETWORK
