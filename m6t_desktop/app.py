"""Wires the app together: the profiles store, the helper connection, AppState and the
controller; the tray icon when there is a tray host (also one that appears later), else the
status window as the main window; notifications; the autostart entry. Windows are created when
first shown."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs
from PySide6.QtCore import QObject, QSettings, QTimer
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

from m6t_desktop import autostart
from m6t_desktop.app_state import AppState, Notice, NoticeAction
from m6t_desktop.client import HelperConnection
from m6t_desktop.controller import Controller, UrlOpener
from m6t_desktop.icons import app_icon, resource_path, state_icon
from m6t_desktop.notifications import DBusNotifications, Notifier
from m6t_desktop.profiles_store import ProfilesStore
from m6t_desktop.tray import TrayIcon
from m6t_desktop.wording import DisplayState

if TYPE_CHECKING:  # imported when first shown, to start faster
    from m6t_desktop.profiles_editor import ProfilesEditor
    from m6t_desktop.status_window import StatusWindow

log = logging.getLogger(__name__)

READY_FILE_VARIABLE = "M6T_DESKTOP_READY_FILE"


@dataclass
class Options:
    socket: str
    socket_explicit: bool = False  # given with --socket (not the default or M6T_SOCKET)
    profiles: Path | None = None
    tray: bool = True  # False: --no-tray, never create a tray icon
    hide_tray: bool = False  # --hide-tray: start with the icon hidden
    connect: str | None = None
    autostart: bool = False
    settings: Path | None = None
    notifications: bool = True
    dbus_bus: str = "SESSION"


def default_settings_path() -> Path:
    return Path(platformdirs.user_config_dir("m6t")) / "desktop.ini"


def bring_to_front(window: QWidget) -> None:
    """Asked for from the tray, the status window or another launch, a window may already be
    open behind others: showing it is not enough, it is raised and given the focus too."""
    window.show()
    window.raise_()
    window.activateWindow()


class DesktopApp(QObject):
    def __init__(self, options: Options, parent: QObject | None = None, *,
                 tray_available: Callable[[], bool] = QSystemTrayIcon.isSystemTrayAvailable,
                 open_url: UrlOpener | None = None) -> None:
        super().__init__(parent)
        self.options = options
        self.settings = QSettings(str(options.settings or default_settings_path()),
                                  QSettings.Format.IniFormat, self)
        self.profiles = ProfilesStore(options.profiles, self)
        self.state = AppState(self)
        self.connection = HelperConnection(options.socket, self)
        self.controller = Controller(self.connection, self.state, self.profiles, self,
                                     open_url=open_url)
        self.controller.quitRequested.connect(self.quit)
        self.tray: TrayIcon | None = None
        if options.tray:
            self.tray = TrayIcon(self.state, self.controller, self.profiles, self,
                                 available=tray_available)
            self.tray.statusRequested.connect(self.toggle_status)
            self.tray.profilesRequested.connect(self.show_profiles)
            self.tray.hostAppeared.connect(self._follow_tray)
        self._shut_down = False
        self._status_window: StatusWindow | None = None
        self._editor: ProfilesEditor | None = None
        dbus = None
        if options.notifications:
            icon = resource_path("m6t.svg")
            dbus = DBusNotifications(str(icon) if icon else "", options.dbus_bus, self)
        self.notifier = Notifier(dbus, self._balloon, self)
        self.state.notice.connect(self.notifier.notify)
        self.notifier.clicked.connect(self._notice_clicked)
        if self.tray is not None:
            self.tray.icon.messageClicked.connect(self.notifier.balloon_clicked)
        if self.profiles.error:
            self.state.log(f"Profiles: {self.profiles.error}", "error")

    # --- start and stop ---

    def start(self) -> None:
        self.connection.start()
        if self.options.autostart:
            self.controller.request_autostart()
        if self.options.connect:
            self.controller.connect_when_online(self.options.connect)
        visible = bool(self.settings.value("tray/visible", True, type=bool)) \
            and not self.options.hide_tray
        if not self.set_tray_visible(visible, remember=False):
            self.show_status()
        QTimer.singleShot(0, self._report_ready)

    def _report_ready(self) -> None:
        """For bench/desktop.py: the moment the icon (or the main window) is up."""
        path = os.environ.get(READY_FILE_VARIABLE)
        if not path:
            return
        what = "tray" if self.tray_shown else "window"
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{what} {time.time():.6f}\n")

    def quit(self) -> None:
        self.shutdown()
        QApplication.quit()

    def shutdown(self) -> None:
        """Stop talking to the helper and free the windows and menu here, in the GUI thread
        (left to Python's garbage collector, Qt objects could be destroyed on any thread)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.connection.stop()
        if self.notifier.dbus is not None:
            self.notifier.dbus.close()
        if self.tray is not None:
            self.tray.close()
        if self._status_window is not None:
            self._status_window.quit_on_close = False
        for window in (self._status_window, self._editor):
            if window is not None:
                window.hide()
                window.deleteLater()
        self._status_window = self._editor = None

    # --- tray or main window ---

    @property
    def tray_shown(self) -> bool:
        return self.tray is not None and self.tray.shown

    def set_tray_visible(self, visible: bool, remember: bool = True) -> bool:
        """Show or hide the tray icon. Without one the status window is the main window:
        closing it quits (the tunnels keep running in the helper)."""
        if remember:
            self.settings.setValue("tray/visible", visible)
        shown = self.tray.set_wanted_visible(visible) if self.tray is not None else False
        self._follow_tray()
        if self._status_window is not None and not shown:
            self.show_status()
        return shown

    def _follow_tray(self) -> None:
        """Closing the status window quits only while there is no tray icon to come back to;
        its menu offers the icon once there is a tray host. Also when a host appears late:
        the window stays as it is."""
        shown = self.tray_shown
        QApplication.setQuitOnLastWindowClosed(not shown)
        window = self._status_window
        if window is None:
            return
        window.quit_on_close = not shown
        window.tray_action.blockSignals(True)
        window.tray_action.setChecked(shown)
        window.tray_action.setEnabled(self.tray is not None and (shown or self.tray.available()))
        window.tray_action.blockSignals(False)

    # --- windows ---

    def status_window(self) -> StatusWindow:
        if self._status_window is None:
            from m6t_desktop.status_window import StatusWindow

            window = StatusWindow(self.state, self.controller, self.profiles)
            window.profilesRequested.connect(self.show_profiles)
            window.trayIconToggled.connect(self.set_tray_visible)
            window.autostartToggled.connect(self.set_autostart)
            window.autostart_action.setChecked(autostart.is_enabled())
            self._status_window = window
            self._follow_tray()
        return self._status_window

    def show_status(self) -> None:
        bring_to_front(self.status_window())

    def toggle_status(self) -> None:
        window = self.status_window()
        if window.isVisible() and window.isActiveWindow():
            window.hide()
        else:
            self.show_status()

    def profiles_editor(self) -> ProfilesEditor:
        if self._editor is None:
            from m6t_desktop.profiles_editor import ProfilesEditor

            self._editor = ProfilesEditor(self.profiles)
        return self._editor

    def show_profiles(self) -> None:
        bring_to_front(self.profiles_editor())

    # --- autostart ---

    def set_autostart(self, enabled: bool) -> None:
        extra = []  # what was given on the command line carries over to login
        if self.options.socket_explicit:
            extra += ["--socket", self.options.socket]
        if self.options.profiles is not None:
            extra += ["--profiles", str(self.options.profiles)]
        if enabled:
            path = autostart.enable(extra)
            self.state.log(f"Starts at login ({path})")
        else:
            autostart.disable()
            self.state.log("Does not start at login any more")

    # --- notifications ---

    def _notice_clicked(self, notice: Notice) -> None:
        if notice.action is NoticeAction.OPEN_LOGIN_PAGE:
            self.controller.open_login_page()

    def _balloon(self, summary: str, body: str, state: DisplayState) -> bool:
        if self.tray is None:
            return False
        return self.tray.show_balloon(summary, body, state_icon(state) if state else app_icon())
