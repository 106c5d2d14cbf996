"""The control API's records (msgspec): every request's params, every result, every event,
the profile and its validation, and the table of methods. The helper publishes these records;
the CLI and the desktop app decode into them; docs/control-api.md describes them (a test keeps
the two in step).

msgspec decodes a line straight into these records and names the offending path on error
("Expected `int`, got `str` - at `$.params.profile.mtu`"); `validate_profile` then checks
what types cannot say (ranges, address families, the /80), naming the field.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from m6t.protocol.addressing import AddressingError, TunnelPrefix
from m6t.protocol.constants import (
    DEFAULT_TUNNEL_MTU,
    IPV6_MINIMUM_MTU,
    KEEPALIVE_INTERVAL,
    MAXIMUM_TUNNEL_MTU,
)
from m6t.protocol.session import AddressReason, Cause, MtuReason, TunnelState

API_VERSION = 1
MAX_LINE_BYTES = 64 * 1024
MAX_PORTS = 16
MAX_ROUTES = 64
DEFAULT_SOCKET = "/run/m6t/helper.sock"

__all__ = ["AddressReason", "Cause", "MtuReason", "TunnelState"]  # the core's, re-exported

Routes = Literal["home-agent", "default"] | list[str]


class Liveness(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the helper finds out that the path died (a NAT that forgot the mapping): after
    `reply_timeout` seconds of data sent with nothing back, it sends a keepalive; after
    `probes` unanswered ones, `probe_interval` apart, it takes a new address. An idle tunnel
    costs one keepalive per `keepalive` seconds, nothing more."""

    reply_timeout: float = 3.0
    probe_interval: float = 1.0
    probes: int = 3


class Profile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A gateway to reach the home agent through, and how to use the tunnel."""

    name: str
    gateway: str  # IPv4 literal or host name
    ports: list[int]
    prefix: str  # the client's /80
    home_agent: str
    mtu: int | Literal["auto"] = DEFAULT_TUNNEL_MTU
    keepalive: float = KEEPALIVE_INTERVAL
    routes: Routes = "home-agent"
    auto_connect: bool = False
    liveness: Liveness = msgspec.field(default_factory=Liveness)
    # Other gateways raced with `gateway` (each on every port): several gateways serving the
    # profile's prefix, or a gateway being replaced. The first to answer wins.
    more_gateways: list[str] = []


class ProfileError(ValueError):
    """A profile field that is wrong; `field` names it, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,63}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ProfileError("name", "1-64 characters: letters, digits, space and ._@+- "
                                   "(starting with a letter or digit)")


def check_gateway(gateway: str) -> None:
    if not gateway:
        raise ProfileError("gateway", "empty: give an IPv4 address or a host name")
    try:
        address = ipaddress.IPv4Address(gateway)
    except ValueError:
        if re.fullmatch(r"[0-9.]+", gateway):
            raise ProfileError("gateway", f"{gateway!r} is not a valid IPv4 address") from None
        if ":" in gateway:
            raise ProfileError("gateway", "the tunnel runs over IPv4: give an IPv4 address "
                                          "or a host name, not an IPv6 address") from None
        labels = gateway.rstrip(".").split(".")
        if len(gateway) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise ProfileError("gateway", f"{gateway!r} is neither an IPv4 address nor a "
                                          "valid host name") from None
        return
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise ProfileError("gateway", f"{address} cannot be a gateway")


def check_ports(ports: list[int]) -> None:
    if not ports:
        raise ProfileError("ports", "at least one UDP port (3544 and 4500 are common)")
    if len(ports) > MAX_PORTS:
        raise ProfileError("ports", f"at most {MAX_PORTS} ports")
    for port in ports:
        if not 1 <= port <= 65535:
            raise ProfileError("ports", f"{port} is not a UDP port (1-65535)")
    if len(set(ports)) != len(ports):
        raise ProfileError("ports", "each port once")


def check_prefix(prefix: str) -> TunnelPrefix:
    try:
        return TunnelPrefix.parse(prefix)
    except AddressingError as exc:
        raise ProfileError("prefix", str(exc).removeprefix("tunnel prefix ")) from None


def check_home_agent(home_agent: str, prefix: TunnelPrefix | None) -> None:
    try:
        address = ipaddress.IPv6Address(home_agent)
    except ValueError:
        raise ProfileError("home_agent", f"{home_agent!r} is not an IPv6 address") from None
    if address.is_multicast or address.is_unspecified or address.is_loopback \
            or address.is_link_local:
        raise ProfileError("home_agent", f"{address} is not a unicast address")
    if prefix is not None and address in prefix.network:
        raise ProfileError("home_agent", "cannot be inside the tunnel prefix")


def check_mtu(mtu: int | str) -> None:
    if mtu == "auto":
        return
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise ProfileError("mtu", "a number of bytes or \"auto\"")
    if not IPV6_MINIMUM_MTU <= mtu <= MAXIMUM_TUNNEL_MTU:
        raise ProfileError("mtu", f"{mtu} is outside {IPV6_MINIMUM_MTU}-{MAXIMUM_TUNNEL_MTU} "
                                  f"(IPv6 needs at least {IPV6_MINIMUM_MTU})")


