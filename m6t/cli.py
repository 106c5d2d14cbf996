"""The `m6t` command: tunnels through m6t-helper, and the user's profiles file.

A client of the helper's control API (docs/control-api.md) and the editor of the profiles file
(m6t/profiles.py). Human output is short; `--json` prints the helper's records unchanged, for
scripts. Every failure is one line on stderr, "m6t: what went wrong: what to do", with exit
status 1, or 2 when the command line itself is wrong; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import ipaddress
import json
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from m6t import profiles
from m6t.control import schema
from m6t.control.client import (
    Conflict,
    HelperClient,
    HelperError,
    HelperNotRunning,
    InvalidParams,
    NotFound,
    PermissionDenied,
    ProtocolError,
    Unavailable,
    socket_path,
)
from m6t.control.schema import Profile, ProfileError
from m6t.profiles import ProfileBook, ProfilesError
from m6t.protocol.addressing import (
    AddressingError,
    TunnelPrefix,
    eui64_from_mac,
    ntp_timestamp,
    parse_network,
    rfc4193_global_id,
    ula_prefix,
)
from m6t.protocol.constants import (
    DEFAULT_TUNNEL_MTU,
    KEEPALIVE_INTERVAL,
    MN_ID_BITS,
    SUBNET_ID_BITS,
    SUGGESTED_PORTS,
    ULA_PREFIX_LENGTH,
)

SYS_CLASS_NET = Path("/sys/class/net")
HELPER_TIMEOUT = 30.0  # seconds to wait for an answer (connect waits for the port race)
# What helps when the helper cannot do something right now (Unavailable's `data.cause`).
UNAVAILABLE_HINTS = {
    "no_ipv4_network": "connect this machine to an IPv4 network first",
    "resolve_failed": "check the gateway's name, and DNS",
    "gateway_unreachable": "check the gateway's address and ports with `m6t probe`",
}

# What each `cause` of the API means, in plain words (docs/control-api.md, TunnelStatus).
CAUSE_WORDS = {
    "user_request": "on request",
    "network_changed": "the network changed",
    "nat_mapping_changed": "the NAT mapping changed",
    "regenerate": "getting a new address",
    "resume": "resuming after sleep",
    "retrying": "retrying",
    "port_race_won": "the first port answered",
    "port_fallback": "an earlier port did not answer",
    "address_regenerated": "new address",
    "no_ipv4_network": "no IPv4 network; it comes back by itself",
    "gateway_unreachable": "no port of the gateway answered; retrying with back-off",
    "resolve_failed": "the gateway's name did not resolve; retrying",
    "setup_failed": "setting up the tunnel interface failed",
    "helper_stopping": "the helper is stopping",
}
# Why an address or the MTU changed (address change `reason`s, MTU change `reason`s).
REASON_WORDS = {
    "connect": "connected",
    "network_changed": "the network changed",
    "nat_mapping_changed": "the NAT mapping changed",
    "user_request": "on request",
    "resume": "resumed after sleep",
    "fragmentation_needed": "a packet was too big on the way",
    "auto": "automatic",
}
# Profile fields as the command line spells them, so an error names what the user typed.
OPTION_OF_FIELD = {
    "name": "--name",
    "gateway": "--gateway",
    "ports": "--port",
    "prefix": "--prefix",
    "home_agent": "--home-agent",
    "mtu": "--mtu",
    "keepalive": "--keepalive",
    "routes": "--routes",
    "auto_connect": "--auto-connect",
}
PROFILE_OPTIONS = ("gateway", "ports", "prefix", "home_agent", "mtu", "keepalive", "routes")


class CliError(Exception):
    """A failure reported as one line on stderr; `status` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class UsageError(CliError):
    """The command line itself is wrong (exit status 2, like argparse's own errors)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage; one line that says where help is reads better.
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- talking to the helper ---


def _open_helper(args: argparse.Namespace, timeout: float = HELPER_TIMEOUT) -> HelperClient:
    try:
        return HelperClient(args.socket, timeout=timeout)
    except OSError as exc:  # HelperClient maps the usual ones; this is whatever is left
        raise CliError(f"cannot reach the helper at {socket_path(args.socket)} "
                       f"({exc.strerror or exc}): check --socket or M6T_SOCKET") from None


@contextlib.contextmanager
def _helper_io(client: HelperClient) -> Iterator[None]:
    """Turn what can go wrong on the socket itself into one readable line."""
    try:
        yield
    except TimeoutError:
        raise CliError("the helper did not answer in time: is it stuck? "
                       "(journalctl -u m6t-helper)") from None
    except OSError as exc:
        raise CliError(f"lost the connection to the helper ({exc.strerror or exc}): "
                       "is m6t-helper running?") from None
    except msgspec.DecodeError as exc:
        raise CliError(f"the helper sent a malformed message ({exc}): is {client.path} "
                       "an m6t-helper socket?") from None


def _call(client: HelperClient, method: str, params: dict[str, Any] | None = None) -> Any:
    with _helper_io(client):
        return client.call(method, **(params or {}))


def _request(args: argparse.Namespace, method: str, params: dict[str, Any] | None = None,
             timeout: float = HELPER_TIMEOUT) -> Any:
    with _open_helper(args, timeout) as client:
        return _call(client, method, params)


def _request_on_tunnel(args: argparse.Namespace, method: str, name: str,
                       params: dict[str, Any] | None = None) -> Any:
    """A call about one tunnel; if there is none, the error lists the tunnels that are up."""
    with _open_helper(args) as client:
        try:
            return _call(client, method, {"profile": name, **(params or {})})
        except NotFound:
            tunnels = _call(client, "status").get("tunnels") or []
            up = [str(t.get("profile")) for t in tunnels]
            known = (f"tunnels up: {', '.join(up)}" if up
                     else "no tunnel is up: `m6t connect NAME` first")
            raise CliError(f"no tunnel for profile {name!r} ({known})") from None


def _helper_error_message(exc: HelperError) -> str:
    message = str(exc)
    if isinstance(exc, HelperNotRunning):
        # The wording first ("helper not running: start m6t-helper"), details after.
        found = re.fullmatch(r"helper not running \((.+)\): start m6t-helper", message)
        if found:
            return f"helper not running: start m6t-helper ({found.group(1)})"
        if message.endswith("is not a helper socket"):
            return f"{message}: check --socket or M6T_SOCKET"
        return message
    if isinstance(exc, PermissionDenied):
        if "usermod" in message:
            return message
        group = re.search(r"join group ([\w.-]+)", message)
        hint = f"sudo usermod -aG {group[1] if group else 'm6t'} $USER, then log in again"
        return f"{message}; {hint}" if message.endswith(")") else f"{message} ({hint})"
    if isinstance(exc, InvalidParams):
        field = exc.data.get("field") if isinstance(exc.data, dict) else None
        if isinstance(field, str) and field:
            reason = message.removeprefix(f"{field.rpartition('.')[2]}: ")
            return f"the helper refused {field}: {reason}"
        return f"the helper refused the request: {message}"
    if isinstance(exc, NotFound):
        return message
    if isinstance(exc, ProtocolError):
        path = exc.data.get("socket") if isinstance(exc.data, dict) else "the socket"
        return f"the helper sent a malformed message ({message}): is {path} an m6t-helper socket?"
    if isinstance(exc, Unavailable):
        cause = exc.data.get("cause") if isinstance(exc.data, dict) else None
        advice = UNAVAILABLE_HINTS.get(cause) if isinstance(cause, str) else None
        return f"unavailable: {message}" + (f": {advice}" if advice else "")
    if isinstance(exc, Conflict):
        return f"conflict: {message}"
    if exc.code == schema.INTERNAL_ERROR:
        return (f"the helper failed: {message} (a bug in m6t-helper: please report it; "
                "its tunnels keep running)")
    return f"helper error {exc.code}: {message}"


# --- formatting ---


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = float(count)
    units = ["KiB", "MiB", "GiB", "TiB"]
    while True:
        value /= 1024
        unit = units.pop(0)
        if value < 1024 or not units:
            return f"{value:.1f} {unit}"


def _ms(rtt: float | None) -> str:
    if rtt is None:
        return "-"
    if rtt < 10:
        return f"{rtt:.2f} ms"
    return f"{rtt:.1f} ms" if rtt < 100 else f"{rtt:.0f} ms"


def _ago(seconds: float) -> str:
    if seconds < 60:
        return "just now" if seconds < 1 else f"{seconds:.0f} s ago"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min ago"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min ago"
    return f"{hours // 24} days ago"


def _since(since: float | None) -> str:
    if not since:
        return "-"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    return f"{when} ({_ago(max(0.0, time.time() - since))})"


def _unanswered_before(tunnel: dict[str, Any]) -> list[str]:
    """The ports listed before the one that won and did not answer ("port_fallback")."""
    unanswered: list[str] = []
    for probe in tunnel.get("ports") or []:
        if probe.get("port") == tunnel.get("port"):
            return unanswered
        if not probe.get("reachable"):
            unanswered.append(str(probe.get("port")))
    return []  # the winning port is not in the list: nothing to say about "earlier"


def _state_words(tunnel: dict[str, Any]) -> str:
    if tunnel.get("state") == "connected" and tunnel.get("port") is not None:
        unanswered = _unanswered_before(tunnel)
        if unanswered:
            ports = "port" if len(unanswered) == 1 else "ports"
            return f"{ports} {', '.join(unanswered)} did not answer; using {tunnel['port']}"
    cause = str(tunnel.get("cause") or "")
    return CAUSE_WORDS.get(cause, cause.replace("_", " "))


def _gateway_text(tunnel: dict[str, Any]) -> str:
    name, address, port = tunnel.get("gateway"), tunnel.get("gateway_address"), tunnel.get("port")
    if port is None:
        return f"{name} (no port answered yet)" if tunnel.get("state") != "disconnected" \
            else str(name)
    text = f"{address or name}:{port}"
    return text if not address or address == name else f"{text} ({name})"


def _line(label: str, value: object) -> str:
    return f"  {label:<11} {value}"


def format_tunnel(tunnel: dict[str, Any]) -> list[str]:
    """One short block per tunnel; the address shows the /80 apart from its random part."""
    lines = [f"{tunnel.get('profile')} ({tunnel.get('name')}): {tunnel.get('state')} "
             f"({_state_words(tunnel)})"]
    address, suffix, prefix = tunnel.get("address"), tunnel.get("suffix"), tunnel.get("prefix")
    if address:
        lines.append(_line("address", address))
        if suffix:
            lines.append(_line("", f"= {prefix} + random {suffix}"))
    else:
        lines.append(_line("address", f"none yet (prefix {prefix})"))
    lines.append(_line("gateway", _gateway_text(tunnel)))
    lines.append(_line("home agent", tunnel.get("home_agent")))
    lines.append(_line("MTU", tunnel.get("mtu")))
    lines.append(_line("RTT", _ms(tunnel.get("rtt_ms"))))
    rx, tx = int(tunnel.get("rx_bytes") or 0), int(tunnel.get("tx_bytes") or 0)
    rx_packets, tx_packets = tunnel.get("rx_packets") or 0, tunnel.get("tx_packets") or 0
    lines.append(_line("traffic", f"in {_size(rx)} ({_plural(rx_packets, 'packet')}), "
                                  f"out {_size(tx)} ({_plural(tx_packets, 'packet')})"))
    drops = {reason: count for reason, count in (tunnel.get("drops") or {}).items() if count}
    if drops:
        lines.append(_line("dropped", ", ".join(f"{count} {reason}"
                                                for reason, count in sorted(drops.items()))))
    lines.append(_line("since", _since(tunnel.get("since"))))
    return lines


def _print_table(rows: Sequence[tuple[str, ...]], indent: str = "") -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print((indent + "  ".join(cells)).rstrip())


# --- profiles from the file or from options ---


def _profiles_path(args: argparse.Namespace) -> Path:
    return Path(args.profiles) if args.profiles else profiles.default_path()


def _load_book(args: argparse.Namespace) -> tuple[Path, ProfileBook]:
    path = _profiles_path(args)
    return path, profiles.load(path)  # ProfilesError for a corrupt file, which stays as it is


def _known_profiles(book: ProfileBook) -> str:
    if book.profiles:
        return f"profiles: {', '.join(book.names())}"
    return "it has none: add one with `m6t profiles add NAME --gateway ...`"


def _named_profile(book: ProfileBook, name: str, path: Path) -> Profile:
    profile = book.get(name)
    if profile is None:
        raise CliError(f"no profile named {name!r} in {path} ({_known_profiles(book)})")
    return profile


def _routes(values: list[str]) -> str | list[str]:
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    keywords = [item for item in items if item in ("home-agent", "default")]
    if keywords and len(items) != 1:
        raise UsageError("invalid --routes: home-agent or default alone, or IPv6 prefixes")
    return keywords[0] if keywords else items


def _options_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, field) is not None for field in PROFILE_OPTIONS)


def _profile_from_options(args: argparse.Namespace, name: str, name_option: str) -> Profile:
    """Build and validate a profile from the command line, naming the option that is wrong."""
    required = (("--gateway", args.gateway), ("--port", args.ports), ("--prefix", args.prefix),
                ("--home-agent", args.home_agent))
    missing = [option for option, value in required if value is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: a profile needs --gateway, --port "
                         "(one or more), --prefix (a /80: see `m6t prefix new`) and --home-agent")
    data: dict[str, Any] = {"name": name, "gateway": args.gateway, "ports": args.ports,
                            "prefix": args.prefix, "home_agent": args.home_agent}
    if args.mtu is not None:
        data["mtu"] = args.mtu
    if args.keepalive is not None:
        data["keepalive"] = args.keepalive
    if args.routes is not None:
        data["routes"] = _routes(args.routes)
    if getattr(args, "auto_connect", False):
        data["auto_connect"] = True
    try:
        return schema.profile_from_dict(data)
    except ProfileError as exc:
        field = re.split(r"[.\[]", exc.field)[0]
        option = name_option if field == "name" else OPTION_OF_FIELD.get(field, field)
        raise UsageError(f"invalid {option}: {exc.reason}") from None


def _chosen_profile(args: argparse.Namespace) -> Profile:
    """`NAME` from the file, ad hoc options, or the default profile."""
    if args.name is not None and (_options_given(args) or args.adhoc_name is not None):
        raise UsageError("give a profile NAME or ad hoc options (--gateway ...), not both; "
                         "--name names an ad hoc tunnel")
    if _options_given(args) or args.adhoc_name is not None:
        return _profile_from_options(args, args.adhoc_name or "adhoc", "--name")
    path, book = _load_book(args)
    if args.name is not None:
        return _named_profile(book, args.name, path)
    default = book.default_profile()
    if default is not None:
        return default
    if not book.profiles:
        raise CliError(f"no profiles in {path}: add one with `m6t profiles add NAME "
                       "--gateway ...`, or give --gateway, --port, --prefix and --home-agent")
    raise CliError(f"which profile? {path} has no default ({_known_profiles(book)}): name one, "
                   "or set a default with `m6t profiles default NAME`")


# --- commands: tunnels ---


def cmd_status(args: argparse.Namespace) -> int:
    result = _request(args, "status")
    if args.json:
        _print_json(result)
        return 0
    blocks = ["\n".join(format_tunnel(tunnel)) for tunnel in result.get("tunnels") or []]
    print("\n\n".join(blocks) if blocks else "no tunnels")
    if result.get("access") == "read-only":
        print("(read-only: join group m6t to connect or change tunnels)")
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    profile = _chosen_profile(args)
    result = _request(args, "connect", {"profile": profiles.profile_to_dict(profile)})
    if args.json:
        _print_json(result)
    else:
        print("\n".join(format_tunnel(result)))
    state = result.get("state")
    if state == "connected":
        return 0
    if state in ("waiting", "connecting"):
        what = f"the helper keeps trying (`m6t disconnect {shlex.quote(profile.name)}` to stop)"
    else:
        what = "see the helper's log: journalctl -u m6t-helper"
    raise CliError(f"{profile.name} is {state} ({_state_words(result)}): {what}")


def cmd_disconnect(args: argparse.Namespace) -> int:
    if args.name is not None:
        result = _request_on_tunnel(args, "disconnect", args.name)
    else:
        result = _request(args, "disconnect")
    if args.json:
        _print_json(result)
        return 0
    names = result.get("disconnected") or []
    print(f"disconnected {', '.join(names)}" if names else "no tunnels to disconnect")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    profile = _chosen_profile(args)
    params: dict[str, Any] = {"profile": profiles.profile_to_dict(profile)}
    timeout = HELPER_TIMEOUT
    if args.timeout is not None:
        params["timeout"] = args.timeout
        timeout = max(timeout, args.timeout + 10)
    result = _request(args, "probe", params, timeout=timeout)
    if args.json:
        _print_json(result)
    else:
        address = result.get("gateway_address")
        gateway = profile.gateway if address in (None, profile.gateway) \
            else f"{profile.gateway} ({address})"
        print(f"{profile.name}: gateway {gateway}")
        rows = [("PORT", "REACHABLE", "RTT", "")]
        for probe in result.get("ports") or []:
            reachable = bool(probe.get("reachable"))
            rows.append((str(probe.get("port")), "yes" if reachable else "no",
                         _ms(probe.get("rtt_ms")) if reachable else "-",
                         str(probe.get("error") or "")))
        _print_table(rows, indent="  ")
    if any(probe.get("reachable") for probe in result.get("ports") or []):
        return 0
    others = [port for port in SUGGESTED_PORTS if port not in profile.ports]
    hint = f" (other ports to try: {', '.join(map(str, others))})" if others else ""
    raise CliError(f"no port of {profile.gateway} answered: check the gateway's address and "
                   f"ports, and that this network lets UDP through{hint}")


def cmd_probe_mtu(args: argparse.Namespace) -> int:
    result = _request_on_tunnel(args, "probe_mtu", args.name)
    if args.json:
        _print_json(result)
        return 0
    mtu, path_mtu = result.get("mtu"), result.get("ipv4_path_mtu")
    fragments = ("IPv4 fragments get through" if result.get("fragments_pass")
                 else "IPv4 fragments are dropped on the way")
    print(f"{args.name}: packets up to {mtu} bytes get through the tunnel")
    print(f"  IPv4 path MTU to the gateway: {path_mtu or 'unknown'}; {fragments}")
    tried = " ".join(map(str, result.get("tried") or [])) or "nothing"
    answered = " ".join(map(str, result.get("answered") or [])) or "none"
    print(f"  tried {tried}; answered {answered}")
    print(f"  to use it: m6t set-mtu {shlex.quote(args.name)} {mtu}")
    return 0


def cmd_set_mtu(args: argparse.Namespace) -> int:
    try:
        schema.check_mtu(args.mtu)
    except ProfileError as exc:
        raise UsageError(f"invalid MTU: {exc.reason}") from None
    result = _request_on_tunnel(args, "set_mtu", args.name, {"mtu": args.mtu})
    if args.json:
        _print_json(result)
        return 0
    mtu = result.get("mtu")
    automatic = " (auto)" if args.mtu == "auto" and mtu != "auto" else ""
    print(f"{args.name}: MTU {mtu}{automatic}")
    return 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    result = _request_on_tunnel(args, "regenerate", args.name)
    if args.json:
        _print_json(result)
        return 0
    address = result.get("address")
    print(f"{args.name}: new address {address}")
    if result.get("suffix"):
        print(f"  = {result.get('prefix')} + random {result.get('suffix')}")
    latest = (result.get("history") or [{}])[-1]
    if latest.get("address") == address and latest.get("previous"):
        print(f"  (was {latest['previous']})")
    return 0


# --- commands: watch ---


def _snapshot_events(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """The subscription's full state, as the `state` events that would have announced it."""
    return [{"type": "state", "tunnel": tunnel.get("name"), "profile": tunnel.get("profile"),
             "state": tunnel.get("state"), "cause": tunnel.get("cause"), "status": tunnel}
            for tunnel in snapshot.get("tunnels") or []]


