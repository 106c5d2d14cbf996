"""m6t-lab: build the lab, run the demo, clean leftovers.

    m6t-lab demo      build the lab, run the system, show it working, tear everything down
    m6t-lab up        build the lab and keep it until Ctrl-C (prints how to get inside)
    m6t-lab cleanup   delete lab namespaces left by runs whose process is gone
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

from m6t.lab.lab import Lab, LabError

_COLOUR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
BOLD, DIM, GREEN, RED, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if _COLOUR else ("",) * 5)


def _say(text: str) -> None:
    print(f"{BOLD}==>{RESET} {text}", flush=True)


def _show(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"    {DIM}{line}{RESET}")


def _check(ok: bool, text: str) -> bool:
    mark = f"{GREEN}ok{RESET}" if ok else f"{RED}FAILED{RESET}"
    print(f"    [{mark}] {text}", flush=True)
    return ok


def demo() -> int:
    ok = True
    with Lab() as lab:
        a = lab.addr
        _say(f"lab built: namespaces {', '.join(lab.ns.values())}")
        _show(f"mn {a.mn} --(NAT {a.nat_wan})--> gw {a.gw_wan} [m6t-gateway] --> ha "
              f"{a.home_agent}")
        _say("starting m6t-gateway (ports 3544 and 4500, client prefix "
             f"{a.client_site})")
        lab.start_gateway()
        source = "fd6d:6d74:1:1:1:0:0:1"

        def client(*args: str, bind: str = "0.0.0.0:40001") -> dict[str, object]:
            result = lab.python("mn", "m6t.lab.client", "--gateway", f"{a.gw_wan}:3544",
                                "--bind", bind, *args)
            return dict(json.loads(result.stdout))

        _say(f"mobile node pings the home agent through the tunnel, as {source}")
        echo = client("echo", "--src", source, "--dst", a.home_agent, "--count", "5",
                      "--interval", "0.2")
        rtts = ", ".join(f"{rtt:.2f}" for rtt in echo["rtt_ms"])  # type: ignore[attr-defined]
        ok &= _check(echo["received"] == 5, f"5 echo replies, RTT ms: {rtts}")
        _say("an IKE-like UDP exchange with the home agent (port 500)")
        lab.start_udp_echo(500)
        ike = client("udp", "--src", source, "--dst", a.home_agent, "--payload", "cafe")
        ok &= _check(bool(ike["answered"]), "the home agent's responder answered")
        _say("keepalive (empty IPv6 packet to fe80::1, next header 59)")
        ok &= _check(bool(client("keepalive", "--src", source)["answered"]),
                     "answered: the state is active")
        _say("an attacker behind the same NAT claims the same IPv6 address from another port")
        spoof = client("echo", "--src", source, "--dst", a.home_agent, "--timeout", "0.5",
                       bind="0.0.0.0:40666")
        ok &= _check(spoof["received"] == 0, "dropped: states are never updated")
        _say("a flood of new addresses from one IPv4 source")
        flood = client("flood", "--prefix", a.client_site, "--dst", a.home_agent,
                       "--count", "5000", "--duration", "2", bind="0.0.0.0:40667")
        _show(f"{flood['sent']} datagrams sent")
        _say("malformed datagrams (empty, 39 bytes, version 4, wrong length, 64 KiB junk)")
        client("malformed", bind="0.0.0.0:40668")
        again = client("echo", "--src", source, "--dst", a.home_agent, "--count", "3")
        ok &= _check(again["received"] == 3, "the real client still works")
        _say("gateway metrics (Prometheus, nonzero values)")
        time.sleep(0.2)
        metrics = lab.metrics() or {}
        _show("\n".join(f"{name} {value:g}" for name, value in metrics.items()
                        if name.startswith("m6t_") and value))
        _say("stopping m6t-gateway with SIGTERM")
        code = lab.stop(lab.gateway_process, signal.SIGTERM)
        links = lab.ip("gw", "-o", "link").stdout
        ok &= _check(code == 0 and "m6tgw0" not in links, "clean exit, TUN device gone")
    _say("lab torn down" + ("" if ok else f" {RED}(demo had failures){RESET}"))
    return 0 if ok else 1


def up() -> int:
    with Lab() as lab:
        lab.start_gateway()
        print(f"lab {lab.tag} is up (Ctrl-C tears it down). Inside a namespace:")
        for role, name in lab.ns.items():
            print(f"  {role:>3}: ip netns exec {name} bash")
        print(f"logs: {lab.workdir}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def cleanup() -> int:
    """Only namespaces named like ours (m6t-PID-TAG-role) whose PID no longer runs."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    removed = 0
    for line in listed.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(r"m6t-(\d+)-[0-9a-f]{4}-(mn|nat|gw|ha)", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            subprocess.run(["ip", "netns", "del", name], check=False)
            removed += 1
    print(f"removed {removed} stale lab namespace(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m6t-lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("demo", "up", "cleanup"))
    args = parser.parse_args(argv)
    try:
        return {"demo": demo, "up": up, "cleanup": cleanup}[args.command]()
    except LabError as exc:
        print(f"m6t-lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
