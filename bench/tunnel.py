"""Throughput and latency through the whole m6t path, against the same lab without the tunnel
and against a bare Python forwarder, in one invocation.

    sudo .venv/bin/python bench/tunnel.py [--quick] [--seconds N] [--repeat N] [--json]
                                          [--only ping,tcp1,...] [--no-bare]
                                          [--experiment-shape poll|threads|blocking]
                                          [--variants off,-udp_gro,...] [--strict-wire]

One invocation builds one lab (m6t.lab.Lab: mn -- nat -- gw -- ha in network namespaces),
turns TSO, GSO and GRO off on every veth of it (mn eth0, nat lan and wan, gw wan and home,
ha eth0) with `ethtool -K` inside the namespaces, so that the kernel pays per packet as on a
real link, and measures, test by test:

* direct-nogso (the ceiling): IPv4 from mn to the gateway host's outside address
  (198.51.100.1) through the NAT, no tunnel: the per-packet ceiling of the kernel path;
* m6t: m6t-gateway in gw, m6t-helper in mn, one profile connected, default offloads
  (m6t.linux.offload); IPv6 from mn's tunnel address to the home agent through helper, NAT,
  gateway and the home link;
* bare (unless --no-bare): bench/bare_forwarder.py, a bare Python TUN <-> UDP forwarder (two
  blocking threads per side, no checks, no offloads), on mn and gw beside m6t (own TUN devices,
  prefix and port 3600) to a second address of the HA: what any Python forwarder pays here.
* bare+offloads (unless --no-bare): the issue's experiment rebuilt, the same bare forwarder
  with the four techniques issue 10 names on m6t's own adapters (M6T_BARE_MODE=offload-*: UDP
  GSO, UDP GRO, 4 MiB buffers, super-packets into an IFF_VNET_HDR TUN), still no checks, on
  its own devices, prefix and port 3601 to a third HA address: the most those techniques give
  a Python forwarder on this machine. `--experiment-shape` picks its threads: `poll` (one
  thread per side polling both descriptors, m6t's shape; the default), `threads` (one thread
  per direction, each polling its descriptor), `blocking` (one thread per direction blocked in
  its read, then draining without waiting). M6T_OFFLOADS in the environment applies to it as
  to m6t (`+tun_tso,+tun_uso`: TSO/USO reads, cut by m6t's segmenter).

Tests: TCP 1 and 4 streams upload (mn -> HA) and download (iperf3 -R), UDP with 64-byte
payloads (-b 0: as fast as the sender can; packets received per second), ping (50 at 20 ms).
The three paths alternate test by test, each repeated `--repeat` times; the best run counts
(highest throughput, lowest average RTT), all runs are in the JSON. Ratios are to direct-nogso
of the same invocation, since this VM's speed drifts by a third from hour to hour.

--variants: then, for each M6T_OFFLOADS value given (m6t.linux.offload: `off` is every offload
but UDP GSO, `-udp_gro` everything but UDP GRO, `+tun_tso` with TSO reads, ...; `txqueuelen=N`
in the list sets both TUN devices' queue, 1000 by default, 500 before), the same tests run
again, interleaved: for each test, direct-nogso, then m6t with the defaults and with each
variant in turn (m6t-gateway and m6t-helper restarted between them), so that what each
technique buys is measured against a ceiling of the same minute.

--strict-wire: also turn tx-udp-segmentation off on every veth. By default a veth passes a UDP
GSO message on whole (as it passes a TCP super-packet only with TSO on): it crosses the NAT as
one buffer and reaches a UDP_GRO socket whole. With --strict-wire the sender cuts it into
datagrams before its veth, the NAT forwards each, and nothing glues them again (GRO is off):
every datagram costs the NAT and the receiver what it costs on a real path without GRO.

Around every run are sampled: the CPU time of the helper and gateway processes
(/proc/<pid>/stat), for m6t runs also per packet they forwarded (microseconds of CPU per packet,
both directions: what a data-path change saves, nearly independent of other load on the box),
the busy share of the whole box (/proc/stat), and the CPU used by processes outside the lab.
The whole path is CPU-bound on 2 cores, so another job running skews everything: the script
warns when the box is busy before it starts, marks runs during which other processes used more
than 10 % of a core (OTHER LOAD), and prefers undisturbed runs as the best. Run it under
`flock /tmp/m6t-heavy.lock` where other heavy jobs may run.

Targets (issue 10): TCP at least 0.5 of direct-nogso both ways, 64-byte UDP at least 0.75, and
an added RTT no more than the bare forwarder's + 0.05 ms.

This is a measurement, not a test: the exit status is 0 whatever the figures, non-zero only if
the lab cannot be built or a run fails. Everything is bounded in time (each command has a
timeout) and the lab is torn down at the end, also on error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from m6t.control.client import HelperClient
from m6t.control.schema import TunnelStatus
from m6t.lab.lab import Lab, LabError

TARGET_TCP_RATIO = 0.5
TARGET_UDP_RATIO = 0.75
TARGET_RTT_OVER_BARE_MS = 0.05
REQUIRED = ("ip", "nft", "iperf3", "ping", "ethtool")
# Every veth of the lab, as (namespace role, interface name).
VETHS = (("mn", "eth0"), ("nat", "lan"), ("nat", "wan"), ("gw", "wan"), ("gw", "home"),
         ("ha", "eth0"))
OFFLOADS = {"tso": "tcp-segmentation-offload", "gso": "generic-segmentation-offload",
            "gro": "generic-receive-offload"}
STRICT_WIRE = {"tx-udp-segmentation": "tx-udp-segmentation"}
IPERF_PORT = 5201


@dataclass(frozen=True)
class Reference:
    """A forwarder of bench/bare_forwarder.py beside m6t: its own TUN devices, port, prefix
    and address on the home agent, so that all are up at once and runs alternate."""

    mode: str  # the key of its runs
    tun: str
    port: int
    prefix: str
    mn: str  # its address on the mobile node
    target: str  # its address on the home agent
    shape: str  # M6T_BARE_MODE ("" the plain blocking forwarder)
    offloads: str  # M6T_OFFLOADS, as m6t is given it first


EXPERIMENT_SHAPES = {"poll": "offload-poll", "threads": "offload", "blocking": "offload-block"}
PING_COUNT = 50
PING_INTERVAL = 0.02
UDP_PAYLOAD = 64
TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


# --- CPU accounting ------------------------------------------------------------------------------

def process_ticks(pid: int) -> int | None:
    """utime + stime of a whole process (all its threads), in clock ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def box_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def foreign_ticks(ours: set[int]) -> int:
    """CPU ticks of every user-space process outside the lab's namespaces (and not this one):
    other load on the box, which skews every figure. Kernel threads are left out (softirq
    work for the lab may run in them)."""
    me, total = os.getpid(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino in ours:
                continue
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == 2 or entry.name == "2":  # kthreadd and its children
            continue
        total += int(fields[11]) + int(fields[12])
    return total


@dataclass
class CpuSample:
    """CPU use over one run: cores' worth (1.0 = one core busy all the time)."""

    helper: float | None = None
    gateway: float | None = None
    box_busy: float = 0.0  # share of all cores (0..1)
    others: float = 0.0  # cores' worth used by processes outside the lab
    # CPU microseconds per packet the process forwarded (both directions): what a change to
    # the data path saves, nearly independent of other load on the box. Tunnel runs only.
    helper_us_per_packet: float | None = None
    gateway_us_per_packet: float | None = None


Counter = Callable[[], dict[str, int]]
MIN_PACKETS_PER_CPU_FIGURE = 10_000  # below that, clock-tick granularity swamps the figure


class CpuMeter:
    def __init__(self, pids: dict[str, int], namespaces: set[int]) -> None:
        self.pids = pids
        self.namespaces = namespaces

    @contextlib.contextmanager
    def measure(self, packets: Counter | None = None) -> Iterator[CpuSample]:
        """Around one run; `packets` counts what the helper and gateway forwarded so far."""
        sample = CpuSample()
        forwarded = packets() if packets else {}
        before = {name: process_ticks(pid) for name, pid in self.pids.items()}
        foreign0 = foreign_ticks(self.namespaces)
        busy0, total0 = box_ticks()
        started = time.monotonic()
        yield sample
        elapsed = time.monotonic() - started
        busy1, total1 = box_ticks()
        sample.box_busy = (busy1 - busy0) / max(total1 - total0, 1)
        sample.others = (foreign_ticks(self.namespaces) - foreign0) / TICKS / elapsed
        for name, pid in self.pids.items():
            after, first = process_ticks(pid), before[name]
            if after is not None and first is not None and elapsed > 0:
                setattr(sample, name, (after - first) / TICKS / elapsed)
        if packets:
            for name, count in packets().items():
                used, moved = getattr(sample, name), count - forwarded.get(name, 0)
                if used is not None and moved >= MIN_PACKETS_PER_CPU_FIGURE:
                    setattr(sample, f"{name}_us_per_packet", used * elapsed / moved * 1e6)


def box_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy over `seconds`: other load on the box skews every figure."""
    busy0, total0 = box_ticks()
    time.sleep(seconds)
    busy1, total1 = box_ticks()
    return (busy1 - busy0) / max(total1 - total0, 1)


def real_pid(pid: int) -> int:
    """`ip netns exec` execs its command in place; should it ever fork, follow the child."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "ip":
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0]) if children else pid
    except OSError:
        return pid