def _event_text(event: dict[str, Any]) -> str:
    kind, profile = event.get("type"), event.get("profile")
    if kind == "state":
        status = event.get("status") or {}
        words = _state_words({**status, "state": event.get("state"), "cause": event.get("cause")})
        text = f"{profile}: {event.get('state')} ({words})"
        if event.get("state") == "connected" and status.get("address"):
            text += f", address {status['address']}"
    elif kind == "address":
        reason = str(event.get("reason"))
        text = f"{profile}: new address {event.get('address')} " \
               f"({REASON_WORDS.get(reason, reason)}; was {event.get('previous') or 'none'})"
    elif kind == "mtu":
        reason = str(event.get("reason"))
        text = f"{profile}: MTU {event.get('previous')} -> {event.get('mtu')} " \
               f"({REASON_WORDS.get(reason, reason)})"
    elif kind == "traffic":
        text = f"{profile}: in {_size(int(event.get('rx_rate') or 0))}/s, " \
               f"out {_size(int(event.get('tx_rate') or 0))}/s, RTT {_ms(event.get('rtt_ms'))}"
    elif kind == "removed":
        text = f"{profile}: tunnel removed"
    else:
        text = json.dumps(event, ensure_ascii=False)
    return f"{time.strftime('%H:%M:%S')} {text}"


