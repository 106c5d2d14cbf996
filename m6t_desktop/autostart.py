"""Start at login: an XDG autostart entry ($XDG_CONFIG_HOME/autostart/m6t-desktop.desktop) that
runs `m6t-desktop --autostart`, which connects the default profile if it asks for it
(auto_connect). Toggled from the app; written atomically.

The package also installs a system-wide entry (/etc/xdg/autostart, Hidden=true unless an
administrator turned it on). By the XDG Autostart spec the user's file of the same name wins,
so "off" is a user entry with Hidden=true (deleting the user file would let a site-wide "on"
come back), and with no user entry the system-wide one decides."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from m6t.files import write_atomically
from m6t_desktop.icons import resource_path

ENTRY_NAME = "m6t-desktop.desktop"


def autostart_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "autostart"


def entry_path() -> Path:
    return autostart_dir() / ENTRY_NAME


def _exec_quote(argument: str) -> str:
    """Quoting for a desktop entry's Exec key (Desktop Entry Specification, "The Exec key")."""
    if argument and not any(c in argument for c in " \t\n\"'\\><~|&;$*?#()`%="):
        return argument
    escaped = argument.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") \
        .replace("$", "\\$")
    return f'"{escaped}"'.replace("%", "%%")


def command(extra: list[str] | None = None) -> list[str]:
    """How to start this app: the installed script if on PATH, else this interpreter."""
    script = shutil.which("m6t-desktop")
    base = [script] if script else [sys.executable, "-m", "m6t_desktop"]
    return base + ["--autostart"] + (extra or [])


def desktop_entry(argv: list[str]) -> str:
    icon = resource_path("m6t.svg")
    lines = [
        "[Desktop Entry]",
        "Type=Application",
        "Name=m6t desktop",
        "GenericName=Mobile IPv6 tunnel",
        "Comment=IPv6 to your home agent from IPv4-only networks (m6t tunnel)",
        "Exec=" + " ".join(_exec_quote(arg) for arg in argv),
        f"Icon={icon}" if icon else "Icon=network-vpn",
        "Terminal=false",
        "Categories=Network;",
        "X-GNOME-Autostart-enabled=true",
        "X-GNOME-Autostart-Delay=2",
    ]
    return "\n".join(lines) + "\n"


def system_entry_paths() -> list[Path]:
    dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    return [Path(d) / "autostart" / ENTRY_NAME for d in dirs.split(":") if d]


def _entry_enabled(text: str) -> bool:
    # A user (or the desktop's settings) may have disabled it without deleting it.
    return "Hidden=true" not in text and "X-GNOME-Autostart-enabled=false" not in text


def is_enabled() -> bool:
    for path in [entry_path(), *system_entry_paths()]:  # the first that exists decides
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        return _entry_enabled(text)
    return False


def enable(extra: list[str] | None = None) -> Path:
    path = entry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, desktop_entry(command(extra)), mode=0o644)
    return path


def disable() -> None:
    """A user entry that says Hidden=true: it overrides a system-wide entry of the same name."""
    path = entry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "[Desktop Entry]\nType=Application\nName=m6t desktop\n"
                           "Hidden=true\n", mode=0o644)


def parse_exec(entry: str) -> list[str]:
    """The command of an entry's Exec key (for tests and diagnostics)."""
    for line in entry.splitlines():
        if line.startswith("Exec="):
            return shlex.split(line.removeprefix("Exec=").replace("%%", "%"))
    return []
