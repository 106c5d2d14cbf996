"""Is this IPv4 network holding us behind a captive portal (a hotel's or a café's login page)?

Asked only when no gateway port answers. NetworkManager, when it runs, has usually checked
already: its `Connectivity` property on the system bus says PORTAL (2) or FULL (4). Otherwise,
and to find the login page, an HTTP request to a probe URL whose answer is known: 204 No
Content, or 200 with a known text. A redirect (the portal's login page is its target) or any
other page means a portal; no answer at all means we cannot tell, and is not called a portal.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import urllib.parse
from dataclasses import dataclass

log = logging.getLogger("m6t.helper")

DEFAULT_PROBE = "http://nmcheck.gnome.org/check_network_status.txt"
DEFAULT_EXPECT = "NetworkManager is online"
TIMEOUT = 3.0
NM_CONNECTIVITY_PORTAL = 2
NM_CONNECTIVITY_FULL = 4


@dataclass(frozen=True)
class PortalProbe:
    url: str = DEFAULT_PROBE
    expect: str | None = DEFAULT_EXPECT  # the 200 answer's text; None: a 204 is expected

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"portal probe {self.url!r}: an http:// URL (a portal intercepts "
                             "plain HTTP; HTTPS would only fail)")


def judge(probe: PortalProbe, status: int, location: str | None, body: bytes) -> str | None:
    """Pure: the login page if this answer comes from a portal, None if it is the expected one."""
    if 300 <= status < 400:
        return urllib.parse.urljoin(probe.url, location or probe.url)
    if probe.expect is None and status == 204:
        return None
    if probe.expect is not None and status == 200 \
            and body.decode("utf-8", "replace").strip() == probe.expect:
        return None
    return probe.url  # someone else's page where ours should be: the portal's own


def http_check(probe: PortalProbe, timeout: float = TIMEOUT) -> str | None:
    parts = urllib.parse.urlsplit(probe.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80,
                                            timeout=timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": "m6t-helper (captive portal check)",
                   "Cache-Control": "no-cache", "Connection": "close"}
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        body = response.read(8192)
        return judge(probe, response.status, response.getheader("Location"), body)
    except (OSError, http.client.HTTPException) as exc:
        log.debug("portal check: no answer from %s (%s): cannot tell", probe.url, exc)
        return None
    finally:
        connection.close()


def network_manager_connectivity() -> int | None:
    """NetworkManager's Connectivity property, or None when it is not running (or no bus)."""
    with contextlib.suppress(Exception):
        from jeepney import DBusAddress, Properties
        from jeepney.io.blocking import open_dbus_connection

        manager = DBusAddress("/org/freedesktop/NetworkManager",
                              bus_name="org.freedesktop.NetworkManager",
                              interface="org.freedesktop.NetworkManager")
        with open_dbus_connection(bus="SYSTEM") as bus:
            reply = bus.send_and_get_reply(Properties(manager).get("Connectivity"), timeout=1)
            value = reply.body[0][1]
            return int(value)
    return None


async def check(probe: PortalProbe) -> str | None:
    """The login page when a captive portal holds us, else None."""
    connectivity = await asyncio.to_thread(network_manager_connectivity)
    if connectivity == NM_CONNECTIVITY_FULL:
        return None
    page = await asyncio.to_thread(http_check, probe)
    if page is None and connectivity == NM_CONNECTIVITY_PORTAL:
        return probe.url  # NetworkManager saw one, our probe could not: open the probe URL
    return page
