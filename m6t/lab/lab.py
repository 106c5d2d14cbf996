"""Build and tear down the DESIGN.md topology in uniquely named network namespaces.

    mn ──veth── nat ──veth── gw ──veth── ha
    192.168.77/24   masquerade   198.51.100/24    fd48:4100::/64
    (client)        (nftables)   (m6t-gateway)    (home agent)

Every packet stays inside these namespaces; nothing in the host namespace is touched (veths
are created directly inside their namespaces). Names carry the process id and a random tag,
so parallel runs and leftovers never collide; `close()` deletes only what this run created,
and runs even when building failed half-way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("m6t.lab")

REQUIRED_TOOLS = ("ip", "nft")


PORTAL_EXPECT = "m6t lab: online"


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class Addresses:
    """The lab's fixed plan (documentation ranges and ULA only)."""

    mn: str = "192.168.77.2"
    mn_lan: str = "192.168.77.0/24"
    nat_lan: str = "192.168.77.1"
    # A second LAN on the same NAT: where the mobile node "roams" to.
    mn_roamed: str = "192.168.78.2"
    nat_lan_roamed: str = "192.168.78.1"
    nat_wan: str = "198.51.100.2"
    # An extra address on the NAT's outside, not masqueraded: a second IPv4 source for tests
    # (another client, or an attacker on the public side).
    outsider: str = "198.51.100.3"
    gw_wan: str = "198.51.100.1"
    gw_home: str = "fd48:4100::1"
    home_agent: str = "fd48:4100::2"
    home_net: str = "fd48:4100::/64"
    client_site: str = "fd6d:6d74:1::/48"
    client_prefix: str = "fd6d:6d74:1:1:1::/80"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
             ) -> Any:
    """Poll `condition` until it returns something truthy; raise LabError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def frozen(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """The process stopped where it is (SIGSTOP), so that what arrives meanwhile waits for it
    in one batch, or what a test sees is what was true then; SIGCONT on the way out."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def missing_tools(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


