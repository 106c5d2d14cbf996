"""Start at login: an XDG autostart entry ($XDG_CONFIG_HOME/autostart/m6t-desktop.desktop) that
runs `m6t-desktop --autostart`, which connects the default profile if it asks for it
(auto_connect). Toggled from the app; written atomically."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

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


def is_enabled() -> bool:
    path = entry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    # A user (or the desktop's settings) may have disabled it without deleting it.
    return "Hidden=true" not in text and "X-GNOME-Autostart-enabled=false" not in text


def enable(extra: list[str] | None = None) -> Path:
    path = entry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".m6t-desktop-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(desktop_entry(command(extra)))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def disable() -> None:
    entry_path().unlink(missing_ok=True)


def parse_exec(entry: str) -> list[str]:
    """The command of an entry's Exec key (for tests and diagnostics)."""
    for line in entry.splitlines():
        if line.startswith("Exec="):
            return shlex.split(line.removeprefix("Exec=").replace("%%", "%"))
    return []
