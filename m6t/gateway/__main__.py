"""m6t-gateway command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from m6t import __version__
from m6t.gateway.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="m6t-gateway",
        description="m6t tunnel gateway (draft-ebalard-mext-m6t-02): forwards IPv6-in-UDP/IPv4 "
                    "from mobile nodes to their home agents. Runs as root in the foreground; "
                    "SIGHUP reloads the configuration, SIGTERM tears down cleanly. Under "
                    "systemd ($NOTIFY_SOCKET) it reports ready, reloading and stopping.")
    parser.add_argument("--config", "-c", type=Path, required=True, help="TOML configuration")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration and exit (0 if valid)")
    parser.add_argument("--runtime-dir", type=Path, default=Path("/run/m6t-gateway"),
                        help="where the IPv6 forwarding sysctl's value from before start is "
                             "noted, so that a gateway restarted after a crash still restores "
                             "it (default: %(default)s; systemd's RuntimeDirectory)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="log every event (overrides log_level)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"m6t-gateway: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: OK ({len(config.listen)} listen ports, prefix "
              f"{config.policy.client_prefix}, {len(config.policy.home_agents)} home agent(s))")
        return 0

    level = "DEBUG" if args.verbose else config.log_level.upper()
    logging.basicConfig(format="m6t-gateway %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("m6t").setLevel(level)

    from m6t.gateway.daemon import GatewayDaemon, GatewayIO, check_privileges

    problem = check_privileges()
    if problem:
        print(f"m6t-gateway: {problem}", file=sys.stderr)
        return 1
    daemon = GatewayDaemon(config, args.config, GatewayIO(runtime_dir=args.runtime_dir))
    # Until the loop installs its own handlers, SIGTERM or SIGINT (systemctl stop while the
    # unit is still starting) ends set-up through the same undo path as a failure, instead of
    # killing the process with the TUN device, its route and the forwarding sysctl left behind.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_during_setup)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the configuration was just read
    try:
        try:
            daemon.setup()
        except PermissionError as exc:
            print(f"m6t-gateway: {exc}: run as root (or with CAP_NET_ADMIN)", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"m6t-gateway: {exc}", file=sys.stderr)
            return 1
        daemon.run()
    finally:
        daemon.teardown()  # idempotent: a failed set-up has already undone itself
    return 0


def _stop_during_setup(signum: int, _frame: object) -> None:
    log = logging.getLogger("m6t.gateway")
    log.warning("%s during start-up: undoing what was set up", signal.Signals(signum).name)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
