"""What the `m6t` command prints: the helper's records in short lines for people, or unchanged
as JSON for scripts, and the plain words for each cause and reason of the API.

The word tables are keyed by the API's enums; a test checks that every member has words, so a
cause added to the helper cannot reach users as a bare identifier.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, assert_never

import msgspec

from m6t.control.schema import (
    AddressEvent,
    AddressReason,
    Cause,
    DatapathStatus,
    Event,
    MtuEvent,
    MtuReason,
    RemovedEvent,
    StateEvent,
    TrafficEvent,
    TunnelState,
    TunnelStatus,
)

# Why a tunnel is in its state (docs/control-api.md, TunnelStatus `cause`).
CAUSE_WORDS: dict[Cause, str] = {
    Cause.USER_REQUEST: "on request",
    Cause.NETWORK_CHANGED: "the network changed",
    Cause.NAT_MAPPING_CHANGED: "the NAT mapping changed",
    Cause.RESUME: "resuming after sleep",
    Cause.RETRYING: "retrying",
    Cause.PORT_RACE_WON: "the first port answered",
    Cause.PORT_FALLBACK: "an earlier port did not answer",
    Cause.NO_IPV4_NETWORK: "no IPv4 network; it comes back by itself",
    Cause.GATEWAY_UNREACHABLE: "no port of the gateway answered; retrying with back-off",
    Cause.RESOLVE_FAILED: "the gateway's name did not resolve; retrying",
    Cause.CAPTIVE_PORTAL: "this network wants you to log in first (open any web page), then "
                          "the tunnel connects by itself",
    Cause.SETUP_FAILED: "setting up the tunnel interface failed",
    Cause.HELPER_STOPPING: "the helper is stopping",
}
# Why the tunnel took a new address (address changes' `reason`).
ADDRESS_REASON_WORDS: dict[AddressReason, str] = {
    AddressReason.CONNECT: "connected",
    AddressReason.NETWORK_CHANGED: "the network changed",
    AddressReason.NAT_MAPPING_CHANGED: "the NAT mapping changed",
    AddressReason.USER_REQUEST: "on request",
    AddressReason.RESUME: "resumed after sleep",
}
# Why the tunnel MTU changed (MTU changes' `reason`).
MTU_REASON_WORDS: dict[MtuReason, str] = {
    MtuReason.FRAGMENTATION_NEEDED: "a packet was too big on the way",
    MtuReason.USER_REQUEST: "on request",
    MtuReason.AUTO: "automatic",
    MtuReason.NETWORK_CHANGED: "the network changed",
    MtuReason.REMEMBERED: "remembered from the last time on this network",
}


# --- for scripts ---


def json_text(record: Any, indent: int | None = None) -> str:
    """A record of the API as the helper sent it (its own field names and values)."""
    return json.dumps(msgspec.to_builtins(record), indent=indent, ensure_ascii=False)


def print_json(record: Any) -> None:
    print(json_text(record, indent=2))


# --- units ---


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = float(count)
    units = ["KiB", "MiB", "GiB", "TiB"]
    while True:
        value /= 1024
        unit = units.pop(0)
        if value < 1024 or not units:
            return f"{value:.1f} {unit}"


def milliseconds(rtt: float | None) -> str:
    if rtt is None:
        return "-"
    if rtt < 10:
        return f"{rtt:.2f} ms"
    return f"{rtt:.1f} ms" if rtt < 100 else f"{rtt:.0f} ms"


def ago(seconds: float) -> str:
    if seconds < 60:
        return "just now" if seconds < 1 else f"{seconds:.0f} s ago"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min ago"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min ago"
    return f"{hours // 24} days ago"


def _since(since: float) -> str:
    if not since:
        return "-"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    return f"{when} ({ago(max(0.0, time.time() - since))})"


def print_table(rows: Sequence[tuple[str, ...]], indent: str = "") -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print((indent + "  ".join(cells)).rstrip())


# --- tunnels ---


def _unanswered_before(tunnel: TunnelStatus) -> list[str]:
    """The ports listed before the one that won and did not answer ("port_fallback")."""
    unanswered: list[str] = []
    for probe in tunnel.ports:
        if probe.port == tunnel.port:
            return unanswered
        if not probe.reachable:
            unanswered.append(str(probe.port))
    return []  # the winning port is not in the list: nothing to say about "earlier"


def portal_words(url: str) -> str:
    """Behind a captive portal: what to do, with the page the helper found."""
    return f"this network wants you to log in first: open {url}, then the tunnel connects " \
           "by itself"


def state_words(tunnel: TunnelStatus) -> str:
    if tunnel.cause == Cause.CAPTIVE_PORTAL and tunnel.portal_url:
        return portal_words(tunnel.portal_url)
    if tunnel.state == TunnelState.CONNECTED and tunnel.port is not None:
        unanswered = _unanswered_before(tunnel)
        if unanswered:
            ports = "port" if len(unanswered) == 1 else "ports"
            return f"{ports} {', '.join(unanswered)} did not answer; using {tunnel.port}"
    return CAUSE_WORDS[tunnel.cause]


def _gateway_text(tunnel: TunnelStatus) -> str:
    name, address, port = tunnel.gateway, tunnel.gateway_address, tunnel.port
    if port is None:
        return f"{name} (no port answered yet)" \
            if tunnel.state != TunnelState.DISCONNECTED else name
    text = f"{address or name}:{port}"
    return text if not address or address == name else f"{text} ({name})"


def _line(label: str, value: object) -> str:
    return f"  {label:<11} {value}"


def tunnel_lines(tunnel: TunnelStatus) -> list[str]:
    """One short block per tunnel; the address shows the /80 apart from its random part."""
    lines = [f"{tunnel.profile} ({tunnel.name}): {tunnel.state} ({state_words(tunnel)})"]
    if tunnel.address:
        lines.append(_line("address", tunnel.address))
        if tunnel.suffix:
            lines.append(_line("", f"= {tunnel.prefix} + random {tunnel.suffix}"))
    else:
        lines.append(_line("address", f"none yet (prefix {tunnel.prefix})"))
    lines.append(_line("gateway", _gateway_text(tunnel)))
    if tunnel.network_label:
        lines.append(_line("network", tunnel.network_label))
    lines.append(_line("home agent", tunnel.home_agent))
    lines.append(_line("MTU", tunnel.mtu))
    lines.append(_line("RTT", milliseconds(tunnel.rtt_ms)))
    lines.append(_line("traffic",
                       f"in {size(tunnel.rx_bytes)} ({plural(tunnel.rx_packets, 'packet')}), "
                       f"out {size(tunnel.tx_bytes)} ({plural(tunnel.tx_packets, 'packet')})"))
    if tunnel.datapath is not None:
        lines.extend(datapath_lines(tunnel.datapath))
    drops = {reason: count for reason, count in tunnel.drops.items() if count}
    if drops:
        lines.append(_line("dropped", ", ".join(f"{count} {reason}"
                                                for reason, count in sorted(drops.items()))))
    lines.append(_line("since", _since(tunnel.since)))
    return lines


def datapath_lines(datapath: DatapathStatus) -> list[str]:
    """The offloads in use and, one line each, those the kernel refused (the plain path stands
    in for them: slower, and worth knowing); the ones off by choice are left to --json."""
    used = ", ".join(datapath.offloads) or "none (the plain path)"
    work = [f"{plural(count, 'packet')} {what}" for count, what in
            ((datapath.coalesced_packets, "coalesced"), (datapath.segmented_packets, "segmented"))
            if count]
    lines = [_line("data path", used + (f" ({', '.join(work)})" if work else ""))]
    for feature, reason in datapath.fallbacks.items():
        lines.append(_line("fallback", f"{feature}: {reason} (the plain path instead)"))
    return lines


# --- events ---


def event_line(event: Event) -> str:
    """One event, timestamped, in a short line for people (`m6t watch --text`)."""
    match event:
        case StateEvent():
            status = msgspec.structs.replace(event.status, state=event.state, cause=event.cause)
            text = f"{event.profile}: {event.state} ({state_words(status)})"
            if event.state == TunnelState.CONNECTED and status.address:
                text += f", address {status.address}"
            if event.message:  # an error's detail, or news within a state (the data path)
                text += f"; {event.message}"
        case AddressEvent():
            text = (f"{event.profile}: new address {event.address} "
                    f"({ADDRESS_REASON_WORDS[event.reason]}; was {event.previous or 'none'})")
        case MtuEvent():
            change = f"{event.previous} -> {event.mtu}" if event.previous else str(event.mtu)
            text = f"{event.profile}: MTU {change} ({MTU_REASON_WORDS[event.reason]})"
        case TrafficEvent():
            text = (f"{event.profile}: in {size(int(event.rx_rate))}/s, "
                    f"out {size(int(event.tx_rate))}/s, RTT {milliseconds(event.rtt_ms)}")
        case RemovedEvent():
            text = f"{event.profile}: tunnel removed"
        case _:
            assert_never(event)
    return f"{time.strftime('%H:%M:%S')} {text}"
