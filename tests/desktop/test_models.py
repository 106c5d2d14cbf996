"""AppState and its models, fed typed events directly: what the icon shows for each helper
state, the causes in plain words, the address told apart, history, traffic, the event log,
notices, the per-network report card, what to do when the helper is missing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from m6t.control.errors import ErrorData, InvalidParams, PermissionDenied, TimedOut
from m6t.control.schema import (
    Access,
    AddressEvent,
    DatapathStatus,
    KnownNetwork,
    MtuEvent,
    NetworksResult,
    PortProbe,
    RemovedEvent,
    StateEvent,
    StatusResult,
    TrafficEvent,
    TunnelStatus,
)
from m6t_desktop.app_state import AppState
from m6t_desktop.client import Link
from m6t_desktop.event_log import EventLogModel
from m6t_desktop.network import NO_NETWORK, parse_default_route
from m6t_desktop.report_card import ReportCard
from m6t_desktop.traffic_history import TrafficHistory
from m6t_desktop.wording import DisplayState, cause_text, rate_text, split_address
from tests.desktop.conftest import HOME, OFFICE
from tests.fake_helper import status_for


def status(state: str = "connected", cause: str = "port_race_won", profile: Any = OFFICE,
           blocked: tuple[int, ...] = (), port: int | None = None, **changes: Any
           ) -> TunnelStatus:
    result = msgspec.convert(status_for(profile, state=state, cause=cause), TunnelStatus)
    result.ports = [PortProbe(port=p, reachable=p not in blocked, rtt_ms=None if p in blocked
                              else 0.6, error="timeout" if p in blocked else None)
                    for p in profile.ports]
    if port is not None:
        result.port = port
    for name, value in changes.items():
        setattr(result, name, value)
    return result


def state_event(s: TunnelStatus, message: str | None = None) -> StateEvent:
    return StateEvent(tunnel=s.name, profile=s.profile, state=s.state, cause=s.cause, status=s,
                      message=message)


class Network:
    """A network identity the test can move between."""

    def __init__(self) -> None:
        self.name = "wlan0 via 192.168.1.1"

    def __call__(self) -> str:
        return self.name


@pytest.fixture
def network() -> Network:
    return Network()


@pytest.fixture
def app_state(qtbot: QtBot, network: Network) -> AppState:
    state = AppState(network_identity=network, clock=lambda: 1_000.0)
    state.load(StatusResult(tunnels=[], access="read-write"))
    return state


# --- what the icon says ---


@pytest.mark.parametrize(("link", "helper_state", "cause", "blocked", "expected"), [
    (Link.ONLINE, None, None, (), DisplayState.DISCONNECTED),
    (Link.ONLINE, "connecting", "network_changed", (), DisplayState.CONNECTING),
    (Link.ONLINE, "connected", "port_race_won", (), DisplayState.CONNECTED),
    (Link.ONLINE, "connected", "port_fallback", (3544,), DisplayState.DEGRADED),
    (Link.ONLINE, "waiting", "no_ipv4_network", (), DisplayState.DEGRADED),
    (Link.ONLINE, "error", "setup_failed", (), DisplayState.ERROR),
    (Link.ONLINE, "disconnected", "helper_stopping", (), DisplayState.DISCONNECTED),
    (Link.NOT_RUNNING, None, None, (), DisplayState.ERROR),
    (Link.DENIED, None, None, (), DisplayState.ERROR),
    (Link.LOST, None, None, (), DisplayState.CONNECTING),
    (Link.CONNECTING, None, None, (), DisplayState.CONNECTING),
])
def test_display_state(app_state: AppState, link: Link, helper_state: str | None,
                       cause: str | None, blocked: tuple[int, ...],
                       expected: DisplayState) -> None:
    if helper_state is not None:
        app_state.apply_event(state_event(status(helper_state, cause or "", blocked=blocked,
                                                 port=4500 if blocked else None)))
    if link is not Link.ONLINE:
        app_state.set_link(link)
    assert app_state.display_state() is expected


# --- causes in plain words ---


@pytest.mark.parametrize(("helper_state", "cause", "blocked", "port", "message", "words"), [
    ("connected", "port_fallback", (3544,), 4500, None,
     "UDP port 3544 is blocked here, using 4500"),
    ("connected", "port_race_won", (), 3544, None, "UDP port 3544 answered first"),
    ("connected", "user_request", (), 3544, None, "new address, as you asked"),
    ("connecting", "network_changed", (), None, None, "network changed, new address"),
    ("connecting", "nat_mapping_changed", (), None, None, "NAT mapping changed, new address"),
    ("waiting", "no_ipv4_network", (), None, None, "no IPv4 network"),
    ("waiting", "gateway_unreachable", (3544, 4500), None, None,
     "the gateway 198.51.100.1 does not answer on UDP ports 3544 and 4500; retrying"),
    ("waiting", "resolve_failed", (), None, None, "does not resolve; retrying"),
    ("error", "setup_failed", (), None, "netlink: File exists",
     "setting up the tunnel failed: netlink: File exists"),
    ("disconnected", "helper_stopping", (), None, None, "the helper stopped"),
])
def test_cause_in_plain_words(helper_state: str, cause: str, blocked: tuple[int, ...],
                              port: int | None, message: str | None, words: str) -> None:
    assert words in cause_text(status(helper_state, cause, blocked=blocked, port=port), message)


def test_port_fallback_names_every_blocked_port() -> None:
    three = OFFICE.__class__(**{**msgspec.to_builtins(OFFICE), "ports": [3544, 3478, 4500]})
    text = cause_text(status("connected", "port_fallback", profile=three,
                             blocked=(3544, 3478), port=4500))
    assert text == "UDP ports 3544 and 3478 are blocked here, using 4500"


@pytest.mark.parametrize(("address", "prefix", "parts"), [
    ("fd6d:6d74:1:1:1:8d2e:41f0:977c", "fd6d:6d74:1:1:1::/80",
     ("fd6d:6d74:1:1:1:", "8d2e:41f0:977c")),
    ("fd00::5:0:0:1", "fd00:0:0:0:5::/80", ("fd00:0:0:0:5:", "0:0:1")),
    ("fd00::1", "fd6d:6d74:1:1:1::/80", ("fd00::1", "")),  # not inside: nothing to tell apart
    ("not an address", "fd6d:6d74:1:1:1::/80", ("not an address", "")),
])
def test_address_split_into_the_80_and_the_random_suffix(
        address: str, prefix: str, parts: tuple[str, str]) -> None:
    assert split_address(address, prefix) == parts


@pytest.mark.parametrize(("rate", "text"), [(0, "0 B/s"), (999, "999 B/s"),
                                            (1024, "1.0 kB/s"), (2_500_000, "2.5 MB/s")])
def test_rates_read_in_round_units(rate: float, text: str) -> None:
    assert rate_text(rate) == text


# --- what to do when the helper is not right ---


@pytest.mark.parametrize(("link", "access", "kind", "advice"), [
    (Link.NOT_RUNNING, None, "not_running", "sudo systemctl start m6t-helper"),
    (Link.DENIED, None, "denied", "sudo usermod -aG m6t $USER"),
    (Link.LOST, None, "lost", "reconnects to it by itself"),
    (Link.ONLINE, "read-only", "read_only", "join the m6t group"),
])
def test_problem_says_what_to_do(app_state: AppState, link: Link, access: str | None,
                                 kind: str, advice: str) -> None:
    if link is Link.ONLINE:
        app_state.load(StatusResult(tunnels=[], access=access))  # type: ignore[arg-type]
    else:
        app_state.set_link(link)
    problem = app_state.problem()
    assert problem is not None
    assert problem.kind == kind
    assert advice in problem.advice


def test_no_problem_when_online_and_allowed(app_state: AppState) -> None:
    assert app_state.problem() is None


# --- what a failed action says ---


def test_permission_denied_names_the_helpers_group_and_makes_the_app_read_only(
        app_state: AppState) -> None:
    app_state.action_failed("Connect office", PermissionDenied(
        "permission denied: join group netadmin", ErrorData(group="netadmin")))
    assert app_state.last_failure == ("Connect office: permission denied. Join the netadmin "
                                      "group: sudo usermod -aG netadmin $USER, then log out "
                                      "and back in")
    assert app_state.read_only
    problem = app_state.problem()
    assert problem is not None and "usermod -aG netadmin" in problem.advice


def test_read_only_names_the_group_the_helper_gives(app_state: AppState) -> None:
    app_state.load(StatusResult(tunnels=[], access=Access.READ_ONLY, group="netdev"))
    problem = app_state.problem()
    assert problem is not None and problem.kind == "read_only"
    assert "join the netdev group: sudo usermod -aG netdev $USER" in problem.advice
    assert "read-only: join group netdev to connect" in app_state.events.entries[-1].text


def test_permission_denied_without_a_group_says_m6t(app_state: AppState) -> None:
    app_state.action_failed("Test now", PermissionDenied("permission denied"))
    assert app_state.last_failure is not None
    assert "Join the m6t group: sudo usermod -aG m6t $USER" in app_state.last_failure


def test_refused_field_is_named(app_state: AppState) -> None:
    app_state.set_busy("Connecting office…")
    app_state.action_failed("Connect office", InvalidParams(
        "mtu: 1200 is outside 1280-65507", ErrorData(field="profile.mtu")))
    assert app_state.last_failure == ("Connect office: mtu: 1200 is outside 1280-65507 "
                                      "(field profile.mtu: fix it in Profiles…)")
    assert app_state.busy is None
    assert not app_state.read_only
    assert app_state.events.entries[-1].severity == "error"


def test_other_failures_say_the_message(app_state: AppState) -> None:
    app_state.action_failed("Disconnect office", TimedOut("the helper did not answer in time"))
    assert app_state.last_failure == "Disconnect office: the helper did not answer in time"


# --- feeding events ---


def test_tooltip_has_profile_address_gateway_port_rtt_mtu(app_state: AppState) -> None:
    app_state.apply_event(state_event(status("connected", "port_fallback", blocked=(3544,),
                                             port=4500)))
    app_state.apply_event(TrafficEvent(tunnel="m6t0", profile="office", rx_bytes=1, tx_bytes=1,
                                       rx_packets=1, tx_packets=1, rx_rate=0, tx_rate=0,
                                       rtt_ms=12.34))
    tooltip = app_state.tooltip()
    assert "Connected (degraded) to office" in tooltip
    assert "UDP port 3544 is blocked here, using 4500" in tooltip
    assert "fd6d:6d74:1:1:1:8d2e:41f0:977c" in tooltip
    assert "gateway 198.51.100.1:4500" in tooltip
    assert "RTT 12.3 ms · MTU 1472" in tooltip


def test_address_change_is_recorded_with_reason_and_announced(
        qtbot: QtBot, app_state: AppState) -> None:
    app_state.apply_event(state_event(status()))
    notices = []
    app_state.notice.connect(notices.append)
    app_state.apply_event(AddressEvent(tunnel="m6t0", profile="office",
                                       address="fd6d:6d74:1:1:1:aaaa:bbbb:cccc",
                                       previous="fd6d:6d74:1:1:1:8d2e:41f0:977c",
                                       reason="network_changed", at=2_000.0))
    model = app_state.addresses
    assert model.rowCount() == 2
    assert model.data(model.index(0, 1)) == "fd6d:6d74:1:1:1:aaaa:bbbb:cccc"  # newest first
    assert model.data(model.index(0, 2)) == "network changed"
    assert model.data(model.index(1, 2)) == "connected"
    assert app_state.status.suffix == "aaaa:bbbb:cccc"  # type: ignore[union-attr]
    assert [n.summary for n in notices] == ["m6t: new address (network changed)"]
    assert "new address fd6d:6d74:1:1:1:aaaa:bbbb:cccc (network changed)" in \
        app_state.events.entries[-1].text


def test_news_within_a_state_is_logged_as_itself_and_not_announced(
        qtbot: QtBot, app_state: AppState) -> None:
    app_state.apply_event(state_event(status()))
    notices = []
    app_state.notice.connect(notices.append)
    news = "data path: udp_gso refused: EIO; the plain path instead"
    refused = status()
    refused.datapath = msgspec.convert({"offloads": ["udp_gro"], "fallbacks": {"udp_gso": "EIO"}},
                                       DatapathStatus)
    app_state.apply_event(state_event(refused, news))
    assert app_state.events.entries[-1].text == f"office: {news}"
    assert notices == []  # the same state and cause: nothing to interrupt the user with
    assert app_state.status is not None and app_state.status.datapath is not None
    assert app_state.status.datapath.fallbacks == {"udp_gso": "EIO"}


def test_reconnect_by_the_helper_is_announced_but_a_user_connect_is_not(
        qtbot: QtBot, app_state: AppState) -> None:
    notices = []
    app_state.notice.connect(notices.append)
    app_state.apply_event(state_event(status("connecting", "user_request")))
    app_state.apply_event(state_event(status("connected", "port_race_won")))
    assert notices == []  # the user just asked: the icon says it
    app_state.apply_event(state_event(status("connecting", "network_changed")))
    app_state.apply_event(state_event(status("connected", "port_race_won")))
    assert [n.summary for n in notices] == ["m6t: connected to office"]
    assert "fd6d:6d74:1:1:1:8d2e:41f0:977c" in notices[0].body


def test_waiting_and_error_are_announced_with_their_cause(app_state: AppState) -> None:
    notices = []
    app_state.notice.connect(notices.append)
    app_state.apply_event(state_event(status("waiting", "no_ipv4_network")))
    app_state.apply_event(state_event(status("error", "setup_failed"), "RTNETLINK: denied"))
    assert [(n.summary, n.state) for n in notices] == [
        ("m6t: office is waiting", DisplayState.DEGRADED),
        ("m6t: office failed", DisplayState.ERROR)]
    assert "RTNETLINK: denied" in notices[1].body


def test_traffic_updates_counters_rtt_and_history(qtbot: QtBot, app_state: AppState) -> None:
    app_state.apply_event(state_event(status()))
    with qtbot.waitSignal(app_state.trafficAdded):
        app_state.apply_event(TrafficEvent(tunnel="m6t0", profile="office", rx_bytes=5120,
                                           tx_bytes=4096, rx_packets=40, tx_packets=38,
                                           rx_rate=1024.0, tx_rate=512.0, rtt_ms=0.9))
    shown = app_state.status
    assert shown is not None
    assert (shown.rx_bytes, shown.tx_packets, shown.rtt_ms) == (5120, 38, 0.9)
    assert list(app_state.history().samples) == [(1_000.0, 1024.0, 512.0)]


def test_traffic_of_another_tunnel_does_not_touch_the_shown_one(
        qtbot: QtBot, app_state: AppState) -> None:
    app_state.apply_event(state_event(status()))
    app_state.apply_event(state_event(status(profile=HOME, name="m6t1")))
    assert app_state.current == "office"
    with qtbot.assertNotEmitted(app_state.trafficAdded):
        app_state.apply_event(TrafficEvent(tunnel="m6t1", profile="home", rx_bytes=1,
                                           tx_bytes=1, rx_packets=1, tx_packets=1,
                                           rx_rate=5.0, tx_rate=5.0))
    assert len(app_state.history("home").samples) == 1
    assert not app_state.history("office").samples
    assert "also: home (connected)" in app_state.tooltip()


def test_mtu_event_changes_the_mtu_and_is_logged(app_state: AppState) -> None:
    app_state.apply_event(state_event(status()))
    app_state.apply_event(MtuEvent(tunnel="m6t0", profile="office", mtu=1372, previous=1472,
                                   reason="fragmentation_needed"))
    assert app_state.status.mtu == 1372  # type: ignore[union-attr]
    assert app_state.events.entries[-1].text == \
        "office: MTU 1472 → 1372 (a router on the path asked for smaller packets)"


def test_removed_tunnel_goes_away_and_the_next_is_shown(app_state: AppState) -> None:
    app_state.apply_event(state_event(status()))
    app_state.apply_event(state_event(status(profile=HOME, name="m6t1")))
    app_state.apply_event(RemovedEvent(tunnel="m6t0", profile="office"))
    assert list(app_state.tunnels) == ["home"]
    assert app_state.current == "home"


def test_helper_restart_is_logged_and_announced(qtbot: QtBot, app_state: AppState) -> None:
    notices = []
    app_state.notice.connect(notices.append)
    app_state.set_link(Link.LOST)
    app_state.load(StatusResult(tunnels=[status()], access="read-write"), restarted=True)
    assert app_state.helper_restarts == 1
    assert [n.summary for n in notices] == ["m6t helper stopped", "m6t helper restarted"]
    assert app_state.display_state() is DisplayState.CONNECTED


# --- bounded histories ---


def test_traffic_history_keeps_only_the_window() -> None:
    history = TrafficHistory(window=60)
    for second in range(200):
        history.add(float(second), rx_rate=float(second), tx_rate=1.0)
    assert history.samples[0][0] == 139.0  # 60 s before the newest
    assert history.peak() == 199.0
    history.add(200.0, -5.0, -1.0)  # never negative on the graph
    assert history.samples[-1] == (200.0, 0.0, 0.0)


def test_event_log_is_bounded_and_drops_the_oldest(qtbot: QtBot) -> None:
    log = EventLogModel(limit=3)
    for number in range(5):
        log.append(f"event {number}", at=float(number))
    assert log.rowCount() == 3
    assert [log.data(log.index(row, 1)) for row in range(3)] == ["event 2", "event 3",
                                                                 "event 4"]


# --- the per-network report card ---


def test_report_card_is_kept_per_network(app_state: AppState, network: Network) -> None:
    app_state.apply_event(state_event(status("connected", "port_fallback", blocked=(3544,),
                                             port=4500)))
    card = app_state.report.card
    assert card is not None and card.network == "wlan0 via 192.168.1.1"
    assert [(p.port, p.reachable) for p in card.ports] == [(3544, False), (4500, True)]
    model = app_state.report
    assert model.data(model.index(0, 1)) == "blocked (timeout)"
    assert model.data(model.index(1, 2)) == "0.6 ms"

    network.name = "eth0 via 10.0.0.1"
    app_state.apply_event(AddressEvent(tunnel="m6t0", profile="office", address="fd6d:6d74:1:"
                                       "1:1:1:2:3", previous=None, reason="network_changed",
                                       at=5.0))
    assert app_state.report.card is None  # not tested on this network yet
    app_state.report_tested(ReportCard(network=network.name, profile="office", at=6.0,
                                       source="test", ports=[PortProbe(port=3544,
                                                                       reachable=True)]))
    network.name = "wlan0 via 192.168.1.1"
    app_state.apply_event(AddressEvent(tunnel="m6t0", profile="office", address="fd6d:6d74:1:"
                                       "1:1:4:5:6", previous=None, reason="network_changed",
                                       at=7.0))
    back = app_state.report.card
    assert back is not None and back.ports[0].reachable is False  # the first network's card


@pytest.mark.parametrize(("table", "name"), [
    ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
     "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\n"
     "eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\n"
     "eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\n", "eth0 via 10.0.0.1"),
    ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
     "ppp0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n", "ppp0"),
    ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
     "eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\n", NO_NETWORK),
    ("", NO_NETWORK),
])
def test_network_is_named_by_its_default_route(table: str, name: str) -> None:
    assert parse_default_route(table) == name


# --- captive portals ---

PORTAL = "http://192.168.1.1/login?session=1"


def portal(url: str | None = PORTAL, network: str | None = "5f0c2d9a61b7e3a4",
           **changes: Any) -> TunnelStatus:
    return status("waiting", "captive_portal", address=None, port=None, portal_url=url,
                  network=network, **changes)


def test_a_captive_portal_reads_as_a_login_to_do(app_state: AppState) -> None:
    assert cause_text(portal()) == "this network wants you to log in first"
    assert cause_text(portal(None)).startswith("this network wants you to log in first: open "
                                               "any web page")
    app_state.apply_event(state_event(portal()))
    assert app_state.display_state() is DisplayState.DEGRADED
    assert app_state.portal() is app_state.status
    assert app_state.headline() == "Waiting for office"


def test_a_portal_is_announced_once_per_network_until_the_tunnel_gets_through(
        app_state: AppState) -> None:
    notices = []
    app_state.notice.connect(notices.append)
    app_state.apply_event(state_event(portal()))
    # The helper looks again every 5 s; the page may carry a new session token each time.
    app_state.apply_event(state_event(portal()))
    app_state.apply_event(state_event(portal("http://192.168.1.1/login?session=2")))
    app_state.apply_event(state_event(status("connecting", "retrying", address=None)))
    app_state.apply_event(state_event(portal()))
    assert [(n.summary, n.state) for n in notices] == [
        ("m6t: this network wants you to log in first", DisplayState.DEGRADED)]
    assert PORTAL in notices[0].body and "connects by itself" in notices[0].body
    assert f"office: this network wants you to log in first ({PORTAL})" in \
        [entry.text for entry in app_state.events.entries]

    app_state.apply_event(state_event(status("connected", "port_race_won")))  # logged in
    assert app_state.portal() is None
    app_state.apply_event(state_event(portal()))  # the next day: news again
    assert [n.summary for n in notices].count("m6t: this network wants you to log in "
                                              "first") == 2
    app_state.apply_event(state_event(portal(network="77aa00bb11cc22dd")))  # another network
    assert [n.summary for n in notices].count("m6t: this network wants you to log in "
                                              "first") == 3


def test_a_portal_already_there_when_the_app_starts_is_announced(
        qtbot: QtBot, network: Network) -> None:
    state = AppState(network_identity=network, clock=lambda: 1_000.0)
    notices = []
    state.notice.connect(notices.append)
    state.load(StatusResult(tunnels=[portal()], access="read-write"))
    assert [n.summary for n in notices] == ["m6t: this network wants you to log in first"]


def test_a_portal_without_its_page_is_an_ordinary_wait(app_state: AppState) -> None:
    notices = []
    app_state.notice.connect(notices.append)
    app_state.apply_event(state_event(portal(None)))
    assert app_state.portal() is None  # nothing to open
    assert [n.summary for n in notices] == ["m6t: office is waiting"]
    assert "open any web page" in notices[0].body


def test_a_remembered_mtu_is_logged_in_words(app_state: AppState) -> None:
    app_state.apply_event(state_event(status()))
    app_state.apply_event(MtuEvent(tunnel="m6t0", profile="office", mtu=1372, previous=None,
                                   reason="remembered"))
    assert app_state.status.mtu == 1372  # type: ignore[union-attr]
    assert app_state.events.entries[-1].text == \
        "office: MTU 1372 (remembered from the last time on this network)"


# --- what the helper remembers of networks ---


def test_known_networks_model_renders_each_record(app_state: AppState) -> None:
    app_state.set_known_networks(NetworksResult(networks=[
        KnownNetwork(id="5f0c2d9a61b7e3a4", label="router 192.168.1.1, on wlan0",
                     profile="office", port=4500, mtu=1372, fragments_pass=True,
                     last_seen=999.0, current=True),
        KnownNetwork(id="5f0c8e11aa2299cc", label="router 10.0.0.1, on eth0", profile="home",
                     port=53, mtu=1472, fragments_pass=None, last_seen=1_000.0 - 7_500)]))
    model = app_state.networks
    rows = [[model.data(model.index(r, c)) for c in range(model.columnCount())]
            for r in range(model.rowCount())]
    assert rows == [
        ["router 192.168.1.1, on wlan0", "office", "UDP 4500", "1372", "pass", "now, in use"],
        ["router 10.0.0.1, on eth0", "home", "UDP 53", "1472", "not tested", "2 h ago"]]
    assert model.headerData(4, Qt.Orientation.Horizontal) == "IPv4 fragments"
    assert model.data(model.index(1, 0), Qt.ItemDataRole.UserRole) == "5f0c8e11aa2299cc"
    assert model.data(model.index(1, 0), Qt.ItemDataRole.FontRole) is None


def test_a_failed_networks_call_keeps_the_list_and_is_logged_once(
        app_state: AppState) -> None:
    app_state.set_known_networks(NetworksResult(networks=[KnownNetwork(
        id="5f0c2d9a61b7e3a4", label="cafe", profile="office", port=4500, mtu=1372,
        fragments_pass=None, last_seen=999.0)]))
    for _ in range(3):
        app_state.networks_failed(TimedOut("the helper did not answer 'networks' in time"))
    assert app_state.networks.rowCount() == 1
    assert app_state.networks.problem == \
        "could not read them: the helper did not answer 'networks' in time"
    assert sum("could not read them" in e.text for e in app_state.events.entries) == 1
    app_state.set_known_networks(NetworksResult(networks=[], saved=False))
    assert app_state.networks.problem is None and not app_state.networks.saved
    assert "cannot write its memory of networks" in app_state.events.entries[-1].text


def test_the_graph_goes_to_nothing_when_the_tunnel_stops_carrying(
        qtbot: QtBot, app_state: AppState) -> None:
    # Traffic events come only while connected: without this the legend would go on showing
    # the last rates behind a portal.
    app_state.apply_event(state_event(status()))
    app_state.apply_event(TrafficEvent(tunnel="m6t0", profile="office", rx_bytes=1, tx_bytes=1,
                                       rx_packets=1, tx_packets=1, rx_rate=219_000.0,
                                       tx_rate=75_000.0))
    with qtbot.waitSignal(app_state.trafficAdded):
        app_state.apply_event(state_event(portal()))
    assert app_state.history().samples[-1] == (1_000.0, 0.0, 0.0)
    app_state.apply_event(state_event(portal()))  # still waiting: nothing more
    assert len(app_state.history().samples) == 2
