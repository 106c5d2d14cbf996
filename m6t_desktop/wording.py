"""Everything the app says to people: the helper's states, causes and reasons in plain words,
and what to do when something is not right. Kept in one module so the words stay consistent
between the tray, the status window and the notifications."""

from __future__ import annotations

import ipaddress
from enum import StrEnum

from m6t.control.schema import PortProbe, TunnelStatus

NO_VALUE = "\N{EN DASH}"  # an empty value in a table or label
HELPER_START_HINT = "sudo systemctl start m6t-helper (or run: sudo m6t-helper)"
JOIN_GROUP_HINT = "sudo usermod -aG m6t $USER, then log out and back in"


class DisplayState(StrEnum):
    """What the tray icon says at a glance; one SVG in resources/ per value."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"  # working with a caveat, or waiting to come back by itself
    ERROR = "error"  # needs the user


HELPER_STATE_LABELS = {
    "disconnected": "Disconnected",
    "connecting": "Connecting",
    "connected": "Connected",
    "waiting": "Waiting",
    "error": "Error",
}


def ports_text(ports: list[int]) -> str:
    if len(ports) == 1:
        return f"UDP port {ports[0]}"
    return "UDP ports " + ", ".join(str(p) for p in ports[:-1]) + f" and {ports[-1]}"


def blocked_ports(status: TunnelStatus) -> list[int]:
    """Ports the last race saw as unreachable (reported in the profile's order)."""
    return [probe.port for probe in status.ports if not probe.reachable]


def cause_text(status: TunnelStatus, message: str | None = None) -> str:
    """The cause of the current state, in plain words ("UDP port 3544 blocked, using 4500")."""
    state, cause = status.state, status.cause
    if state == "connected":
        if cause == "port_fallback":
            blocked = blocked_ports(status)
            if blocked and status.port is not None:
                verb = "is" if len(blocked) == 1 else "are"
                return f"{ports_text(blocked)} {verb} blocked here, using {status.port}"
            return f"an earlier port did not answer, using {status.port}"
        if cause == "port_race_won":
            return f"UDP port {status.port} answered first" if status.port else "connected"
        if cause == "address_regenerated":
            return "new address, as you asked"
    if state == "waiting":
        if cause == "no_ipv4_network":
            return "no IPv4 network; it comes back by itself when there is one"
        if cause == "gateway_unreachable":
            tried = [probe.port for probe in status.ports] or []
            where = f" on {ports_text(tried)}" if tried else ""
            return f"the gateway {status.gateway} does not answer{where}; retrying"
        if cause == "resolve_failed":
            return f"the gateway name {status.gateway} does not resolve; retrying"
    if state == "error" and cause == "setup_failed":
        return "setting up the tunnel failed" + (f": {message}" if message else "")
    return _CAUSES.get(cause, cause.replace("_", " "))


_CAUSES = {
    "user_request": "as you asked",
    "network_changed": "network changed, new address",
    "nat_mapping_changed": "NAT mapping changed, new address",
    "regenerate": "new address requested",
    "resume": "resumed from sleep, new address",
    "retrying": "retrying",
    "helper_stopping": "the helper stopped",
}

_ADDRESS_REASONS = {
    "connect": "connected",
    "network_changed": "network changed",
    "nat_mapping_changed": "NAT mapping changed",
    "user_request": "new address requested",
    "resume": "resumed from sleep",
}

_MTU_REASONS = {
    "fragmentation_needed": "a router on the path asked for smaller packets",
    "user_request": "as you asked",
    "auto": "measured on this network",
}


def address_reason_text(reason: str) -> str:
    return _ADDRESS_REASONS.get(reason, reason.replace("_", " "))


def mtu_reason_text(reason: str) -> str:
    return _MTU_REASONS.get(reason, reason.replace("_", " "))


def split_address(address: str, prefix: str) -> tuple[str, str]:
    """The address as (the /80 from the profile, the 48 random bits), both as printed groups:
    ("fd6d:6d74:1:1:1:", "8d2e:41f0:977c"). Falls back to (address, "") when the address is
    not inside the prefix (then there is nothing to tell apart)."""
    try:
        parsed = ipaddress.IPv6Address(address)
        network = ipaddress.IPv6Network(prefix, strict=False)
    except ValueError:
        return address, ""
    if parsed not in network or network.prefixlen != 80:
        return address, ""
    groups = [f"{int(group, 16):x}" for group in parsed.exploded.split(":")]
    return ":".join(groups[:5]) + ":", ":".join(groups[5:])


def rate_text(bytes_per_second: float) -> str:
    value = float(bytes_per_second)
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if value < 1000 or unit == "GB/s":
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def bytes_text(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def rtt_text(rtt_ms: float | None) -> str:
    if rtt_ms is None:
        return NO_VALUE
    return f"{rtt_ms:.1f} ms" if rtt_ms < 100 else f"{rtt_ms:.0f} ms"


def port_probe_text(probe: PortProbe) -> str:
    if probe.reachable:
        return f"reachable, {rtt_text(probe.rtt_ms)}"
    return "blocked" + (f" ({probe.error})" if probe.error else "")
