"""The shape of the `m6t` command line: its commands, options and argument types. Each command
carries the function that runs it (`args.run`)."""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from m6t.cli.errors import UsageError
from m6t.cli.network_commands import cmd_networks, cmd_networks_forget
from m6t.cli.profile_commands import (
    cmd_prefix_new,
    cmd_profiles_add,
    cmd_profiles_default,
    cmd_profiles_export,
    cmd_profiles_import,
    cmd_profiles_list,
    cmd_profiles_remove,
)
from m6t.cli.tunnel_commands import (
    cmd_connect,
    cmd_disconnect,
    cmd_probe,
    cmd_probe_mtu,
    cmd_regenerate,
    cmd_set_mtu,
    cmd_status,
    cmd_watch,
)
from m6t.control.schema import DEFAULT_SOCKET
from m6t.protocol.constants import (
    DEFAULT_TUNNEL_MTU,
    KEEPALIVE_INTERVAL,
    MN_ID_BITS,
    SUBNET_ID_BITS,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage; one line that says where help is reads better.
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- argument types ---


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


# --- groups of options ---


def _add_profile_options(parser: argparse.ArgumentParser, adhoc: bool) -> None:
    group = parser.add_argument_group("profile options" if not adhoc else "ad hoc profile")
    group.add_argument("--gateway", metavar="ADDR", help="the gateway: IPv4 address or host name")
    group.add_argument("--more-gateway", dest="more_gateways", metavar="ADDR", action="append",
                       help="another gateway raced with --gateway on every port (repeat)")
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
    socket_help = f"the helper's socket (else $M6T_SOCKET, else {DEFAULT_SOCKET})"
    profiles_help = "the profiles file (else $M6T_PROFILES, else ~/.config/m6t/profiles.toml)"
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help=socket_help)
    common.add_argument("--profiles", metavar="FILE", default=argparse.SUPPRESS,
                        help=profiles_help)
    parent = [common]
    json_option = _Parser(add_help=False)
    json_option.add_argument("--json", action="store_true",
                             help="print the result as JSON (stable: the API's own fields)")
    with_json = [common, json_option]
    # Under `networks` (which takes --json itself): not given, it leaves the parent's value.
    json_kept = _Parser(add_help=False)
    json_kept.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="print the result as JSON (stable: the API's own fields)")

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

    networks = _add_command(commands, "networks", cmd_networks, with_json,
                            "what the helper remembers of each network: port, MTU, fragments",
                            description="Without a command: the list (`m6t networks list`).")
    network_commands = networks.add_subparsers(dest="networks_command", metavar="COMMAND")
    _add_command(network_commands, "list", cmd_networks, [common, json_kept],
                 "the networks the helper remembers (also: m6t networks)")
    command = _add_command(network_commands, "forget", cmd_networks_forget, [common, json_kept],
                           "forget a network (its port, MTU and fragments), or every one")
    command.add_argument("network", nargs="?", metavar="ID",
                         help="a network's ID from `m6t networks`, or enough of its start")
    command.add_argument("--all", action="store_true", help="forget every network")

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
