"""Build-time helpers for packaging/build-deb (run by it; not installed).

    debtool.py version PYPROJECT            the project's version, from pyproject.toml
    debtool.py man OUTDIR VERSION DATE      man pages generated from the commands' argparse parsers
    debtool.py split CORE DESKTOP           move the desktop-only files of the venv to DESKTOP
    debtool.py bundled                      "name version license" of every distribution in the venv

`man`, `split` and `bundled` run under the staged venv's own interpreter (so they see exactly
what is being packaged); `version` under any Python >= 3.11.

The man pages take their synopsis and options from the parsers (so they never go stale) and
their prose (files, environment, exit status, security, see also) from PAGES below.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import shutil
import sys
from pathlib import Path
from typing import Any

# --- version -------------------------------------------------------------------------------------


def cmd_version(pyproject: str) -> int:
    import tomllib

    with open(pyproject, "rb") as handle:
        print(tomllib.load(handle)["project"]["version"])
    return 0


# --- man pages -----------------------------------------------------------------------------------


class Captured(BaseException):  # BaseException: `m6t`'s main() catches Exception
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def capture_parser(module: str, entry: str = "main") -> argparse.ArgumentParser:
    """The parser a command builds, caught when it is about to parse (nothing else runs)."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Captured(self)

    argparse.ArgumentParser.parse_args = parse_args  # type: ignore[assignment,method-assign]
    try:
        getattr(importlib.import_module(module), entry)([])
    except Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError(f"{module}.{entry} did not build an argparse parser")


def esc(text: str) -> str:
    """Plain text to roff: backslashes, and a leading dot or quote that would be a request."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"(?m)^([.'])", r"\\&\1", text)
    return text


def opt(text: str) -> str:
    """An option or command name in roff: its hyphens are minus signs (copy-paste works)."""
    return esc(text).replace("-", "\\-")


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split())


def invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """`.TP` heading of one option: \\fB\\-\\-config\\fR, \\fB\\-c\\fR \\fICONFIG\\fR."""
    if not action.option_strings:
        return f"\\fI{esc(str(action.metavar or action.dest))}\\fR"
    names = ", ".join(f"\\fB{opt(name)}\\fR" for name in action.option_strings)
    if action.nargs == 0:
        return names
    # As argparse shows it: METAVAR, or {choice,...}, repeated per nargs.
    metavar = parser._get_formatter()._format_args(action, action.dest.upper())
    return f"{names} \\fI{opt(metavar)}\\fR"


def usage(parser: argparse.ArgumentParser) -> str:
    text = " ".join(parser.format_usage().split())
    return text.removeprefix("usage: ")


def usage_roff(text: str) -> str:
    """A usage line in roff: minus signs, and no line break inside one [option METAVAR]."""
    text = opt(text)
    return re.sub(r"\[[^\]]*\]", lambda m: m.group(0).replace(" ", "\\ "), text)


def options_section(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()
                    ) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if skip.intersection(action.option_strings):
            continue
        if not action.option_strings and not action.help:
            continue  # a positional without help: the usage line shows it
        lines += [".TP", invocation(parser, action), esc(help_text(parser, action) or "")]
    return lines


def short_usage(sub: argparse.ArgumentParser, skip: frozenset[str]) -> str:
    """A command's usage without the options every command shares (documented once)."""
    text = usage(sub)
    for option in skip:
        text = re.sub(rf"\[{re.escape(option)}(?: [^\]]*)?\] ?", "", text)
    return text.strip()


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(full name, help, parser) of every leaf command, depth first: "prefix new", ..."""
    found: list[tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            nested = subcommands(sub)
            if nested:
                found += [(f"{name} {n}", h, p) for n, h, p in nested]
            else:
                found.append((name, helps.get(name, ""), sub))
    return found


# Both clients find the helper and the profiles the same way (m6t.control.client.socket_path,
# m6t.profiles), so their pages say it in the same words; each adds its own variables after.
CLIENT_ENVIRONMENT = """\
.SH ENVIRONMENT
.TP
.B M6T_SOCKET
the helper's control socket, when \\fB\\-\\-socket\\fR is not given.
.TP
.B M6T_PROFILES
the profiles file, when \\fB\\-\\-profiles\\fR is not given.
"""

PAGES: dict[str, dict[str, object]] = {
    "m6t": {
        "module": "m6t.cli", "entry": "build_parser_main", "section": 1,
        "title": "user commands for m6t tunnels",
        "description": """\
