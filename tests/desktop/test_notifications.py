"""Notifications: throttled, never twice the same, through org.freedesktop.Notifications on a
real (private) D-Bus session bus when the service is there, through the tray balloon when it
is not."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from m6t_desktop.app_state import Notice, NoticeAction
from m6t_desktop.notifications import APP_NAME, SIGNAL_POLL, DBusNotifications, Notifier
from m6t_desktop.wording import DisplayState


def notice(summary: str, state: DisplayState = DisplayState.CONNECTED) -> Notice:
    return Notice(summary, f"body of {summary}", state)


class Balloon:
    def __init__(self, visible: bool = True) -> None:
        self.visible = visible
        self.shown: list[tuple[str, str, DisplayState]] = []

    def __call__(self, summary: str, body: str, state: DisplayState) -> bool:
        if self.visible:
            self.shown.append((summary, body, state))
        return self.visible


# --- throttling ---


def test_first_notice_goes_out_at_once_then_the_latest_after_the_window(qtbot: QtBot) -> None:
    balloon = Balloon()
    notifier = Notifier(None, balloon, min_interval=0.3)
    notifier.notify(notice("network changed"))
    assert [s for s, _, _ in balloon.shown] == ["network changed"]
    notifier.notify(notice("connecting"))
    notifier.notify(notice("connected"))
    assert len(balloon.shown) == 1  # inside the window: held back
    with qtbot.waitSignal(notifier.shown, timeout=2000) as blocker:
        pass
    assert blocker.args[0].summary == "connected"  # the latest wins
    assert [s for s, _, _ in balloon.shown] == ["network changed", "connected"]
    assert notifier.suppressed == 1


def test_the_same_notice_twice_in_a_row_is_shown_once(qtbot: QtBot) -> None:
    balloon = Balloon()
    notifier = Notifier(None, balloon, min_interval=0.0)
    notifier.notify(notice("waiting"))
    notifier.notify(notice("waiting"))
    notifier.notify(notice("connected"))
    assert [s for s, _, _ in balloon.shown] == ["waiting", "connected"]


def test_without_tray_and_without_dbus_nothing_is_shown(qtbot: QtBot) -> None:
    notifier = Notifier(None, Balloon(visible=False), min_interval=0.0)
    with qtbot.waitSignal(notifier.shown) as blocker:
        notifier.notify(notice("connected"))
    assert blocker.args[1] == "none"


# --- D-Bus ---


def test_no_session_bus_falls_back_to_the_balloon(qtbot: QtBot, tmp_path: Path) -> None:
    balloon = Balloon()
    dbus = DBusNotifications(bus=f"unix:path={tmp_path}/no-such-bus")
    notifier = Notifier(dbus, balloon, min_interval=0.0)
    try:
        with qtbot.waitSignal(notifier.shown, check_params_cb=lambda n, how: how == "balloon",
                              timeout=5000):
            notifier.notify(notice("helper restarted"))
        assert balloon.shown[0][0] == "helper restarted"
        assert notifier.dbus_failed_at is not None
        notifier.notify(notice("connected"))  # straight to the balloon while D-Bus is out
        assert [s for s, _, _ in balloon.shown] == ["helper restarted", "connected"]
    finally:
        dbus.close()


@pytest.fixture
def session_bus() -> Iterator[str]:
    """A private D-Bus session bus (dbus-daemon), so tests never touch the user's desktop."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.skip("dbus-daemon is not installed (Debian package dbus-daemon)")
    process = subprocess.Popen([daemon, "--session", "--nofork", "--print-address=1"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    address = process.stdout.readline().strip()
    yield address
    process.terminate()
    process.wait(timeout=5)


class FakeNotificationServer:
    """org.freedesktop.Notifications on the private bus: records Notify calls, answers ids."""

    def __init__(self, address: str) -> None:
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        self.calls: list[tuple[Any, ...]] = []
        self.callers: dict[int, str] = {}  # notification id -> the unique name that asked
        self._connection = open_dbus_connection(bus=address)
        reply = self._connection.send_and_get_reply(
            message_bus.RequestName("org.freedesktop.Notifications"), timeout=5)
        assert reply.body == (1,)  # primary owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from jeepney import HeaderFields, MessageType, new_method_return

        next_id = 41
        while not self._stop.is_set():
            try:
                message = self._connection.receive(timeout=0.05)
            except TimeoutError:
                continue
            header = message.header
            if header.message_type is MessageType.method_call and \
                    header.fields.get(HeaderFields.member) == "Notify":
                self.calls.append(message.body)
                self.callers[next_id] = header.fields[HeaderFields.sender]
                self._connection.send(new_method_return(message, "u", (next_id,)))
                next_id += 1

    def signal(self, member: str, notification_id: int, argument: Any) -> None:
        """ActionInvoked(id, key) or NotificationClosed(id, reason), sent as GNOME Shell and
        dunst send them: to the connection that asked for that notification only."""
        from jeepney import DBusAddress, HeaderFields, MessageType, new_signal

        address = DBusAddress("/org/freedesktop/Notifications",
                              interface="org.freedesktop.Notifications")
        signature = "us" if member == "ActionInvoked" else "uu"
        message = new_signal(address, member, signature, (notification_id, argument))
        assert message.header.message_type is MessageType.signal
        message.header.fields[HeaderFields.destination] = self.callers[notification_id]
        self._connection.send(message)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._connection.close()


def test_notification_goes_through_dbus_and_replaces_the_previous(
        qtbot: QtBot, session_bus: str) -> None:
    server = FakeNotificationServer(session_bus)
    balloon = Balloon()
    dbus = DBusNotifications(icon_path="/icons/m6t.svg", bus=session_bus)
    notifier = Notifier(dbus, balloon, min_interval=0.0)
    try:
        with qtbot.waitSignal(dbus.delivered, timeout=5000) as first:
            notifier.notify(Notice("m6t: office failed", "setting up the tunnel failed",
                                   DisplayState.ERROR))
        with qtbot.waitSignal(dbus.delivered, timeout=5000):
            notifier.notify(notice("m6t: connected to office"))
    finally:
        dbus.close()
        server.close()
    assert first.args == [41]
    app, replaces, icon, summary, body, actions, hints, expire = server.calls[0]
    assert (app, replaces, icon, summary, body, actions) == (
        APP_NAME, 0, "/icons/m6t.svg", "m6t: office failed", "setting up the tunnel failed", [])
    assert hints["urgency"] == ("y", 2)
    assert hints["desktop-entry"] == ("s", "m6t-desktop")
    assert expire > 0
    assert server.calls[1][1] == 41  # replaces the first bubble instead of stacking a second
    assert balloon.shown == []


def test_bus_without_a_notification_service_falls_back(qtbot: QtBot,
                                                       session_bus: str) -> None:
    balloon = Balloon()
    dbus = DBusNotifications(bus=session_bus)
    notifier = Notifier(dbus, balloon, min_interval=0.0)
    try:
        with qtbot.waitSignal(dbus.unavailable, timeout=5000) as blocker:
            notifier.notify(notice("m6t: new address"))
    finally:
        dbus.close()
    assert "ServiceUnknown" in blocker.args[1] or "not provided" in blocker.args[1]
    assert [s for s, _, _ in balloon.shown] == ["m6t: new address"]


def test_without_a_tray_the_app_still_notifies_through_dbus(
        qtbot: QtBot, session_bus: str, socket_path: Path, profiles_path: Path,
        short_dir: Path) -> None:
    from m6t_desktop.app import DesktopApp, Options
    from m6t_desktop.client import Link
    from tests.desktop.conftest import OFFICE
    from tests.fake_helper import FakeHelper, status_for

    server = FakeNotificationServer(session_bus)
    with FakeHelper(socket_path) as helper:
        helper.tunnels["office"] = status_for(OFFICE)
        app = DesktopApp(Options(socket=str(socket_path), profiles=profiles_path,
                                 settings=short_dir / "desktop.ini", dbus_bus=session_bus),
                         tray_available=lambda: False)
        try:
            app.start()
            qtbot.waitUntil(lambda: app.state.link is Link.ONLINE)
            assert not app.tray_shown
            helper.emit({"type": "address", "tunnel": "m6t0", "profile": "office",
                         "address": "fd6d:6d74:1:1:1:aaaa:bbbb:cccc",
                         "previous": "fd6d:6d74:1:1:1:8d2e:41f0:977c",
                         "reason": "network_changed", "at": 1796000100.2})
            qtbot.waitUntil(lambda: bool(server.calls), timeout=5000)
        finally:
            app.shutdown()
            server.close()
    summary, body = server.calls[0][3], server.calls[0][4]
    assert summary == "m6t: new address (network changed)"
    assert body == "office: fd6d:6d74:1:1:1:aaaa:bbbb:cccc"


# --- a click on a notification does its action ---


PORTAL = Notice("m6t: this network wants you to log in first", "click here",
                DisplayState.DEGRADED, NoticeAction.OPEN_LOGIN_PAGE)


class Clicks:
    """A notifier on the private bus with a notification server; what was clicked."""

    def __init__(self, session_bus: str) -> None:
        self.server = FakeNotificationServer(session_bus)
        self.dbus = DBusNotifications(bus=session_bus)
        self.notifier = Notifier(self.dbus, Balloon(), min_interval=0.0)
        self.clicked: list[Notice] = []
        self.notifier.clicked.connect(self.clicked.append)

    def show(self, qtbot: QtBot, shown: Notice) -> int:
        with qtbot.waitSignal(self.dbus.delivered, timeout=5000) as delivered:
            self.notifier.notify(shown)
        return int(delivered.args[0])


@pytest.fixture
def clicks(session_bus: str) -> Iterator[Clicks]:
    made = Clicks(session_bus)
    yield made
    made.dbus.close()
    made.server.close()


def test_clicking_a_dbus_notification_with_an_action_does_it_once(
        qtbot: QtBot, clicks: Clicks) -> None:
    notification_id = clicks.show(qtbot, PORTAL)
    assert clicks.server.calls[0][5] == ["default", "Open the login page"]
    clicks.server.signal("ActionInvoked", notification_id, "default")
    qtbot.waitUntil(lambda: clicks.clicked == [PORTAL], timeout=5000)
    # Closed by the server: a late signal for it does nothing any more.
    clicks.server.signal("NotificationClosed", notification_id, 2)
    clicks.server.signal("ActionInvoked", notification_id, "default")
    clicks.show(qtbot, notice("m6t: connected to office"))  # no action: no button
    qtbot.wait(3 * int(SIGNAL_POLL * 1000))
    assert clicks.clicked == [PORTAL]
    assert clicks.server.calls[1][5] == []


def test_an_action_of_a_replaced_notification_does_nothing(
        qtbot: QtBot, clicks: Clicks) -> None:
    first = clicks.show(qtbot, PORTAL)
    clicks.show(qtbot, notice("m6t: connected to office"))
    clicks.server.signal("ActionInvoked", first, "default")
    qtbot.wait(3 * int(SIGNAL_POLL * 1000))
    assert clicks.clicked == []


def test_clicking_the_balloon_does_the_action_of_the_last_one_shown(qtbot: QtBot) -> None:
    balloon = Balloon()
    notifier = Notifier(None, balloon, min_interval=0.0)
    clicked: list[Notice] = []
    notifier.clicked.connect(clicked.append)
    notifier.notify(PORTAL)
    notifier.balloon_clicked()
    assert clicked == [PORTAL]
    notifier.notify(notice("m6t: connected to office"))
    notifier.balloon_clicked()  # the last balloon has no action
    assert clicked == [PORTAL]


def test_clicking_the_portal_notification_opens_the_login_page(
        qtbot: QtBot, session_bus: str, socket_path: Path, profiles_path: Path,
        short_dir: Path) -> None:
    from m6t_desktop.app import DesktopApp, Options
    from m6t_desktop.client import Link
    from tests.desktop.conftest import OFFICE, Browser
    from tests.desktop.test_networks_and_portals import PORTAL, behind_portal, state_event
    from tests.fake_helper import FakeHelper, status_for

    server = FakeNotificationServer(session_bus)
    browser = Browser()
    with FakeHelper(socket_path) as helper:
        helper.tunnels["office"] = status_for(OFFICE)
        app = DesktopApp(Options(socket=str(socket_path), profiles=profiles_path,
                                 settings=short_dir / "desktop.ini", dbus_bus=session_bus),
                         tray_available=lambda: False, open_url=browser)
        try:
            app.start()
            qtbot.waitUntil(lambda: app.state.link is Link.ONLINE)
            helper.tunnels["office"] = behind_portal()
            helper.emit(state_event(helper.tunnels["office"]))
            qtbot.waitUntil(lambda: bool(server.calls), timeout=5000)
            summary, actions = server.calls[-1][3], server.calls[-1][5]
            assert summary == "m6t: this network wants you to log in first"
            assert actions == ["default", "Open the login page"]
            server.signal("ActionInvoked", max(server.callers), "default")
            qtbot.waitUntil(lambda: browser.opened == [PORTAL], timeout=5000)
        finally:
            app.shutdown()
            server.close()
