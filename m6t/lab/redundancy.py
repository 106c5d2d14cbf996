"""A lab with two gateways: a redundant VRRP pair (keepalived), or two gateways side by side.

    mn ──veth── nat ══ public LAN (bridge "wan" in nat) ══ gw-a eth0 198.51.100.11
    192.168.77/24  masquerade   198.51.100.0/24           gw-b eth0 198.51.100.12
                                 virtual 198.51.100.1
                   gw-a eth1 fd48:4100::11 ══ home LAN (bridge "eth0" in ha) ══ ha fd48:4100::2
                   gw-b eth1 fd48:4100::12      virtual fd48:4100::1

Both gateways sit on one public LAN (a bridge in the NAT's namespace) and one home LAN (a
bridge in the home agent's namespace), as two gateway hosts would next to their routers.

- Redundancy (`start_pair`): keepalived in each gateway namespace, configured from the sample
  the package ships (packaging/keepalived/keepalived.conf.sample, only the health check's
  command line swapped for this checkout's interpreter), moves the virtual addresses 198.51.100.1
  (the profile's `gateway`) and fd48:4100::1 (the home agent's route to the client prefix)
  to whichever gateway is master. Both gateways run the same configuration, listening on the
  virtual address (net.ipv4.ip_nonlocal_bind=1).
- Scale-out (`route_client_prefix`): each gateway with its own `client_prefix` and address,
  the home agent routing each prefix to its gateway; no keepalived.

Names are unique per run and everything is deleted by `close()`, as in m6t.lab.lab.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m6t.lab.lab import Addresses, Lab, LabError, missing_tools, wait_for

GATEWAYS = ("gw-a", "gw-b")
PUBLIC_IF = "eth0"  # the gateways' interfaces, named as in the sample configuration
HOME_IF = "eth1"
SAMPLE_NAMES = (Path(__file__).resolve().parents[2] / "packaging" / "keepalived"
                / "keepalived.conf.sample",
                Path("/usr/share/doc/m6t/keepalived/keepalived.conf.sample"))
# The one line of the sample the lab changes: the health check as this checkout runs it.
SAMPLE_SCRIPT = '"/opt/m6t/bin/m6t-gateway-health --config /etc/m6t/gateway.toml --quiet"'


@dataclass(frozen=True)
class PairAddresses(Addresses):
    """The base plan, where gw_wan and gw_home are now the pair's virtual addresses."""

    gw_a_wan: str = "198.51.100.11"
    gw_b_wan: str = "198.51.100.12"
    gw_a_home: str = "fd48:4100::11"
    gw_b_home: str = "fd48:4100::12"

    def wan(self, role: str) -> str:
        return self.gw_a_wan if role == "gw-a" else self.gw_b_wan

    def home(self, role: str) -> str:
        return self.gw_a_home if role == "gw-a" else self.gw_b_home


