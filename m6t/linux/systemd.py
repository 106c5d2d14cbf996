"""The systemd service notification protocol (sd_notify(3)): how a daemon in a Type=notify unit
tells its service manager that it is ready, reloading or stopping."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("m6t.systemd")

# The manager reads its socket all the time; a send that blocks longer than this means it is
# wedged, and a daemon must not stall its packets on that.
SEND_TIMEOUT = 2.0


def notify(state: str) -> bool:
    """Send `state` (newline-separated assignments, e.g. "READY=1") to $NOTIFY_SOCKET.

    True once sent. False outside systemd (no $NOTIFY_SOCKET), which is no error, and when the
    send fails, which is logged: the daemon serves all the same, and systemd reports the unit
    (its start times out, or its state lags) better than a daemon that exits over it would.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        target = b"\0" + os.fsencode(address[1:])  # Linux abstract socket namespace
    elif address.startswith("/"):
        target = os.fsencode(address)
    else:  # vsock: (systemd >= 254, virtual machines) is not for us
        log.warning("NOTIFY_SOCKET=%s is not a Unix socket; systemd not told %s", address,
                    state.replace("\n", " "))
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(state.encode(), target)
    except OSError as exc:
        log.warning("cannot tell systemd %s on %s: %s", state.replace("\n", " "), address, exc)
        return False
    return True


def reloading() -> str:
    """RELOADING=1 with the CLOCK_MONOTONIC time of the reload's start: systemd >= 253 wants it
    to tell this reload from an earlier one (Type=notify-reload); 252 ignores it."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
