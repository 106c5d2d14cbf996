"""The tray icon: its look says the state, its tooltip the details, its menu is rebuilt from
AppState every time the state changes (and just before it opens).

Shown only when a tray host exists (QSystemTrayIcon.isSystemTrayAvailable); without one the app
makes the status window its main window, and notifications still go through D-Bus. A host that
starts later (a panel after the app, at login) is noticed by polling, and the icon shows up."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QGuiApplication, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from m6t.control.schema import TunnelState
from m6t_desktop.app_state import AppState
from m6t_desktop.client import Link
from m6t_desktop.controller import Controller
from m6t_desktop.icons import state_icon
from m6t_desktop.profiles_store import ProfilesStore
from m6t_desktop.wording import OPEN_LOGIN_PAGE, DisplayState

HOST_POLL_MS = 3000  # how often to look for a tray host while there is none


def menu_profile(state: AppState, profiles: ProfilesStore) -> str | None:
    """The profile Connect would connect: the one shown, wanted, the default, or the only one."""
    book = profiles.book
    for name in (state.current, state.wanted, book.default):
        if name and (book.get(name) is not None):
            return name
    default = book.default_profile()
    if default is not None:
        return default.name
    return book.profiles[0].name if book.profiles else None


class TrayIcon(QObject):
    statusRequested = Signal()
    profilesRequested = Signal()
    hostAppeared = Signal()  # a tray host showed up after start-up (the icon may now show)

    def __init__(self, state: AppState, controller: Controller, profiles: ProfilesStore,
                 parent: QObject | None = None, *,
                 available: Callable[[], bool] = QSystemTrayIcon.isSystemTrayAvailable) -> None:
        super().__init__(parent)
        self.state = state
        self.controller = controller
        self.profiles = profiles
        self.available = available
        self.wanted_visible = True
        self.menu = QMenu()
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self.icon = QSystemTrayIcon(self)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.host_poll = QTimer(self)  # Qt has no signal for a tray host that appears
        self.host_poll.setInterval(HOST_POLL_MS)
        self.host_poll.timeout.connect(self._look_for_host)
        self._display: DisplayState | None = None
        self._tooltip = ""
        state.changed.connect(self.refresh)
        state.trafficAdded.connect(self.refresh_tooltip)
        profiles.changed.connect(self.refresh)
        self.refresh()

    # --- visibility ---

    @property
    def shown(self) -> bool:
        return self.icon.isVisible()

    def set_wanted_visible(self, visible: bool) -> bool:
        """Show or hide the icon; returns whether it is visible (never without a tray host).
        Without a host, keep looking for one until it appears."""
        self.wanted_visible = visible
        available = self.available()
        if visible and available:
            self.icon.show()
        else:
            self.icon.hide()
        if available:
            self.host_poll.stop()
        elif not self.host_poll.isActive():
            self.host_poll.start()
        return self.icon.isVisible()

    def _look_for_host(self) -> None:
        if not self.available():
            return
        self.host_poll.stop()
        if self.wanted_visible:
            self.icon.show()
        self.hostAppeared.emit()

    # --- rendering ---

    def refresh(self) -> None:
        display = self.state.display_state()
        if display is not self._display:
            self._display = display
            self.icon.setIcon(state_icon(display))
        self.refresh_tooltip()
        if not self.menu.isVisible():
            self.rebuild_menu()

    def refresh_tooltip(self) -> None:
        tooltip = self.state.tooltip()
        if tooltip != self._tooltip:
            self._tooltip = tooltip
            self.icon.setToolTip(tooltip)

    def rebuild_menu(self) -> None:
        state, menu = self.state, self.menu
        menu.clear()
        headline = menu.addAction(state_icon(state.display_state()), state.headline())
        headline.setEnabled(False)
        status = state.status
        cause = state.cause() if state.link is Link.ONLINE else ""
        if cause and status is not None and status.state != TunnelState.DISCONNECTED:
            menu.addAction(cause).setEnabled(False)
        portal = state.portal() if state.link is Link.ONLINE else None
        if portal is not None and portal.portal_url:
            # Where it leads, by name: the page comes from the network, not from the helper.
            host = urlsplit(portal.portal_url).hostname or portal.portal_url
            login = menu.addAction(f"{OPEN_LOGIN_PAGE} ({host})")
            login.setToolTip(portal.portal_url)
            login.triggered.connect(lambda: self.controller.open_login_page())
        if status is not None and status.address and status.state != TunnelState.DISCONNECTED:
            address = menu.addAction(status.address)
            address.setToolTip("Copy the address")
            address.triggered.connect(lambda _=False, a=status.address:
                                      QGuiApplication.clipboard().setText(a))
        problem = state.problem()
        if problem is not None:
            menu.addAction(problem.advice if len(problem.advice) < 90
                           else problem.advice[:87] + "…").setEnabled(False)

        online = state.link is Link.ONLINE
        can_write = online and not state.read_only and not state.busy
        up = {name for name, s in state.tunnels.items() if s.state != TunnelState.DISCONNECTED}
        names = self.profiles.book.names() + [n for n in state.tunnels
                                              if self.profiles.book.get(n) is None]
        menu.addSection("Profiles")
        if not names:
            menu.addAction("No profile yet: add one in Profiles…").setEnabled(False)
        group = QActionGroup(menu)
        group.setExclusive(False)
        for name in names:
            action = QAction(name, menu)
            action.setCheckable(True)
            action.setChecked(name in up)
            action.setEnabled(can_write and self.profiles.book.get(name) is not None)
            if name in up:
                action.setToolTip("Connected: open the status window")
                action.triggered.connect(lambda _=False: self.statusRequested.emit())
            else:
                action.setToolTip("Connect" if not up else "Switch to this profile")
                action.triggered.connect(lambda _=False, n=name: self.controller.connect_profile(n))
            group.addAction(action)
            menu.addAction(action)
        if self.profiles.error:
            menu.addAction("The profiles file is corrupt: see Profiles…").setEnabled(False)

        menu.addSeparator()
        if status is not None and status.state != TunnelState.DISCONNECTED:
            disconnect = menu.addAction(f"&Disconnect {status.profile}")
            disconnect.setEnabled(can_write)
            disconnect.triggered.connect(lambda: self.controller.disconnect_tunnel())
        else:
            target = menu_profile(state, self.profiles)
            connect = menu.addAction(f"&Connect {target}" if target else "&Connect")
            connect.setEnabled(can_write and target is not None)
            if target:
                connect.triggered.connect(lambda _=False, n=target:
                                          self.controller.connect_profile(n))
        regenerate = menu.addAction("&New address now")
        regenerate.setToolTip("A fresh random 48-bit suffix on the same /80")
        regenerate.setEnabled(can_write and status is not None
                              and status.state == TunnelState.CONNECTED)
        regenerate.triggered.connect(lambda: self.controller.regenerate())
        if state.busy:
            menu.addAction(state.busy).setEnabled(False)

        menu.addSeparator()
        menu.addAction("&Status…").triggered.connect(lambda: self.statusRequested.emit())
        menu.addAction("&Profiles…").triggered.connect(lambda: self.profilesRequested.emit())
        menu.addSeparator()
        menu.addAction("&Quit (tunnels keep running)").triggered.connect(
            lambda: self.controller.quit(disconnect=False))
        if online and up and not state.read_only:
            menu.addAction("Disconnect &and quit").triggered.connect(
                lambda: self.controller.quit(disconnect=True))

    def close(self) -> None:
        self.host_poll.stop()
        self.icon.hide()
        self.icon.setContextMenu(None)  # type: ignore[arg-type]
        self.menu.deleteLater()

    def action(self, text: str) -> QAction | None:
        """The menu entry with this text, mnemonics aside (for tests)."""
        return next((a for a in self.menu.actions() if a.text().replace("&", "") == text),
                    None)

    # --- interaction ---

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger,
                      QSystemTrayIcon.ActivationReason.DoubleClick):
            self.statusRequested.emit()

    def show_balloon(self, summary: str, body: str, icon: QIcon) -> bool:
        """The fallback for notifications; False when there is no visible tray icon."""
        if not self.icon.isVisible():
            return False
        self.icon.showMessage(summary, body, icon, 8000)
        return True