class GatewayPairLab(Lab):
    ROLES = ("mn", "nat", "gw-a", "gw-b", "ha")

    def __init__(self, tag: str | None = None) -> None:
        super().__init__(tag)
        self.addr: PairAddresses = PairAddresses()
        self.gateways: dict[str, subprocess.Popen[bytes]] = {}
        self.keepalived: dict[str, subprocess.Popen[bytes]] = {}

    # --- building ---

    def build(self) -> None:
        self.create_namespaces()
        a = self.addr
        # The two LANs are bridges (no multicast snooping: nothing there queries MLD, and
        # VRRP adverts and neighbour discovery must reach every port).
        self.ip("nat", "link", "add", "wan", "type", "bridge", "mcast_snooping", "0")
        self.ip("ha", "link", "add", "eth0", "type", "bridge", "mcast_snooping", "0")
        self.ip("mn", "link", "add", "eth0", "type", "veth", "peer", "name", "lan",
                "netns", self.ns["nat"])
        for role in GATEWAYS:
            self.ip("nat", "link", "add", f"to-{role}", "type", "veth", "peer", "name",
                    PUBLIC_IF, "netns", self.ns[role])
            self.ip("nat", "link", "set", f"to-{role}", "master", "wan", "up")
            self.ip("ha", "link", "add", f"to-{role}", "type", "veth", "peer", "name",
                    HOME_IF, "netns", self.ns[role])
            self.ip("ha", "link", "set", f"to-{role}", "master", "eth0", "up")
            self.ip(role, "link", "set", PUBLIC_IF, "up")
            self.ip(role, "link", "set", HOME_IF, "up")
            self.ip(role, "addr", "add", f"{a.wan(role)}/24", "dev", PUBLIC_IF)
            self.ip(role, "-6", "addr", "add", f"{a.home(role)}/64", "dev", HOME_IF, "nodad")
            # The backup binds the virtual address it does not hold (yet).
            self.run(role, ["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"])
        for role, ifname in (("mn", "eth0"), ("nat", "lan"), ("nat", "wan"), ("ha", "eth0")):
            self.ip(role, "link", "set", ifname, "up")
        self.ip("mn", "addr", "add", f"{a.mn}/24", "dev", "eth0")
        self.ip("mn", "route", "add", "default", "via", a.nat_lan)
        self.run("mn", ["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])
        self.ip("nat", "addr", "add", f"{a.nat_lan}/24", "dev", "lan")
        self.ip("nat", "addr", "add", f"{a.nat_lan_roamed}/24", "dev", "lan")
        self.ip("nat", "addr", "add", f"{a.nat_wan}/24", "dev", "wan")
        self.ip("nat", "addr", "add", f"{a.outsider}/24", "dev", "wan")
        self.run("nat", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.ip("ha", "-6", "addr", "add", f"{a.home_agent}/64", "dev", "eth0", "nodad")
        self.set_nat_rules()

    # --- gateways ---

    def start_gateway_on(self, role: str, **overrides: Any) -> subprocess.Popen[bytes]:
        """m6t-gateway in `role`'s namespace; its configuration file is gateway-ROLE.toml."""
        config = self.gateway_config(**overrides)
        path = self.write_toml(f"gateway-{role}.toml", config)
        process = self.spawn(role, self.gateway_command(path, role),
                             log_name=f"gateway-{role}")
        self.gateways[role] = process
        wait_for(lambda: process.poll() is not None
                 or self.gateway_metrics(role, check=False) is not None,
                 15, f"m6t-gateway in {role} to come up")
        if process.poll() is not None:
            raise LabError(f"m6t-gateway in {role} exited ({process.returncode}): "
                           f"{self.log(f'gateway-{role}')}")
        return process

    def gateway_metrics(self, role: str, check: bool = True) -> dict[str, float] | None:
        """The metrics of the gateway in `role`."""
        return self.metrics(check=check, role=role)

    def wait_healthy(self, role: str, timeout: float) -> None:
        wait_for(lambda: self.health(role).returncode == 0, timeout,
                 f"{role} to pass its health check", interval=0.2)

    def health(self, role: str) -> subprocess.CompletedProcess[str]:
        """m6t-gateway-health as keepalived runs it in `role`."""
        return self.run(role, [sys.executable, "-m", "m6t.gateway.health", "--config",
                               str(self.workdir / f"gateway-{role}.toml")], check=False)

    # --- redundancy: keepalived ---

    def keepalived_config(self, role: str) -> Path:
        """The shipped sample, with the health check's command line of this checkout."""
        sample = next((p for p in SAMPLE_NAMES if p.exists()), None)
        if sample is None:
            raise LabError(f"no keepalived sample in {', '.join(map(str, SAMPLE_NAMES))}")
        text = sample.read_text()
        if text.count(SAMPLE_SCRIPT) != 1:
            raise LabError(f"{sample} no longer has the line {SAMPLE_SCRIPT}: update the lab")
        command = (f'"{sys.executable} -m m6t.gateway.health --config '
                   f'{self.workdir / f"gateway-{role}.toml"} --quiet"')
        path = self.workdir / f"keepalived-{role}.conf"
        path.write_text(text.replace(SAMPLE_SCRIPT, command))
        return path

    def start_keepalived(self, role: str) -> subprocess.Popen[bytes]:
        if missing_tools(("keepalived",)):
            raise LabError("keepalived is missing (run make setup)")
        config = self.keepalived_config(role)
        run = self.workdir / f"keepalived-{role}"
        run.mkdir(exist_ok=True)
        # In the foreground, VRRP only, logging to its log file; its own pid files (the
        # default ones in /run would collide with another lab's); the sample's @gw-a / @gw-b
        # lines picked by -i.
        process = self.spawn(role, ["keepalived", "--dont-fork", "--log-console",
                                    "--log-detail", "--no-syslog", "--vrrp",
                                    f"--config-id={role}", f"--use-file={config}",
                                    f"--pid={run}/keepalived.pid",
                                    f"--vrrp_pid={run}/vrrp.pid",
                                    f"--checkers_pid={run}/checkers.pid"],
                             log_name=f"keepalived-{role}")
        self.keepalived[role] = process
        return process

    def start_pair(self) -> str:
        """Both gateways on the virtual address, keepalived on both, the home agent's route to
        the client site via the home-side virtual address. Returns the master's role."""
        a = self.addr
        self.ip("nat", "route", "replace", "default", "via", a.gw_wan)
        self.ip("ha", "-6", "route", "replace", "default", "via", a.gw_home)
        for role in GATEWAYS:
            self.start_gateway_on(role)
        for role in GATEWAYS:
            self.wait_healthy(role, 10)
        for role in GATEWAYS:
            self.start_keepalived(role)
        return self.wait_master(timeout=15)

    def holds_vip(self, role: str) -> bool:
        out = self.ip(role, "-4", "-o", "addr", "show", "dev", PUBLIC_IF, check=False).stdout
        return f" {self.addr.gw_wan}/" in out

    def holds_home_vip(self, role: str) -> bool:
        out = self.ip(role, "-6", "-o", "addr", "show", "dev", HOME_IF, check=False).stdout
        return f" {self.addr.gw_home}/" in out

    def master(self) -> str | None:
        holders = [role for role in GATEWAYS if self.holds_vip(role)]
        return holders[0] if len(holders) == 1 else None

    def wait_master(self, timeout: float, other_than: str | None = None) -> str:
        def elected() -> str | None:
            role = self.master()
            return role if role is not None and role != other_than and \
                self.holds_home_vip(role) else None

        return str(wait_for(elected, timeout, "a VRRP master holding both virtual addresses",
                            interval=0.02))

    def vrrp_state(self, role: str) -> str | None:
        """The last state keepalived in `role` logged (MASTER, BACKUP, FAULT), or None."""
        states = re.findall(r"Entering (\w+) STATE", self.log(f"keepalived-{role}"))
        return states[-1] if states else None

    # --- scale-out: one prefix per gateway ---

    def route_client_prefix(self, prefix: str, role: str) -> None:
        """The home agent sends `prefix` to the gateway in `role` (its own home address)."""
        self.ip("ha", "-6", "route", "replace", prefix, "via", self.addr.home(role))

    # --- watching the tunnel ---

    def start_ping(self, interval: float = 0.1) -> PingWatch:
        """ping -6 from mn to the home agent until close(), replies stamped with wall time."""
        log_name = f"ping-{len(self._processes)}"
        process = self.spawn("mn", ["ping", "-6", "-D", "-n", "-i", f"{interval:g}", "-W", "1",
                                    self.addr.home_agent], log_name=log_name)
        return PingWatch(self, process, self.workdir / f"{log_name}.log")

    def leftover_processes(self) -> list[str]:
        """Processes still running whose command line names this lab's work directory or
        namespaces (what close() must have ended)."""
        marks = (str(self.workdir).encode(), self.tag.encode())
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(mark in cmdline for mark in marks):
                words = cmdline.replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name}: {words}")
        return found


class PingWatch:
    """A running `ping -D` and the wall-clock times of its replies, read from its log."""

    _REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")

    def __init__(self, lab: Lab, process: subprocess.Popen[bytes], log: Path) -> None:
        self.lab, self.process, self.log = lab, process, log

    def replies(self) -> list[float]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [float(m.group(1)) for line in text.splitlines()
                if (m := self._REPLY.match(line))]

    def first_reply_after(self, since: float, timeout: float) -> float:
        """The first reply stamped after `since` (time.time()), waiting up to `timeout`."""
        return float(wait_for(lambda: next((t for t in self.replies() if t > since), None),
                              timeout, "ping replies through the tunnel"))

    def last_gap(self, since: float) -> float:
        """The longest silence between replies after `since` (s)."""
        stamps = [since, *(t for t in self.replies() if t > since)]
        return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)

    def wait_replies(self, count: int, since: float, timeout: float = 10) -> None:
        wait_for(lambda: len([t for t in self.replies() if t > since]) >= count, timeout,
                 f"{count} ping replies")

    def close(self) -> None:
        self.lab.stop(self.process)
