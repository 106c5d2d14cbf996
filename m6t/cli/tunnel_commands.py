"""The commands that go through m6t-helper: status, connect, disconnect, probe, probe-mtu,
set-mtu, regenerate and watch. Each sends one call of the control API (docs/control-api.md)
and prints the result record it gets back, in short or, with --json, unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
from collections.abc import Callable, Iterator
from typing import Any

from m6t.cli.errors import CliError, UsageError
from m6t.cli.profile_commands import chosen_profile
from m6t.cli.render import (
    event_line,
    json_text,
    milliseconds,
    print_json,
    print_table,
    state_words,
    tunnel_lines,
)
from m6t.control import schema
from m6t.control.client import HelperClient, socket_path
from m6t.control.errors import BadReply, NotFound
from m6t.control.schema import (
    Access,
    DisconnectResult,
    Event,
    MtuReport,
    ProbeResult,
    ProfileError,
    StateEvent,
    StatusResult,
    TunnelState,
    TunnelStatus,
)
from m6t.protocol.constants import SUGGESTED_PORTS

HELPER_TIMEOUT = 30.0  # seconds to wait for an answer (connect waits for the port race)


# --- talking to the helper ---


def _open_helper(args: argparse.Namespace, timeout: float = HELPER_TIMEOUT) -> HelperClient:
    try:
        return HelperClient(args.socket, timeout=timeout)
    except BadReply as exc:  # something answers on that path, but it is not the helper
        raise CliError(f"{exc.message}: check --socket or M6T_SOCKET") from None
    except OSError as exc:  # HelperClient maps the usual ones; this is whatever is left
        raise CliError(f"cannot reach the helper at {socket_path(args.socket)} "
                       f"({exc.strerror or exc}): check --socket or M6T_SOCKET") from None


@contextlib.contextmanager
def _socket_errors() -> Iterator[None]:
    """HelperClient turns the usual socket failures into ControlErrors; this is the rest."""
    try:
        yield
    except OSError as exc:
        raise CliError(f"lost the connection to the helper ({exc.strerror or exc}): "
                       "is m6t-helper running?") from None


def request(args: argparse.Namespace, method: str, *, answer_within: float = HELPER_TIMEOUT,
             **params: Any) -> Any:
    """One call; its result record (schema.METHODS), or a ControlError for main() to say."""
    with _open_helper(args, answer_within) as client, _socket_errors():
        return client.call(method, **params)


def _request_on_tunnel(args: argparse.Namespace, method: str, name: str, **params: Any) -> Any:
    """A call about one tunnel; if there is none, the error lists the tunnels that are up."""
    try:
        return request(args, method, profile=name, **params)
    except NotFound as exc:
        if exc.data.tunnels is None:
            raise
        known = (f"tunnels up: {', '.join(exc.data.tunnels)}" if exc.data.tunnels
                 else "no tunnel is up: `m6t connect NAME` first")
        raise CliError(f"no tunnel for profile {name!r} ({known})") from None


# --- commands ---


def cmd_status(args: argparse.Namespace) -> int:
    result: StatusResult = request(args, "status")
    if args.json:
        print_json(result)
        return 0
    blocks = ["\n".join(tunnel_lines(tunnel)) for tunnel in result.tunnels]
    print("\n\n".join(blocks) if blocks else "no tunnels")
    if result.access == Access.READ_ONLY:
        print(f"(read-only: join group {result.group} to connect or change tunnels)")
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    profile = chosen_profile(args)
    result: TunnelStatus = request(args, "connect", profile=profile)
    if args.json:
        print_json(result)
    else:
        print("\n".join(tunnel_lines(result)))
    if result.state == TunnelState.CONNECTED:
        return 0
    if result.state in (TunnelState.WAITING, TunnelState.CONNECTING):
        what = f"the helper keeps trying (`m6t disconnect {shlex.quote(profile.name)}` to stop)"
    else:
        what = "see the helper's log: journalctl -u m6t-helper"
    raise CliError(f"{profile.name} is {result.state} ({state_words(result)}): {what}")


def cmd_disconnect(args: argparse.Namespace) -> int:
    result: DisconnectResult
    if args.name is not None:
        result = _request_on_tunnel(args, "disconnect", args.name)
    else:
        result = request(args, "disconnect")
    if args.json:
        print_json(result)
        return 0
    names = result.disconnected
    print(f"disconnected {', '.join(names)}" if names else "no tunnels to disconnect")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    profile = chosen_profile(args)
    params: dict[str, Any] = {"profile": profile}
    answer_within = HELPER_TIMEOUT
    if args.timeout is not None:
        params["timeout"] = args.timeout
        answer_within = max(answer_within, args.timeout + 10)
    result: ProbeResult = request(args, "probe", answer_within=answer_within, **params)
    if args.json:
        print_json(result)
    else:
        address = result.gateway_address
        gateway = profile.gateway if address == profile.gateway \
            else f"{profile.gateway} ({address})"
        print(f"{profile.name}: gateway {gateway}")
        rows = [("PORT", "REACHABLE", "RTT", "")]
        for probe in result.ports:
            rows.append((str(probe.port), "yes" if probe.reachable else "no",
                         milliseconds(probe.rtt_ms) if probe.reachable else "-",
                         probe.error or ""))
        print_table(rows, indent="  ")
    if any(probe.reachable for probe in result.ports):
        return 0
    others = [port for port in SUGGESTED_PORTS if port not in profile.ports]
    hint = f" (other ports to try: {', '.join(map(str, others))})" if others else ""
    raise CliError(f"no port of {profile.gateway} answered: check the gateway's address and "
                   f"ports, and that this network lets UDP through{hint}")


def cmd_probe_mtu(args: argparse.Namespace) -> int:
    result: MtuReport = _request_on_tunnel(args, "probe_mtu", args.name)
    if args.json:
        print_json(result)
        return 0
    fragments = ("IPv4 fragments get through" if result.fragments_pass
                 else "IPv4 fragments are dropped on the way")
    print(f"{args.name}: packets up to {result.mtu} bytes get through the tunnel")
    print(f"  IPv4 path MTU to the gateway: {result.ipv4_path_mtu or 'unknown'}; {fragments}")
    tried = " ".join(map(str, result.tried)) or "nothing"
    answered = " ".join(map(str, result.answered)) or "none"
    print(f"  tried {tried}; answered {answered}")
    print(f"  to use it: m6t set-mtu {shlex.quote(args.name)} {result.mtu}")
    return 0


def cmd_set_mtu(args: argparse.Namespace) -> int:
    try:
        schema.check_mtu(args.mtu)
    except ProfileError as exc:
        raise UsageError(f"invalid MTU: {exc.reason}") from None
    result: TunnelStatus = _request_on_tunnel(args, "set_mtu", args.name, mtu=args.mtu)
    if args.json:
        print_json(result)
        return 0
    automatic = " (auto)" if args.mtu == "auto" else ""
    print(f"{args.name}: MTU {result.mtu}{automatic}")
    return 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    result: TunnelStatus = _request_on_tunnel(args, "regenerate", args.name)
    if args.json:
        print_json(result)
        return 0
    print(f"{args.name}: new address {result.address}")
    if result.suffix:
        print(f"  = {result.prefix} + random {result.suffix}")
    latest = result.history[-1] if result.history else None
    if latest is not None and latest.address == result.address and latest.previous:
        print(f"  (was {latest.previous})")
    return 0


# --- watch ---


def _snapshot_events(snapshot: StatusResult) -> list[Event]:
    """The subscription's full state, as the `state` events that would have announced it."""
    return [StateEvent(tunnel=tunnel.name, profile=tunnel.profile, state=tunnel.state,
                       cause=tunnel.cause, status=tunnel, message=tunnel.message)
            for tunnel in snapshot.tunnels]


def cmd_watch(args: argparse.Namespace) -> int:
    show: Callable[[Event], str] = event_line if args.text else json_text
    remaining = args.count
    try:
        with _open_helper(args) as client:
            with _socket_errors():
                pending = _snapshot_events(client.call("subscribe"))
            events = client.events()
            while remaining is None or remaining > 0:
                if pending:
                    event = pending.pop(0)
                else:
                    with _socket_errors():
                        event = next(events)
                print(show(event), flush=True)
                if remaining is not None:
                    remaining -= 1
    except KeyboardInterrupt:  # Ctrl-C is how one stops watching: not an error
        pass
    return 0
