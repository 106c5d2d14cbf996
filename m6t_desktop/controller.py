"""What the user can ask for (connect, switch, disconnect, new address, test the network,
forget what the helper remembers of a network, open a captive portal's login page), turned into
calls to the helper; the answers (the methods' result records, or a ControlError) go into
AppState. Widgets call these methods and never see the connection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from PySide6.QtCore import QObject, QUrl, Signal
from PySide6.QtGui import QDesktopServices

from m6t.control.errors import ControlError, PermissionDenied
from m6t.control.schema import (
    DisconnectResult,
    Event,
    MtuReport,
    NetworksResult,
    ProbeResult,
    Profile,
    StatusResult,
    TrafficEvent,
    TunnelState,
    TunnelStatus,
)
from m6t.profiles import profile_to_dict
from m6t_desktop.app_state import AppState
from m6t_desktop.client import HelperConnection, Reply
from m6t_desktop.profiles_store import ProfilesStore
from m6t_desktop.report_card import ReportCard

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 60.0  # the helper answers once the first port race is decided
PROBE_TIMEOUT = 30.0

UrlOpener = Callable[[str], bool]  # opens a web page; False if nothing could open it


def open_in_browser(url: str) -> bool:
    """The user's web browser, through the desktop (xdg-open and friends)."""
    return QDesktopServices.openUrl(QUrl(url))


