"""Start at login: the XDG autostart entry written, read back, disabled, toggled from the app."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from m6t_desktop import autostart
from m6t_desktop.app import DesktopApp, Options


def read_entry(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return dict(parser["Desktop Entry"])


def test_enable_writes_an_xdg_autostart_entry(tmp_path: Path) -> None:
    path = autostart.enable(["--socket", "/tmp/odd dir/helper.sock"])
    assert path == tmp_path / "config" / "autostart" / "m6t-desktop.desktop"
    entry = read_entry(path)
    assert entry["Type"] == "Application"
    assert entry["Name"] == "m6t desktop"
    command = autostart.parse_exec(path.read_text())
    assert command[-3:] == ["--autostart", "--socket", "/tmp/odd dir/helper.sock"]
    assert command[0].endswith(("m6t-desktop", "python", "python3")) or "python" in command[0]
    assert Path(entry["Icon"]).name == "m6t.svg" and Path(entry["Icon"]).is_file()
    assert autostart.is_enabled()
    assert not list(path.parent.glob(".m6t-desktop-*"))  # written atomically, nothing left


def test_disable_leaves_a_hidden_user_entry(tmp_path: Path) -> None:
    autostart.enable()
    autostart.disable()
    assert "Hidden=true" in autostart.entry_path().read_text()
    assert not autostart.is_enabled()
    autostart.disable()  # twice is fine
    assert not autostart.is_enabled()


def test_the_user_entry_overrides_a_site_wide_one(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "xdg"
    (system / "autostart").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(system))
    site_wide = system / "autostart" / autostart.ENTRY_NAME
    site_wide.write_text(autostart.desktop_entry(["m6t-desktop", "--autostart"]))
    assert autostart.is_enabled()  # an administrator turned it on for everyone
    autostart.disable()
    assert not autostart.is_enabled()  # the user's "off" wins
    autostart.enable()
    assert autostart.is_enabled()
    site_wide.write_text(site_wide.read_text() + "Hidden=true\n")
    autostart.entry_path().unlink()
    assert not autostart.is_enabled()  # no user entry: the site-wide one decides


@pytest.mark.parametrize("line", ["Hidden=true", "X-GNOME-Autostart-enabled=false"])
def test_an_entry_disabled_by_the_desktop_counts_as_off(line: str) -> None:
    path = autostart.enable()
    path.write_text(path.read_text() + line + "\n")
    assert not autostart.is_enabled()


@pytest.mark.parametrize(("argument", "quoted"), [
    ("plain", "plain"),
    ("/with space/x", '"/with space/x"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("100%", '"100%%"'),
    ("$HOME", '"\\$HOME"'),
])
def test_exec_arguments_are_quoted_per_the_desktop_entry_spec(argument: str,
                                                              quoted: str) -> None:
    assert autostart._exec_quote(argument) == quoted


def test_toggled_from_the_status_window(qtbot: QtBot, short_dir: Path) -> None:
    app = DesktopApp(Options(socket=str(short_dir / "h.sock"), socket_explicit=True,
                             settings=short_dir / "desktop.ini", notifications=False),
                     tray_available=lambda: False)
    try:
        window = app.status_window()
        assert not window.autostart_action.isChecked()
        window.autostart_action.setChecked(True)
        command = autostart.parse_exec(autostart.entry_path().read_text())
        assert command[-3:] == ["--autostart", "--socket", str(short_dir / "h.sock")]
        window.autostart_action.setChecked(False)
        assert not autostart.is_enabled()
        assert "Hidden=true" in autostart.entry_path().read_text()
    finally:
        app.shutdown()
