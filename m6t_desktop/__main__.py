"""m6t-desktop: the tray app of m6t desktop (a client of m6t-helper's control API)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from m6t.control.client import socket_path

log = logging.getLogger("m6t_desktop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="m6t-desktop",
        description="Tray app for m6t: IPv6 to your home agent from IPv4-only networks. The "
                    "tunnel itself runs in m6t-helper; quitting the app leaves it running.")
    parser.add_argument("--socket", help="the helper's control socket (default: $M6T_SOCKET "
                        "or /run/m6t/helper.sock)")
    parser.add_argument("--profiles", type=Path, help="the profiles file (default: "
                        "$M6T_PROFILES or ~/.config/m6t/profiles.toml)")
    tray = parser.add_mutually_exclusive_group()
    tray.add_argument("--no-tray", action="store_true",
                      help="no tray icon: the status window is the main window")
    tray.add_argument("--hide-tray", action="store_true",
                      help="start with the tray icon hidden (it can be shown again from the "
                           "status window)")
    parser.add_argument("--connect", metavar="PROFILE",
                        help="connect PROFILE once the helper answers (unless it is up)")
    parser.add_argument("--autostart", action="store_true",
                        help="started at login: connect the default profile if it has "
                             "auto_connect")
    parser.add_argument("--no-notifications", action="store_true",
                        help="no desktop notifications (the event log still has everything)")
    parser.add_argument("--debug", action="store_true", help="log to stderr")
    return parser.parse_args(argv)


def quit_on_signals(quit_app: Callable[[], None],
                    signals: tuple[signal.Signals, ...]) -> tuple[object, ...]:
    """Ctrl+C in a terminal, or SIGTERM at logout, quits as the menu does (the tunnels keep
    running). Python runs signal handlers only when it gets control back; instead of a timer
    waking the app up, the signal wakes Qt through a socket (signal.set_wakeup_fd)."""
    from PySide6.QtCore import QCoreApplication, QSocketNotifier

    receiver, sender = socket.socketpair()
    receiver.setblocking(False)
    sender.setblocking(False)
    signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    notifier = QSocketNotifier(receiver.fileno(), QSocketNotifier.Type.Read,
                               QCoreApplication.instance())
    notifier.activated.connect(lambda *_: receiver.recv(64))  # Python now runs the handler
    for number in signals:
        signal.signal(number, lambda *_: quit_app())
    return notifier, receiver, sender  # the caller keeps them for the app's lifetime


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") \
            and not os.environ.get("QT_QPA_PLATFORM"):
        print("m6t-desktop: no display (DISPLAY or WAYLAND_DISPLAY is not set)", file=sys.stderr)
        return 2

    from PySide6.QtWidgets import QApplication

    from m6t_desktop import single_instance
    from m6t_desktop.app import DesktopApp, Options
    from m6t_desktop.icons import app_icon
    from m6t_desktop.single_instance import HandOver

    application = QApplication(["m6t-desktop"])  # also the X11 WM_CLASS instance name
    # A login autostart that finds the app running (started by hand before the autostart
    # delay, or a session that restores it) has nothing to add: no window, no message.
    claim = single_instance.claim(single_instance.server_name(application.platformName()),
                                  show=not args.autostart)
    if claim.hand_over is HandOver.RUNNING:
        log.info("m6t-desktop is already running; nothing to do at login")
        return 0
    if claim.hand_over is HandOver.SHOWN:
        print("m6t-desktop is already running; showing its window", file=sys.stderr)
        return 0
    if claim.hand_over is HandOver.NO_ANSWER:
        print("m6t-desktop is already running but does not answer; not starting another one",
              file=sys.stderr)
        return 1
    application.setApplicationName("m6t-desktop")
    application.setApplicationDisplayName("m6t desktop")
    application.setDesktopFileName("m6t-desktop")
    application.setWindowIcon(app_icon())
    options = Options(socket=socket_path(args.socket), socket_explicit=args.socket is not None,
                      profiles=args.profiles, tray=not args.no_tray, hide_tray=args.hide_tray,
                      connect=args.connect, autostart=args.autostart,
                      notifications=not args.no_notifications)
    app = DesktopApp(options)
    if claim.server is not None:
        claim.server.showRequested.connect(app.show_status)
    app.start()
    keep = quit_on_signals(app.quit, (signal.SIGINT, signal.SIGTERM))
    code = application.exec()
    del keep
    if claim.server is not None:
        claim.server.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
