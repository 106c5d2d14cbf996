"""Token buckets keyed by source, bounded in memory.

"Creation of such states should also be rate-limited on a per IPv4 address basis (not
considering the source port)" (Against the GW). Each bucket is one float: the time at which it
will be full again. That makes the same decisions as counting tokens (a bucket that is full at
`full_at` holds `burst - (full_at - now) * rate` tokens now) at a fraction of the memory. A
bucket that has refilled is the same as no bucket, so refilled ones are forgotten; that bounds
the table under a spoofed-source flood.
"""

from __future__ import annotations

import math
from collections.abc import Hashable


class TokenBuckets:
    __slots__ = ("_full_at", "_slack", "burst", "interval", "max_sources", "rate", "window")

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_sources >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self.interval = 1.0 / rate  # what one token costs, in time to refill
        self.window = (self.burst - 1.0) / rate  # how far ahead `full_at` may run
        # `full_at` is a running float sum: without some slack, rounding can cost a burst its
        # last token (seen as a burst of 10 at 5/s granting 9). A millionth of a token is far
        # below anything a client could use; the ulp term covers large clock values.
        self._slack = self.interval * 1e-6
        self._full_at: dict[Hashable, float] = {}

    def take(self, source: Hashable, now: float) -> bool:
        """Spend one token of `source`; False when its budget is exhausted."""
        full_at = self._full_at.get(source)
        if full_at is None:
            if len(self._full_at) >= self.max_sources:
                self.forget_refilled(now)
                if len(self._full_at) >= self.max_sources:
                    return False
            self._full_at[source] = now + self.interval
            return True
        if full_at < now:
            full_at = now
        if full_at - now > self.window + self._slack + 64 * math.ulp(full_at):
            return False
        self._full_at[source] = full_at + self.interval
        return True

    def forget_refilled(self, now: float) -> int:
        """Drop buckets that are full again; returns how many. The dict is rebuilt, since a
        dict never gives back the table it grew for a flood."""
        before = len(self._full_at)
        self._full_at = {source: full_at for source, full_at in self._full_at.items()
                         if full_at > now}
        return before - len(self._full_at)

    def __len__(self) -> int:
        return len(self._full_at)
