"""The traffic of a tunnel over the last minutes, as the graph draws it: one rate sample a
second from `traffic` events, bounded in time and count. Plain data, no Qt."""

from __future__ import annotations

from collections import deque


class TrafficHistory:
    """Rates of the last minutes (one sample a second from `traffic` events), bounded."""

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=int(window * 2) + 8)

    def add(self, at: float, rx_rate: float, tx_rate: float) -> None:
        self.samples.append((at, max(rx_rate, 0.0), max(tx_rate, 0.0)))
        while self.samples and self.samples[0][0] < at - self.window:
            self.samples.popleft()

    def peak(self) -> float:
        return max((max(rx, tx) for _, rx, tx in self.samples), default=0.0)

    def clear(self) -> None:
        self.samples.clear()
