"""m6t-helper command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from m6t import __version__
from m6t.control.schema import DEFAULT_SOCKET
from m6t.linux import portal

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


def effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="m6t-helper",
        description="m6t client daemon: owns the tunnel (TUN device, address, routes, UDP "
                    "socket), keeps it alive across network changes, and serves the control "
                    "API that `m6t` and `m6t-desktop` use. Runs as root in the foreground.")
    parser.add_argument("--socket", default=os.environ.get("M6T_SOCKET", DEFAULT_SOCKET),
                        help=f"control socket (default {DEFAULT_SOCKET}, or $M6T_SOCKET)")
    parser.add_argument("--group", default="m6t",
                        help="members of this group may change things (default m6t)")
    parser.add_argument("--others", choices=("read", "none"), default="read",
                        help="what other users get: read-only status (default) or nothing")
    parser.add_argument("--state-dir", type=Path,
                        default=Path(os.environ.get("M6T_STATE_DIR", "/var/lib/m6t")),
                        help="where to remember each network's port and MTU (default "
                             "/var/lib/m6t, or $M6T_STATE_DIR)")
    parser.add_argument("--portal-probe", default=portal.DEFAULT_PROBE, metavar="URL",
                        help="http:// URL whose answer is known, to tell a captive portal "
                             f"(default {portal.DEFAULT_PROBE})")
    parser.add_argument("--portal-expect", default=portal.DEFAULT_EXPECT, metavar="TEXT",
                        help="the probe's 200 answer (default: %(default)r); empty: the probe "
                             "answers 204 No Content")
    parser.add_argument("--line-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", "-v", action="store_true", help="log every event")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    try:
        probe = portal.PortalProbe(args.portal_probe, args.portal_expect or None)
    except ValueError as exc:
        parser.error(str(exc))

    capabilities = effective_capabilities()
    if not capabilities >> CAP_NET_ADMIN & 1:
        print("m6t-helper: needs CAP_NET_ADMIN to manage the tunnel interface: run it as root "
              "(sudo m6t-helper) or through its systemd unit", file=sys.stderr)
        return 1
    if not os.path.exists("/dev/net/tun"):
        print("m6t-helper: /dev/net/tun is missing: load the tun module (modprobe tun)",
              file=sys.stderr)
        return 1
    logging.basicConfig(format="m6t-helper %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("m6t").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.ERROR)

    from .daemon import Helper
    from .io import LinuxIO

    async def run() -> None:
        helper = Helper(args.socket, args.group, args.others, io=LinuxIO(probe),
                        state_dir=args.state_dir)
        helper.control.line_timeout = args.line_timeout
        await helper.run()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"m6t-helper: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
