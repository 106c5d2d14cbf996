"""The per-network report card: what the network the laptop is on lets through for a profile
(each UDP port, the usable MTU, IPv4 fragments), kept per network for when the laptop comes
back to it. Filled by the port races the helper reports and by "Test now"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor

from m6t.control.schema import MtuReport, PortProbe
from m6t_desktop.table_models import ROOT, HeaderedTable, Index
from m6t_desktop.wording import NO_VALUE, port_probe_text, rtt_text


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
