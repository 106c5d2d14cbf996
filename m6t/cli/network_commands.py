"""`m6t networks`: what the helper remembers of each IPv4 network (the port that won there, the
MTU that worked, whether IPv4 fragments pass, when it was last seen), and forgetting it.

A network is named by the helper's `id` (a hash of its router and Wi-Fi name); people may give
any unique prefix of it, resolved here from the `networks` list before `forget_network` is
called, so the helper only ever sees whole ids.
"""

from __future__ import annotations

import argparse
import time

from m6t.cli.errors import CliError, UsageError
from m6t.cli.render import ago, plural, print_json, print_table
from m6t.cli.tunnel_commands import request
from m6t.control.schema import KnownNetwork, NetworksResult

SHORT_ID = 6  # the shortest id shown; longer where needed to tell two apart (like git)
NOT_SAVED = ("(the helper cannot write its memory file: it forgets these networks when it "
             "stops; see journalctl -u m6t-helper)")


def fragments_words(passes: bool | None) -> str:
    return "untested" if passes is None else ("yes" if passes else "no")


def short_ids(ids: list[str]) -> dict[str, str]:
    """Each id cut to the shortest prefix (at least SHORT_ID) that no other id shares."""
    unique = sorted(set(ids))
    length = SHORT_ID
    while len({network_id[:length] for network_id in unique}) < len(unique) \
            and length < max(map(len, unique)):
        length += 1
    return {network_id: network_id[:length] for network_id in unique}


def resolve(given: str, networks: list[KnownNetwork]) -> KnownNetwork:
    """The network `given` names: its whole id or a prefix that only one id starts with."""
    wanted = given.strip().lower()
    if not wanted:
        raise UsageError("an empty network ID: give one from `m6t networks`, or --all")
    by_id = {network.id: network for network in networks}
    if wanted in by_id:
        return by_id[wanted]
    matches = sorted(network_id for network_id in by_id if network_id.startswith(wanted))
    if len(matches) == 1:
        return by_id[matches[0]]
    if matches:
        raise CliError(f"{given!r} could be any of {', '.join(matches)}: give more of the ID")
    if not by_id:
        raise CliError(f"no known network {given!r}: the helper remembers no network yet")
    known = ", ".join(short_ids(list(by_id)).values())
    raise CliError(f"no known network {given!r} (known: {known}; see `m6t networks`)")


def cmd_networks(args: argparse.Namespace) -> int:
    result: NetworksResult = request(args, "networks")
    if args.json:
        print_json(result)
        return 0
    if not result.networks:
        print("no networks remembered yet: the helper learns a network's port and MTU when a "
              "tunnel connects over it")
    else:
        print_networks(result.networks)
    if not result.saved:
        print(NOT_SAVED)
    return 0


def print_networks(networks: list[KnownNetwork]) -> None:
    short = short_ids([network.id for network in networks])
    now = time.time()
    rows = [("  ID", "PROFILE", "PORT", "MTU", "FRAGMENTS", "LAST SEEN", "NETWORK")]
    for network in networks:
        mark = "* " if network.current else "  "
        rows.append((mark + short[network.id], network.profile, str(network.port),
                     str(network.mtu), fragments_words(network.fragments_pass),
                     "now" if network.current else ago(max(0.0, now - network.last_seen)),
                     network.label))
    print_table(rows)
    if any(network.current for network in networks):
        print("(* = a tunnel runs over it now)")


def cmd_networks_forget(args: argparse.Namespace) -> int:
    if args.all and args.network is not None:
        raise UsageError("give a network ID or --all, not both")
    if not args.all and args.network is None:
        raise UsageError("which network? give its ID (see `m6t networks`), or --all")
    if args.all:
        before: NetworksResult = request(args, "networks")
        result: NetworksResult = request(args, "forget_network")
        forgotten = len({network.id for network in before.networks})
        what = f"forgot {plural(forgotten, 'network')}" if forgotten \
            else "no networks to forget"
    else:
        known: NetworksResult = request(args, "networks")
        network = resolve(args.network, known.networks)
        result = request(args, "forget_network", network=network.id)
        what = f"forgot network {network.id} ({network.label})"
    if args.json:
        print_json(result)
        return 0
    print(what)
    if not result.saved:
        print(NOT_SAVED)
    return 0