def check_keepalive(keepalive: float) -> None:
    # "If the MN has not sent and received traffic via the tunnel for 30 seconds ... send an
    # empty IPv6 packet" (Maintaining NAT states): shorter is allowed, longer is not.
    if not 1 <= keepalive <= KEEPALIVE_INTERVAL:
        raise ProfileError("keepalive", f"{keepalive:g} s is outside 1-30 s (the draft's "
                                        "30 s is the longest NATs reliably tolerate)")


MAX_GATEWAYS = 8


def check_more_gateways(gateway: str, more: list[str]) -> None:
    if len(more) >= MAX_GATEWAYS:
        raise ProfileError("more_gateways", f"at most {MAX_GATEWAYS - 1} besides gateway")
    for other in more:
        try:
            check_gateway(other)
        except ProfileError as exc:
            raise ProfileError("more_gateways", exc.reason) from None
    if len({gateway, *more}) != len(more) + 1:
        raise ProfileError("more_gateways", "each gateway once (and not `gateway` again)")


def check_liveness(liveness: Liveness) -> None:
    for name, value, low, high in (("reply_timeout", liveness.reply_timeout, 1.0, 30.0),
                                   ("probe_interval", liveness.probe_interval, 0.2, 10.0),
                                   ("probes", liveness.probes, 1, 10)):
        if not low <= value <= high:
            raise ProfileError(f"liveness.{name}", f"{value:g} is outside {low:g}-{high:g}")


def check_routes(routes: Routes) -> list[ipaddress.IPv6Network]:
    if routes in ("home-agent", "default"):
        return []
    if not isinstance(routes, list) or not routes:
        raise ProfileError("routes", "\"home-agent\", \"default\" or a list of IPv6 prefixes")
    if len(routes) > MAX_ROUTES:
        raise ProfileError("routes", f"at most {MAX_ROUTES} prefixes")
    networks = []
    for route in routes:
        try:
            networks.append(ipaddress.IPv6Network(route, strict=True))
        except ValueError as exc:
            raise ProfileError("routes", f"{route!r}: {exc}") from None
    return networks


def validate_profile(profile: Profile) -> Profile:
    """Raise ProfileError naming the first bad field; return the profile unchanged if good."""
    check_name(profile.name)
    check_gateway(profile.gateway)
    check_ports(profile.ports)
    prefix = check_prefix(profile.prefix)
    check_home_agent(profile.home_agent, prefix)
    check_mtu(profile.mtu)
    check_keepalive(profile.keepalive)
    check_routes(profile.routes)
    check_liveness(profile.liveness)
    check_more_gateways(profile.gateway, profile.more_gateways)
    return profile


def profile_from_dict(data: Any) -> Profile:
    """Decode and validate a profile from plain data (a TOML table, JSON params)."""
    try:
        profile = msgspec.convert(data, Profile)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if "$." in message:
            field = message.rpartition("$.")[2].rstrip("`").partition("[")[0]
        elif found := re.search(r"(?:missing required|unknown) field `(\w+)`", message):
            field = found.group(1)
        else:
            field = "profile"
        raise ProfileError(field, message) from None
    return validate_profile(profile)


# --- status ---


class Access(enum.StrEnum):
    READ_WRITE = "read-write"
    READ_ONLY = "read-only"


class AddressChange(msgspec.Struct, kw_only=True):
    address: str
    previous: str | None
    reason: AddressReason
    at: float  # Unix time


class PortProbe(msgspec.Struct, kw_only=True):
    port: int
    reachable: bool
    rtt_ms: float | None = None
    error: str | None = None
    gateway: str | None = None  # which of the profile's gateways (as the profile names it)


class MtuReport(msgspec.Struct, kw_only=True):
    mtu: int  # largest IPv6 packet that reached the HA and came back
    fragments_pass: bool  # whether IPv4 fragments get through (packets beyond the IPv4 path MTU)
    ipv4_path_mtu: int | None  # what the route to the gateway says
    tried: list[int]
    answered: list[int]


class DatapathStatus(msgspec.Struct, kw_only=True):
    """The tunnel's data path: the offloads it uses (udp_gso, udp_gro, tun_coalesce_tcp,
    tun_coalesce_udp, tun_tso, tun_uso; m6t.linux.offload) and why each other one is not used
    (turned off, or what the kernel refused: the plain path is used instead)."""

    offloads: list[str] = []
    off: dict[str, str] = {}  # feature -> why not
    # The part of `off` that was refused, not chosen (the kernel, a device, IPsec on the path):
    # the plain path stands in for these.
    fallbacks: dict[str, str] = {}
    coalesced_packets: int = 0  # written to the TUN device inside super-packets
    segmented_packets: int = 0  # cut from super-packets read from the TUN device


