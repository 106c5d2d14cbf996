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
from pathlib import Path

from m6t.lab import ike
from m6t.lab.lab import Lab, LabError

# The installed `m6t` console script next to this interpreter: what a user runs.
M6T = str(Path(sys.executable).with_name("m6t"))
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
        _say("building the lab: a laptop (mn) behind a NAT, the tunnel gateway, the home agent")
        _show(f"mn {a.mn} --(NAT {a.nat_wan})--> gw {a.gw_wan} [m6t-gateway] --> ha "
              f"{a.home_agent}")
        _say("starting m6t-gateway (UDP 3544 and 4500) and m6t-helper (in mn)")
        lab.start_gateway()
        lab.start_helper()
        env = {**os.environ, "M6T_SOCKET": lab.helper_socket,
               "M6T_PROFILES": str(lab.workdir / "profiles.toml")}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            """The real `m6t` CLI, from the host namespace, as a user would run it."""
            result = subprocess.run([M6T, *args], env=env, capture_output=True, text=True,
                                    timeout=60)
            print(f"    {BOLD}$ m6t {' '.join(args)}{RESET}")
            _show(result.stdout + result.stderr)
            return result

        _say("the laptop user adds a profile and connects")
        cli("profiles", "add", "home", "--gateway", a.gw_wan, "--port", "3544", "--port",
            "4500", "--prefix", a.client_prefix, "--home-agent", a.home_agent, "--default")
        ok &= _check(cli("connect", "home").returncode == 0, "connected through the NAT")
        _say("ping the home agent through the tunnel")
        result = lab.run("mn", ["ping", "-6", "-c", "5", "-i", "0.2", a.home_agent], check=False)
        _show("\n".join(result.stdout.splitlines()[-2:]))
        ok &= _check(result.returncode == 0, "ping6 through m6t0")
        _say("a short iperf3 (TCP, 3 s) to the home agent")
        lab.start_iperf_server()
        result = lab.run("mn", ["iperf3", "-6", "-c", a.home_agent, "-t", "3", "-J"],
                         check=False, timeout=30)
        report = json.loads(result.stdout or "{}")
        if result.returncode == 0 and "sum_received" in report.get("end", {}):
            rate = report["end"]["sum_received"]["bits_per_second"] / 1e6
            ok &= _check(rate > 0, f"{rate:.0f} Mbit/s through helper, NAT and gateway")
        else:
            ok &= _check(False, f"iperf3 failed: {report.get('error', result.stderr.strip())}")
        status = json.loads(cli_quiet(env, "status", "--json") or "{}")
        address = (status.get("tunnels") or [{}])[0].get("address", "")
        pair, sa = None, None
        if ike.available() is None:
            _say("IKEv2 and IPsec with the home agent through the tunnel (strongSwan in mn and ha)")
            pair = ike.IkePair(lab, address)
            try:
                pair.start()
                pair.initiate()
                sa = pair.sa()
            except (ike.IkeError, LabError) as exc:
                _show(str(exc))
            ok &= _check(sa is not None and pair.ping(count=3),
                         f"IKE SA from {address}; ESP carries the home address "
                         f"{ike.HOME_ADDRESS} to {ike.CORRESPONDENT}")
        else:
            _say(f"an IKE-like UDP exchange with the home agent (port 500), unchanged by the "
                 f"tunnel ({ike.available()})")
            lab.start_udp_echo(500)
            script = ("import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);"
                      f"s.bind(('{address}',500));s.settimeout(3);"
                      f"s.sendto(b'IKE_SA_INIT',('{a.home_agent}',500));print(s.recv(100))")
            exchange = lab.run("mn", [sys.executable, "-c", script], check=False)
            ok &= _check(exchange.returncode == 0 and "TINI_AS_EKI" in exchange.stdout,
                         "the home agent answered from port 500")
        _say("the laptop roams to another network: new IPv4 address and default route")
        lab.roam()
        roamed = time.monotonic()
        deadline = roamed + 10
        new = address
        while time.monotonic() < deadline and new == address:
            time.sleep(0.2)
            current = json.loads(cli_quiet(env, "status", "--json") or "{}")
            tunnel = (current.get("tunnels") or [{}])[0]
            if tunnel.get("state") == "connected":
                new = tunnel.get("address", address)
        ok &= _check(new != address, f"new address {new} (was {address}), "
                                     f"{time.monotonic() - roamed:.1f} s after the roam")
        if pair is not None and sa is not None:
            started = time.monotonic()
            flows = pair.ping(wait=0.3)
            while not flows and time.monotonic() - started < 20:
                flows = pair.ping(wait=0.3)
            esp_back = time.monotonic() - roamed
            try:
                moved = pair.sa()
            except ike.IkeError as exc:
                _show(str(exc))
                moved = None
            ok &= _check(flows and moved is not None and moved.spis == sa.spis
                         and moved.local == new,
                         f"the same IKE SA moved to {new} (MOBIKE); ESP flows again "
                         f"{esp_back:.1f} s after the roam")
        cli("status")
        result = lab.run("mn", ["ping", "-6", "-c", "3", "-i", "0.2", a.home_agent], check=False)
        ok &= _check(result.returncode == 0, "traffic flows again")
        _say("an attacker on the public side claims the laptop's address from another IPv4")
        spoof = lab.python("nat", "m6t.lab.client", "--gateway", f"{a.gw_wan}:3544", "--bind",
                           f"{a.outsider}:40666", "echo", "--src", new, "--dst", a.home_agent,
                           "--timeout", "0.5")
        ok &= _check(json.loads(spoof.stdout)["received"] == 0,
                     "dropped by the gateway: states are never updated")
        _say("gateway metrics (Prometheus; nonzero values)")
        metrics = lab.metrics() or {}
        _show("\n".join(f"{name} {value:g}" for name, value in metrics.items()
                        if name.startswith("m6t_") and value))
        _desktop_hint(env)
        _say("disconnecting and stopping both daemons with SIGTERM")
        cli("disconnect")
        helper_code = lab.stop(lab.helper_process, signal.SIGTERM)
        gateway_code = lab.stop(lab.gateway_process, signal.SIGTERM)
        links = lab.ip("mn", "-o", "link").stdout + lab.ip("gw", "-o", "link").stdout
        left = re.findall(r"^\d+: (m6t\w*)", links, re.MULTILINE)
        ok &= _check(helper_code == 0 and gateway_code == 0 and not left,
                     f"clean exits (helper {helper_code}, gateway {gateway_code}), "
                     f"tunnel interfaces left: {', '.join(left) or 'none'}")
    _say("lab torn down" + ("" if ok else f" {RED}(demo had failures){RESET}"))
    return 0 if ok else 1


def cli_quiet(env: dict[str, str], *args: str) -> str:
    return subprocess.run([M6T, *args], env=env, capture_output=True, text=True,
                          timeout=60).stdout


def _desktop_hint(env: dict[str, str]) -> None:
    """Show the tray app when there is a display; otherwise say how to see it."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        _say("starting m6t-desktop for 20 s (look at the tray)")
        app = subprocess.Popen([sys.executable, "-m", "m6t_desktop"], env=env)
        try:
            app.wait(20)
        except subprocess.TimeoutExpired:
            app.terminate()
            app.wait(5)
    else:
        _say("no display here: to see the tray app, run it under Xvfb with a tray host:")
        _show("scripts/screenshots   # Xvfb + icewm + m6t-desktop, PNGs in docs/screenshots/")


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
