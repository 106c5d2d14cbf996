"""The m6t-desktop command itself, in a child process: it starts (offscreen: no tray, so the
status window), says when it is up, and quits cleanly on SIGTERM without a helper around."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pytestqt.qtbot import QtBot

from m6t_desktop.__main__ import parse_args


def test_starts_reports_ready_and_quits_on_sigterm(qtbot: QtBot, short_dir: Path,
                                                   tmp_path: Path) -> None:
    ready = short_dir / "ready"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "M6T_DESKTOP_READY_FILE": str(ready)}
    process = subprocess.Popen(
        [sys.executable, "-m", "m6t_desktop", "--socket", str(short_dir / "none.sock"),
         "--profiles", str(tmp_path / "profiles.toml"), "--no-notifications"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        qtbot.waitUntil(lambda: ready.exists() and ready.read_text().strip() != "",
                        timeout=20000)
        what, at = ready.read_text().split()
        assert what == "window"  # offscreen has no tray: the status window is the main one
        assert float(at) > 0
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_without_a_display_it_says_so(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "m6t_desktop"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "no display" in result.stderr


def test_options() -> None:
    args = parse_args(["--socket", "/run/x.sock", "--hide-tray", "--connect", "home",
                       "--autostart"])
    assert (args.socket, args.hide_tray, args.no_tray, args.connect, args.autostart) == \
        ("/run/x.sock", True, False, "home", True)
