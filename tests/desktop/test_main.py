"""The m6t-desktop command itself, in child processes: it starts (offscreen: no tray, so the
status window), says when it is up, and quits cleanly on SIGTERM without a helper around. One
per session: a second launch hands over to the first and exits (a login autostart quietly, without
showing the first's window); a socket left by a killed first is taken over; a stopped first is
not."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from m6t_desktop.__main__ import parse_args
from m6t_desktop.single_instance import server_name

ALREADY_RUNNING = "m6t-desktop is already running; showing its window\n"


@dataclass
class Launched:
    """One `python -m m6t_desktop`, its ready marker and its stderr (a file: read while it runs)."""

    process: subprocess.Popen[bytes]
    ready: Path
    log: Path

    def is_ready(self) -> bool:
        return self.ready.exists() and self.ready.read_text().strip() != ""

    def stderr(self) -> str:
        return self.log.read_text()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)


Launcher = Callable[..., Launched]


@pytest.fixture
def launch(short_dir: Path, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Launcher]:
    """Starts the app offscreen without a helper (its socket is absent), with private profiles,
    and a runtime directory short enough for the instance socket's path. Kills what it started
    and is still running at the end (only those PIDs)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    started: list[Launched] = []

    def start(*args: str, name: str = "app") -> Launched:
        ready, log = short_dir / f"{name}.ready", short_dir / f"{name}.stderr"
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "M6T_DESKTOP_READY_FILE": str(ready)}
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "m6t_desktop", "--socket", str(short_dir / "none.sock"),
                 "--profiles", str(tmp_path / "profiles.toml"), "--no-notifications", *args],
                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        started.append(Launched(process, ready, log))
        return started[-1]

    yield start
    for launched in started:
        if launched.process.poll() is None:
            launched.process.kill()  # also ends a stopped process
            launched.process.wait()


def instance_socket() -> Path:
    """Where the launched apps meet (they share this process's environment, and offscreen)."""
    return Path(server_name("offscreen"))


def test_starts_reports_ready_and_quits_on_sigterm(qtbot: QtBot, launch: Launcher) -> None:
    app = launch()
    qtbot.waitUntil(app.is_ready, timeout=20000)
    what, at = app.ready.read_text().split()
    assert what == "window"  # offscreen has no tray: the status window is the main one
    assert float(at) > 0
    assert instance_socket().is_socket()
    assert app.terminate() == 0, app.stderr()
    assert "Traceback" not in app.stderr()
    assert not instance_socket().exists()  # the next launch finds nothing, not a stale socket


def test_a_second_launch_shows_the_first_and_exits(qtbot: QtBot, launch: Launcher) -> None:
    first = launch("--debug", name="first")
    qtbot.waitUntil(first.is_ready, timeout=20000)
    # A peer that never sends and one that sends garbage neither crash nor hold up the first.
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    garbage = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for peer in (silent, garbage):
        peer.settimeout(10)
        peer.connect(str(instance_socket()))
    garbage.sendall(b"\xff\xfe\x00 not a request\n")
    try:
        began = time.monotonic()
        second = launch(name="second")
        assert second.process.wait(timeout=30) == 0, second.stderr()
        took = time.monotonic() - began
        assert second.stderr() == ALREADY_RUNNING
        assert not second.ready.exists()  # it never got as far as a window
        qtbot.waitUntil(lambda: "another launch asked for the status window" in first.stderr(),
                        timeout=5000)
        assert garbage.recv(64) == b""  # dropped: closed without an answer
        assert silent.recv(64) == b""  # dropped after the request timeout
    finally:
        silent.close()
        garbage.close()
    assert "(unknown_request)" in first.stderr() and "(timeout)" in first.stderr()
    assert took < 10  # a Python start-up, not a timeout (the silent peer is still there)
    assert first.process.poll() is None
    assert first.terminate() == 0, first.stderr()
    assert "Traceback" not in first.stderr()


def test_a_login_autostart_leaves_a_running_first_alone_and_exits_quietly(
        qtbot: QtBot, launch: Launcher) -> None:
    # The app was started by hand before the session's autostart entry ran: no window pops up,
    # nothing is printed, and the login does not see a failure.
    first = launch("--debug", name="first")
    qtbot.waitUntil(first.is_ready, timeout=20000)
    autostart = launch("--autostart", name="autostart")
    assert autostart.process.wait(timeout=30) == 0, autostart.stderr()
    assert autostart.stderr() == ""
    assert not autostart.ready.exists()
    qtbot.waitUntil(lambda: "another launch found this one running" in first.stderr(),
                    timeout=5000)
    assert "asked for the status window" not in first.stderr()
    assert first.process.poll() is None
    assert first.terminate() == 0, first.stderr()
    assert "Traceback" not in first.stderr()


def test_a_launch_takes_over_the_socket_of_a_killed_one(qtbot: QtBot,
                                                        launch: Launcher) -> None:
    killed = launch(name="killed")
    qtbot.waitUntil(killed.is_ready, timeout=20000)
    killed.process.kill()
    killed.process.wait()
    assert instance_socket().is_socket()  # left behind: nobody listens on it
    first = launch("--debug", name="first")
    qtbot.waitUntil(first.is_ready, timeout=20000)
    assert first.ready.read_text().split()[0] == "window"
    assert "left by an instance that is gone" in first.stderr()
    second = launch(name="second")  # the new first really listens
    assert second.process.wait(timeout=30) == 0, second.stderr()
    assert second.stderr() == ALREADY_RUNNING
    assert first.terminate() == 0, first.stderr()


def test_a_stopped_first_is_neither_replaced_nor_doubled(qtbot: QtBot,
                                                         launch: Launcher) -> None:
    first = launch(name="first")
    qtbot.waitUntil(first.is_ready, timeout=20000)
    first.process.send_signal(signal.SIGSTOP)
    try:
        second = launch(name="second")
        code = second.process.wait(timeout=30)
    finally:
        first.process.send_signal(signal.SIGCONT)
    assert code == 1
    assert "already running but does not answer" in second.stderr()
    assert not second.ready.exists()
    assert instance_socket().is_socket()  # still the first's
    assert first.terminate() == 0, first.stderr()
    assert "Traceback" not in first.stderr()


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