def _event_json(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False)


def cmd_watch(args: argparse.Namespace) -> int:
    show: Callable[[dict[str, Any]], str] = _event_text if args.text else _event_json
    remaining = args.count
    try:
        with _open_helper(args) as client:
            pending = _snapshot_events(_call(client, "subscribe"))
            events = client.events()
            while remaining is None or remaining > 0:
                if pending:
                    event = pending.pop(0)
                else:
                    with _helper_io(client):
                        event = next(events)
                print(show(event), flush=True)
                if remaining is not None:
                    remaining -= 1
    except KeyboardInterrupt:  # Ctrl-C is how one stops watching: not an error
        pass
    return 0


# --- commands: prefix ---


def machine_mac(net_dir: Path = SYS_CLASS_NET) -> bytes | None:
    """The first non-zero 48-bit MAC address of the machine's interfaces (by name)."""
    try:
        interfaces = sorted(net_dir.iterdir())
    except OSError:
        return None
    for interface in interfaces:
        try:
            mac = bytes.fromhex((interface / "address").read_text().strip().replace(":", ""))
        except (OSError, ValueError):
            continue
        if len(mac) == 6 and mac not in (bytes(6), b"\xff" * 6):
            return mac
    return None


def machine_site_prefix(now: float, net_dir: Path = SYS_CLASS_NET) -> ipaddress.IPv6Network:
    """A fresh RFC 4193 /48 (section 3.2.2): from the time and this machine's EUI-64, or
    random bytes where the machine has no MAC address."""
    mac = machine_mac(net_dir)
    eui64 = eui64_from_mac(mac) if mac is not None else secrets.token_bytes(8)
    return ula_prefix(rfc4193_global_id(ntp_timestamp(now), eui64))


