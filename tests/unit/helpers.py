"""What several unit-test modules share: how far Hypothesis may go, and a scripted stand-in for
`secrets.randbits`. Addresses and packet builders stay in each module, next to the tests that
read them."""

from __future__ import annotations

import os
from collections.abc import Iterator

from hypothesis import HealthCheck, settings


def bounded(max_examples: int) -> settings:
    """Hypothesis settings for the unit suite: a fixed number of examples, no deadline (a busy
    machine is slow, not wrong) and no example database (a run leaves nothing behind).

    `M6T_FUZZ_SCALE=N` multiplies the number of examples (`make fuzz` runs with 40): the long
    run to do before a change to a parser or the gateway's core lands."""
    scale = int(os.environ.get("M6T_FUZZ_SCALE", "1"))
    return settings(max_examples=max_examples * scale, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


class ScriptedRandbits:
    """Stands in for secrets.randbits: hands out the given values in order, and records how
    many bits each call asked for."""

    def __init__(self, values: list[int]) -> None:
        self._values: Iterator[int] = iter(values)
        self.requested_bits: list[int] = []

    def __call__(self, bits: int) -> int:
        self.requested_bits.append(bits)
        return next(self._values)