The tunnels themselves live in
.BR m6t\\-helper (8);
.B m6t
asks it, over its control socket, to connect, disconnect, probe or re\\-address them, and
edits the user's profiles file. Any user may read the status; members of the
.B m6t
group (and root) may change things: add yourself with
.B adduser
.I USER
.B m6t
and log in again.
.PP
Human output is short; \\fB\\-\\-json\\fR prints the helper's records unchanged, for scripts.
Every failure is one line on standard error.""",
        "extra": CLIENT_ENVIRONMENT + """\
.TP
.B M6T_DEBUG
set to 1 to get a traceback instead of a one\\-line internal error.
.SH FILES
.TP
.I ~/.config/m6t/profiles.toml
the user's profiles (shared with
.BR m6t\\-desktop (1)).
.TP
.I /run/m6t/helper.sock
the helper's control socket.
.SH EXIT STATUS
0 on success, 1 when the operation failed, 2 when the command line is wrong.
.SH SEE ALSO
.BR m6t\\-helper (8),
.BR m6t\\-desktop (1),
.BR m6t\\-gateway (8),
draft\\-ebalard\\-mext\\-m6t\\-02""",
    },
    "m6t-helper": {
        "module": "m6t_helper.__main__", "section": 8,
        "title": "m6t client daemon",
        "description": """\
On Debian it runs as the systemd service
.BR m6t\\-helper.service ,
enabled when the package is installed. It needs CAP_NET_ADMIN (the TUN device, addresses,
routes, forced socket buffers) and CAP_NET_RAW (the raw socket that sends hand\\-made IPv4
fragments for the MTU probe); the unit gives it these and CAP_CHOWN (to give its socket to
the \\fB\\-\\-group\\fR group) and nothing else.
.PP
To change its options, run
.B systemctl edit m6t\\-helper
and override ExecStart, for example with \\fB\\-\\-others none\\fR.""",
        "extra": """\
.SH ACCESS
Every connection to the control socket is identified with SO_PEERCRED. Root and members of the
\\fB\\-\\-group\\fR group (default \\fBm6t\\fR, created when the package is installed) may
connect and disconnect tunnels; other users may read the status (\\fB\\-\\-others read\\fR,
the default) or nothing at all (\\fB\\-\\-others none\\fR).
.SH FILES
.TP
.I /run/m6t/helper.sock
the control socket (its directory is created by systemd: RuntimeDirectory=m6t).
.TP
.I /proc/sys/net/ipv6/conf/m6tN/
per\\-tunnel settings it writes (no SLAAC, no router solicitations, no DAD on the tunnel).
.TP
.I /lib/systemd/system/m6t\\-helper.service
the hardened unit.
.SH ENVIRONMENT
.TP
.B M6T_SOCKET
the control socket, when \\fB\\-\\-socket\\fR is not given.
.SH EXIT STATUS
0 after a clean stop (SIGTERM, SIGINT), 1 when it could not start (missing capability,
no /dev/net/tun, socket in use).
.SH SEE ALSO
.BR m6t (1),
.BR m6t\\-desktop (1),
.BR systemd.exec (5)""",
    },
    "m6t-gateway": {
        "module": "m6t.gateway.__main__", "section": 8,
        "title": "m6t tunnel gateway daemon",
        "description": """\
On Debian it runs as the systemd service
.BR m6t\\-gateway.service ,
which is installed but neither enabled nor started: write
.I /etc/m6t/gateway.toml
first (start from the commented example in
.IR /usr/share/doc/m6t/examples/m6t\\-gateway.toml ),
check it, then enable and start the service:
.PP
.RS
.nf
m6t\\-gateway \\-\\-config /etc/m6t/gateway.toml \\-\\-check
systemctl enable \\-\\-now m6t\\-gateway
.fi
.RE
.PP
.B systemctl reload m6t\\-gateway
sends SIGHUP, which re\\-reads the configuration.""",
        "extra": """\