def cmd_prefix_new(args: argparse.Namespace) -> int:
    if args.site is not None:
        try:
            site = parse_network(args.site, "site prefix")
        except AddressingError as exc:
            raise UsageError(f"invalid --site: {exc}") from None
        if site.prefixlen != ULA_PREFIX_LENGTH:
            raise UsageError(f"invalid --site: {site} must be a /{ULA_PREFIX_LENGTH}")
    else:
        site = machine_site_prefix(time.time())
    mn_id = args.mn_id if args.mn_id is not None else secrets.randbelow(1 << MN_ID_BITS)
    prefix = TunnelPrefix.compose(site, args.subnet, mn_id)
    if args.json:
        _print_json({"prefix": str(prefix), "site": str(site), "subnet_id": args.subnet,
                     "mn_id": mn_id})
    else:
        print(prefix)
    return 0


# --- commands: profiles ---


def _profile_extras(profile: Profile) -> str:
    extras = []
    if profile.mtu != DEFAULT_TUNNEL_MTU:
        extras.append(f"MTU {profile.mtu}")
    if profile.keepalive != KEEPALIVE_INTERVAL:
        extras.append(f"keepalive {profile.keepalive:g} s")
    if profile.routes != "home-agent":
        routes = profile.routes if isinstance(profile.routes, str) else ",".join(profile.routes)
        extras.append(f"routes {routes}")
    if profile.auto_connect:
        extras.append("auto-connect")
    return ", ".join(extras)