class TunnelStatus(msgspec.Struct, kw_only=True):
    name: str  # interface: m6t0, m6t1, ...
    profile: str
    state: TunnelState
    cause: Cause
    address: str | None
    prefix: str
    suffix: str | None  # the 48 random bits, as the address's last three groups
    gateway: str
    gateway_address: str | None
    port: int | None
    home_agent: str
    mtu: int
    rtt_ms: float | None
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    drops: dict[str, int] = {}
    since: float = 0.0  # Unix time of the last state change
    history: list[AddressChange] = []
    ports: list[PortProbe] = []  # what the last race saw of each port
    message: str | None = None  # with state "error": what failed
    network: str | None = None  # the IPv4 network the tunnel runs over (KnownNetwork.id)
    network_label: str | None = None  # the same, in words
    portal_url: str | None = None  # with cause "captive_portal": the page to log in on
    datapath: DatapathStatus | None = None  # while a data path runs: its offloads


# --- params (every method's, decoded strictly: an unknown field is an error) ---


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class ConnectParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: Profile


class ProbeParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: Profile
    timeout: float = 3.0


class NameParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: str


class OptionalNameParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: str | None = None


class SetMtuParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: str
    mtu: int | Literal["auto"]


class ForgetNetworkParams(msgspec.Struct, forbid_unknown_fields=True):
    network: str | None = None  # a KnownNetwork.id; none: forget every network


# --- results ---


class VersionResult(msgspec.Struct, kw_only=True):
    version: str
    api: int


class StatusResult(msgspec.Struct, kw_only=True):
    tunnels: list[TunnelStatus]
    access: Access
    group: str = "m6t"  # members of this group (and root) may change things


class DisconnectResult(msgspec.Struct, kw_only=True):
    disconnected: list[str]


class ProbeResult(msgspec.Struct, kw_only=True):
    gateway_address: str
    ports: list[PortProbe]


class KnownNetwork(msgspec.Struct, kw_only=True):
    """What the helper remembers of one IPv4 network for one profile."""

    id: str  # stable for the network: a hash of its router's MAC address, its SSID, ...
    label: str  # the same in words ("Wi-Fi CoffeeShop, router 02:fc:00:00:00:01")
    profile: str
    gateway: str | None = None  # the gateway that won there (as the profile names it)
    port: int  # the port that won there
    mtu: int  # the tunnel MTU that worked there
    fragments_pass: bool | None  # whether IPv4 fragments got through (None: never tested)
    last_seen: float  # Unix time
    current: bool = False  # a tunnel runs over it now


class NetworksResult(msgspec.Struct, kw_only=True):
    networks: list[KnownNetwork]
    saved: bool = True  # False: the state file could not be written (see the helper's log)


# --- events (after `subscribe`; docs/control-api.md, "Events") ---


class TunnelEvent(msgspec.Struct, tag_field="type", kw_only=True):
    """What every event carries: its `type` (the tag) and the tunnel and profile it is about.
    Each subclass repeats kw_only=True: msgspec applies it to a class's own fields only."""

    tunnel: str
    profile: str


class StateEvent(TunnelEvent, tag="state", kw_only=True):
    state: TunnelState
    cause: Cause
    status: TunnelStatus
    message: str | None = None  # with state "error": what failed


class AddressEvent(TunnelEvent, tag="address", kw_only=True):
    address: str
    previous: str | None
    reason: AddressReason
    at: float


class MtuEvent(TunnelEvent, tag="mtu", kw_only=True):
    mtu: int
    previous: int | None = None
    reason: MtuReason


class TrafficEvent(TunnelEvent, tag="traffic", kw_only=True):
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_rate: float
    tx_rate: float
    rtt_ms: float | None = None


class RemovedEvent(TunnelEvent, tag="removed", kw_only=True):
    pass


Event = StateEvent | AddressEvent | MtuEvent | TrafficEvent | RemovedEvent
EVENT_TYPES: dict[str, type[TunnelEvent]] = {
    "state": StateEvent, "address": AddressEvent, "mtu": MtuEvent, "traffic": TrafficEvent,
    "removed": RemovedEvent}


# --- the methods ---


@dataclass(frozen=True)
class MethodSpec:
    params: type[msgspec.Struct]
    result: Any  # a msgspec-convertible type
    writes: bool  # needs root or the helper's group


METHODS: dict[str, MethodSpec] = {
    "version": MethodSpec(NoParams, VersionResult, writes=False),
    "status": MethodSpec(NoParams, StatusResult, writes=False),
    "subscribe": MethodSpec(NoParams, StatusResult, writes=False),
    "connect": MethodSpec(ConnectParams, TunnelStatus, writes=True),
    "disconnect": MethodSpec(OptionalNameParams, DisconnectResult, writes=True),
    "probe": MethodSpec(ProbeParams, ProbeResult, writes=True),
    "probe_mtu": MethodSpec(NameParams, MtuReport, writes=True),
    "set_mtu": MethodSpec(SetMtuParams, TunnelStatus, writes=True),
    "regenerate": MethodSpec(NameParams, TunnelStatus, writes=True),
    "networks": MethodSpec(NoParams, NetworksResult, writes=False),
    "forget_network": MethodSpec(ForgetNetworkParams, NetworksResult, writes=True),
}
