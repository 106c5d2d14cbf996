"""The event log: what happened, in words, newest last, bounded; a table model the status
window shows and AppState appends to."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QColor

from m6t_desktop.table_models import ROOT, HeaderedTable, Index
from m6t_desktop.wording import date_clock_text

_SEVERITY_COLOURS = {"error": "#B3261E", "warning": "#8A6100"}


@dataclass(frozen=True)
class LogEntry:
    at: float
    text: str
    severity: str = "info"  # info, notice, warning, error


class EventLogModel(HeaderedTable):
    """What happened, newest last, bounded to `limit` entries."""

    HEADERS = ("Time", "Event")

    def __init__(self, limit: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.limit = limit
        self.entries: list[LogEntry] = []

    def append(self, text: str, severity: str = "info", at: float | None = None) -> None:
        if len(self.entries) >= self.limit:
            drop = len(self.entries) - self.limit + 1
            self.beginRemoveRows(ROOT, 0, drop - 1)
            del self.entries[:drop]
            self.endRemoveRows()
        row = len(self.entries)
        self.beginInsertRows(ROOT, row, row)
        self.entries.append(LogEntry(time.time() if at is None else at, text, severity))
        self.endInsertRows()

    def rowCount(self, parent: Index = ROOT) -> int:
        return 0 if parent.isValid() else len(self.entries)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        entry = self.entries[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return date_clock_text(entry.at) if index.column() == 0 else entry.text
        if role == Qt.ItemDataRole.ToolTipRole:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.at))
        if role == Qt.ItemDataRole.UserRole:
            return entry.severity
        if role == Qt.ItemDataRole.ForegroundRole and entry.severity in _SEVERITY_COLOURS:
            return QColor(_SEVERITY_COLOURS[entry.severity])
        return None