def cmd_profiles_list(args: argparse.Namespace) -> int:
    path, book = _load_book(args)
    if args.json:
        _print_json({"file": str(path), "default": book.default,
                     "profiles": [profiles.profile_to_dict(p) for p in book.profiles]})
        return 0
    if not book.profiles:
        print(f"no profiles in {path}: add one with `m6t profiles add NAME --gateway ADDR "
              "--port P --prefix PFX/80 --home-agent ADDR`")
        return 0
    default = book.default_profile()
    rows = [("  NAME", "GATEWAY", "PORTS", "PREFIX", "HOME AGENT", "")]
    for profile in book.profiles:
        mark = "* " if profile is default else "  "
        rows.append((mark + profile.name, profile.gateway,
                     ",".join(map(str, profile.ports)), profile.prefix, profile.home_agent,
                     _profile_extras(profile)))
    _print_table(rows)
    if default is not None:
        print("(* = default)")
    return 0


def cmd_profiles_add(args: argparse.Namespace) -> int:
    profile = _profile_from_options(args, args.name, "NAME")
    path, book = _load_book(args)  # a corrupt file stops here, and is never written over
    replaced = book.get(profile.name) is not None
    if replaced and not args.replace:
        raise CliError(f"profile {profile.name!r} already exists in {path}: add --replace to "
                       "replace it")
    # The first profile becomes the default explicitly, so that it stays the default (and
    # `m6t connect` keeps working without a name) once a second profile is added.
    if args.default or not book.profiles:
        book.default = profile.name
    book.put(profile)
    profiles.save(book, path)
    default = " (default)" if book.default_profile() is profile else ""
    print(f"{'replaced' if replaced else 'added'} profile {profile.name}{default} in {path}")
    return 0


