"""The per-network report card: what the network the laptop is on lets through for a profile
(each UDP port, the usable MTU, IPv4 fragments), kept per network for when the laptop comes
back to it. Filled by the port races the helper reports and by "Test now". Beside it, what the
helper itself remembers of every network (its `networks` method): the port that won there, the
MTU that worked, fragments, when it was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QFont

from m6t.control.schema import KnownNetwork, MtuReport, PortProbe
from m6t_desktop.table_models import ROOT, HeaderedTable, Index
from m6t_desktop.wording import NO_VALUE, ago_text, fragments_text, port_probe_text, rtt_text


@dataclass
class ReportCard:
    """What a network lets through, for one profile: each port, the usable MTU, fragments."""

    network: str
    profile: str
    at: float
    source: str  # "test" (Test now) or "connection" (what the last port race saw)
    ports: list[PortProbe] = field(default_factory=list)
    gateway_address: str | None = None
    mtu: MtuReport | None = None
    mtu_note: str | None = None  # why there is no MTU result
    error: str | None = None  # why the test failed


class ReportCardModel(HeaderedTable):
    """The card for the network the laptop is on now; cards of other networks are kept for
    when it comes back to them. Rows are the profile's ports."""

    HEADERS = ("Port", "Result", "RTT")
    cardChanged = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cards: dict[tuple[str, str], ReportCard] = {}
        self.card: ReportCard | None = None
        self.testing = False

    def show_card(self, network: str, profile: str | None) -> None:
        card = self.cards.get((network, profile)) if profile else None
        if card is self.card:
            return
        self.beginResetModel()
        self.card = card
        self.endResetModel()
        self.cardChanged.emit()

    def put(self, card: ReportCard) -> None:
        key = (card.network, card.profile)
        old = self.cards.get(key)
        if old is not None and card.source == "connection" and old.source == "test":
            # Keep what Test now found (MTU, fragments); refresh the ports only.
            old.ports, old.at = card.ports, card.at
            card = old
        self.cards[key] = card
        self.beginResetModel()
        self.card = card
        self.endResetModel()
        self.cardChanged.emit()

    def set_testing(self, testing: bool) -> None:
        self.testing = testing
        self.cardChanged.emit()

    def rowCount(self, parent: Index = ROOT) -> int:
        return 0 if parent.isValid() or self.card is None else len(self.card.ports)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or self.card is None:
            return None
        probe = self.card.ports[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            if index.column() == 0:
                return f"UDP {probe.port}"
            if index.column() == 1:
                return "reachable" if probe.reachable else port_probe_text(probe)
            return rtt_text(probe.rtt_ms) if probe.reachable else NO_VALUE
        if role == Qt.ItemDataRole.UserRole:
            return probe.reachable
        if role == Qt.ItemDataRole.ForegroundRole and index.column() == 1:
            return QColor("#1E7B34" if probe.reachable else "#B3261E")
        return None


class KnownNetworksModel(HeaderedTable):
    """What the helper remembers, one row per (network, profile), the most recent first, as the
    helper sends it. `problem` says why the list could not be read (then the last good one
    stays); `saved` is False while the helper cannot write its memory file."""

    HEADERS = ("Network", "Profile", "Port", "MTU", "IPv4 fragments", "Last seen")
    networksChanged = Signal()

    def __init__(self, parent: QObject | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(parent)
        self.clock = clock
        self.networks: list[KnownNetwork] = []
        self.loaded = False  # an answer came at least once
        self.saved = True
        self.problem: str | None = None

    def set_networks(self, networks: list[KnownNetwork], saved: bool) -> None:
        self.beginResetModel()
        self.networks = list(networks)
        self.endResetModel()
        self.loaded, self.saved, self.problem = True, saved, None
        self.networksChanged.emit()

    def set_problem(self, problem: str) -> None:
        self.problem = problem
        self.networksChanged.emit()

    def network_at(self, row: int) -> KnownNetwork | None:
        return self.networks[row] if 0 <= row < len(self.networks) else None

    def rowCount(self, parent: Index = ROOT) -> int:
        return 0 if parent.isValid() else len(self.networks)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        network = self.networks[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return network.label
            if column == 1:
                return network.profile
            if column == 2:
                return f"UDP {network.port}"
            if column == 3:
                return str(network.mtu)
            if column == 4:
                return fragments_text(network.fragments_pass)
            return "now, in use" if network.current \
                else ago_text(self.clock() - network.last_seen, round_hours=True)
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == 0:
                return f"{network.label}\nID {network.id}" + (
                    "\nA tunnel runs over this network now" if network.current else "")
            if column == 4 and network.fragments_pass is None:
                return "Test now (while connected) finds out"
        if role == Qt.ItemDataRole.FontRole and network.current:
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.UserRole:
            return network.id
        return None
