"""Everything the app says to people: the helper's states, causes and reasons in plain words,
and what to do when something is not right. Kept in one module so the words stay consistent
between the tray, the status window and the notifications."""

from __future__ import annotations

import ipaddress
import time
from enum import StrEnum

from m6t.control.schema import (
    AddressReason,
    Cause,
    DatapathStatus,
    MtuReason,
    PortProbe,
    TunnelState,
    TunnelStatus,
)

NO_VALUE = "\N{EN DASH}"  # an empty value in a table or label
HELPER_START_HINT = "sudo systemctl start m6t-helper (or run: sudo m6t-helper)"
DEFAULT_GROUP = "m6t"  # the helper's group, until the helper names its own


def join_group_hint(group: str = DEFAULT_GROUP) -> str:
    return f"sudo usermod -aG {group} $USER, then log out and back in"


class DisplayState(StrEnum):
    """What the tray icon says at a glance; one SVG in resources/ per value."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"  # working with a caveat, or waiting to come back by itself
    ERROR = "error"  # needs the user


HELPER_STATE_LABELS: dict[TunnelState, str] = {
    TunnelState.DISCONNECTED: "Disconnected",
    TunnelState.CONNECTING: "Connecting",
    TunnelState.CONNECTED: "Connected",
    TunnelState.WAITING: "Waiting",
    TunnelState.ERROR: "Error",
}


def ports_text(ports: list[int]) -> str:
    if len(ports) == 1:
        return f"UDP port {ports[0]}"
    return "UDP ports " + ", ".join(str(p) for p in ports[:-1]) + f" and {ports[-1]}"


def blocked_ports(status: TunnelStatus) -> list[int]:
    """Ports the last race saw as unreachable (reported in the profile's order)."""
    return [probe.port for probe in status.ports if not probe.reachable]


def cause_text(status: TunnelStatus, message: str | None = None) -> str:
    """The cause of the current state, in plain words ("UDP port 3544 blocked, using 4500"):
    with what the status says (ports, gateway) where it helps, else the cause's own words."""
    state, cause = status.state, status.cause
    if state == TunnelState.CONNECTED:
        if cause == Cause.PORT_FALLBACK:
            blocked = blocked_ports(status)
            if blocked and status.port is not None:
                verb = "is" if len(blocked) == 1 else "are"
                return f"{ports_text(blocked)} {verb} blocked here, using {status.port}"
            return f"an earlier port did not answer, using {status.port}"
        if cause == Cause.PORT_RACE_WON and status.port:
            return f"UDP port {status.port} answered first"
        if cause == Cause.USER_REQUEST:  # connected again after `regenerate`
            return "new address, as you asked"
    if state == TunnelState.WAITING:
        if cause == Cause.GATEWAY_UNREACHABLE:
            tried = [probe.port for probe in status.ports]
            where = f" on {ports_text(tried)}" if tried else ""
            return f"the gateway {status.gateway} does not answer{where}; retrying"
        if cause == Cause.RESOLVE_FAILED:
            return f"the gateway name {status.gateway} does not resolve; retrying"
        if cause == Cause.CAPTIVE_PORTAL and status.portal_url:
            return PORTAL_WORDS
    if state == TunnelState.ERROR and cause == Cause.SETUP_FAILED and message:
        return f"{CAUSE_WORDS[cause]}: {message}"
    return CAUSE_WORDS[cause]


# Every member has words (tests/desktop/test_wording.py): a cause the app cannot name would
# otherwise show as its wire name.
CAUSE_WORDS: dict[Cause, str] = {
    Cause.USER_REQUEST: "as you asked",
    Cause.NETWORK_CHANGED: "network changed, new address",
    Cause.NAT_MAPPING_CHANGED: "NAT mapping changed, new address",
    Cause.RESUME: "resumed from sleep, new address",
    Cause.RETRYING: "retrying",
    Cause.PORT_RACE_WON: "connected",
    Cause.PORT_FALLBACK: "the first port did not answer, using another",
    Cause.NO_IPV4_NETWORK: "no IPv4 network; it comes back by itself when there is one",
    Cause.GATEWAY_UNREACHABLE: "the gateway does not answer; retrying",
    Cause.RESOLVE_FAILED: "the gateway name does not resolve; retrying",
    Cause.CAPTIVE_PORTAL: "this network wants you to log in first: open any web page to get "
                          "its login page; the tunnel connects by itself once you are through",
    Cause.SETUP_FAILED: "setting up the tunnel failed",
    Cause.HELPER_STOPPING: "the helper stopped",
}

ADDRESS_REASON_WORDS: dict[AddressReason, str] = {
    AddressReason.CONNECT: "connected",
    AddressReason.NETWORK_CHANGED: "network changed",
    AddressReason.NAT_MAPPING_CHANGED: "NAT mapping changed",
    AddressReason.USER_REQUEST: "new address requested",
    AddressReason.RESUME: "resumed from sleep",
}

MTU_REASON_WORDS: dict[MtuReason, str] = {
    MtuReason.FRAGMENTATION_NEEDED: "a router on the path asked for smaller packets",
    MtuReason.USER_REQUEST: "as you asked",
    MtuReason.AUTO: "measured on this network",
    MtuReason.NETWORK_CHANGED: "network changed",
    MtuReason.REMEMBERED: "remembered from the last time on this network",
}

# Behind a captive portal whose page the helper found (TunnelStatus.portal_url): short for the
# tray menu, where the offer to open the page follows; the status window says more.
PORTAL_WORDS = "this network wants you to log in first"
PORTAL_TITLE = "Log in to this network"
OPEN_LOGIN_PAGE = "Open the login page"


def portal_advice(url: str) -> str:
    return (f"It sends web pages to its login page, {url}, and lets nothing else through until "
            "you log in or accept its terms there. The tunnel connects by itself a few seconds "
            "after you are through.")



def address_reason_text(reason: AddressReason) -> str:
    return ADDRESS_REASON_WORDS[reason]


def mtu_reason_text(reason: MtuReason) -> str:
    return MTU_REASON_WORDS[reason]


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


OFFLOAD_WORDS = {"udp_gso": "UDP GSO", "udp_gro": "UDP GRO",
                 "tun_coalesce_tcp": "TCP super-packets", "tun_coalesce_udp": "UDP super-packets",
                 "tun_tso": "TSO reads", "tun_uso": "USO reads"}


def datapath_text(datapath: DatapathStatus | None) -> tuple[str, str]:
    """The status window's "Data path" row and its tooltip: the offloads in use or, first,
    those this system refused (a slower plain path stands in: worth knowing); every reason in
    the tooltip."""
    if datapath is None:
        return NO_VALUE, ""
    words = [OFFLOAD_WORDS.get(feature, feature) for feature in datapath.offloads]
    if datapath.fallbacks:
        refused = ", ".join(OFFLOAD_WORDS.get(feature, feature) for feature in datapath.fallbacks)
        text = f"slower: {refused} refused by this system"
    else:
        text = f"fast: {', '.join(words)}" if words else "plain (no offloads)"
    tips = [f"In use: {', '.join(words) or 'none'}"]
    tips += [f"{OFFLOAD_WORDS.get(feature, feature)}: {reason}"
             for feature, reason in datapath.off.items()]
    return text, "\n".join(tips)


def port_probe_text(probe: PortProbe) -> str:
    if probe.reachable:
        return f"reachable, {rtt_text(probe.rtt_ms)}"
    return "blocked" + (f" ({probe.error})" if probe.error else "")


def ago_text(seconds: float, round_hours: bool = False) -> str:
    """How long ago, roughly ("just now", "5 min ago", "3 h 10 min ago", "4 days ago");
    with `round_hours`, whole hours for a list ("26 h ago")."""
    minutes = max(0, int(seconds) // 60)
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        return f"{minutes // 60} h ago" if round_hours \
            else f"{minutes // 60} h {minutes % 60} min ago"
    return f"{minutes // (24 * 60)} days ago"


def fragments_text(passes: bool | None) -> str:
    """Whether IPv4 fragments got through on a network (KnownNetwork.fragments_pass)."""
    return "not tested" if passes is None else ("pass" if passes else "blocked")


def clock_text(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def date_clock_text(at: float) -> str:
    """The time alone for today, the date too for older entries."""
    if time.localtime(at)[:3] == time.localtime()[:3]:
        return clock_text(at)
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))