def cmd_profiles_remove(args: argparse.Namespace) -> int:
    path, book = _load_book(args)
    was_default = book.default == args.name
    if not book.remove(args.name):
        raise CliError(f"no profile named {args.name!r} in {path} ({_known_profiles(book)})")
    profiles.save(book, path)
    print(f"removed profile {args.name}")
    if was_default and book.profiles and book.default_profile() is None:
        print("there is no default profile now: `m6t profiles default NAME` sets one")
    return 0


def cmd_profiles_import(args: argparse.Namespace) -> int:
    source = "stdin" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {source}: not UTF-8 text") from None
    try:
        incoming = profiles.parse_profiles(text, source)
    except ProfilesError as exc:
        raise CliError(f"{exc}; nothing imported") from None
    path, book = _load_book(args)
    added = [p.name for p in incoming.profiles if book.get(p.name) is None]
    unchanged = [p.name for p in incoming.profiles if book.get(p.name) == p]
    conflicts = [p.name for p in incoming.profiles if p.name not in added + unchanged]
    if conflicts and not args.replace:
        raise CliError(f"{source} has profiles that differ from the ones in {path}: "
                       f"{', '.join(conflicts)}; nothing imported (add --replace to replace "
                       "them)")
    for profile in incoming.profiles:
        book.put(profile)
    adopted_default = book.default is None and incoming.default is not None
    if adopted_default:
        book.default = incoming.default
    if added or conflicts or adopted_default:
        profiles.save(book, path)
    parts = [f"{label} {', '.join(names)}" for label, names in
             (("added", added), ("replaced", conflicts), ("unchanged", unchanged)) if names]
    if adopted_default:
        parts.append(f"default {incoming.default}")
    print(f"imported from {source}: {'; '.join(parts)}" if parts
          else f"nothing to import from {source}: it has no profiles")
    return 0