# --- the measurements ----------------------------------------------------------------------------

@dataclass
class Run:
    """One measurement. `value` is the figure that is compared: Gbit/s (TCP), packets/s
    received (UDP), average RTT in ms (ping)."""

    value: float
    detail: dict[str, Any] = field(default_factory=dict)
    cpu: CpuSample | None = None


class BenchError(RuntimeError):
    pass


def iperf(lab: Lab, server: str, ipv6: bool, extra: list[str], seconds: float) -> dict[str, Any]:
    argv = ["iperf3", "-6" if ipv6 else "-4", "-c", server, "-p", str(IPERF_PORT),
            "-t", f"{seconds:g}", "-J", "--connect-timeout", "3000", *extra]
    result = lab.run("mn", argv, check=False, timeout=seconds + 30)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 {' '.join(extra)} to {server}: no JSON "
                         f"({result.returncode}): {result.stderr.strip()[:300]}") from None
    if "error" in report:
        raise BenchError(f"iperf3 {' '.join(extra)} to {server}: {report['error']}")
    return dict(report)


def tcp(lab: Lab, server: str, ipv6: bool, streams: int, seconds: float,
        reverse: bool = False) -> Run:
    extra = (["-P", str(streams)] if streams > 1 else []) + (["-R"] if reverse else [])
    report = iperf(lab, server, ipv6, extra, seconds)
    end = report["end"]
    received = end["sum_received"]
    return Run(received["bits_per_second"] / 1e9, {
        "gbit_s_sent": round(end["sum_sent"]["bits_per_second"] / 1e9, 4),
        "retransmits": end["sum_sent"].get("retransmits"),
        "seconds": round(received["seconds"], 3),
        "mss": report["start"].get("tcp_mss_default"),
    })