.SH SIGNALS
.TP
.B SIGHUP
re\\-read the configuration (tuning keys and home agents; a change of listen ports opens and
closes sockets).
.TP
.BR SIGTERM ", " SIGINT
tear down (TUN device, route, forwarding setting restored) and exit.
.SH FILES
.TP
.I /etc/m6t/gateway.toml
the configuration read by the systemd unit (not shipped: the unit does not start without it;
removed with the package on purge, kept on remove).
.TP
.I /usr/share/doc/m6t/examples/m6t\\-gateway.toml
every key, with its default and why.
.TP
.I /proc/sys/net/ipv6/conf/all/forwarding
set to 1 while the gateway runs, restored when it stops.
.TP
.I /run/m6t\\-gateway/
(\\fB\\-\\-runtime\\-dir\\fR) the forwarding setting's value from before the start, one note per
network namespace: a gateway restarted after being killed restores that value, not the 1 the
killed one left.
.SH EXIT STATUS
0 after a clean stop or a valid \\fB\\-\\-check\\fR, 1 when it could not start, 2 when the
configuration is invalid (the message names the offending key).
.SH SEE ALSO
.BR m6t\\-helper (8),
.BR m6t (1),
draft\\-ebalard\\-mext\\-m6t\\-02""",
    },
    "m6t-gateway-health": {
        "module": "m6t.gateway.health", "section": 8,
        "title": "is this m6t gateway fit to hold a redundant pair's address",
        "description": """\
.BR keepalived (8)
runs it every second on both hosts of a gateway pair (VRRP), as the
.B vrrp_script
of the sample configuration in
.IR /usr/share/doc/m6t/keepalived/keepalived.conf.sample ;
a host whose check fails gives the virtual address up and the other takes it over. Ready
means: the gateway's metrics answer \\fBm6t_gateway_ready 1\\fR (its loop runs with its
ports bound), its TUN device is up, and a home agent answers an ICMPv6 echo. The whole check
is bounded by \\fB\\-\\-timeout\\fR. The plan for operators:
.IR /usr/share/doc/m6t/operating.md.gz .""",
        "extra": """\
.SH EXIT STATUS
0 ready, 1 not ready (one line on standard output says why), 2 a bad command line or
configuration.
.SH FILES
.TP
.I /etc/m6t/gateway.toml
where the metrics address, the TUN device's name and the home agents are read.
.SH SEE ALSO
.BR m6t\\-gateway (8),
.BR keepalived (8)""",
    },
    "m6t-desktop": {
        "module": "m6t_desktop.__main__", "entry": "parse_args", "section": 1,
        "title": "tray app for m6t tunnels",
        "description": """\
It shows the tunnels of
.BR m6t\\-helper (8)
in the system tray and connects the user's profiles.
Changing things needs membership of the
.B m6t
group (\\fBadduser\\fR \\fIUSER\\fR \\fBm6t\\fR, then log in again).
.PP
It starts at login only for users who ask for it ("Start at login" in the app, which writes
.IR ~/.config/autostart/m6t\\-desktop.desktop ).
The system\\-wide entry
.I /etc/xdg/autostart/m6t\\-desktop.desktop
ships disabled (Hidden=true); an administrator who wants it for every user removes that line
and sets X\\-GNOME\\-Autostart\\-enabled=true (dpkg keeps the edit across upgrades).""",
        "extra": CLIENT_ENVIRONMENT + """\
