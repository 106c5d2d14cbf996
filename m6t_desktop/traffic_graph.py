"""The live traffic graph: bytes/s in and out over the last minutes, drawn with QPainter
(QtCharts is not part of PySide6-Essentials). It renders a TrafficHistory and repaints when
told a sample arrived; hidden, it costs nothing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from m6t_desktop.traffic_history import TrafficHistory
from m6t_desktop.wording import rate_text


def axis_text(value: float) -> str:
    """Axis labels are round numbers: "100 kB/s", not "100.0 kB/s"."""
    return rate_text(value).replace(".0 ", " ")

RX_COLOUR = QColor("#2A6FDB")  # in: blue
TX_COLOUR = QColor("#E07B00")  # out: orange (distinct from blue for colour-blind users too)


def nice_ceiling(value: float) -> float:
    """The next 1, 2 or 5 times 10^n at or above value, so the axis reads in round numbers."""
    if value <= 0:
        return 1000.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value:
            return float(candidate)
    return float(10 ** (exponent + 1))


class TrafficGraph(QWidget):
    def __init__(self, parent: QWidget | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(parent)
        self.history: TrafficHistory | None = None
        self.clock = clock
        self.setMinimumSize(QSize(320, 140))
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAccessibleName("Traffic in and out, last five minutes")

    def set_history(self, history: TrafficHistory | None) -> None:
        self.history = history
        self.update()

    def sample_added(self) -> None:
        if self.isVisible():
            self.update()

    def scale(self) -> float:
        return nice_ceiling(self.history.peak() if self.history else 0.0)

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        text_colour = palette.color(QPalette.ColorRole.WindowText)
        metrics = painter.fontMetrics()
        top_value = self.scale()
        label_width = max(metrics.horizontalAdvance(axis_text(top_value)),
                          metrics.horizontalAdvance("0 B/s")) + 8
        line_height = metrics.height()
        plot = QRectF(label_width, line_height + 6, self.width() - label_width - 8,
                      self.height() - 2 * line_height - 14)
        painter.fillRect(plot, palette.color(QPalette.ColorRole.Base))

        grid = QColor(text_colour)
        grid.setAlpha(50)
        painter.setPen(QPen(grid, 1))
        for fraction in (0.0, 0.5, 1.0):
            y = plot.bottom() - fraction * plot.height()
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        window = self.history.window if self.history else 300.0
        for minute in range(int(window // 60) + 1):
            x = plot.right() - minute * 60 / window * plot.width()
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))

        painter.setPen(text_colour)
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for fraction, value in ((1.0, top_value), (0.5, top_value / 2), (0.0, 0.0)):
            y = plot.bottom() - fraction * plot.height()
            painter.drawText(QRectF(0, y - line_height / 2, label_width - 6, line_height), right,
                             axis_text(value))
        bottom = plot.bottom() + 4
        minutes = int(window // 60)
        for minute in range(minutes + 1):
            x = plot.right() - minute * 60 / window * plot.width()
            text = "now" if minute == 0 else f"-{minute} min"
            width = metrics.horizontalAdvance(text)
            painter.drawText(QRectF(x - width / 2 if minute else x - width, bottom, width + 2,
                                    line_height), Qt.AlignmentFlag.AlignLeft, text)

        self._draw_legend(painter, plot, line_height)
        if not self.history or not self.history.samples:
            painter.setPen(text_colour)
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "No traffic samples yet")
            return
        now = self.clock()
        for index, colour in ((1, RX_COLOUR), (2, TX_COLOUR)):
            path = QPainterPath()
            for count, sample in enumerate(self.history.samples):
                age = now - sample[0]
                x = plot.right() - min(max(age, 0.0), window) / window * plot.width()
                y = plot.bottom() - min(sample[index] / top_value, 1.0) * plot.height()
                if count == 0:
                    path.moveTo(x, y)
                else:
                    path.lineTo(x, y)
            painter.setPen(QPen(colour, 2))
            painter.drawPath(path)

    def _draw_legend(self, painter: QPainter, plot: QRectF, line_height: int) -> None:
        metrics = painter.fontMetrics()
        x = plot.left()
        latest = self.history.samples[-1] if self.history and self.history.samples else None
        for label, colour, index in (("in", RX_COLOUR, 1), ("out", TX_COLOUR, 2)):
            text = f"{label} {rate_text(latest[index])}" if latest else label
            painter.fillRect(QRectF(x, 4 + line_height / 2 - 2, 14, 4), colour)
            painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
            painter.drawText(QRectF(x + 18, 2, metrics.horizontalAdvance(text) + 4, line_height),
                             Qt.AlignmentFlag.AlignLeft, text)
            x += 18 + metrics.horizontalAdvance(text) + 18