class Lab:
    ROLES: tuple[str, ...] = ("mn", "nat", "gw", "ha")  # subclasses may build other worlds

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or f"m6t-{os.getpid()}-{secrets.token_hex(2)}"
        self.ns = {role: f"{self.tag}-{role}" for role in self.ROLES}
        self.addr = Addresses()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self._created: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    # --- running things inside namespaces ---

    def argv(self, role: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role], *argv]

    def run(self, role: str, argv: Sequence[str], check: bool = True, timeout: float = 30,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(role, argv), capture_output=True, text=True,
                                timeout=timeout, input=input.decode() if input else None)
        if check and result.returncode != 0:
            raise LabError(f"[{role}] {' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def ip(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(role, ["ip", *args], check=check)

    def spawn(self, role: str, argv: Sequence[str], log_name: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running process in a namespace; `close()` ends it by its PID."""
        out = open(self.workdir / f"{log_name or Path(argv[0]).name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(self.argv(role, argv), stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
        out.close()
        self._processes.append(process)
        return process

    def python(self, role: str, module: str, *args: str, timeout: float = 60,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(role, [sys.executable, "-m", module, *args], timeout=timeout, check=check)

    # --- building ---

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_namespaces(self) -> None:
        """One namespace per role (ROLES), recorded for close(), loopback up, no DAD; what
        every lab's build starts with."""
        missing = missing_tools()
        if missing:
            raise LabError(f"missing tools: {', '.join(missing)} (run make setup)")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, veth, nftables)")
        for role in self.ROLES:
            subprocess.run(["ip", "netns", "add", self.ns[role]], check=True, capture_output=True)
            self._created.append(self.ns[role])
            # No duplicate address detection: addresses are usable at once, so the first
            # packet of a test does not wait a second for a tentative link-local address.
            self.run(role, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                            "net.ipv6.conf.default.accept_dad=0"])
            self.ip(role, "link", "set", "lo", "up")

    def build(self) -> None:
        self.create_namespaces()
        a = self.addr
        # veth pairs are born inside their namespaces: the host namespace never sees them.
        self.ip("mn", "link", "add", "eth0", "type", "veth", "peer", "name", "lan",
                "netns", self.ns["nat"])
        self.ip("nat", "link", "add", "wan", "type", "veth", "peer", "name", "wan",
                "netns", self.ns["gw"])
        self.ip("gw", "link", "add", "home", "type", "veth", "peer", "name", "eth0",
                "netns", self.ns["ha"])
        for role, ifname in (("mn", "eth0"), ("nat", "lan"), ("nat", "wan"), ("gw", "wan"),
                             ("gw", "home"), ("ha", "eth0")):
            self.ip(role, "link", "set", ifname, "up")
        self.ip("mn", "addr", "add", f"{a.mn}/24", "dev", "eth0")
        self.ip("mn", "route", "add", "default", "via", a.nat_lan)
        self.ip("nat", "addr", "add", f"{a.nat_lan}/24", "dev", "lan")
        self.ip("nat", "addr", "add", f"{a.nat_lan_roamed}/24", "dev", "lan")
        self.ip("nat", "addr", "add", f"{a.nat_wan}/24", "dev", "wan")
        self.ip("nat", "addr", "add", f"{a.outsider}/24", "dev", "wan")
        self.ip("nat", "route", "add", "default", "via", a.gw_wan)
        # The mobile node has no IPv6 of its own: it lives on an IPv4-only network.
        self.run("mn", ["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])
        self.ip("gw", "addr", "add", f"{a.gw_wan}/24", "dev", "wan")
        self.ip("gw", "-6", "addr", "add", f"{a.gw_home}/64", "dev", "home", "nodad")
        self.ip("ha", "-6", "addr", "add", f"{a.home_agent}/64", "dev", "eth0", "nodad")
        self.ip("ha", "-6", "route", "add", "default", "via", a.gw_home)
        self.run("nat", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.set_nat_rules()

    def set_nat_rules(self, extra: str = "", public: str | None = None,
                      before_defrag: str = "", random_ports: bool = False) -> None:
        """Masquerade the LANs behind the NAT's main outside address; `extra` adds rules to
        the forward chain (e.g. "udp dport 3544 drop" for a blocked port), `before_defrag`
        to a chain that sees IPv4 fragments before conntrack reassembles them; with
        `random_ports` each new mapping gets a random outside port, as many CGNATs do."""
        a = self.addr
        random = " fully-random" if random_ports else ""
        ruleset = f"""
flush ruleset
table ip lab {{
    chain early {{
        type filter hook prerouting priority -500; policy accept;
        {before_defrag}
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        {extra}
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "wan" ip saddr 192.168.0.0/16 snat to {public or a.nat_wan}{random}
    }}
}}
"""
        self.run("nat", ["nft", "-f", "-"], input=ruleset.encode())

    def change_nat_mapping(self) -> None:
        """The NAT now maps the LAN to its other public address and forgets every mapping:
        what a NAT reboot or a carrier-grade NAT's pool change looks like from outside."""
        self.set_nat_rules(public=self.addr.outsider)
        self.flush_conntrack()

    def start_portal(self) -> None:
        """A captive portal on the NAT box: no UDP from the LAN gets through, and the helper's
        HTTP probe is redirected to a login page, until `portal_login()` (m6t.lab.portal)."""
        a = self.addr
        self.set_nat_rules(extra="ip saddr 192.168.0.0/16 meta l4proto udp drop")
        self.spawn("nat", [sys.executable, "-m", "m6t.lab.portal", "serve", "--listen",
                           f"{a.nat_lan}:80", "--expect", PORTAL_EXPECT], log_name="portal")
        wait_for(lambda: self.run("nat", ["ss", "-Htln", "sport", "=", ":80"]).stdout.strip(),
                 10, "the portal to listen")

    def portal_login(self) -> None:
        """What the user does in the browser: accept the terms."""
        self.python("mn", "m6t.lab.portal", "login",
                    f"http://{self.addr.nat_lan}/login?accept=1")

    def rebind_nat_port(self) -> None:
        """The NAT forgets every mapping and maps anew to a random port on the same address:
        a NAT that timed out or rebooted, seen from the gateway as a new port."""
        self.set_nat_rules(random_ports=True)
        self.flush_conntrack()

    def flush_conntrack(self) -> None:
        """Forget every NAT mapping, as a NAT that reboots or times out would."""
        self.run("nat", ["conntrack", "-F"], check=False)

    def roam(self) -> None:
        """Move the mobile node to the other LAN: new IPv4 address, new default route."""
        a = self.addr
        current = self.ip("mn", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        old, new, via = ((a.mn, a.mn_roamed, a.nat_lan_roamed) if f"{a.mn}/" in current
                         else (a.mn_roamed, a.mn, a.nat_lan))
        self.ip("mn", "addr", "add", f"{new}/24", "dev", "eth0")
        self.ip("mn", "route", "replace", "default", "via", via)
        self.ip("mn", "addr", "del", f"{old}/24", "dev", "eth0")

    # --- the gateway ---

    def gateway_config(self, **overrides: Any) -> dict[str, Any]:
        a = self.addr
        config: dict[str, Any] = {
            "listen": [f"{a.gw_wan}:3544", f"{a.gw_wan}:4500"],
            "client_prefix": a.client_site,
            "home_agents": [a.home_agent],
            "metrics_listen": "127.0.0.1:9464",
            "log_level": "info",
        }
        config.update(overrides)
        return config

    def write_toml(self, name: str, data: dict[str, Any]) -> Path:
        def value(v: Any) -> str:
            return json.dumps(v)  # JSON strings, numbers and lists are valid TOML values

        text = "".join(f"{key} = {value(v)}\n" for key, v in data.items())
        tomllib.loads(text)  # never hand the daemon a file we did not mean
        path = self.workdir / name
        path.write_text(text)
        return path

    def gateway_command(self, config: Path, namespace: str = "gw") -> list[str]:
        """m6t-gateway with `config`; its note of the forwarding sysctl goes to the lab's own
        directory (one per namespace), not the host's /run."""
        return [sys.executable, "-m", "m6t.gateway", "--config", str(config),
                "--runtime-dir", str(self.workdir / f"run-{namespace}")]

    def start_gateway(self, **overrides: Any) -> subprocess.Popen[bytes]:
        config = self.gateway_config(**overrides)
        path = self.write_toml("gateway.toml", config)
        process = self.spawn("gw", self.gateway_command(path), log_name="gateway")
        self.gateway_process = process
        wait_for(lambda: process.poll() is not None or self.metrics(check=False) is not None,
                 10, "m6t-gateway to come up")
        if process.poll() is not None:
            raise LabError(f"m6t-gateway exited ({process.returncode}): {self.log('gateway')}")
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def metrics(self, port: int = 9464, check: bool = True,
                role: str = "gw") -> dict[str, float] | None:
        """The gateway's Prometheus metrics as {"name{labels}": value}, scraped inside `role`."""
        script = ("import urllib.request,sys;"
                  f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics',"
                  "timeout=2).read().decode())")
        result = self.run(role, [sys.executable, "-c", script], check=False, timeout=10)
        if result.returncode != 0:
            if check:
                raise LabError(f"cannot scrape metrics in {role}: {result.stderr.strip()}")
            return None
        values: dict[str, float] = {}
        for line in result.stdout.splitlines():
            if line and not line.startswith("#"):
                name, _, number = line.rpartition(" ")
                values[name] = float(number)
        return values

    # --- the client helper ---

    def profile(self, **overrides: Any) -> dict[str, Any]:
        """A profile for the lab's gateway, as the control API takes it."""
        a = self.addr
        profile: dict[str, Any] = {
            "name": "lab", "gateway": a.gw_wan, "ports": [3544, 4500],
            "prefix": a.client_prefix, "home_agent": a.home_agent,
        }
        profile.update(overrides)
        return profile

    def start_helper(self, *args: str) -> subprocess.Popen[bytes]:
        """m6t-helper inside mn; its control socket is a file in the lab's work directory,
        so clients in the host namespace reach it as they would /run/m6t/helper.sock."""
        path = self.workdir / "helper.sock"
        self.helper_socket = str(path)
        # Its memory of networks and its captive-portal probe stay inside the lab: the state
        # in the work directory, the probe on the NAT box (answered once start_portal() runs).
        defaults = ["--state-dir", str(self.workdir / "state"),
                    "--portal-probe", f"http://{self.addr.nat_lan}/m6t-check",
                    "--portal-expect", PORTAL_EXPECT]
        process = self.spawn("mn", [sys.executable, "-m", "m6t_helper", "--socket", str(path),
                                    *defaults, *args], log_name="helper")
        self.helper_process = process

        def ready() -> bool:
            if process.poll() is not None:
                return True
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                return False
            finally:
                probe.close()
            return True

        wait_for(ready, 10, "m6t-helper to listen")
        if process.poll() is not None:
            raise LabError(f"m6t-helper exited ({process.returncode}): {self.log('helper')}")
        return process

    # --- the home agent ---

    def start_udp_echo(self, port: int = 500) -> subprocess.Popen[bytes]:
        """An IKE-like responder on the HA: answers every UDP datagram with its reverse."""
        process = self.spawn("ha", [sys.executable, "-m", "m6t.lab.responder", "--port",
                                    str(port)], log_name=f"responder-{port}")
        wait_for(lambda: f":{port} " in self.run("ha", ["ss", "-Hlun"]).stdout, 5,
                 f"UDP responder on port {port}")
        return process

    def start_iperf_server(self) -> subprocess.Popen[bytes]:
        process = self.spawn("ha", ["iperf3", "-s", "-B", self.addr.home_agent], log_name="iperf3")
        wait_for(lambda: ":5201 " in self.run("ha", ["ss", "-Hltn"]).stdout, 5, "iperf3 server")
        return process

    # --- teardown ---

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 10) -> int:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        return process.returncode

    def close(self) -> None:
        for process in reversed(self._processes):
            self.stop(process)
        self._processes.clear()
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._created.clear()
        if os.environ.get("M6T_LAB_KEEP_LOGS") is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def namespaces_exist(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        present = {line.split()[0] for line in listed.splitlines() if line.strip()}
        return [name for name in self.ns.values() if name in present]
