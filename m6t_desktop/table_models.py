"""The Qt table models the status window shows as they are: a flat-table base whose column
titles are its HEADERS, and the address history of the shown tunnel."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt

from m6t.control.schema import AddressChange
from m6t_desktop.wording import address_reason_text, date_clock_text

Index = QModelIndex | QPersistentModelIndex
ROOT = QModelIndex()


class HeaderedTable(QAbstractTableModel):
    """A flat table whose column titles are its HEADERS."""

    HEADERS: tuple[str, ...] = ()

    def columnCount(self, parent: Index = ROOT) -> int:
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section]
        return None


class AddressHistoryModel(HeaderedTable):
    """Addresses a tunnel had, newest first, with why and when they changed."""

    HEADERS = ("Time", "Address", "Why")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.changes: list[AddressChange] = []

    def set_changes(self, changes: list[AddressChange]) -> None:
        ordered = sorted(changes, key=lambda change: change.at, reverse=True)
        if ordered == self.changes:
            return
        self.beginResetModel()
        self.changes = ordered
        self.endResetModel()

    def rowCount(self, parent: Index = ROOT) -> int:
        return 0 if parent.isValid() else len(self.changes)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        change = self.changes[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return (date_clock_text(change.at), change.address,
                    address_reason_text(change.reason))[index.column()]
        if role == Qt.ItemDataRole.ToolTipRole and index.column() == 1 and change.previous:
            return f"before: {change.previous}"
        return None
