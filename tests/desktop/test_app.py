"""The whole app (tray menu, status window, controller) against FakeHelper over a real Unix
socket: the menu rebuilt from state, connect / switch / disconnect / new address, the status
window's address, traffic graph and report card, what it says when the helper is missing,
refuses or restarts, quitting with and without the tunnel, auto-connect at login."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from m6t import profiles
from m6t.control.errors import ErrorData, InvalidParams, PermissionDenied
from m6t.profiles import profile_to_dict
from m6t_desktop.client import Link
from m6t_desktop.traffic_graph import RX_COLOUR, TX_COLOUR
from m6t_desktop.wording import NO_VALUE, DisplayState
from tests.desktop.conftest import (
    HOME,
    OFFICE,
    OFFSCREEN_LIMITS,
    AppFactory,
    connected,
    menu_action,
    menu_texts,
    online,
)
from tests.fake_helper import FakeHelper, status_for

# --- the tray menu, rebuilt from state ---


def test_menu_when_disconnected(qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    app = online(qtbot, make_app())
    assert menu_texts(app) == ["Disconnected", "Profiles", "office", "home", "Connect office",
                               "New address now", "Status…", "Profiles…",
                               "Quit (tunnels keep running)"]
    assert menu_action(app, "Connect office").isEnabled()
    assert not menu_action(app, "New address now").isEnabled()
    assert not menu_action(app, "office").isChecked()
    assert app.tray._display is DisplayState.DISCONNECTED  # type: ignore[union-attr]


def test_connect_from_the_menu_rebuilds_it_connected(qtbot: QtBot, helper: FakeHelper,
                                                     make_app: AppFactory) -> None:
    app = online(qtbot, make_app())
    menu_action(app, "Connect office").trigger()
    connected(qtbot, app)
    assert ("connect", {"profile": profile_to_dict(OFFICE)}) in helper.calls
    texts = menu_texts(app)
    assert texts[:3] == ["Connected to office", "UDP port 3544 answered first",
                         "fd6d:6d74:1:1:1:8d2e:41f0:977c"]
    with qtbot.waitSignal(QApplication.clipboard().dataChanged):
        menu_action(app, "fd6d:6d74:1:1:1:8d2e:41f0:977c").trigger()  # copies the address
    assert QApplication.clipboard().text() == "fd6d:6d74:1:1:1:8d2e:41f0:977c"
    assert "Disconnect office" in texts and "Disconnect and quit" in texts
    assert menu_action(app, "office").isChecked()
    assert not menu_action(app, "home").isChecked()
    assert menu_action(app, "New address now").isEnabled()
    assert app.tray._display is DisplayState.CONNECTED  # type: ignore[union-attr]
    tooltip = app.tray.icon.toolTip()  # type: ignore[union-attr]
    assert "gateway 198.51.100.1:3544" in tooltip and "MTU 1472" in tooltip


def test_picking_another_profile_switches(qtbot: QtBot, helper: FakeHelper,
                                          make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    menu_action(app, "home").trigger()
    connected(qtbot, app, "home")
    methods = [(m, p.get("profile") if m == "disconnect" else p["profile"]["name"])
               for m, p in helper.calls if m in ("connect", "disconnect")]
    assert methods == [("disconnect", "office"), ("connect", "home")]
    assert app.state.current == "home"


def test_disconnect_from_the_menu(qtbot: QtBot, helper: FakeHelper,
                                  make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    menu_action(app, "Disconnect office").trigger()
    qtbot.waitUntil(lambda: ("disconnect", {"profile": "office"}) in helper.calls)
    helper.emit({"type": "removed", "tunnel": "m6t0", "profile": "office"})
    qtbot.waitUntil(lambda: "Connect office" in menu_texts(app))


def test_new_address_now(qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    # connected again, its cause the reason of the new address (as the helper says it)
    fresh = dict(status_for(OFFICE), address="fd6d:6d74:1:1:1:1234:5678:9abc",
                 suffix="1234:5678:9abc", cause="user_request")
    helper.handlers["regenerate"] = lambda params: fresh
    app = online(qtbot, make_app())
    menu_action(app, "New address now").trigger()
    qtbot.waitUntil(lambda: app.state.status is not None
                    and app.state.status.suffix == "1234:5678:9abc")
    assert ("regenerate", {"profile": "office"}) in helper.calls
    window = app.status_window()
    assert "1234:5678:9abc" in window.address_label.text()
    assert window.cause.text() == "new address, as you asked"


# --- the status window ---


def traffic(rx: float, tx: float) -> dict[str, Any]:
    return {"type": "traffic", "tunnel": "m6t0", "profile": "office", "rx_bytes": 150_000,
            "tx_bytes": 90_000, "rx_packets": 200, "tx_packets": 150, "rx_rate": rx,
            "tx_rate": tx, "rtt_ms": 21.5}


def test_status_window_tells_the_address_parts_apart(qtbot: QtBot, helper: FakeHelper,
                                                     make_app: AppFactory) -> None:
    helper.tunnels["office"] = dict(
        status_for(OFFICE, cause="port_fallback"), port=4500,
        ports=[{"port": 3544, "reachable": False, "rtt_ms": None, "error": "timeout"},
               {"port": 4500, "reachable": True, "rtt_ms": 0.7, "error": None}])
    app = online(qtbot, make_app())
    window = app.status_window()
    assert window.headline.text() == "Connected (degraded) to office"
    assert window.cause.text() == "UDP port 3544 is blocked here, using 4500"
    html = window.address_label.text()
    assert "fd6d:6d74:1:1:1:</span>" in html  # the /80, plain
    assert "font-weight: bold" in html and ">8d2e:41f0:977c</span>" in html  # the suffix
    assert "fd6d:6d74:1:1:1::/80 from the profile" in window.address_note.text()
    assert window.gateway_label.text() == "198.51.100.1:4500"
    assert window.home_agent_label.text() == "fd48:4100::2"
    assert window.datapath_label.text() == ("fast: TCP super-packets, UDP super-packets, UDP "
                                            "GRO, UDP GSO")
    assert "TSO reads: off by default" in window.datapath_label.toolTip()


def test_traffic_events_draw_the_graph(qtbot: QtBot, helper: FakeHelper,
                                       make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    window = app.status_window()
    window.resize(720, 640)
    window.show()
    for second in range(6):
        helper.emit(traffic(rx=40_000.0 + 5_000 * second, tx=8_000.0))
    qtbot.waitUntil(lambda: len(app.state.history().samples) == 6)
    assert (window.mtu_label.text(), window.rtt_label.text()) == ("1472 bytes", "21.5 ms")
    assert window.counters_label.text() == ("in 150.0 kB (200 packets) · out 90.0 kB "
                                            "(150 packets)")
    assert window.graph.scale() == 100_000.0  # peak 65 kB/s, rounded up to a nice number
    image = window.graph.grab().toImage()
    colours = {image.pixelColor(x, y).name() for x in range(image.width())
               for y in range(image.height())}
    assert QColor(RX_COLOUR).name() in colours
    assert QColor(TX_COLOUR).name() in colours


def test_test_now_fills_the_report_card(qtbot: QtBot, helper: FakeHelper,
                                        make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    helper.handlers["probe"] = lambda params: {
        "gateway_address": "198.51.100.1",
        "ports": [{"port": 3544, "reachable": False, "rtt_ms": None, "error": "timeout"},
                  {"port": 4500, "reachable": True, "rtt_ms": 3.2, "error": None}]}
    helper.handlers["probe_mtu"] = lambda params: {
        "mtu": 1372, "fragments_pass": False, "ipv4_path_mtu": 1400,
        "tried": [1280, 1372, 1472], "answered": [1280, 1372]}
    app = online(qtbot, make_app())
    window = app.status_window()
    window.test_button.click()
    qtbot.waitUntil(lambda: app.state.report.card is not None
                    and app.state.report.card.source == "test")
    assert {m for m, _ in helper.calls} >= {"probe", "probe_mtu"}
    table = window.report_table.model()
    rows = [[table.data(table.index(r, c)) for c in range(3)] for r in range(table.rowCount())]
    assert rows == [["UDP 3544", "blocked (timeout)", NO_VALUE],
                    ["UDP 4500", "reachable", "3.2 ms"]]
    assert window.report_mtu.text() == "1372 bytes"
    assert window.report_fragments.text().startswith("blocked")
    assert window.report_path_mtu.text() == "1400"
    assert window.test_button.isEnabled()
    assert "Network test on" in app.state.events.entries[-1].text


def test_test_now_while_disconnected_probes_ports_only(qtbot: QtBot, helper: FakeHelper,
                                                       make_app: AppFactory) -> None:
    app = online(qtbot, make_app())
    app.controller.test_now()
    qtbot.waitUntil(lambda: app.state.report.card is not None)
    assert [m for m, _ in helper.calls if m.startswith("probe")] == ["probe"]
    window = app.status_window()
    assert window.report_mtu.text() == "connect to measure the MTU and fragments"


def test_address_history_and_event_log(qtbot: QtBot, helper: FakeHelper,
                                       make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    window = app.status_window()
    helper.emit({"type": "address", "tunnel": "m6t0", "profile": "office",
                 "address": "fd6d:6d74:1:1:1:aaaa:bbbb:cccc",
                 "previous": "fd6d:6d74:1:1:1:8d2e:41f0:977c", "reason": "nat_mapping_changed",
                 "at": 1796000100.2})
    qtbot.waitUntil(lambda: window.address_table.model().rowCount() == 2)
    model = window.address_table.model()
    assert model.data(model.index(0, 2)) == "NAT mapping changed"
    events = window.event_table.model()
    last = events.data(events.index(events.rowCount() - 1, 1))
    assert last == "office: new address fd6d:6d74:1:1:1:aaaa:bbbb:cccc (NAT mapping changed)"


# --- when things are not right ---


def test_helper_not_running_says_how_to_start_it(qtbot: QtBot, make_app: AppFactory) -> None:
    app = make_app()
    qtbot.waitUntil(lambda: app.state.link is Link.NOT_RUNNING)
    window = app.status_window()
    assert not window.problem_banner.isHidden()
    assert "sudo systemctl start m6t-helper" in window.problem_banner.advice.text()
    assert not window.connect_button.isEnabled()
    assert app.tray._display is DisplayState.ERROR  # type: ignore[union-attr]
    assert not menu_action(app, "Connect office").isEnabled()
    assert any("systemctl start m6t-helper" in text for text in menu_texts(app))


def test_read_only_says_join_the_group(qtbot: QtBot, socket_path: Path,
                                       make_app: AppFactory) -> None:
    with FakeHelper(socket_path, read_only=True):
        app = online(qtbot, make_app())
        window = app.status_window()
        assert "usermod -aG m6t" in window.problem_banner.advice.text()
        assert not window.connect_button.isEnabled()
        assert not menu_action(app, "Connect office").isEnabled()


def test_permission_denied_on_a_call_says_join_the_group(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    def refuse(_params: dict) -> None:
        raise PermissionDenied("permission denied: join group m6t", ErrorData(group="m6t"))

    helper.handlers["connect"] = refuse
    app = online(qtbot, make_app())
    app.controller.connect_profile("office")
    qtbot.waitUntil(lambda: app.state.last_failure is not None)
    window = app.status_window()
    assert "usermod -aG m6t" in window.failure_banner.advice.text()
    assert "usermod -aG m6t" in window.problem_banner.advice.text()  # now known read-only


def test_invalid_profile_names_the_field(qtbot: QtBot, helper: FakeHelper,
                                         make_app: AppFactory) -> None:
    def refuse(_params: dict) -> None:
        raise InvalidParams("mtu: 1200 is outside 1280-65507", ErrorData(field="profile.mtu"))

    helper.handlers["connect"] = refuse
    app = online(qtbot, make_app())
    app.controller.connect_profile("office")
    qtbot.waitUntil(lambda: app.state.last_failure is not None)
    assert app.state.last_failure == ("Connect office: mtu: 1200 is outside 1280-65507 "
                                      "(field profile.mtu: fix it in Profiles…)")
    assert app.state.busy is None


def test_helper_restart_reconnects_the_wanted_profile(qtbot: QtBot, socket_path: Path,
                                                      make_app: AppFactory) -> None:
    first = FakeHelper(socket_path)
    first.start()
    app = online(qtbot, make_app())
    app.controller.connect_profile("office")
    connected(qtbot, app)
    first.stop()
    qtbot.waitUntil(lambda: app.state.link is Link.LOST)
    window = app.status_window()
    assert "reconnects to it by itself" in window.problem_banner.advice.text()
    with FakeHelper(socket_path) as second:
        qtbot.waitUntil(lambda: any(m == "connect" for m, _ in second.calls), timeout=5000)
        connected(qtbot, app)
    texts = [entry.text for entry in app.state.events.entries]
    assert "The helper restarted; the app reconnected to it" in texts
    assert "Reconnecting office after the helper restart" in texts


def test_malformed_messages_do_not_disturb_the_window(qtbot: QtBot, helper: FakeHelper,
                                                      make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    window = app.status_window()
    helper.send_raw(b"\xff\xfe garbage\n[]\n{\"jsonrpc\": \"2.0\", \"method\": \"event\", "
                    b"\"params\": {\"type\": \"state\"}}\n")
    helper.emit(traffic(rx=1000.0, tx=500.0))
    qtbot.waitUntil(lambda: len(app.state.history().samples) == 1)
    assert sum(app.connection.malformed_counts.values()) == 3
    assert window.headline.text() == "Connected to office"


# --- quitting, the main window without a tray, auto-connect ---


def test_quit_keeps_the_tunnel(qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    with qtbot.waitSignal(app.controller.quitRequested):
        menu_action(app, "Quit (tunnels keep running)").trigger()
    assert "disconnect" not in [m for m, _ in helper.calls]


def test_disconnect_and_quit(qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    with qtbot.waitSignal(app.controller.quitRequested):
        menu_action(app, "Disconnect and quit").trigger()
    assert ("disconnect", {}) in helper.calls


@pytest.mark.parametrize("options", [{}, {"tray": False}, {"hide_tray": True}])
def test_without_a_tray_the_status_window_is_the_main_window(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory, options: dict) -> None:
    app = make_app(**options)
    window = app.status_window()
    assert window.isVisible()
    assert window.quit_on_close
    assert QApplication.quitOnLastWindowClosed()
    assert not app.tray_shown
    with qtbot.waitSignal(app.controller.quitRequested):
        window.close()  # closing the main window quits (the tunnels keep running)


class TrayHost:
    """Whether a tray host exists, as the app sees it; a test starts one when it likes."""

    def __init__(self) -> None:
        self.running = False

    def __call__(self) -> bool:
        return self.running


# Showing a tray icon offscreen, Qt looks for a signal that platform does not have.
TRAY_ICON_OFFSCREEN = "No such signal QPlatformNativeInterface::systemTrayWindowChanged"


@pytest.mark.qt_log_ignore(*OFFSCREEN_LIMITS, TRAY_ICON_OFFSCREEN)
def test_a_tray_host_that_starts_later_gets_the_icon(qtbot: QtBot, make_app: AppFactory) -> None:
    host = TrayHost()
    app = make_app(tray_available=host)
    assert app.tray is not None
    window = app.status_window()
    assert window.isVisible() and window.quit_on_close and not app.tray_shown
    assert not window.tray_action.isEnabled()
    assert app.tray.host_poll.isActive()
    app.tray.host_poll.setInterval(20)  # quick polls in tests
    host.running = True  # a panel starts
    qtbot.waitUntil(lambda: app.tray_shown, timeout=2000)
    assert not app.tray.host_poll.isActive()
    assert window.isVisible()  # kept as it was; closing it now leaves the app in the tray
    assert not window.quit_on_close and not QApplication.quitOnLastWindowClosed()
    assert window.tray_action.isEnabled() and window.tray_action.isChecked()


def test_a_late_tray_host_leaves_a_hidden_icon_hidden(qtbot: QtBot,
                                                      make_app: AppFactory) -> None:
    host = TrayHost()
    app = make_app(tray_available=host, hide_tray=True)
    assert app.tray is not None
    window = app.status_window()
    app.tray.host_poll.setInterval(20)
    with qtbot.waitSignal(app.tray.hostAppeared, timeout=2000):
        host.running = True
    assert not app.tray_shown and not app.tray.host_poll.isActive()
    assert window.isVisible() and window.quit_on_close
    assert window.tray_action.isEnabled() and not window.tray_action.isChecked()


def test_autostart_connects_the_default_profile(qtbot: QtBot, helper: FakeHelper,
                                                make_app: AppFactory) -> None:
    app = make_app(autostart=True)
    connected(qtbot, app)
    assert [p["profile"]["name"] for m, p in helper.calls if m == "connect"] == ["office"]
    assert app.state.wanted == "office"


def test_autostart_leaves_a_running_tunnel_alone(qtbot: QtBot, helper: FakeHelper,
                                                 make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app(autostart=True))
    qtbot.waitUntil(lambda: app.state.wanted == "office")
    assert "connect" not in [m for m, _ in helper.calls]


def test_autostart_without_auto_connect_connects_nothing(
        qtbot: QtBot, helper: FakeHelper, profiles_path: Path, make_app: AppFactory) -> None:
    profiles.save(profiles.ProfileBook([HOME], default="home"), profiles_path)
    app = online(qtbot, make_app(autostart=True))
    qtbot.waitUntil(lambda: any("no profile is set to connect at login" in e.text
                                for e in app.state.events.entries))
    assert "connect" not in [m for m, _ in helper.calls]


def test_connect_option_connects_once_online(qtbot: QtBot, helper: FakeHelper,
                                             make_app: AppFactory) -> None:
    app = make_app(connect="home")
    connected(qtbot, app, "home")
    assert app.state.current == "home"


def test_profiles_changed_by_the_cli_show_in_the_menu(
        qtbot: QtBot, helper: FakeHelper, profiles_path: Path, make_app: AppFactory) -> None:
    app = online(qtbot, make_app())
    book = profiles.load(profiles_path)
    book.put(OFFICE.__class__(**{**profile_to_dict(OFFICE), "name": "lab"}))
    profiles.save(book, profiles_path)  # what `m6t profile add` does
    qtbot.waitUntil(lambda: "lab" in menu_texts(app), timeout=5000)


def test_corrupt_profiles_file_is_reported_in_the_menu(
        qtbot: QtBot, helper: FakeHelper, profiles_path: Path, make_app: AppFactory) -> None:
    profiles_path.write_text("[[profile]\nname = ")
    app = online(qtbot, make_app())
    assert "The profiles file is corrupt: see Profiles…" in menu_texts(app)
    assert profiles_path.read_text() == "[[profile]\nname = "


def test_status_window_follows_the_chosen_tunnel_and_keeps_a_pick(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    helper.tunnels["home"] = status_for(HOME, name="m6t1")
    app = online(qtbot, make_app())
    window = app.status_window()
    assert window.headline.text() == "Connected to office"
    window.profile_combo.setCurrentText("home")  # two tunnels up: look at the other one
    assert window.headline.text() == "Connected to home"
    assert "fd6d:6d74:1:2:7:" in window.address_label.text()
    helper.tunnels.pop("home")
    helper.emit({"type": "removed", "tunnel": "m6t1", "profile": "home"})
    qtbot.waitUntil(lambda: window.headline.text() == "Connected to office")
    assert window.profile_combo.currentText() == "office"
    window.profile_combo.setCurrentText("home")  # picked to switch to: kept across changes
    helper.emit({"type": "mtu", "tunnel": "m6t0", "profile": "office", "mtu": 1400,
                 "previous": 1472, "reason": "auto"})
    qtbot.waitUntil(lambda: window.mtu_label.text() == "1400 bytes")
    assert window.profile_combo.currentText() == "home"
    assert window.connect_button.text().replace("&", "") == "Switch"
