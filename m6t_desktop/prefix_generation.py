"""The client's /80 for the profiles editor (no widgets): a fresh one from the project's one
RFC 4193 generator (m6t.protocol.addressing.generate_site_prefix, fed the time and this
machine's MAC address), or one composed from a /48, a subnet ID and an MN ID as typed."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from m6t.linux.machine import machine_mac
from m6t.protocol.addressing import AddressingError, TunnelPrefix, generate_site_prefix


def generate_prefix(subnet_id: int = 0, mn_id: int = 1, *, now: float | None = None,
                    read_mac: Callable[[], bytes | None] | None = None) -> TunnelPrefix:
    """A new /48 following RFC 4193 (SHA-1 of the NTP time and an EUI-64 of this machine's
    MAC, or random bits without one) plus the subnet ID and MN ID: the client's /80."""
    mac = (read_mac or machine_mac)()
    site = generate_site_prefix(time.time() if now is None else now, mac)
    return TunnelPrefix.compose(site, subnet_id, mn_id)


def parse_hex_id(label: str, text: str) -> int:
    """A subnet ID or MN ID as typed: hexadecimal, "0x" allowed (the range is compose's)."""
    try:
        return int(text.strip().lower().removeprefix("0x"), 16)
    except ValueError:
        raise AddressingError(f"{label} {text!r} is not a hexadecimal number (0-ffff)") \
            from None


def parse_ids(subnet_text: str, mn_text: str) -> tuple[int, int]:
    return parse_hex_id("subnet ID", subnet_text), parse_hex_id("MN ID", mn_text)


def compose_prefix(site_text: str, subnet_text: str, mn_text: str) -> TunnelPrefix:
    """The /80 from a typed /48, subnet ID and MN ID; AddressingError says what is wrong."""
    subnet_id, mn_id = parse_ids(subnet_text, mn_text)
    try:
        site = ipaddress.IPv6Network(site_text.strip(), strict=True)
    except ValueError as exc:
        raise AddressingError(str(exc)) from None
    return TunnelPrefix.compose(site, subnet_id, mn_id)