def udp(lab: Lab, server: str, ipv6: bool, seconds: float) -> Run:
    report = iperf(lab, server, ipv6, ["-u", "-l", str(UDP_PAYLOAD), "-b", "0"], seconds)
    end = report["end"]
    # iperf3 3.12 reports UDP in end.sum: packets sent, and the receiver's lost_packets.
    total = end["sum"]
    sent, lost, duration = total["packets"], total["lost_packets"], total["seconds"]
    received = max(sent - lost, 0)
    return Run(received / duration, {
        "sent_pps": round(sent / duration),
        "loss_percent": round(100 * lost / sent, 2) if sent else None,
        "seconds": round(duration, 3),
    })


_RTT = re.compile(r"time=([\d.]+) ms")


def ping(lab: Lab, target: str, ipv6: bool, count: int = PING_COUNT) -> Run:
    argv = ["ping", "-6" if ipv6 else "-4", "-n", "-c", str(count), "-i", str(PING_INTERVAL),
            "-W", "1", target]
    result = lab.run("mn", argv, check=False, timeout=count * PING_INTERVAL + 15)
    rtts = [float(m) for m in _RTT.findall(result.stdout)]
    if not rtts:
        raise BenchError(f"ping {target}: no reply ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[:300]}")
    return Run(statistics.fmean(rtts), {
        "median_ms": round(statistics.median(rtts), 4),
        "min_ms": round(min(rtts), 4), "max_ms": round(max(rtts), 4),
        "loss_percent": round(100 * (count - len(rtts)) / count, 1),
    })


@dataclass(frozen=True)
class Test:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    measure: Callable[[Lab, str, bool, float], Run]
    default: bool = True  # run unless --only names a subset


TESTS = (
    Test("ping", "ping RTT (avg)", "ms", False, lambda lab, t, v6, s: ping(lab, t, v6)),
    Test("tcp1", "TCP, 1 stream, up", "Gbit/s", True, lambda lab, t, v6, s: tcp(lab, t, v6, 1, s)),
    Test("tcp4", "TCP, 4 streams, up", "Gbit/s", True,
         lambda lab, t, v6, s: tcp(lab, t, v6, 4, s)),
    # Download (iperf3 -R, the HA to mn): the gateway's TUN -> UDP path carries the data, the
    # helper's UDP -> TUN path writes it.
    Test("tcp1down", "TCP, 1 stream, down", "Gbit/s", True,
         lambda lab, t, v6, s: tcp(lab, t, v6, 1, s, reverse=True)),
    Test("tcp4down", "TCP, 4 streams, down", "Gbit/s", True,
         lambda lab, t, v6, s: tcp(lab, t, v6, 4, s, reverse=True)),
    Test("udp64", f"UDP, {UDP_PAYLOAD}-byte payload", "kpkt/s", True,
         lambda lab, t, v6, s: udp(lab, t, v6, s)),
)
TARGETS = {"tcp1": TARGET_TCP_RATIO, "tcp4": TARGET_TCP_RATIO, "tcp1down": TARGET_TCP_RATIO,
           "tcp4down": TARGET_TCP_RATIO, "udp64": TARGET_UDP_RATIO}


# --- the lab -------------------------------------------------------------------------------------

