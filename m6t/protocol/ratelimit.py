"""Token buckets keyed by source, bounded in memory.

"Creation of such states should also be rate-limited on a per IPv4 address basis (not
considering the source port)" (Against the GW). A bucket that has refilled is the same as no
bucket, so full buckets are forgotten; that bounds the table under a spoofed-source flood.
"""

from __future__ import annotations

from collections.abc import Hashable


class TokenBuckets:
    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_sources >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        # source -> [tokens, time of last update]; a list so one lookup updates both in place.
        self._buckets: dict[Hashable, list[float]] = {}

    def take(self, source: Hashable, now: float) -> bool:
        """Spend one token of `source`; False when its budget is exhausted."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self.forget_refilled(now)
                if len(self._buckets) >= self.max_sources:
                    return False
            self._buckets[source] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def forget_refilled(self, now: float) -> int:
        """Drop buckets that are full again; returns how many."""
        burst, rate = self.burst, self.rate
        refilled = [source for source, (tokens, stamp) in self._buckets.items()
                    if tokens + (now - stamp) * rate >= burst]
        for source in refilled:
            del self._buckets[source]
        return len(refilled)

    def __len__(self) -> int:
        return len(self._buckets)