.TP
.BR DISPLAY ", " WAYLAND_DISPLAY ", " QT_QPA_PLATFORM
without one of these it refuses to start.
.SH FILES
.TP
.I ~/.config/m6t/profiles.toml
the user's profiles (shared with
.BR m6t (1)).
.TP
.I ~/.config/autostart/m6t\\-desktop.desktop
present when the user enabled "Start at login".
.TP
.I /etc/xdg/autostart/m6t\\-desktop.desktop
the system\\-wide autostart entry (disabled by default).
.SH SEE ALSO
.BR m6t (1),
.BR m6t\\-helper (8)""",
    },
}


def render(name: str, page: dict[str, object], version: str, date: str) -> str:
    entry = str(page.get("entry", "main"))
    if entry == "build_parser_main":  # m6t.cli exposes its parser directly
        parser = importlib.import_module(str(page["module"])).build_parser()
    else:
        parser = capture_parser(str(page["module"]), entry)
    section = int(page["section"])  # type: ignore[call-overload]
    manual = "System Administration" if section == 8 else "User Commands"
    title = name.upper().replace("-", "\\-")
    lines = [
        f'.TH {title} {section} "{date}" "m6t {version}" "{manual}"',
        ".nh",  # no hyphenation: option names must stay whole
        ".ad l",
        ".SH NAME",
        f"{opt(name)} \\- {esc(str(page['title']))}",
        ".SH SYNOPSIS",
        usage_roff(usage(parser)),
        ".SH DESCRIPTION",
        esc(" ".join((parser.description or "").split())),
        ".PP",
        str(page["description"]),
        ".SH OPTIONS",
        *options_section(parser),
    ]
    leaves = subcommands(parser)
    if leaves:
        # Options of the top-level parser (--socket, --profiles, -h) work with every command:
        # documented once above, left out below.
        shared = frozenset(o for a in parser._actions for o in a.option_strings) - {"--version"}
        lines += [".SH COMMANDS", "The options above work with every command, before or "
                  "after it."]
        for full, helptext, sub in leaves:
            lines += [".SS " + opt(full), ".PP", usage_roff(short_usage(sub, shared)), ".PP",
                      esc(helptext[:1].upper() + helptext[1:] + ".")]
            options = options_section(sub, skip=shared)
            if options:
                lines += [".RS", *options, ".RE"]
    lines.append(str(page["extra"]))
    return "\n".join(lines) + "\n"


def cmd_man(outdir: str, version: str, date: str) -> int:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for name, page in PAGES.items():
        path = out / f"{name}.{page['section']}"
        path.write_text(render(name, page, version, date), encoding="utf-8")
        print(path)
    return 0


# --- splitting the venv between the two binary packages ------------------------------------------


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(dist_name: str, extras: set[str]) -> set[str]:
    """Names required by `dist_name` (with `extras`)."""
    from importlib.metadata import distribution

    found = set()
    for line in distribution(dist_name).requires or []:
        requirement, _, marker = line.partition(";")
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if name is None:
            continue
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if extra and extra.group(1) not in extras:
            continue
        # Other markers (python_version, platform) are not evaluated: a requirement they
        # exclude is simply not installed, and _closure skips what is not installed.
        found.add(_normal(name.group(1)))
    return found


def _closure(roots: set[str]) -> set[str]:
    from importlib.metadata import PackageNotFoundError

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(PackageNotFoundError):  # not installed: excluded by a marker
            todo += _requires(name, set())
    return seen


def cmd_split(core: str, desktop: str) -> int:
    """Move the tray app (m6t_desktop, bin/m6t-desktop) and the distributions only it needs
    (PySide6-Essentials, shiboken6...) from the core venv to the desktop tree."""
    from importlib.metadata import distribution, distributions

    project = "m6t-desktop"
    core_deps = _closure(_requires(project, set()))
    desktop_deps = _closure(_requires(project, {"desktop"})) - core_deps
    installed = {_normal(d.metadata["Name"]) for d in distributions()}
    missing = desktop_deps - installed
    if missing:
        raise SystemExit(f"split: desktop dependencies not installed: {sorted(missing)}")
    site = Path(distribution(project)._path).parent  # type: ignore[attr-defined]
    venv = Path(sys.prefix)
    moves: set[Path] = set()
    for name in sorted(desktop_deps):
        dist = distribution(name)
        for file in dist.files or []:
            moves.add((site / file).resolve())
    for file in distribution(project).files or []:
        path = (site / file).resolve()
        if file.parts[0] == "m6t_desktop" or path == (venv / "bin" / "m6t-desktop").resolve():
            moves.add(path)
    core_root, desktop_root = Path(core).resolve(), Path(desktop).resolve()
    moved = 0
    for path in sorted(moves):
        if not path.exists() and not path.is_symlink():
            continue  # .pyc listed in RECORD but never written (--no-compile)
        target = desktop_root / path.relative_to(core_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), target)
        moved += 1
    # Directories left empty in core (the packages' own folders) go too.
    for directory in sorted({p.parent for p in moves}, key=lambda p: len(p.parts), reverse=True):
        while directory != core_root and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
            directory = directory.parent
    print(f"split: {moved} files of {', '.join(sorted(desktop_deps)) or 'nothing'} "
          f"and m6t_desktop moved to {desktop}")
    return 0


def cmd_bundled() -> int:
    from importlib.metadata import distributions

    for dist in sorted(distributions(), key=lambda d: _normal(d.metadata["Name"])):
        meta: Any = dist.metadata  # an email.message.Message: .get and .get_all
        licence = meta.get("License-Expression") or ""
        if not licence or len(licence) > 60:
            classifiers = [c.rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or []
                           if c.startswith("License ::")]
            licence = ", ".join(classifiers) or (meta.get("License") or "").split("\n")[0][:60]
        print(f"{meta['Name']} {meta['Version']}: {licence or 'see its metadata'}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "version" and len(argv) == 2:
        return cmd_version(argv[1])
    if len(argv) == 4 and argv[0] == "man":
        return cmd_man(*argv[1:])
    if len(argv) == 3 and argv[0] == "split":
        return cmd_split(*argv[1:])
    if argv == ["bundled"]:
        return cmd_bundled()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
