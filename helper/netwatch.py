"""Watch the IPv4 network: netlink events (links, IPv4 addresses, IPv4 routes), debounced,
plus a suspend/resume detector. Both only say "look again"; the tunnels decide what changed by
asking the kernel for the route to their gateway.

"When a MN gets IPv4 connectivity (IPv4 address and route), it selects a random 48 bits value"
(Protocol operations): a new point of attachment shows up here first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pyroute2 import IPRSocket
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK

log = logging.getLogger("m6t.helper")

DEBOUNCE = 0.3  # a DHCP renewal or a Wi-Fi roam is a burst of events: act once, after it
RESUME_CHECK_INTERVAL = 2.0
RESUME_JUMP = 5.0  # seconds the machine must have slept to count as a resume


class NetworkWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None],
                 on_resume: Callable[[float], None]) -> None:
        self.loop = loop
        self.on_change = on_change
        self.on_resume = on_resume
        self.events = 0
        self._sock = IPRSocket(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE)
        self._sock.bind()
        self._pending: asyncio.TimerHandle | None = None
        self._sleep_offset = self._offset()
        loop.add_reader(self._sock.fileno(), self._readable)
        self._resume_task = loop.create_task(self._watch_resume())

    @staticmethod
    def _offset() -> float:
        # CLOCK_BOOTTIME counts suspended time, CLOCK_MONOTONIC does not: the gap between them
        # grows by exactly how long the machine slept.
        return time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()

    def _readable(self) -> None:
        try:
            messages = self._sock.get()
        except Exception as exc:  # a message pyroute2 cannot parse is still a change
            log.debug("netlink read: %s", exc)
            messages = [None]
        if not messages:
            return
        self.events += len(messages)
        if self._pending is not None:
            self._pending.cancel()
        self._pending = self.loop.call_later(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.on_change()

    async def _watch_resume(self) -> None:
        while True:
            await asyncio.sleep(RESUME_CHECK_INTERVAL)
            offset = self._offset()
            slept = offset - self._sleep_offset
            self._sleep_offset = offset
            if slept > RESUME_JUMP:
                log.info("resumed after %.0f s of sleep", slept)
                self.on_resume(slept)

    def close(self) -> None:
        self.loop.remove_reader(self._sock.fileno())
        self._resume_task.cancel()
        if self._pending is not None:
            self._pending.cancel()
        self._sock.close()