def cmd_profiles_export(args: argparse.Namespace) -> int:
    _, book = _load_book(args)
    if args.file in (None, "-"):
        sys.stdout.write(profiles.dump_profiles(book))
        return 0
    # save() writes atomically and refuses to replace a file that is not a profiles file.
    target = profiles.save(book, Path(args.file))
    print(f"exported {_plural(len(book.profiles), 'profile')} to {target}")
    return 0


def cmd_profiles_default(args: argparse.Namespace) -> int:
    path, book = _load_book(args)
    if args.name is None:
        current = book.default_profile()
        if current is None:
            print("no default profile: `m6t profiles default NAME` sets one")
        else:
            print(current.name if book.default else f"{current.name} (the only profile)")
        return 0
    _named_profile(book, args.name, path)
    book.default = args.name
    profiles.save(book, path)
    print(f"default profile: {args.name}")
    return 0


# --- the command line ---


def _ports(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (or a "
                                         "comma-separated list of them)") from None


def _mtu(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of bytes or auto") from None


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _id_of(bits: int) -> Callable[[str], int]:
    """An argparse type for a `bits`-wide ID of the addressing plan, decimal or 0x-hex."""
    highest = (1 << bits) - 1

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            value = -1
        if not 0 <= value <= highest:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {bits}-bit ID (0-{highest}, "
                                             f"or 0x0-{highest:#x})")
        return value
    return parse


def _add_profile_options(parser: argparse.ArgumentParser, adhoc: bool) -> None:
    group = parser.add_argument_group("profile options" if not adhoc else "ad hoc profile")
    group.add_argument("--gateway", metavar="ADDR", help="the gateway: IPv4 address or host name")
    group.add_argument("--port", dest="ports", metavar="P", type=_ports, action="extend",
                       help="UDP port, tried in parallel with the others (repeat, or 3544,4500)")
    group.add_argument("--prefix", metavar="PFX/80", help="this client's /80 (m6t prefix new)")
    group.add_argument("--home-agent", metavar="ADDR", help="the home agent's IPv6 address")
    group.add_argument("--mtu", type=_mtu, metavar="N|auto",
                       help=f"tunnel MTU (default {DEFAULT_TUNNEL_MTU})")
    group.add_argument("--keepalive", type=_seconds, metavar="S",
                       help=f"seconds of silence before a keepalive, 1-{KEEPALIVE_INTERVAL:g}")
    group.add_argument("--routes", action="append", metavar="ROUTES",
                       help="home-agent (default), default (::/0), or IPv6 prefixes, "
                            "comma-separated")
    if adhoc:
        group.add_argument("--name", dest="adhoc_name", metavar="NAME",
                           help="name of the ad hoc tunnel (default: adhoc)")


def _add_profile_or_adhoc(command: argparse.ArgumentParser) -> None:
    """connect and probe take a profile by NAME, or an ad hoc one from the options."""
    command.add_argument("name", nargs="?", metavar="NAME",
                         help="a profile of the profiles file (default: the default profile)")
    _add_profile_options(command, adhoc=True)


def _add_command(commands: argparse._SubParsersAction[_Parser], name: str,
                 run: Callable[[argparse.Namespace], int],
                 parents: Sequence[_Parser], help: str, **kwargs: Any) -> _Parser:
    """A command and what runs it: main() calls `args.run(args)`."""
    command = commands.add_parser(name, parents=parents, help=help, **kwargs)
    command.set_defaults(run=run)
    return command


def build_parser() -> argparse.ArgumentParser:
    # --socket and --profiles work before or after the command; SUPPRESS keeps a value given
    # before the command from being reset by the command's own (absent) option.
    common = _Parser(add_help=False)
    socket_help = f"the helper's socket (else $M6T_SOCKET, else {schema.DEFAULT_SOCKET})"
    profiles_help = "the profiles file (else $M6T_PROFILES, else ~/.config/m6t/profiles.toml)"
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help=socket_help)
    common.add_argument("--profiles", metavar="FILE", default=argparse.SUPPRESS,
                        help=profiles_help)
    parent = [common]
    json_option = _Parser(add_help=False)
    json_option.add_argument("--json", action="store_true",
                             help="print the result as JSON (stable: the API's own fields)")
    with_json = [common, json_option]

    parser = _Parser(prog="m6t", description="IPv6 through m6t tunnels (draft-ebalard-mext-"
                     "m6t-02) from IPv4-only networks, driven through m6t-helper.")
    parser.add_argument("--socket", metavar="PATH", help=socket_help)
    parser.add_argument("--profiles", metavar="FILE", help=profiles_help)
    parser.add_argument("--version", action="version", version=f"m6t {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_command(commands, "status", cmd_status, with_json, "the tunnels, in short")

    command = _add_command(commands, "connect", cmd_connect, with_json,
                           "connect a profile (default: the default profile) or an ad hoc one")
    _add_profile_or_adhoc(command)

    command = _add_command(commands, "disconnect", cmd_disconnect, with_json,
                           "disconnect a tunnel (all when NAME is omitted)")
    command.add_argument("name", nargs="?", metavar="NAME")

    command = _add_command(commands, "probe", cmd_probe, with_json,
                           "which ports of a gateway answer, and how fast")
    _add_profile_or_adhoc(command)
    command.add_argument("--timeout", type=_seconds, metavar="S", help="seconds per port")

    command = _add_command(commands, "probe-mtu", cmd_probe_mtu, with_json,
                           "the largest packet a connected tunnel carries")
    command.add_argument("name", metavar="NAME")

    command = _add_command(commands, "set-mtu", cmd_set_mtu, with_json, "change a tunnel's MTU")
    command.add_argument("name", metavar="NAME")
    command.add_argument("mtu", type=_mtu, metavar="N|auto")

    command = _add_command(commands, "regenerate", cmd_regenerate, with_json,
                           "give a tunnel a new random address now")
    command.add_argument("name", metavar="NAME")

    command = _add_command(commands, "watch", cmd_watch, parent,
                           "print the helper's events as JSON lines until Ctrl-C",
                           description="First a `state` event per tunnel (how things are now), "
                                       "then every event as it comes.")
    output = command.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON lines (the default)")
    output.add_argument("--text", action="store_true", help="short lines for humans")
    command.add_argument("--count", type=_positive, help=argparse.SUPPRESS)  # stop after N

    prefix = commands.add_parser("prefix", parents=parent, help="tunnel prefixes")
    prefix_commands = prefix.add_subparsers(dest="prefix_command", metavar="COMMAND",
                                            required=True)
    command = _add_command(prefix_commands, "new", cmd_prefix_new, with_json,
                           "a fresh RFC 4193 /80 for a client")
    command.add_argument("--subnet", type=_id_of(SUBNET_ID_BITS), default=0, metavar="N",
                         help="16-bit subnet ID (default 0)")
    command.add_argument("--mn-id", type=_id_of(MN_ID_BITS), metavar="N",
                         help="16-bit mobile node ID (default: random)")
    command.add_argument("--site", metavar="PFX/48",
                         help="an existing /48 (default: a fresh RFC 4193 one)")

    book = commands.add_parser("profiles", parents=parent, help="the profiles file")
    book_commands = book.add_subparsers(dest="profiles_command", metavar="COMMAND",
                                        required=True)
    _add_command(book_commands, "list", cmd_profiles_list, with_json, "the profiles")
    command = _add_command(book_commands, "add", cmd_profiles_add, parent, "add a profile")
    command.add_argument("name", metavar="NAME")
    _add_profile_options(command, adhoc=False)
    command.add_argument("--auto-connect", action="store_true",
                         help="the desktop app connects it at login")
    command.add_argument("--default", action="store_true", help="make it the default")
    command.add_argument("--replace", action="store_true", help="replace a profile of that name")
    command = _add_command(book_commands, "remove", cmd_profiles_remove, parent,
                           "remove a profile")
    command.add_argument("name", metavar="NAME")
    command = _add_command(book_commands, "import", cmd_profiles_import, parent,
                           "merge the profiles of a TOML file (- for stdin)")
    command.add_argument("file", metavar="FILE")
    command.add_argument("--replace", action="store_true",
                         help="replace profiles of the same name that differ")
    command = _add_command(book_commands, "export", cmd_profiles_export, parent,
                           "write the profiles as TOML (stdout without FILE)")
    command.add_argument("file", nargs="?", metavar="FILE")
    command = _add_command(book_commands, "default", cmd_profiles_default, parent,
                           "set the default profile (show it without NAME)")
    command.add_argument("name", nargs="?", metavar="NAME")
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("m6t-desktop")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fail(message: str) -> None:
    print(f"m6t: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except CliError as exc:
        _fail(str(exc))
        return exc.status
    except HelperError as exc:
        _fail(_helper_error_message(exc))
        return 1
    except ProfilesError as exc:
        _fail(str(exc))
        return 1
    except BrokenPipeError:  # `m6t watch | head`: the reader left, nothing more to say
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, and the traceback on request
        if os.environ.get("M6T_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (a bug in m6t: please report "
              "it; M6T_DEBUG=1 shows the traceback)")
        return 1