def is_web_page(url: str) -> bool:
    """Only http(s) pages are opened: a captive portal's address comes from the network the
    laptop is on, and another scheme (file:, a custom handler's) could make the desktop run
    something else than a browser."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class Controller(QObject):
    quitRequested = Signal()

    def __init__(self, connection: HelperConnection, state: AppState, profiles: ProfilesStore,
                 parent: QObject | None = None, *, open_url: UrlOpener | None = None) -> None:
        super().__init__(parent)
        self.connection = connection
        self.state = state
        self.profiles = profiles
        self.open_url = open_url  # None: open_in_browser (tests give their own)
        self.autostart_pending = False  # connect the default profile once the helper answers
        self.pending_connect: str | None = None  # --connect PROFILE, once the helper answers
        self._networks_asked = False  # a `networks` call in flight
        self._networks_again = False  # and another wanted once it is answered
        connection.linkChanged.connect(state.set_link)
        connection.subscribed.connect(self._on_subscribed)
        connection.eventReceived.connect(state.apply_event)
        connection.eventReceived.connect(self._after_event)
        connection.apiMismatch.connect(state.set_api_mismatch)

    def _after_event(self, event: Event) -> None:
        """A tunnel that connected, took a new address, changed MTU or went away: what the
        helper remembers of networks may have changed with it (the port, the MTU, the network
        it runs over now)."""
        if not isinstance(event, TrafficEvent):
            self.refresh_networks()

    def _on_subscribed(self, result: StatusResult, restarted: bool) -> None:
        self.state.load(result, restarted)
        self.refresh_networks()
        wanted = self.state.wanted
        if restarted and wanted and wanted not in self.state.tunnels and not self.state.read_only:
            # The helper came back without the tunnel the user had asked for: ask again.
            self.state.log(f"Reconnecting {wanted} after the helper restart")
            self.connect_profile(wanted)
        if self.autostart_pending:
            self.autostart_pending = False
            self._autostart_connect()
        if self.pending_connect:
            name, self.pending_connect = self.pending_connect, None
            self._connect_unless_up(name)

    # --- connect, switch, disconnect ---

    def profile_for(self, name: str) -> Profile | None:
        profile = self.profiles.book.get(name)
        if profile is not None:
            return profile
        status = self.state.tunnels.get(name)
        if status is None:
            return None
        # A tunnel started elsewhere (the CLI with another profiles file): rebuild its profile.
        ports = [probe.port for probe in status.ports] or ([status.port] if status.port else [])
        return Profile(name=status.profile, gateway=status.gateway, ports=ports,
                       prefix=status.prefix, home_agent=status.home_agent, mtu=status.mtu)

    def connect_profile(self, name: str) -> None:
        """Connect `name`; if another tunnel is up, switch (disconnect it first)."""
        profile = self.profiles.book.get(name)
        if profile is None:  # refused here: the helper was never asked
            self.state.report_failure(f"Connect {name}", "no such profile in the profiles file")
            return
        others = [other for other, status in self.state.tunnels.items()
                  if other != name and status.state != TunnelState.DISCONNECTED]
        self.state.wanted = name
        self.state.current = name if name in self.state.tunnels else self.state.current
        if others:
            self.state.set_busy(f"Switching to {name}…")
            reply = self.connection.call("disconnect", {"profile": others[0]})

            def then_connect(result: DisconnectResult) -> None:
                self._disconnected(result)
                self.connect_profile(name)

            reply.succeeded.connect(then_connect)
            reply.failed.connect(lambda error: self.state.action_failed(
                f"Disconnect {others[0]}", error))
            return
        self.state.set_busy(f"Connecting {name}…")
        reply = self.connection.call("connect", {"profile": profile_to_dict(profile)},
                                     timeout=CONNECT_TIMEOUT)
        self._expect_status(reply, f"Connect {name}")

    def disconnect_tunnel(self, name: str | None = None) -> None:
        """Disconnect `name`, or the tunnel shown when None."""
        name = name or self.state.current
        if name is None:
            return
        if self.state.wanted == name:
            self.state.wanted = None
        self.state.set_busy(f"Disconnecting {name}…")
        reply = self.connection.call("disconnect", {"profile": name})

        def done(result: DisconnectResult) -> None:
            self._disconnected(result)
            self.state.set_busy(None)

        reply.succeeded.connect(done)
        reply.failed.connect(lambda error: self.state.action_failed(f"Disconnect {name}", error))

    def _disconnected(self, result: DisconnectResult) -> None:
        """The helper's answer is authoritative: the named tunnels are gone (its events may
        come later, or never to a client that is not subscribed yet)."""
        self.state.forget(result.disconnected)

    def regenerate(self) -> None:
        """New address now: a fresh random 48-bit suffix on the same /80."""
        name = self.state.current
        if name is None:
            return
        self.state.set_busy(f"New address for {name}…")
        reply = self.connection.call("regenerate", {"profile": name}, timeout=CONNECT_TIMEOUT)
        self._expect_status(reply, f"New address for {name}")

    def _expect_status(self, reply: Reply, what: str) -> None:
        """A call answered by a TunnelStatus (an answer that is not one fails as BadReply)."""
        def done(status: TunnelStatus) -> None:
            self.state.busy = None
            self.state.apply_status(status)
            self.refresh_networks()

        reply.succeeded.connect(done)
        reply.failed.connect(lambda error: self.state.action_failed(what, error))

    def quit(self, disconnect: bool = False) -> None:
        """Quit; the tunnels keep running in the helper unless `disconnect`."""
        if not disconnect or not self.state.tunnels or not self.connection.online:
            self.quitRequested.emit()
            return
        self.state.set_busy("Disconnecting…")
        reply = self.connection.call("disconnect", {}, timeout=10.0)
        reply.succeeded.connect(lambda _result: self.quitRequested.emit())
        reply.failed.connect(lambda _error: self.quitRequested.emit())

    # --- auto-connect at login ---

    def autostart_profile(self) -> Profile | None:
        """The default profile if it asks to connect at login; else the first that does."""
        book = self.profiles.book
        default = book.default_profile()
        if default is not None and default.auto_connect:
            return default
        return next((p for p in book.profiles if p.auto_connect), None)

    def connect_when_online(self, name: str) -> None:
        """Connect `name` as soon as the helper answers (unless it is already up)."""
        if self.connection.online:
            self._connect_unless_up(name)
        else:
            self.pending_connect = name

    def _connect_unless_up(self, name: str) -> None:
        if name in self.state.tunnels \
                and self.state.tunnels[name].state != TunnelState.DISCONNECTED:
            self.state.wanted = name
            self.state.current = name
            self.state.log(f"{name} is already up in the helper")
        else:
            self.connect_profile(name)

    def request_autostart(self) -> None:
        if self.connection.online:
            self._autostart_connect()
        else:
            self.autostart_pending = True

    def _autostart_connect(self) -> None:
        profile = self.autostart_profile()
        if profile is None:
            self.state.log("Started at login; no profile is set to connect at login")
            return
        if profile.name in self.state.tunnels:
            self.state.wanted = profile.name
            self.state.log(f"Started at login; {profile.name} is already up in the helper")
            return
        self.state.log(f"Started at login: connecting {profile.name}")
        self.connect_profile(profile.name)

    # --- the network report card ---

    def test_now(self) -> None:
        """Probe every port of the shown profile, and the MTU through the tunnel if it is up."""
        name = self.state.current or self.profiles.book.default or \
            next(iter(self.profiles.book.names()), None)
        profile = self.profile_for(name) if name else None
        if profile is None:
            self.state.log("Nothing to test: add a profile first", "warning")
            return
        network = self.state.network_identity()
        card = ReportCard(network=network, profile=profile.name, at=self.state.clock(),
                          source="test")
        self.state.report.set_testing(True)
        outstanding: list[str] = ["probe"]
        connected = self.state.tunnels.get(profile.name)
        if connected is not None and connected.state == TunnelState.CONNECTED:
            outstanding.append("probe_mtu")
        else:
            card.mtu_note = "connect to measure the MTU and fragments"

        def finish(part: str) -> None:
            outstanding.remove(part)
            if not outstanding:
                self.state.report.set_testing(False)
                self.state.report_tested(card)
                self.refresh_networks()  # probe_mtu taught the helper about fragments

        def probed(result: ProbeResult) -> None:
            card.ports = result.ports
            card.gateway_address = result.gateway_address
            finish("probe")

        def probe_failed(error: ControlError) -> None:
            card.error = f"test failed: {error.message}"
            if isinstance(error, PermissionDenied):
                self.state.action_failed("Test now", error)
            finish("probe")

        def measured(report: MtuReport) -> None:
            card.mtu = report
            finish("probe_mtu")

        def mtu_failed(error: ControlError) -> None:
            card.mtu_note = f"MTU test failed: {error.message}"
            finish("probe_mtu")

        reply = self.connection.call("probe", {"profile": profile_to_dict(profile)},
                                     timeout=PROBE_TIMEOUT)
        reply.succeeded.connect(probed)
        reply.failed.connect(probe_failed)
        if "probe_mtu" in outstanding:
            mtu = self.connection.call("probe_mtu", {"profile": profile.name},
                                       timeout=PROBE_TIMEOUT)
            mtu.succeeded.connect(measured)
            mtu.failed.connect(mtu_failed)

    # --- what the helper remembers of networks ---

    def refresh_networks(self) -> None:
        """Ask the helper what it remembers (when the card is shown, after a tunnel event).
        One call at a time: asked again meanwhile, it asks once more after the answer."""
        if not self.connection.online:
            return
        if self._networks_asked:
            self._networks_again = True
            return
        self._networks_asked = True
        reply = self.connection.call("networks")

        def answered() -> None:
            self._networks_asked = False
            if self._networks_again:
                self._networks_again = False
                self.refresh_networks()

        def got(result: NetworksResult) -> None:
            self.state.set_known_networks(result)
            answered()

        def failed(error: ControlError) -> None:
            self.state.networks_failed(error)
            answered()

        reply.succeeded.connect(got)
        reply.failed.connect(failed)

    def forget_network(self, network: str | None = None) -> None:
        """Forget one network (its id; for every profile), or every network when None."""
        known = next((n for n in self.state.networks.networks if n.id == network), None)
        what = "Forget every network" if network is None else \
            f"Forget {known.label if known else network}"
        reply = self.connection.call("forget_network",
                                     {"network": network} if network is not None else {})

        def forgotten(result: NetworksResult) -> None:
            self.state.set_known_networks(result)
            self.state.log("The helper forgot every network" if network is None else
                           f"The helper forgot {known.label if known else network}")

        reply.succeeded.connect(forgotten)
        reply.failed.connect(lambda error: self.state.action_failed(what, error))

    # --- captive portals ---

    def open_login_page(self) -> None:
        """Open the captive portal's login page the helper found, in the user's browser."""
        status = self.state.portal()
        if status is None or status.portal_url is None:
            return
        url = status.portal_url
        if not is_web_page(url):
            self.state.report_failure("Open the login page", f"{url!r} is not a web page "
                                      "(http or https): not opened; open a web page by hand")
            return
        if (self.open_url or open_in_browser)(url):
            self.state.log(f"Opened the login page {url} in the web browser")
        else:
            self.state.report_failure("Open the login page", f"no web browser opened {url}: "
                                      "open it by hand")
