"""Fixtures of the desktop app's tests: offscreen Qt, a FakeHelper on a real Unix socket in a
short private directory, profiles and settings in that directory (never the user's own), the
whole app (`make_app`) with a stand-in for the web browser, and helpers to read its tray menu."""

from __future__ import annotations

import os

# Before anything imports Qt: no display is needed (and none may exist on CI).
os.environ["QT_QPA_PLATFORM"] = "offscreen"

import gc
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QCoreApplication, QEvent
from pytestqt.qtbot import QtBot

from m6t import profiles
from m6t.control.schema import Profile
from m6t_desktop.app import DesktopApp, Options
from m6t_desktop.client import Link
from tests.fake_helper import FakeHelper

OFFICE = Profile(name="office", gateway="198.51.100.1", ports=[3544, 4500],
                 prefix="fd6d:6d74:1:1:1::/80", home_agent="fd48:4100::2", auto_connect=True)
HOME = Profile(name="home", gateway="gw.example.net", ports=[4500, 53],
               prefix="fd6d:6d74:1:2:7::/80", home_agent="fd48:4100::2")

# The offscreen platform cannot raise windows or pass size hints to a window manager; it says
# so as a Qt warning each time a window is shown. Nothing else is ignored.
OFFSCREEN_LIMITS = ("This plugin does not support raise\\(\\)",
                    "This plugin does not support propagateSizeHints\\(\\)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.qt_log_ignore(*OFFSCREEN_LIMITS))


@pytest.fixture(autouse=True)
def collect_qt_objects_here(qapp: object) -> Iterator[None]:
    """After each test, delete what was scheduled for deletion and collect reference cycles
    now, in the GUI thread. A test's parentless QObjects (a HelperConnection, a DesktopApp)
    sit in cycles through their lambdas; left to Python's garbage collector they would be
    freed whenever some thread allocates, possibly a FakeHelper thread, and a Qt object
    destroyed off the GUI thread crashes."""
    from PySide6.QtCore import QCoreApplication, QEvent

    yield
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="m6t-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests off the user's files, session bus and helper."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "system-config"))  # not /etc/xdg
    monkeypatch.setenv("M6T_PROFILES", str(tmp_path / "config" / "m6t" / "profiles.toml"))
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


@pytest.fixture
def socket_path(short_dir: Path) -> Path:
    return short_dir / "helper.sock"


@pytest.fixture
def helper(socket_path: Path) -> Iterator[FakeHelper]:
    fake = FakeHelper(socket_path)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def profiles_path(short_dir: Path) -> Path:
    path = short_dir / "profiles.toml"
    profiles.save(profiles.ProfileBook([OFFICE, HOME], default="office"), path)
    return path


# --- the web browser (captive portals' login pages) ---


class Browser:
    """Stands in for the user's web browser: records the pages the app opens."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.works = True  # False: as if no browser were installed

    def __call__(self, url: str) -> bool:
        self.opened.append(url)
        return self.works


@pytest.fixture(autouse=True)
def no_real_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that forgets to give the app a Browser fails instead of opening a real one."""
    def refuse(url: str) -> bool:
        raise AssertionError(f"a test tried to open {url} in the real web browser")
    monkeypatch.setattr("m6t_desktop.controller.open_in_browser", refuse)


@pytest.fixture
def browser() -> Browser:
    return Browser()


# --- the whole app against a FakeHelper ---

AppFactory = Callable[..., DesktopApp]


def settle() -> None:
    """Delete what was scheduled for deletion and collect cycles now, in this (GUI) thread:
    otherwise the garbage collector may free Qt objects later on a FakeHelper thread."""
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


@pytest.fixture
def make_app(qtbot: QtBot, socket_path: Path, profiles_path: Path, short_dir: Path,
             browser: Browser) -> Iterator[AppFactory]:
    made: list[DesktopApp] = []

    def make(tray_available: Callable[[], bool] = lambda: False, **options: Any) -> DesktopApp:
        app = DesktopApp(Options(socket=str(socket_path), profiles=profiles_path,
                                 settings=short_dir / "desktop.ini", notifications=False,
                                 **options), tray_available=tray_available, open_url=browser)
        app.connection._min_delay = app.connection._delay = 0.02  # quick retries in tests
        app.connection._max_delay = 0.2
        made.append(app)
        app.start()
        return app

    yield make
    for app in made:
        app.shutdown()
        app.deleteLater()
    made.clear()
    settle()


def online(qtbot: QtBot, app: DesktopApp) -> DesktopApp:
    qtbot.waitUntil(lambda: app.connection.link is Link.ONLINE, timeout=5000)
    return app


def menu_texts(app: DesktopApp) -> list[str]:
    assert app.tray is not None
    app.tray.rebuild_menu()
    return [a.text().replace("&", "") for a in app.tray.menu.actions() if a.text()]


def menu_action(app: DesktopApp, text: str) -> Any:
    assert app.tray is not None
    app.tray.rebuild_menu()
    action = app.tray.action(text)
    assert action is not None, f"no {text!r} in {menu_texts(app)}"
    return action


def connected(qtbot: QtBot, app: DesktopApp, profile: str = "office") -> None:
    qtbot.waitUntil(lambda: profile in app.state.tunnels
                    and app.state.tunnels[profile].state == "connected", timeout=5000)
