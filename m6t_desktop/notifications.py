"""Desktop notifications: org.freedesktop.Notifications over D-Bus (jeepney) when the session has
it, else the tray icon's balloon; throttled so a flapping network does not flood the desktop.

D-Bus calls run on a worker thread (jeepney's blocking API), never in the GUI thread; results
come back as queued Qt signals. A notification replaces the previous one of this app, so a
burst (network changed → connecting → connected) leaves one up-to-date bubble.

A notice with an action (open a captive portal's login page) is sent with the "default"
action, which servers invoke when the bubble is clicked, and a button of the same label; the
server's ActionInvoked signal comes back as `invoked(notice)`. Servers send that signal to the
connection that asked for the notification, so the worker reads it on the same connection,
polling only while such a notification is open. Balloons: a click on the last one does the
same (QSystemTrayIcon.messageClicked, wired by the app).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from m6t_desktop.app_state import Notice
from m6t_desktop.wording import DisplayState

log = logging.getLogger(__name__)

APP_NAME = "m6t desktop"
URGENCY = {DisplayState.ERROR: 2, DisplayState.DEGRADED: 1}  # else 0, low
EXPIRE_MS = 8000
SIGNAL_POLL = 0.25  # s between reads of the server's signals while a clickable one is open
ACTION_LIFETIME = 600.0  # s a clickable notification is listened for, at most


class DBusNotifications(QObject):
    """One worker thread holding a session-bus connection; `send` never blocks."""

    delivered = Signal(int)  # the notification's id
    unavailable = Signal(object, str)  # the Notice that could not be shown, why
    invoked = Signal(object)  # the Notice whose action the user clicked

    def __init__(self, icon_path: str = "", bus: str = "SESSION",
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.icon_path = icon_path
        self.bus = bus  # "SESSION", or a D-Bus address (tests use a private bus)
        self._queue: queue.Queue[Notice | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._replaces = 0
        # The open notification with an action (worker thread only): id, notice, listened until.
        self._clickable: tuple[int, Notice, float] | None = None

    def send(self, notice: Notice) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="m6t-notifications",
                                            daemon=True)
            self._thread.start()
        self._queue.put(notice)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=2)
            self._thread = None

    def _run(self) -> None:
        from jeepney import DBusAddress, MatchRule, new_method_call
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection
        from jeepney.wrappers import unwrap_msg

        address = DBusAddress("/org/freedesktop/Notifications",
                              bus_name="org.freedesktop.Notifications",
                              interface="org.freedesktop.Notifications")
        signals_rule = MatchRule(type="signal", interface="org.freedesktop.Notifications",
                                 path="/org/freedesktop/Notifications")
        signals: collections.deque[Any] = collections.deque(maxlen=64)
        connection: Any = None
        while True:
            try:
                notice = self._queue.get(timeout=SIGNAL_POLL if self._clickable else None)
            except queue.Empty:
                self._read_signals(connection, signals)
                continue
            if notice is None:
                break
            hints = {"urgency": ("y", URGENCY.get(notice.state, 0)),
                     "desktop-entry": ("s", "m6t-desktop")}
            actions = ["default", notice.action.value] if notice.action else []
            message = new_method_call(address, "Notify", "susssasa{sv}i", (
                APP_NAME, self._replaces, self.icon_path, notice.summary, notice.body,
                actions, hints, EXPIRE_MS))
            try:
                if connection is None:
                    connection = open_dbus_connection(bus=self.bus)
                    connection.filter(signals_rule, queue=signals)  # lives with it
                    connection.send_and_get_reply(message_bus.AddMatch(signals_rule),
                                                  timeout=5)
                (notification_id,) = unwrap_msg(connection.send_and_get_reply(message,
                                                                              timeout=5))
            except Exception as exc:  # no bus, no notification service, a broken reply
                log.debug("D-Bus notification failed: %r", exc)
                if connection is not None:
                    connection.close()
                    connection = None
                self._clickable = None
                self.unavailable.emit(notice, f"{type(exc).__name__}: {exc}")
                continue
            # Each notification replaces the previous one, and with it its action.
            self._replaces = notification_id
            self._clickable = (notification_id, notice, time.monotonic() + ACTION_LIFETIME) \
                if notice.action else None
            self.delivered.emit(notification_id)
            self._read_signals(connection, signals)
        if connection is not None:
            connection.close()

    def _read_signals(self, connection: Any, signals: collections.deque[Any]) -> None:
        """What the server said since: ActionInvoked (the user clicked) and NotificationClosed
        of the open clickable notification. One not closed after ACTION_LIFETIME is forgotten,
        so that a server that never says "closed" does not keep this thread polling."""
        from jeepney import HeaderFields

        if connection is None:
            return
        with contextlib.suppress(TimeoutError, OSError):
            while True:  # everything already received, without waiting
                connection.recv_messages(timeout=0)
        while signals:
            message = signals.popleft()
            member = message.header.fields.get(HeaderFields.member)
            body = message.body
            if self._clickable is None or not body or body[0] != self._clickable[0]:
                continue
            if member == "ActionInvoked":
                self.invoked.emit(self._clickable[1])
            elif member == "NotificationClosed":
                self._clickable = None
        if self._clickable is not None and self._clickable[2] < time.monotonic():
            self._clickable = None


class Notifier(QObject):
    """Throttles and routes notices: at most one per `min_interval` (the latest wins; the
    others are in the event log anyway), none twice in a row, D-Bus first, balloon second."""

    shown = Signal(object, str)  # Notice, "dbus" | "balloon" | "none"
    clicked = Signal(object)  # a Notice with an action, clicked: do its action

    def __init__(self, dbus: DBusNotifications | None,
                 balloon: Callable[[str, str, DisplayState], bool],
                 parent: QObject | None = None, *, min_interval: float = 10.0,
                 dbus_retry: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self.dbus = dbus
        self.balloon = balloon
        self.min_interval = min_interval
        self.dbus_retry = dbus_retry
        self.clock = clock
        self.dbus_failed_at: float | None = None
        self.suppressed = 0  # notices replaced by a later one inside the throttle window
        self._last_at: float | None = None
        self._last: tuple[str, str] | None = None
        self._pending: Notice | None = None
        self._balloon_notice: Notice | None = None  # the last balloon shown
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._flush)
        if dbus is not None:
            dbus.unavailable.connect(self._dbus_unavailable)
            dbus.invoked.connect(self.clicked)

    def notify(self, notice: Notice) -> None:
        if self._pending is not None:
            self.suppressed += 1
        self._pending = notice
        now = self.clock()
        wait = 0.0 if self._last_at is None else self._last_at + self.min_interval - now
        if wait <= 0:
            self._flush()
        elif not self._timer.isActive():
            self._timer.start(int(wait * 1000) + 1)

    def _flush(self) -> None:
        notice, self._pending = self._pending, None
        if notice is None:
            return
        if self._last == (notice.summary, notice.body):
            return
        self._last = (notice.summary, notice.body)
        self._last_at = self.clock()
        if self.dbus is not None and (self.dbus_failed_at is None or
                                      self.clock() - self.dbus_failed_at > self.dbus_retry):
            self.dbus.send(notice)
            self.shown.emit(notice, "dbus")
        else:
            self._show_balloon(notice)

    def _dbus_unavailable(self, notice: Notice, reason: str) -> None:
        self.dbus_failed_at = self.clock()
        log.info("desktop notifications unavailable (%s); using the tray balloon", reason)
        self._show_balloon(notice)

    def _show_balloon(self, notice: Notice) -> None:
        shown = self.balloon(notice.summary, notice.body, notice.state)
        self._balloon_notice = notice if shown else None
        self.shown.emit(notice, "balloon" if shown else "none")

    def balloon_clicked(self) -> None:
        """The tray's balloon was clicked (QSystemTrayIcon.messageClicked): the last one shown."""
        notice = self._balloon_notice
        if notice is not None and notice.action is not None:
            self.clicked.emit(notice)
