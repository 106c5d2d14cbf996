"""The commands that never talk to the helper: the user's profiles file (m6t/profiles.py),
`m6t prefix new`, and the profile a tunnel command acts on (by name, default, or ad hoc options).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from m6t import profiles
from m6t.cli.errors import CliError, UsageError
from m6t.cli.render import plural, print_json, print_table
from m6t.control import schema
from m6t.control.schema import Profile, ProfileError
from m6t.linux.machine import machine_mac
from m6t.profiles import ProfileBook, ProfilesError
from m6t.protocol.addressing import (
    AddressingError,
    TunnelPrefix,
    generate_site_prefix,
    parse_network,
)
from m6t.protocol.constants import (
    DEFAULT_TUNNEL_MTU,
    KEEPALIVE_INTERVAL,
    MN_ID_BITS,
    ULA_PREFIX_LENGTH,
)

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
    "more_gateways": "--more-gateway",
}
PROFILE_OPTIONS = ("gateway", "ports", "prefix", "home_agent", "mtu", "keepalive", "routes",
                   "more_gateways")


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


def routes_option(values: list[str]) -> str | list[str]:
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    keywords = [item for item in items if item in ("home-agent", "default")]
    if keywords and len(items) != 1:
        raise UsageError("invalid --routes: home-agent or default alone, or IPv6 prefixes")
    return keywords[0] if keywords else items


def _options_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, field) is not None for field in PROFILE_OPTIONS)


def profile_from_options(args: argparse.Namespace, name: str, name_option: str) -> Profile:
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
        data["routes"] = routes_option(args.routes)
    if args.more_gateways is not None:
        data["more_gateways"] = args.more_gateways
    if getattr(args, "auto_connect", False):
        data["auto_connect"] = True
    try:
        return schema.profile_from_dict(data)
    except ProfileError as exc:
        field = exc.field.partition(".")[0].partition("[")[0]  # "ports[2]" is --port
        option = name_option if field == "name" else OPTION_OF_FIELD.get(field, field)
        raise UsageError(f"invalid {option}: {exc.reason}") from None


def chosen_profile(args: argparse.Namespace) -> Profile:
    """`NAME` from the file, ad hoc options, or the default profile (connect, probe)."""
    if args.name is not None and (_options_given(args) or args.adhoc_name is not None):
        raise UsageError("give a profile NAME or ad hoc options (--gateway ...), not both; "
                         "--name names an ad hoc tunnel")
    if _options_given(args) or args.adhoc_name is not None:
        return profile_from_options(args, args.adhoc_name or "adhoc", "--name")
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


# --- prefix new ---


def cmd_prefix_new(args: argparse.Namespace) -> int:
    if args.site is not None:
        try:
            site = parse_network(args.site, "site prefix")
        except AddressingError as exc:
            raise UsageError(f"invalid --site: {exc}") from None
        if site.prefixlen != ULA_PREFIX_LENGTH:
            raise UsageError(f"invalid --site: {site} must be a /{ULA_PREFIX_LENGTH}")
    else:
        site = generate_site_prefix(time.time(), machine_mac())
    mn_id = args.mn_id if args.mn_id is not None else secrets.randbelow(1 << MN_ID_BITS)
    prefix = TunnelPrefix.compose(site, args.subnet, mn_id)
    if args.json:
        print_json({"prefix": str(prefix), "site": str(site), "subnet_id": args.subnet,
                    "mn_id": mn_id})
    else:
        print(prefix)
    return 0


# --- profiles ---


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
        print_json({"file": str(path), "default": book.default,
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
    print_table(rows)
    if default is not None:
        print("(* = default)")
    return 0


def cmd_profiles_add(args: argparse.Namespace) -> int:
    profile = profile_from_options(args, args.name, "NAME")
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
    print(f"exported {plural(len(book.profiles), 'profile')} to {target}")
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
