"""The app's state, fed by the helper connection (through the Controller) and read by every
widget.

`AppState` is the one source of truth: the link to the helper, the tunnels the helper reports,
which one is shown, what went wrong and what to do about it. It owns the models the status
window renders (the event log, the address history, the traffic history, the per-network
report card, the networks the helper remembers). No widget reads the socket; they render these.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

from m6t.control.errors import ControlError, PermissionDenied
from m6t.control.schema import (
    Access,
    AddressChange,
    AddressEvent,
    AddressReason,
    Cause,
    Event,
    MtuEvent,
    NetworksResult,
    RemovedEvent,
    StateEvent,
    StatusResult,
    TrafficEvent,
    TunnelState,
    TunnelStatus,
)
from m6t_desktop.client import Link
from m6t_desktop.event_log import EventLogModel
from m6t_desktop.network import current_network
from m6t_desktop.report_card import KnownNetworksModel, ReportCard, ReportCardModel
from m6t_desktop.table_models import AddressHistoryModel
from m6t_desktop.traffic_history import TrafficHistory
from m6t_desktop.wording import (
    DEFAULT_GROUP,
    HELPER_START_HINT,
    HELPER_STATE_LABELS,
    DisplayState,
    address_reason_text,
    blocked_ports,
    cause_text,
    join_group_hint,
    mtu_reason_text,
    rtt_text,
)

# A new address for one of these reasons is the helper acting by itself: worth a notification.
_ANNOUNCED_ADDRESS_REASONS = (AddressReason.NETWORK_CHANGED, AddressReason.NAT_MAPPING_CHANGED,
                              AddressReason.RESUME)


@dataclass(frozen=True)
class Problem:
    """Something the user should know about the helper, and what to do."""

    kind: str  # not_running, denied, lost, read_only, api
    title: str
    advice: str


@dataclass(frozen=True)
class Notice:
    """Worth a desktop notification. `action`: what clicking it does, and its label (the
    notification server's button or the whole bubble), if anything."""

    summary: str
    body: str
    state: DisplayState
    action: NoticeAction | None = None


class NoticeAction(enum.Enum):
    """What clicking a notification does; the value is its label."""

    OPEN_LOGIN_PAGE = "Open the login page"


# The tunnel states that read the same however the tunnel got there.
_SHOWN_AS = {TunnelState.CONNECTING: DisplayState.CONNECTING,
             TunnelState.WAITING: DisplayState.DEGRADED, TunnelState.ERROR: DisplayState.ERROR}


class AppState(QObject):
    changed = Signal()  # what the tray, its menu and the status header show
    trafficAdded = Signal()  # a traffic sample (rates, counters, RTT) for the shown tunnel
    notice = Signal(object)  # a Notice

    def __init__(self, parent: QObject | None = None, *,
                 network_identity: Callable[[], str] = current_network,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(parent)
        self.link = Link.CONNECTING
        self.access: Access | None = None
        self.group = DEFAULT_GROUP  # the group that may change things, as the helper names it
        self.tunnels: dict[str, TunnelStatus] = {}  # by profile name
        self.messages: dict[str, str] = {}  # last error message the helper gave, by profile
        self.current: str | None = None  # the tunnel shown (status window, tooltip)
        self.wanted: str | None = None  # the profile the user asked to have connected
        self.busy: str | None = None  # an action in flight ("Connecting office…")
        self.last_failure: str | None = None  # the last action that failed, in words
        self.api_mismatch: int | None = None
        self.helper_restarts = 0
        self.events = EventLogModel(parent=self)
        self.addresses = AddressHistoryModel(self)
        self.report = ReportCardModel(self)
        self.networks = KnownNetworksModel(self, clock=clock)
        self.traffic: dict[str, TrafficHistory] = {}
        self.network_identity = network_identity
        self.clock = clock
        self._connecting_cause: dict[str, Cause] = {}
        self._portals_announced: set[tuple[str, str]] = set()  # (profile, network id)

    # --- derived ---

    @property
    def status(self) -> TunnelStatus | None:
        return self.tunnels.get(self.current) if self.current else None

    @property
    def read_only(self) -> bool:
        return self.link is Link.ONLINE and self.access == Access.READ_ONLY

    def history(self, profile: str | None = None) -> TrafficHistory:
        name = profile or self.current or ""
        if name not in self.traffic:
            self.traffic[name] = TrafficHistory()
        return self.traffic[name]

    def portal(self) -> TunnelStatus | None:
        """A tunnel waiting behind a captive portal whose login page the helper found: the one
        shown first (a portal stops every tunnel on that network alike)."""
        for status in (self.status, *self.tunnels.values()):
            if status is not None and _behind_portal(status):
                return status
        return None

    def display_state(self) -> DisplayState:
        if self.link in (Link.NOT_RUNNING, Link.DENIED):
            return DisplayState.ERROR
        if self.link in (Link.CONNECTING, Link.LOST):
            return DisplayState.CONNECTING
        status = self.status
        if status is None or status.state == TunnelState.DISCONNECTED:
            if self.busy and self.busy.startswith("Connecting"):
                return DisplayState.CONNECTING
            return DisplayState.DISCONNECTED
        if status.state == TunnelState.CONNECTED:
            return DisplayState.DEGRADED if blocked_ports(status) else DisplayState.CONNECTED
        return _SHOWN_AS[status.state]

    def problem(self) -> Problem | None:
        if self.link is Link.NOT_RUNNING:
            return Problem("not_running", "The m6t helper is not running",
                           f"Start it: {HELPER_START_HINT}. The app connects to it by itself "
                           "as soon as it is up.")
        if self.link is Link.DENIED:
            return Problem("denied", "The helper does not let you in",
                           f"Join the {self.group} group: {join_group_hint(self.group)}.")
        if self.link is Link.LOST:
            return Problem("lost", "The helper stopped or is restarting",
                           "The app reconnects to it by itself; tunnels come back with it.")
        if self.read_only:
            return Problem("read_only", "You can watch the tunnel but not change it",
                           f"To connect and disconnect, join the {self.group} group: "
                           f"{join_group_hint(self.group)}.")
        if self.api_mismatch is not None:
            return Problem("api", f"The helper speaks control API {self.api_mismatch}",
                           "This app speaks API 1: update m6t desktop and the helper together.")
        return None

    def headline(self) -> str:
        """One line: state and profile ("Connected to office")."""
        state = self.display_state()
        status = self.status
        if self.link is not Link.ONLINE:
            problem = self.problem()
            return problem.title if problem else "Looking for the m6t helper…"
        if status is None or status.state == TunnelState.DISCONNECTED:
            return self.busy or "Disconnected"
        label = HELPER_STATE_LABELS[status.state]
        if state is DisplayState.DEGRADED and status.state == TunnelState.CONNECTED:
            label = "Connected (degraded)"
        preposition = "to" if status.state in (TunnelState.CONNECTED, TunnelState.CONNECTING) \
            else "for"
        return f"{label} {preposition} {status.profile}"

    def cause(self) -> str:
        status = self.status
        if status is None:
            return ""
        return cause_text(status, self.messages.get(status.profile))

    def tooltip(self) -> str:
        lines = [f"m6t: {self.headline()}"]
        status = self.status
        if status is not None and status.state != TunnelState.DISCONNECTED:
            lines.append(self.cause())
            if status.address:
                lines.append(status.address)
            if status.port is not None:
                lines.append(f"gateway {status.gateway}:{status.port}")
            lines.append(f"RTT {rtt_text(status.rtt_ms)} · MTU {status.mtu}")
        others = [name for name in self.tunnels if name != self.current]
        if others:
            lines.append("also: " + ", ".join(
                f"{name} ({self.tunnels[name].state})" for name in others))
        return "\n".join(line for line in lines if line)

    # --- feeding: the helper link ---

    def set_link(self, link: Link) -> None:
        before = self.link
        self.link = link
        if link is Link.LOST:
            self.events.append("The helper went away (stopped or restarting); reconnecting",
                               "warning")
            self.notice.emit(Notice("m6t helper stopped",
                                    "Reconnecting to it by itself.", DisplayState.CONNECTING))
        elif link is Link.NOT_RUNNING and before is not Link.NOT_RUNNING:
            self.events.append(f"The helper is not running. Start it: {HELPER_START_HINT}",
                               "error")
            if before is Link.LOST:
                self.notice.emit(Notice("m6t helper not running",
                                        f"Start it: {HELPER_START_HINT}", DisplayState.ERROR))
        elif link is Link.DENIED and before is not Link.DENIED:
            self.events.append(f"Permission denied on the helper's socket. Join the "
                               f"{self.group} group: {join_group_hint(self.group)}", "error")
        if link is not Link.ONLINE:
            self.busy = None
        self.changed.emit()

    def set_api_mismatch(self, api: int) -> None:
        self.api_mismatch = api
        self.events.append(f"The helper speaks control API {api}; this app speaks 1", "warning")
        self.changed.emit()

    def load(self, result: StatusResult, restarted: bool = False) -> None:
        """The full state from `subscribe` (on every connection to the helper)."""
        self.link = Link.ONLINE
        self.access = result.access
        self.group = result.group
        self.tunnels = {status.profile: status for status in result.tunnels}
        self.busy = None
        if self.current not in self.tunnels:
            self.current = next(iter(self.tunnels), None) if self.wanted not in self.tunnels \
                else self.wanted
        if restarted:
            self.helper_restarts += 1
            self.events.append("The helper restarted; the app reconnected to it", "notice")
            self.notice.emit(Notice("m6t helper restarted",
                                    "Reconnected to it; tunnels come back by themselves.",
                                    self.display_state()))
        else:
            self.events.append("Connected to the helper" + (
                f" (read-only: join group {self.group} to connect)"
                if result.access == Access.READ_ONLY else ""))
        for status in result.tunnels:
            self._update_report_from_status(status)
            self._announce_portal(status)
        self._refresh_current()
        self.changed.emit()

    # --- feeding: events ---

    def apply_event(self, event: Event) -> None:
        if isinstance(event, TrafficEvent):
            self._apply_traffic(event)
        elif isinstance(event, StateEvent):
            self._apply_state(event)
        elif isinstance(event, AddressEvent):
            self._apply_address(event)
        elif isinstance(event, MtuEvent):
            self._apply_mtu(event)
        elif isinstance(event, RemovedEvent):
            self._apply_removed(event)

    def apply_status(self, status: TunnelStatus) -> None:
        """A TunnelStatus a call returned (connect, regenerate, set_mtu)."""
        previous = self.tunnels.get(status.profile)
        self.tunnels[status.profile] = status
        if self.current is None or self.current not in self.tunnels \
                or status.profile == self.wanted:
            self.current = status.profile
        if previous is None or previous.state != status.state:
            self.events.append(f"{status.profile}: {HELPER_STATE_LABELS[status.state]}, "
                               f"{cause_text(status)}")
        self._update_report_from_status(status)
        self._announce_portal(status)
        self._refresh_current()
        self.changed.emit()

    def _apply_traffic(self, event: TrafficEvent) -> None:
        status = self.tunnels.get(event.profile)
        if status is not None:
            status.rx_bytes, status.tx_bytes = event.rx_bytes, event.tx_bytes
            status.rx_packets, status.tx_packets = event.rx_packets, event.tx_packets
            if event.rtt_ms is not None:
                status.rtt_ms = event.rtt_ms
        self.history(event.profile).add(self.clock(), event.rx_rate, event.tx_rate)
        if event.profile == self.current:
            self.trafficAdded.emit()

    def _apply_state(self, event: StateEvent) -> None:
        previous = self.tunnels.get(event.profile)
        status = event.status
        self.tunnels[event.profile] = status
        if event.message:
            self.messages[event.profile] = event.message
        if self.current is None or self.current not in self.tunnels:
            self.current = event.profile
        if previous is not None and event.message \
                and (previous.state, previous.cause) == (status.state, status.cause):
            text = f"{event.profile}: {event.message}"  # news within a state (the data path)
        else:
            text = f"{event.profile}: {HELPER_STATE_LABELS[status.state]}, " \
                   f"{cause_text(status, event.message)}"
        severity = {TunnelState.ERROR: "error",
                    TunnelState.WAITING: "warning"}.get(status.state, "info")
        self.events.append(text, severity)
        if previous is not None and previous.state == TunnelState.CONNECTED \
                and status.state != TunnelState.CONNECTED:
            # Traffic events stop with the tunnel: the graph and its legend go to nothing
            # instead of showing the last rates as if they went on.
            self.history(event.profile).add(self.clock(), 0.0, 0.0)
            if event.profile == self.current:
                self.trafficAdded.emit()
        self._announce_portal(status)
        self._notice_for_state(previous, status, event.message)
        if status.state == TunnelState.CONNECTING:
            self._connecting_cause[event.profile] = status.cause
        if status.state in (TunnelState.CONNECTED, TunnelState.WAITING):
            self._update_report_from_status(status)
        if status.state == TunnelState.DISCONNECTED and status.profile == self.wanted \
                and status.cause == Cause.USER_REQUEST:
            self.wanted = None
        self._refresh_current()
        self.changed.emit()

    def _notice_for_state(self, previous: TunnelStatus | None, status: TunnelStatus,
                          message: str | None) -> None:
        """The helper acts by itself (network change, NAT rebinding, retries): say so. What the
        user just asked for in this app shows in the icon; no notification for it."""
        if _behind_portal(status):
            return  # _announce_portal says it, once
        if previous is not None and previous.state == status.state \
                and previous.cause == status.cause:
            return
        display = DisplayState.CONNECTED
        if status.state == TunnelState.CONNECTED:
            asked = self._connecting_cause.get(status.profile, Cause.USER_REQUEST)
            if asked == Cause.USER_REQUEST and status.cause != Cause.PORT_FALLBACK:
                return
            if blocked_ports(status):
                display = DisplayState.DEGRADED
            summary = f"m6t: connected to {status.profile}"
        elif status.state == TunnelState.WAITING:
            summary, display = f"m6t: {status.profile} is waiting", DisplayState.DEGRADED
        elif status.state == TunnelState.ERROR:
            summary, display = f"m6t: {status.profile} failed", DisplayState.ERROR
        elif status.state == TunnelState.DISCONNECTED and status.cause != Cause.USER_REQUEST:
            summary, display = f"m6t: {status.profile} disconnected", DisplayState.DISCONNECTED
        else:
            return
        body = cause_text(status, message)
        if status.state == TunnelState.CONNECTED and status.address:
            body += f"\n{status.address}"
        self.notice.emit(Notice(summary, body, display))

    def _announce_portal(self, status: TunnelStatus) -> None:
        """Once per tunnel and network: the helper looks again every few seconds, and neither each
        look nor a login page whose address changes each time (a session token in it) may
        bring the bubble back. Once the tunnel connects, a later portal is news again."""
        if status.state == TunnelState.CONNECTED:
            self._portals_announced = {seen for seen in self._portals_announced
                                       if seen[0] != status.profile}
            return
        if not _behind_portal(status):
            return
        key = (status.profile, status.network or "")
        if key in self._portals_announced:
            return
        self._portals_announced.add(key)
        self.events.append(f"{status.profile}: this network wants you to log in first "
                           f"({status.portal_url})", "warning")
        self.notice.emit(Notice("m6t: this network wants you to log in first",
                                f"Open the login page ({status.portal_url}) from here or from "
                                f"the m6t icon. The tunnel to {status.profile} connects "
                                "by itself once you are through.", DisplayState.DEGRADED,
                                NoticeAction.OPEN_LOGIN_PAGE))

    def _apply_address(self, event: AddressEvent) -> None:
        status = self.tunnels.get(event.profile)
        if status is not None:
            status.address = event.address
            if status.prefix and event.address:
                status.suffix = ":".join(_groups(event.address)[5:])
            if not any(c.address == event.address and c.at == event.at for c in status.history):
                status.history.append(AddressChange(address=event.address,
                                                    previous=event.previous,
                                                    reason=event.reason, at=event.at))
        self.events.append(f"{event.profile}: new address {event.address} "
                           f"({address_reason_text(event.reason)})", "notice")
        if event.reason in _ANNOUNCED_ADDRESS_REASONS:
            self.notice.emit(Notice(f"m6t: new address ({address_reason_text(event.reason)})",
                                    f"{event.profile}: {event.address}",
                                    self.display_state()))
        self._refresh_current()
        self.changed.emit()

    def _apply_mtu(self, event: MtuEvent) -> None:
        status = self.tunnels.get(event.profile)
        if status is not None:
            status.mtu = event.mtu
        before = f"{event.previous} → " if event.previous else ""
        self.events.append(f"{event.profile}: MTU {before}{event.mtu} "
                           f"({mtu_reason_text(event.reason)})")
        self.changed.emit()

    def _apply_removed(self, event: RemovedEvent) -> None:
        if event.profile in self.tunnels:
            self.forget([event.profile])

    def forget(self, profiles: list[str]) -> None:
        """Tunnels that are gone (a `removed` event, or the answer to `disconnect`)."""
        gone = [name for name in profiles if name in self.tunnels]
        for name in gone:
            del self.tunnels[name]
            self.traffic.pop(name, None)
            self.events.append(f"{name}: disconnected, tunnel removed")
        if self.current not in self.tunnels:
            self.current = self.wanted if self.wanted in self.tunnels \
                else next(iter(self.tunnels), None)
        if gone:
            self._refresh_current()
            self.changed.emit()

    # --- feeding: the user's actions ---

    def set_busy(self, text: str | None) -> None:
        self.busy = text
        self.changed.emit()

    def action_failed(self, what: str, error: ControlError) -> None:
        """A call the helper refused or never answered: say why, and what to do about it."""
        if isinstance(error, PermissionDenied):
            self.access = Access.READ_ONLY
            self.group = error.data.group or self.group
            self.report_failure(what, f"permission denied. Join the {self.group} group: "
                                      f"{join_group_hint(self.group)}")
        elif error.field:
            self.report_failure(what, f"{error.message} (field {error.field}: fix it in "
                                      "Profiles…)")
        else:
            self.report_failure(what, error.message)

    def report_failure(self, what: str, reason: str) -> None:
        """An action that failed, in words; also one that failed here, before any call."""
        self.busy = None
        self.last_failure = f"{what}: {reason}"
        self.events.append(self.last_failure, "error")
        self.changed.emit()

    def log(self, text: str, severity: str = "info") -> None:
        self.events.append(text, severity)

    def select(self, profile: str) -> None:
        if profile in self.tunnels and profile != self.current:
            self.current = profile
            self._refresh_current()
            self.changed.emit()

    # --- what the helper remembers of networks ---

    def set_known_networks(self, result: NetworksResult) -> None:
        """The helper's answer to `networks` (or to `forget_network`)."""
        if not result.saved and self.networks.saved:
            self.events.append("The helper cannot write its memory of networks: it forgets "
                               "them when it stops (see its log)", "warning")
        self.networks.set_networks(result.networks, result.saved)

    def networks_failed(self, error: ControlError) -> None:
        """`networks` went wrong (a malformed answer, a helper gone away): the last list stays;
        the card says why, the log says it once."""
        problem = f"could not read them: {error.message}"
        if problem != self.networks.problem:
            self.events.append(f"The networks the helper remembers: {problem}", "warning")
        self.networks.set_problem(problem)

    # --- report card ---

    def _update_report_from_status(self, status: TunnelStatus) -> None:
        if not status.ports:
            return
        self.report.put(ReportCard(network=self.network_identity(), profile=status.profile,
                                   at=self.clock(), source="connection",
                                   ports=list(status.ports),
                                   gateway_address=status.gateway_address))

    def report_tested(self, card: ReportCard) -> None:
        self.report.put(card)
        reachable = [p.port for p in card.ports if p.reachable]
        blocked = [p.port for p in card.ports if not p.reachable]
        parts = []
        if reachable:
            parts.append("reachable " + ", ".join(map(str, reachable)))
        if blocked:
            parts.append("blocked " + ", ".join(map(str, blocked)))
        if card.mtu is not None:
            parts.append(f"MTU {card.mtu.mtu}, IPv4 fragments "
                         f"{'pass' if card.mtu.fragments_pass else 'blocked'}")
        if card.error:
            parts.append(card.error)
        self.events.append(f"Network test on {card.network}: " + "; ".join(parts))

    def _refresh_current(self) -> None:
        status = self.status
        self.addresses.set_changes(list(status.history) if status else [])
        self.report.show_card(self.network_identity(), self.current)


def _behind_portal(status: TunnelStatus) -> bool:
    return status.state == TunnelState.WAITING and status.cause == Cause.CAPTIVE_PORTAL \
        and bool(status.portal_url)


def _groups(address: str) -> list[str]:
    try:
        return [f"{int(g, 16):x}" for g in ipaddress.IPv6Address(address).exploded.split(":")]
    except ValueError:
        return []
