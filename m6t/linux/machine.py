"""What RFC 4193 prefix generation needs from this machine: a MAC address to build an EUI-64."""

from __future__ import annotations

from pathlib import Path

SYS_CLASS_NET = Path("/sys/class/net")


def machine_mac(net_dir: Path = SYS_CLASS_NET) -> bytes | None:
    """The first unicast, non-zero 48-bit MAC address among the interfaces (by name), or None
    (a container, or only loopback and TUN devices)."""
    try:
        interfaces = sorted(net_dir.iterdir())
    except OSError:
        return None
    for interface in interfaces:
        try:
            mac = bytes.fromhex((interface / "address").read_text().strip().replace(":", ""))
        except (OSError, ValueError):
            continue
        if len(mac) == 6 and any(mac) and not mac[0] & 0x01:  # I/G bit clear: unicast
            return mac
    return None
