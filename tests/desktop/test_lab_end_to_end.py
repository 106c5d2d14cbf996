"""The desktop app end to end: the app in the host namespace, the real m6t-helper in the lab's
mobile node, the real gateway and NAT. Connect from the tray menu, see `connected`, move the
mobile node to another network, see the new address and the notification."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QCoreApplication, QEvent
from pytestqt.qtbot import QtBot

from m6t import profiles
from m6t.control.schema import profile_from_dict
from m6t.lab.lab import Lab
from m6t_desktop.app import DesktopApp, Options
from m6t_desktop.client import Link

pytestmark = pytest.mark.netns


@pytest.fixture
def app(qtbot: QtBot, lab: Lab, short_dir: Path) -> Iterator[DesktopApp]:
    lab.start_gateway()
    lab.start_helper()
    path = short_dir / "profiles.toml"
    profiles.save(profiles.ProfileBook([profile_from_dict(lab.profile())], default="lab"), path)
    desktop = DesktopApp(Options(socket=lab.helper_socket, profiles=path,
                                 settings=short_dir / "desktop.ini", notifications=False),
                         tray_available=lambda: False)
    desktop.start()
    qtbot.waitUntil(lambda: desktop.connection.link is Link.ONLINE, timeout=5000)
    yield desktop
    desktop.shutdown()
    desktop.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


def test_connect_from_the_tray_then_roam(qtbot: QtBot, lab: Lab, app: DesktopApp) -> None:
    notices: list[Any] = []
    app.notifier.shown.connect(lambda notice, how: notices.append(notice))
    assert app.tray is not None
    app.tray.rebuild_menu()
    connect = app.tray.action("Connect lab")
    assert connect is not None and connect.isEnabled()
    connect.trigger()
    qtbot.waitUntil(lambda: "lab" in app.state.tunnels
                    and app.state.tunnels["lab"].state == "connected", timeout=10000)
    first = app.state.tunnels["lab"].address
    assert first and first.startswith("fd6d:6d74:1:1:1:")
    assert lab.run("mn", ["ping", "-6", "-c", "2", "-i", "0.2", lab.addr.home_agent],
                   check=False).returncode == 0
    # The tray menu now offers to disconnect and shows the address.
    app.tray.rebuild_menu()
    assert app.tray.action("Disconnect lab") is not None
    assert app.tray.action(first) is not None

    lab.roam()  # new IPv4 address and default route on the mobile node
    qtbot.waitUntil(lambda: app.state.tunnels["lab"].state == "connected"
                    and app.state.tunnels["lab"].address not in (None, first), timeout=15000)
    second = app.state.tunnels["lab"].address
    assert second != first
    qtbot.waitUntil(lambda: any("new address" in n.summary for n in notices), timeout=15000)
    notice = next(n for n in notices if "new address" in n.summary)
    assert "network changed" in notice.summary + notice.body
    assert second in notice.summary + notice.body or second.split(":")[-1] in notice.body