def offloads_off(lab: Lab, strict_wire: bool) -> dict[str, dict[str, str]]:
    """TSO, GSO and GRO (and with `strict_wire` tx-udp-segmentation) off on every veth;
    returns what ethtool -k then says."""
    wanted = {**OFFLOADS, **(STRICT_WIRE if strict_wire else {})}
    state: dict[str, dict[str, str]] = {}
    for role, ifname in VETHS:
        lab.run(role, ["ethtool", "-K", ifname, *(w for k in wanted for w in (k, "off"))])
        shown = lab.run(role, ["ethtool", "-k", ifname]).stdout
        now = {}
        for key, name in {**OFFLOADS, **STRICT_WIRE}.items():
            match = re.search(rf"^{name}: (\w+)", shown, re.MULTILINE)
            now[key] = match.group(1) if match else "?"
        if any(now[key] != "off" for key in wanted):
            raise BenchError(f"[{role}] {ifname}: offloads still on: {now}")
        state[f"{role}/{ifname}"] = now
    return state


def start_m6t(lab: Lab, variant: str | None) -> TunnelStatus:
    """m6t-gateway and m6t-helper, connected, as `variant` says: an M6T_OFFLOADS value (None:
    the defaults), in which `txqueuelen=N` instead sets both TUN devices' queue afterwards
    (`off,txqueuelen=500` is the data path as it was before issue 10)."""
    words = [w.strip() for w in (variant or "").split(",") if w.strip()]
    queues = [int(w.split("=", 1)[1]) for w in words if w.startswith("txqueuelen=")]
    offloads = ",".join(w for w in words if not w.startswith("txqueuelen="))
    if offloads:
        os.environ["M6T_OFFLOADS"] = offloads
    try:
        lab.start_gateway()
        lab.start_helper()
    finally:
        os.environ.pop("M6T_OFFLOADS", None)
    with HelperClient(lab.helper_socket) as client:
        result: TunnelStatus = client.call("connect", profile=lab.profile())
    if result.state != "connected":
        raise BenchError(f"tunnel did not connect: {result}")
    for queue in queues:
        lab.ip("mn", "link", "set", "m6t0", "txqueuelen", str(queue))
        lab.ip("gw", "link", "set", "m6tgw0", "txqueuelen", str(queue))
    return result


def stop_m6t(lab: Lab) -> None:
    lab.stop(lab.helper_process)
    lab.stop(lab.gateway_process)


def offload_state(lab: Lab) -> dict[str, Any]:
    """What both daemons say they use: the helper's status, the gateway's metrics."""
    status = helper_status(lab)
    metrics = lab.metrics(check=False) or {}
    gateway = {re.sub(r'.*feature="(\w+)".*', r"\1", k): int(v) for k, v in metrics.items()
               if k.startswith("m6t_gateway_offload{")}
    off = {k.split('feature="')[1].split('"')[0]: k.split('reason="')[1].rstrip('"}')
           for k in metrics if k.startswith("m6t_gateway_offload_off{")}
    supers = {k: v for k, v in metrics.items() if k.startswith("m6t_gateway_super_packet")}
    datapath = status.datapath if status else None
    return {"helper": msgspec.to_builtins(datapath) if datapath else None,
            "gateway": {"on": sorted(k for k, v in gateway.items() if v), "off": off,
                        **{k.replace("m6t_gateway_", ""): v for k, v in supers.items()}}}


def references(shape: str) -> list[Reference]:
    """The bare forwarder and the issue's experiment, each with its own devices and addresses.
    Read before m6t starts: start_m6t takes M6T_OFFLOADS out of the environment."""
    offloads = os.environ.get("M6T_OFFLOADS", "")
    return [Reference(BARE, "bare0", 3600, "fd62:6172:6500::/64", "fd62:6172:6500::1",
                      "fd48:4100::b", os.environ.get("M6T_BARE_MODE", ""), offloads),
            Reference(EXPERIMENT, "bare1", 3601, "fd62:6172:6501::/64", "fd62:6172:6501::1",
                      "fd48:4100::c", EXPERIMENT_SHAPES[shape], offloads)]


