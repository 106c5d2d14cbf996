"""The client's lifecycle (sans-I/O): placeholder, filled in below."""

from __future__ import annotations

import enum


class TunnelState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"
    ERROR = "error"


class Cause(enum.StrEnum):
    """Why a tunnel is in its state (docs/control-api.md, "TunnelStatus")."""

    USER_REQUEST = "user_request"
    NETWORK_CHANGED = "network_changed"
    NAT_MAPPING_CHANGED = "nat_mapping_changed"
    RESUME = "resume"
    RETRYING = "retrying"
    PORT_RACE_WON = "port_race_won"
    PORT_FALLBACK = "port_fallback"
    NO_IPV4_NETWORK = "no_ipv4_network"
    GATEWAY_UNREACHABLE = "gateway_unreachable"
    RESOLVE_FAILED = "resolve_failed"
    SETUP_FAILED = "setup_failed"
    HELPER_STOPPING = "helper_stopping"


class AddressReason(enum.StrEnum):
    """Why the tunnel took a new address."""

    CONNECT = "connect"
    NETWORK_CHANGED = "network_changed"
    NAT_MAPPING_CHANGED = "nat_mapping_changed"
    USER_REQUEST = "user_request"
    RESUME = "resume"


class MtuReason(enum.StrEnum):
    """Why the tunnel MTU changed."""

    FRAGMENTATION_NEEDED = "fragmentation_needed"
    USER_REQUEST = "user_request"
    AUTO = "auto"
    NETWORK_CHANGED = "network_changed"
