"""The app against FakeHelper over a real Unix socket, for what issue 11 added: a captive portal
said in plain words in the tray and the status window, with its login page one click away (in a
stand-in browser; only http and https pages are opened); and the report card's list of what
the helper remembers of each network, with Forget and Forget all (disabled, with the way to get
the right, for a read-only user), which a malformed answer never breaks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from m6t.control.errors import NotFound
from m6t_desktop.app import DesktopApp
from m6t_desktop.client import Link
from m6t_desktop.status_window import StatusWindow
from tests.desktop.conftest import (
    OFFICE,
    OFFSCREEN_LIMITS,
    AppFactory,
    Browser,
    connected,
    menu_action,
    menu_texts,
    online,
)
from tests.fake_helper import FakeHelper, known_network, status_for

CAFE = "Wi-Fi CoffeeShop, router 192.168.1.1 (02:fc:00:00:00:01), on wlan0"
OFFICE_LAN = "router 10.0.0.1 (52:54:00:12:34:56), on eth0"
PORTAL = "http://192.168.1.1/login?next=%2F"


def behind_portal(url: str | None = PORTAL, **changes: Any) -> dict[str, Any]:
    return {**status_for(OFFICE, state="waiting", cause="captive_portal"), "address": None,
            "suffix": None, "port": None, "rtt_ms": None, "network": "5f0c2d9a61b7e3a4",
            "network_label": CAFE, "portal_url": url, **changes}


def state_event(status: dict[str, Any]) -> dict[str, Any]:
    return {"type": "state", "tunnel": status["name"], "profile": status["profile"],
            "state": status["state"], "cause": status["cause"], "status": status,
            "message": None}


def remembered(helper: FakeHelper) -> None:
    now = time.time()
    helper.networks += [
        known_network("5f0c2d9a61b7e3a4", "office", CAFE, port=4500, mtu=1372,
                      fragments_pass=True, last_seen=now - 2, current=True),
        known_network("5f0c2d9a61b7e3a4", "home", CAFE, port=53, last_seen=now - 300),
        known_network("5f0c8e11aa2299cc", "office", OFFICE_LAN, fragments_pass=False,
                      last_seen=now - 3 * 86400),
    ]


def calls_of(helper: FakeHelper, method: str) -> list[Any]:
    return [params for name, params in helper.calls if name == method]


# --- a captive portal ---


def test_the_tray_says_the_network_wants_a_login_and_opens_its_page(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory, browser: Browser) -> None:
    helper.tunnels["office"] = behind_portal()
    app = online(qtbot, make_app())
    texts = menu_texts(app)
    assert texts[:3] == ["Waiting for office", "this network wants you to log in first",
                         "Open the login page (192.168.1.1)"]
    login = menu_action(app, "Open the login page (192.168.1.1)")
    assert login.isEnabled() and login.toolTip() == PORTAL
    login.trigger()
    assert browser.opened == [PORTAL]
    assert app.state.events.entries[-1].text == \
        f"Opened the login page {PORTAL} in the web browser"
    assert "this network wants you to log in first" in app.tray.icon.toolTip()  # type: ignore[union-attr]


def test_the_status_window_says_it_and_has_a_button(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory, browser: Browser) -> None:
    helper.tunnels["office"] = behind_portal()
    app = online(qtbot, make_app())
    window = app.status_window()
    assert window.headline.text() == "Waiting for office"
    assert window.cause.text() == "this network wants you to log in first"
    assert not window.portal_banner.isHidden()
    assert window.portal_banner.title.text() == "Log in to this network"
    assert PORTAL in window.portal_banner.advice.text()
    assert "connects by itself" in window.portal_banner.advice.text()
    assert window.network_label.text() == CAFE
    window.portal_button.click()
    assert browser.opened == [PORTAL]


def test_a_read_only_user_may_open_the_login_page_too(
        qtbot: QtBot, socket_path: Path, make_app: AppFactory, browser: Browser) -> None:
    with FakeHelper(socket_path, read_only=True) as helper:
        helper.tunnels["office"] = behind_portal()
        app = online(qtbot, make_app())
        assert menu_action(app, "Open the login page (192.168.1.1)").isEnabled()
        window = app.status_window()
        assert window.portal_button.isEnabled()
        window.portal_button.click()
    assert browser.opened == [PORTAL]


def test_once_through_the_portal_the_offer_goes_away(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    helper.tunnels["office"] = behind_portal()
    app = online(qtbot, make_app())
    window = app.status_window()
    helper.tunnels["office"] = {**status_for(OFFICE), "network_label": CAFE}
    helper.emit(state_event(helper.tunnels["office"]))
    connected(qtbot, app)
    assert window.portal_banner.isHidden()
    assert not any(text.startswith("Open the login page") for text in menu_texts(app))
    assert menu_texts(app)[0] == "Connected to office"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "javascript:alert(1)",
                                 "x-scheme-handler://run", "http://"])
def test_a_login_page_that_is_not_a_web_page_is_not_opened(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory, browser: Browser,
        url: str) -> None:
    # The address comes from the network the laptop is on: nothing but a browser may open it.
    helper.tunnels["office"] = behind_portal(url)
    app = online(qtbot, make_app())
    app.status_window().portal_button.click()
    assert browser.opened == []
    assert app.state.last_failure == (f"Open the login page: {url!r} is not a web page (http "
                                      "or https): not opened; open a web page by hand")


def test_no_browser_says_to_open_the_page_by_hand(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory, browser: Browser) -> None:
    browser.works = False
    helper.tunnels["office"] = behind_portal()
    app = online(qtbot, make_app())
    app.controller.open_login_page()
    assert app.state.last_failure == (f"Open the login page: no web browser opened {PORTAL}: "
                                      "open it by hand")


def test_a_portal_without_its_page_still_says_what_to_do(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    helper.tunnels["office"] = behind_portal(None)
    app = online(qtbot, make_app())
    window = app.status_window()
    assert window.cause.text().startswith("this network wants you to log in first: open any "
                                          "web page")
    assert window.portal_banner.isHidden()
    assert not any(text.startswith("Open the login page") for text in menu_texts(app))


# --- what the helper remembers of networks ---


def report_tab(app: DesktopApp) -> StatusWindow:
    window = app.status_window()
    window.tabs.setCurrentWidget(window.report_page)
    return window


def table_rows(window: StatusWindow) -> list[list[str]]:
    model = window.networks_table.model()
    return [[model.data(model.index(row, column)) for column in range(model.columnCount())]
            for row in range(model.rowCount())]


def test_the_card_shows_what_the_helper_remembers(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    remembered(helper)
    app = online(qtbot, make_app())
    window = report_tab(app)
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 3)
    assert table_rows(window) == [
        [CAFE, "office", "UDP 4500", "1372", "pass", "now, in use"],
        [CAFE, "home", "UDP 53", "1472", "not tested", "5 min ago"],
        [OFFICE_LAN, "office", "UDP 3544", "1472", "blocked", "3 days ago"],
    ]
    model = window.networks_table.model()
    assert model.data(model.index(0, 0), 0x0006).bold()  # FontRole: the current one stands out
    assert "ID 5f0c8e11aa2299cc" in model.data(model.index(2, 0), 0x0003)  # ToolTipRole
    assert window.networks_note.isHidden()
    assert not window.forget_button.isEnabled()  # nothing selected yet
    assert window.forget_all_button.isEnabled()


def test_forget_the_selected_network_then_all(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    remembered(helper)
    app = online(qtbot, make_app())
    window = report_tab(app)
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 3)
    window.networks_table.selectRow(2)
    assert window.forget_button.isEnabled()
    window.forget_button.click()
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 2)
    assert calls_of(helper, "forget_network") == [{"network": "5f0c8e11aa2299cc"}]
    assert app.state.events.entries[-1].text == f"The helper forgot {OFFICE_LAN}"
    assert not window.forget_button.isEnabled()  # the selection went with the row

    window.networks_table.selectRow(1)  # the cafe, for "home": forgotten for every profile
    window.forget_button.click()
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 0)
    assert calls_of(helper, "forget_network")[-1] == {"network": "5f0c2d9a61b7e3a4"}
    assert not window.forget_all_button.isEnabled()
    assert "None yet" in window.networks_note.text()

    remembered(helper)
    app.controller.refresh_networks()
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 3)
    window.forget_all_button.click()
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 0)
    assert calls_of(helper, "forget_network")[-1] == {}
    assert app.state.events.entries[-1].text == "The helper forgot every network"


def test_a_read_only_user_sees_the_networks_but_cannot_forget_them(
        qtbot: QtBot, socket_path: Path, make_app: AppFactory) -> None:
    with FakeHelper(socket_path, read_only=True) as helper:
        remembered(helper)
        app = online(qtbot, make_app())
        window = report_tab(app)
        qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 3)
        window.networks_table.selectRow(0)
        assert not window.forget_button.isEnabled()
        assert not window.forget_all_button.isEnabled()
        assert not window.networks_note.isHidden()
        assert "To forget networks, join the m6t group: sudo usermod -aG m6t $USER" in \
            window.networks_note.text()


def test_a_network_forgotten_meanwhile_is_said_in_the_window(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    remembered(helper)

    def gone(params: dict[str, Any]) -> Any:
        raise NotFound("no known network '5f0c8e11aa2299cc' (known: 5f0c2d9a61b7e3a4)")
    helper.handlers["forget_network"] = gone
    app = online(qtbot, make_app())
    window = report_tab(app)
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 3)
    window.networks_table.selectRow(2)
    window.forget_button.click()
    qtbot.waitUntil(lambda: app.state.last_failure is not None)
    assert app.state.last_failure == (f"Forget {OFFICE_LAN}: no known network "
                                      "'5f0c8e11aa2299cc' (known: 5f0c2d9a61b7e3a4)")
    assert not window.failure_banner.isHidden()


def test_the_list_is_asked_again_after_a_tunnel_event(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    qtbot.waitUntil(lambda: len(calls_of(helper, "networks")) == 1)  # with the full state
    window = report_tab(app)  # the card is shown
    qtbot.waitUntil(lambda: len(calls_of(helper, "networks")) == 2)
    remembered(helper)  # the helper learnt the network on the new address
    helper.emit({"type": "address", "tunnel": "m6t0", "profile": "office",
                 "address": "fd6d:6d74:1:1:1:aaaa:bbbb:cccc",
                 "previous": "fd6d:6d74:1:1:1:8d2e:41f0:977c", "reason": "network_changed",
                 "at": 1796000100.2})
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 3)
    helper.emit({"type": "traffic", "tunnel": "m6t0", "profile": "office", "rx_bytes": 1,
                 "tx_bytes": 1, "rx_packets": 1, "tx_packets": 1, "rx_rate": 1.0,
                 "tx_rate": 1.0})
    qtbot.waitUntil(lambda: len(app.state.history().samples) == 1)
    assert len(calls_of(helper, "networks")) == 3  # not for traffic


def test_the_helper_that_cannot_save_its_memory_is_said(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    remembered(helper)
    helper.networks_saved = False
    app = online(qtbot, make_app())
    window = report_tab(app)
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 3)
    assert "cannot write its memory file" in window.networks_note.text()


MALFORMED_NETWORKS = [
    {"networks": [{"id": 7}], "saved": True},
    {"networks": "all of them"},
    {"saved": True},
    [],
    {"networks": [{**known_network("5f0c2d9a61b7e3a4", "office"), "fragments_pass": "yes"}]},
    {"networks": [{**known_network("5f0c2d9a61b7e3a4", "office"), "port": None}]},
]


@pytest.mark.parametrize("answer", MALFORMED_NETWORKS,
                         ids=["wrong_type", "not_a_list", "missing", "not_an_object",
                              "bad_fragments", "null_port"])
def test_a_malformed_networks_answer_does_not_break_the_app(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory, answer: Any) -> None:
    remembered(helper)
    good = helper.networks
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app())
    window = report_tab(app)
    qtbot.waitUntil(lambda: window.networks_table.model().rowCount() == 3)
    helper.handlers["networks"] = lambda params: answer
    app.controller.refresh_networks()
    qtbot.waitUntil(lambda: app.state.networks.problem is not None)
    assert window.networks_table.model().rowCount() == 3  # the last good list stays
    assert "could not read them" in window.networks_note.text()
    assert app.connection.link is Link.ONLINE
    assert window.headline.text() == "Connected to office"
    app.controller.refresh_networks()  # asked again, the same answer: said once in the log
    qtbot.waitUntil(lambda: len(calls_of(helper, "networks")) >= 3)
    qtbot.wait(50)
    warnings = [e for e in app.state.events.entries if "could not read them" in e.text]
    assert len(warnings) == 1
    del helper.handlers["networks"]
    helper.networks = good
    app.controller.refresh_networks()
    qtbot.waitUntil(lambda: app.state.networks.problem is None)
    assert window.networks_note.isHidden()
    menu_action(app, "Disconnect office")  # the rest of the app goes on


def test_the_card_names_the_network_as_the_helper_does(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory) -> None:
    helper.tunnels["office"] = {**status_for(OFFICE), "network_label": CAFE}
    app = online(qtbot, make_app())
    window = report_tab(app)
    assert f"Network <b>{CAFE}</b> · profile <b>office</b>" in window.report_title.text()


TRAY_ICON_OFFSCREEN = "No such signal QPlatformNativeInterface::systemTrayWindowChanged"


@pytest.mark.qt_log_ignore(*OFFSCREEN_LIMITS, TRAY_ICON_OFFSCREEN)
def test_a_click_on_the_portal_balloon_opens_the_login_page(
        qtbot: QtBot, helper: FakeHelper, make_app: AppFactory, browser: Browser) -> None:
    # No notification server (notifications=False): the tray's balloon says it, and a click
    # on it (QSystemTrayIcon.messageClicked) opens the page, as the tray menu's entry does.
    helper.tunnels["office"] = status_for(OFFICE)
    app = online(qtbot, make_app(tray_available=lambda: True))
    assert app.tray is not None and app.tray_shown
    shown: list[tuple[object, str]] = []
    app.notifier.shown.connect(lambda notice, how: shown.append((notice, how)))
    helper.tunnels["office"] = behind_portal()
    helper.emit(state_event(helper.tunnels["office"]))
    qtbot.waitUntil(lambda: any(getattr(n, "action", None) for n, _ in shown), timeout=5000)
    assert [how for n, how in shown if getattr(n, "action", None)] == ["balloon"]
    app.tray.icon.messageClicked.emit()
    assert browser.opened == [PORTAL]