def start_bare_forwarder(lab: Lab, ref: Reference) -> None:
    """A reference: bench/bare_forwarder.py on mn and gw, routed to its own HA address."""
    forwarder = str(Path(__file__).with_name("bare_forwarder.py"))
    lab.ip("ha", "-6", "addr", "add", f"{ref.target}/64", "dev", "eth0", "nodad")
    for role, args in (("gw", ["server", ref.tun, str(ref.port)]),
                       ("mn", ["client", ref.tun, lab.addr.gw_wan, str(ref.port)])):
        lab.spawn(role, [sys.executable, forwarder, *args], log_name=f"{ref.tun}-{args[0]}",
                  env={"M6T_BARE_MODE": ref.shape, "M6T_OFFLOADS": ref.offloads})
        deadline = time.monotonic() + 5
        while lab.ip(role, "link", "show", "dev", ref.tun, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise BenchError(f"{label(ref.mode)} forwarder in {role} did not come up")
            time.sleep(0.05)
    lab.ip("gw", "-6", "route", "add", ref.prefix, "dev", ref.tun)
    lab.ip("mn", "-6", "addr", "add", f"{ref.mn}/128", "dev", ref.tun, "nodad")
    lab.ip("mn", "-6", "route", "add", f"{ref.target}/128", "dev", ref.tun, "src", ref.mn)


def helper_status(lab: Lab) -> TunnelStatus | None:
    with HelperClient(lab.helper_socket) as client:
        tunnels = client.call("status").tunnels
    return tunnels[0] if tunnels else None


def start_iperf_servers(lab: Lab, refs: list[Reference]) -> None:
    """One server on the gateway host's IPv4 (direct-nogso), one on the HA's IPv6 (m6t), one
    on each reference's HA address."""
    servers = [("gw", lab.addr.gw_wan), ("ha", lab.addr.home_agent)]
    servers += [("ha", ref.target) for ref in refs]
    for role, address in servers:
        lab.spawn(role, ["iperf3", "-s", "-B", address, "-p", str(IPERF_PORT)],
                  log_name=f"iperf3-{address}")
    for role, address in servers:
        listening = f"{address}]:{IPERF_PORT} " if ":" in address else f"{address}:{IPERF_PORT} "
        deadline = time.monotonic() + 5
        while listening not in lab.run(role, ["ss", "-Hltn"]).stdout:
            if time.monotonic() > deadline:
                raise BenchError(f"iperf3 server in {role} did not come up")
            time.sleep(0.05)


def environment() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=False).stdout.strip()
    iperf_version = subprocess.run(["iperf3", "--version"], capture_output=True, text=True,
                                   check=False).stdout.split("\n", 1)[0]
    return {"kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version(), "iperf3": iperf_version, "git": git or "?"}


# --- running and reporting -----------------------------------------------------------------------

OTHER_LOAD_LIMIT = 0.10  # cores' worth of foreign CPU above which a run counts as disturbed


def best(test: Test, runs: list[Run]) -> Run:
    """The best undisturbed run; the best of all if every run was disturbed."""
    quiet = [r for r in runs if r.cpu is None or r.cpu.others < OTHER_LOAD_LIMIT]
    return (max if test.higher_is_better else min)(quiet or runs, key=lambda r: r.value)


def show(test: Test, value: float) -> str:
    if test.key == "udp64":
        return f"{value / 1e3:8.1f} kpkt/s"
    if test.unit == "ms":
        return f"{value:8.3f} ms    "
    return f"{value:8.3f} Gbit/s"


def detail_text(test: Test, run: Run) -> str:
    d = run.detail
    if test.key == "ping":
        return f"median {d['median_ms']:.3f}, loss {d['loss_percent']:g} %"
    if test.key == "udp64":
        return f"sent {d['sent_pps'] / 1e3:.0f} kpkt/s, loss {d['loss_percent']:g} %"
    return f"retr {d['retransmits']}, mss {d['mss']}"


def cpu_text(run: Run) -> str:
    cpu = run.cpu
    if cpu is None:
        return ""
    parts = [f"box {100 * cpu.box_busy:.0f} %"]
    if cpu.others >= OTHER_LOAD_LIMIT:
        parts.append(f"OTHER LOAD {100 * cpu.others:.0f} %")
    for name, short in (("helper", "helper"), ("gateway", "gw")):
        used, per_packet = getattr(cpu, name), getattr(cpu, f"{name}_us_per_packet")
        if used is not None:
            parts.append(f"{short} {100 * used:.0f} %"
                         + (f" ({per_packet:.1f} us/pkt)" if per_packet is not None else ""))
    return ", ".join(parts)


MAIN = "m6t"
DIRECT = "direct"  # direct-nogso: the ceiling
BARE = "bare"
EXPERIMENT = "experiment"  # the techniques in the bare forwarder
REFERENCES = (BARE, EXPERIMENT)
LABELS = {DIRECT: "direct-nogso", MAIN: "m6t", BARE: "bare", EXPERIMENT: "bare+offloads"}


def label(mode: str) -> str:
    return LABELS.get(mode, mode)


def cpu_per_packet(run: Run) -> dict[str, float | None]:
    cpu = run.cpu
    return {"helper_us": cpu.helper_us_per_packet if cpu else None,
            "gateway_us": cpu.gateway_us_per_packet if cpu else None}


def reference_cell(test: Test, name: str, run: Run | None, direct: Run
                   ) -> tuple[str, dict[str, Any]]:
    """A reference's column and its JSON fields: its value and, for ping, the ms it adds to
    direct-nogso, else its ratio to it."""
    if run is None:
        return "", {}
    if test.key == "ping":
        added = run.value - direct.value
        return f"{show(test, run.value):>15} {added:+.3f}ms", {name: run.value,
                                                               f"{name}_added_ms": added}
    ratio = run.value / direct.value
    return f"{show(test, run.value):>15} {ratio:6.3f}", {name: run.value, f"{name}_ratio": ratio}


def summarize(tests: tuple[Test, ...], results: dict[str, dict[str, list[Run]]], tunnel: str,
              out: Any) -> dict[str, Any]:
    """The table of one block: each test's best runs, m6t (`tunnel`) as a share of
    direct-nogso, the references beside it, and the verdicts against the targets."""
    summary: dict[str, Any] = {}
    print(f"{'test':<22} {'direct-nogso':>15} {label(tunnel):>15} {'ratio':>7}  "
          f"{'bare':>15} {'ratio':>6}  {'bare+offloads':>15} {'ratio':>6}  target", file=out)
    for test in tests:
        runs = results[test.key]
        direct, m6t = best(test, runs[DIRECT]), best(test, runs[tunnel])
        bare = best(test, runs[BARE]) if runs.get(BARE) else None
        entry: dict[str, Any] = {"direct": direct.value, tunnel: m6t.value, "unit": test.unit,
                                 "cpu": cpu_per_packet(m6t), "cpu_detail": {}}
        for mode, mode_runs in runs.items():
            sample = best(test, mode_runs).cpu if mode_runs else None
            entry["cpu_detail"][mode] = asdict(sample) if sample is not None else None
        cells = []
        for name in REFERENCES:
            text, fields = reference_cell(test, name, best(test, runs[name])
                                          if runs.get(name) else None, direct)
            cells.append(text)
            entry.update(fields)
        target = ""
        if test.key == "ping":
            added = m6t.value - direct.value
            entry.update(added_ms=added, added_median_ms=m6t.detail["median_ms"]
                         - direct.detail["median_ms"])
            ratio_text = f"{added:+.3f}ms"
            if bare is not None:
                limit = bare.value - direct.value + TARGET_RTT_OVER_BARE_MS
                entry.update(target_added_ms=limit, met=added <= limit)
                target = f"<= bare {TARGET_RTT_OVER_BARE_MS:+.2f} = {limit:+.3f} ms: " + \
                    ("ok" if added <= limit else "MISSED")
        else:
            ratio = m6t.value / direct.value if direct.value else float("nan")
            entry["ratio"] = ratio
            ratio_text = f"{ratio:7.3f}"
            if bare is not None:
                entry["over_bare"] = m6t.value / bare.value if bare.value else None
            goal = TARGETS.get(test.key)
            if goal is not None:
                entry.update(target_ratio=goal, met=ratio >= goal)
                target = f">= {goal}: " + ("ok" if ratio >= goal else "MISSED")
        summary[test.key] = entry
        print(f"{test.title:<22} {show(test, direct.value):>15} {show(test, m6t.value):>15} "
              f"{ratio_text:>7}  " + "".join(f"{cell:<22}  " for cell in cells) + target,
              file=out)
        print(f"{'':<6}{label(tunnel)}: {detail_text(test, m6t)}; {cpu_text(m6t)}", file=out)
    return summary


def cpu_meter(lab: Lab) -> CpuMeter:
    """A meter for the daemons running now (their pids change when they are restarted)."""
    pids = {"helper": real_pid(lab.helper_process.pid),
            "gateway": real_pid(lab.gateway_process.pid)}
    return CpuMeter(pids, {os.stat(f"/run/netns/{name}").st_ino for name in lab.ns.values()})


def forwarded(lab: Lab) -> Counter:
    def count() -> dict[str, int]:
        status, metrics = helper_status(lab), lab.metrics(check=False) or {}
        return {"helper": status.tx_packets + status.rx_packets if status else 0,
                "gateway": int(sum(v for k, v in metrics.items()
                                   if k.startswith("m6t_gateway_packets_total")))}
    return count


def one_run(lab: Lab, test: Test, mode: str, target: str, ipv6: bool, seconds: float,
            meter: CpuMeter, note: str, out: Any) -> Run:
    tunnel = mode not in (DIRECT, *REFERENCES)
    with meter.measure(forwarded(lab) if tunnel else None) as cpu:
        run = test.measure(lab, target, ipv6, seconds)
    run.cpu = cpu
    print(f"  [{note}] {test.title:<22} {label(mode):<14} {show(test, run.value)}  "
          f"{detail_text(test, run)}; {cpu_text(run)}", file=out, flush=True)
    return run


def run_block(lab: Lab, tests: tuple[Test, ...], modes: list[tuple[str, str, bool]],
              seconds: float, repeat: int, out: Any) -> dict[str, dict[str, list[Run]]]:
    """Every test, `repeat` times, the modes alternating test by test."""
    meter = cpu_meter(lab)
    results: dict[str, dict[str, list[Run]]] = {t.key: {m: [] for m, _, _ in modes}
                                                for t in tests}
    for rep in range(repeat):
        for test in tests:
            for mode, target, ipv6 in modes:
                results[test.key][mode].append(one_run(lab, test, mode, target, ipv6, seconds,
                                                       meter, f"{rep + 1}/{repeat}", out))
    return results


def run_interleaved(lab: Lab, tests: tuple[Test, ...], variants: list[str], seconds: float,
                    repeat: int, offloads: dict[str, Any], out: Any
                    ) -> dict[str, dict[str, list[Run]]]:
    """Every test, `repeat` times: direct-nogso, then m6t with its default offloads and with
    each variant, the daemons restarted between them, so that configurations are compared
    within the same minute (this VM's speed drifts more than most techniques are worth)."""
    a = lab.addr
    settings: dict[str, str | None] = {MAIN: None, **{f"m6t[{v}]": v for v in variants}}
    results: dict[str, dict[str, list[Run]]] = {
        t.key: {m: [] for m in (DIRECT, *settings)} for t in tests}
    running = MAIN
    meter = cpu_meter(lab)
    for rep in range(repeat):
        for test in tests:
            note = f"{rep + 1}/{repeat}"
            results[test.key][DIRECT].append(one_run(lab, test, DIRECT, a.gw_wan, False,
                                                     seconds, meter, note, out))
            for mode, setting in settings.items():
                if mode != running:
                    stop_m6t(lab)
                    start_m6t(lab, setting)
                    warm_up(lab, [(mode, a.home_agent, True)])
                    running = mode
                    meter = cpu_meter(lab)
                    offloads.setdefault(mode, offload_state(lab))
                results[test.key][mode].append(one_run(lab, test, mode, a.home_agent, True,
                                                       seconds, meter, note, out))
    return results


def warm_up(lab: Lab, modes: list[tuple[str, str, bool]]) -> None:
    """Neighbour caches, the NAT mapping, routes; not counted."""
    for _, target, ipv6 in modes:
        ping(lab, target, ipv6, count=3)


def measure(lab: Lab, tests: tuple[Test, ...], seconds: float, repeat: int,
            refs: list[Reference], variants: list[str], strict_wire: bool, out: Any
            ) -> dict[str, Any]:
    a = lab.addr
    veths = offloads_off(lab, strict_wire)
    tunnel = start_m6t(lab, None)
    for ref in refs:
        start_bare_forwarder(lab, ref)
    start_iperf_servers(lab, refs)
    mtu = lab.ip("mn", "-o", "link", "show", "dev", "m6t0", check=False).stdout
    tunnel_mtu = re.search(r"mtu (\d+)", mtu)
    direct = (DIRECT, a.gw_wan, False)
    modes = [direct, (MAIN, a.home_agent, True)]
    modes += [(ref.mode, ref.target, True) for ref in refs]
    warm_up(lab, modes)
    print(f"lab {lab.tag}: tunnel {tunnel.address} via port {tunnel.port}, "
          f"mtu {tunnel_mtu.group(1) if tunnel_mtu else '?'}; iperf3 {seconds:g} s per run, "
          f"{repeat} run(s) each{'; strict wire' if strict_wire else ''}", file=out)
    offloads = {MAIN: offload_state(lab)}
    print(f"m6t offloads: helper {offloads[MAIN]['helper']}, "
          f"gateway {offloads[MAIN]['gateway']['on']}", file=out)
    results = run_block(lab, tests, modes, seconds, repeat, out)
    print(file=out)
    summary = summarize(tests, results, MAIN, out)
    status = helper_status(lab)
    metrics = lab.metrics(check=False) or {}
    gateway_drops = {k: v for k, v in metrics.items() if "drop" in k and v}
    helper_drops = status.drops if status else {}
    offloads[MAIN] = offload_state(lab)
    print(f"\nhelper drops: {helper_drops or 'none'}; gateway drops: "
          f"{gateway_drops or 'none'}", file=out)
    print(f"super-packets: helper coalesced {offloads[MAIN]['helper'] or {}}; gateway "
          f"{ {k: v for k, v in offloads[MAIN]['gateway'].items() if 'super' in k} }", file=out)
    blocks: dict[str, Any] = {}
    all_runs: dict[str, Any] = {MAIN: results}
    if variants:
        print(f"\n--- variants, interleaved with m6t and direct-nogso test by test (daemons "
              f"restarted with each M6T_OFFLOADS): {', '.join(variants)}", file=out)
        interleaved = run_interleaved(lab, tests, variants, seconds, repeat, offloads, out)
        for mode in (MAIN, *(f"m6t[{v}]" for v in variants)):
            view = {t.key: {DIRECT: interleaved[t.key][DIRECT], mode: interleaved[t.key][mode],
                            **{ref.mode: results[t.key][ref.mode] for ref in refs}}
                    for t in tests}
            print(file=out)
            blocks[mode] = summarize(tests, view, mode, out)
        all_runs["interleaved"] = interleaved
        print_techniques(tests, blocks, out)
    return {
        "summary": summary,
        "variants": blocks,
        "offloads": offloads,
        "runs": {block: {key: {mode: [asdict(r) for r in runs] for mode, runs in modes_.items()}
                         for key, modes_ in tests_.items()}
                 for block, tests_ in all_runs.items()},
        "veths": veths,
        "tunnel": {"address": tunnel.address, "port": tunnel.port,
                   "mtu": int(tunnel_mtu.group(1)) if tunnel_mtu else None,
                   "drops": helper_drops, "gateway_drops": gateway_drops},
    }


def print_techniques(tests: tuple[Test, ...], blocks: dict[str, Any], out: Any) -> None:
    """One line per configuration: each test's ratio to direct-nogso (ping: ms added) and the
    daemons' CPU per packet, so that what each technique buys reads down a column."""
    print("\nwhat each configuration gets (interleaved; ratio to direct-nogso; ping: ms added; "
          "CPU: helper/gateway us per packet)", file=out)
    print(f"{'configuration':<40}" + "".join(f"{t.key:>18}" for t in tests), file=out)
    for name, block in blocks.items():
        cells = []
        for test in tests:
            entry = block[test.key]
            figure = (f"{entry['added_ms']:+.3f}" if test.key == "ping"
                      else f"{entry['ratio']:.3f}")
            cpu = entry["cpu"]
            helper = "-" if cpu["helper_us"] is None else f"{cpu['helper_us']:.1f}"
            gateway = "-" if cpu["gateway_us"] is None else f"{cpu['gateway_us']:.1f}"
            cells.append(f"{figure} {helper}/{gateway}" if test.key != "ping" else figure)
        print(f"{name:<40}" + "".join(f"{c:>18}" for c in cells), file=out)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 s per iperf3 run, one repetition")
    parser.add_argument("--seconds", type=float, help="seconds per iperf3 run (default 5)")
    parser.add_argument("--repeat", type=int,
                        help="runs of each test, the best counts (default 2, --quick 1)")
    parser.add_argument("--only", metavar="TESTS",
                        help="comma-separated subset of: " + ",".join(t.key for t in TESTS))
    parser.add_argument("--no-bare", action="store_true",
                        help="skip the references (bench/bare_forwarder.py: bare, and "
                             "bare+offloads)")
    parser.add_argument("--experiment-shape", choices=sorted(EXPERIMENT_SHAPES), default="poll",
                        help="the threads of the bare+offloads reference (default poll)")
    parser.add_argument("--variants", metavar="LIST", default="",
                        help="M6T_OFFLOADS values to measure m6t with too, separated by "
                             "spaces or semicolons (e.g. 'off;-udp_gro;+tun_tso')")
    parser.add_argument("--strict-wire", action="store_true",
                        help="tx-udp-segmentation off on every veth too")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON on stdout (the table goes to stderr)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    repeat = args.repeat or (1 if args.quick else 2)
    if not 0.5 <= seconds <= 120 or not 1 <= repeat <= 10:
        parser.error("--seconds must be in 0.5..120 and --repeat in 1..10")
    keys = args.only.split(",") if args.only else [t.key for t in TESTS if t.default]
    unknown = set(keys) - {t.key for t in TESTS}
    if unknown:
        parser.error(f"unknown test(s): {', '.join(sorted(unknown))}")
    tests = tuple(t for t in TESTS if t.key in keys)
    variants = [v.strip() for v in re.split(r"[;\s]+", args.variants) if v.strip()]
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        parser.error(f"missing tools: {', '.join(missing)}")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, TUN devices, ethtool)")
    out = sys.stderr if args.json else sys.stdout
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT: even if inherited
        signal.signal(signum, _terminate)                           # as ignored (a background job)
    env = environment()
    print(f"m6t tunnel benchmark: {env['cpus']} x {env['cpu']}, kernel {env['kernel']}, "
          f"Python {env['python']}, {env['iperf3']}, git {env['git']}", file=out)
    idle_busy = box_busy()
    env["busy_before_percent"] = round(100 * idle_busy, 1)
    if idle_busy > 0.05:
        print(f"warning: the box is already {100 * idle_busy:.0f} % busy before the lab exists; "
              "other load skews every figure", file=out)
    started = time.monotonic()
    try:
        with Lab() as lab:
            refs = [] if args.no_bare else references(args.experiment_shape)
            results = measure(lab, tests, seconds, repeat, refs, variants, args.strict_wire,
                              out)
    except (LabError, BenchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; lab torn down", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    again = [f"--seconds {seconds:g} --repeat {repeat}"]
    if args.no_bare:
        again.append("--no-bare")
    elif args.experiment_shape != "poll":
        again.append(f"--experiment-shape {args.experiment_shape}")
    if args.only:
        again.append("--only " + ",".join(t.key for t in tests))
    if variants:
        again.append(f"--variants '{';'.join(variants)}'")
    if args.strict_wire:
        again.append("--strict-wire")
    print(f"\n{elapsed:.0f} s; reproduce with: sudo .venv/bin/python bench/tunnel.py "
          f"{' '.join(again)}", file=out)
    if args.json:
        json.dump({"environment": env, "seconds": seconds, "repeat": repeat,
                   "strict_wire": args.strict_wire, "elapsed_s": round(elapsed, 1), **results},
                  sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
