"""m6t-gateway-health: is this gateway fit to hold the virtual address of a redundant pair?

keepalived (VRRP) runs it every second on both hosts of a pair (the sample configuration is
packaging/keepalived/keepalived.conf.sample, docs/operating.md explains the set-up); a host
whose check fails gives the virtual address up, and the other one takes it. Ready means:

1. the gateway says so: its metrics endpoint answers `m6t_gateway_ready 1` (the packet loop
   runs with its listen ports bound; a killed or stopping gateway answers nothing or 0);
2. its TUN device is up (an administrator's `ip link set m6tgw0 down` takes its route away);
3. a home agent answers an ICMPv6 echo from this host (the home side works).

Each step is bounded by one deadline for the whole check (`--timeout`, default 1 s), so the
command always ends in time for keepalived's next run. Exit status 0 ready, 1 not ready, 2 a
bad command line or configuration; one line on stdout says why.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import os
import select
import socket
import struct
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Run every second on both hosts of a pair, so it imports little (about 40 ms of CPU a run,
# where m6t.gateway.config and urllib would double it): the three keys it needs are read here
# (m6t-gateway --check validates the whole file), and HTTP is one GET on a plain socket.
DEFAULT_CONFIG = Path("/etc/m6t/gateway.toml")
DEFAULT_TUN = "m6tgw0"  # m6t.gateway.config.DEFAULT_TUN (a unit test keeps them equal)
DEFAULT_TIMEOUT = 1.0
ECHO_RESEND = 0.2  # s between echoes to each home agent while none answered
MAX_METRICS_BYTES = 1 << 20
READY = "m6t_gateway_ready"
START_TIME = "m6t_gateway_start_time_seconds"

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IFF_RUNNING = 0x40
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129


class HealthError(RuntimeError):
    """The check cannot be made as asked (no metrics endpoint configured, a bad URL)."""


# --- the probes (real ones; tests pass their own) -------------------------------------------------


def fetch_metrics(url: str, timeout: float) -> str:
    """The body of an HTTP GET of `url` ("http://IPV4:PORT/path"), within `timeout`; OSError
    when refused, timed out, or not a 200 answer."""
    deadline = time.monotonic() + timeout
    host, port, path = _split_url(url)
    with socket.create_connection((host, port), timeout=max(timeout, 0.01)) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        chunks: list[bytes] = []
        size = 0
        while size < MAX_METRICS_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "timed out reading the metrics")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise OSError(None, f"answered {b' '.join(status[1:]).decode(errors='replace') or '?'}")
    return body.decode("utf-8", "replace")


def _split_url(url: str) -> tuple[str, int, str]:
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host, _, port = authority.rpartition(":")
    if scheme != "http" or not host or not port.isdigit():
        raise HealthError(f"{url}: expected http://HOST:PORT/PATH")
    return host.strip("[]"), int(port), slash + path


def interface_flags(name: str) -> int | None:
    """The interface's flags (SIOCGIFFLAGS) in this process's network namespace, None if there
    is no such interface. An ioctl, not /sys: sysfs may show another namespace's devices."""
    request = struct.pack("16sH22x", name.encode()[:15], 0)  # struct ifreq, 40 bytes
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
    flags: int = struct.unpack_from("16sH", answer)[1]
    return flags


def _icmpv6_socket() -> socket.socket:
    """A raw ICMPv6 socket (root or CAP_NET_RAW), else a ping socket (a group allowed by
    net.ipv4.ping_group_range). The kernel fills in the checksum for both."""
    try:
        return socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    except PermissionError:
        return socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)


def echo_any(addresses: Sequence[str], timeout: float) -> tuple[str, float] | None:
    """ICMPv6 echo to every address at once, again every ECHO_RESEND s: the first to answer
    and its round-trip time in seconds, or None when none did within `timeout`."""
    token = os.urandom(8)
    identifier = int.from_bytes(os.urandom(2), "big")
    targets = {ipaddress.IPv6Address(a): str(a) for a in addresses}
    started = time.monotonic()
    deadline = started + timeout
    with _icmpv6_socket() as sock:
        sock.setblocking(False)
        sequence = 0
        sent_at: dict[int, float] = {}
        next_send = started
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None
            if now >= next_send:
                sent_at[sequence] = now
                request = struct.pack("!BBHHH", ICMPV6_ECHO_REQUEST, 0, 0, identifier,
                                      sequence) + token
                for address in targets.values():
                    # Unreachable right now (no route, no neighbour): the next round retries.
                    with contextlib.suppress(OSError):
                        sock.sendto(request, (address, 0))
                sequence = (sequence + 1) & 0xFFFF
                next_send = now + ECHO_RESEND
            wait = max(0.0, min(deadline, next_send) - time.monotonic())
            readable, _, _ = select.select([sock], [], [], wait)
            if not readable:
                continue
            try:
                message, source = sock.recvfrom(2048)
            except BlockingIOError:
                continue
            # A ping socket's kernel rewrites the identifier: the token is what is ours.
            if len(message) < 16 or message[0] != ICMPV6_ECHO_REPLY or message[8:16] != token:
                continue
            answered = targets.get(ipaddress.IPv6Address(source[0].split("%")[0]))
            replied_to = struct.unpack_from("!H", message, 6)[0]
            if answered is not None and replied_to in sent_at:
                return answered, time.monotonic() - sent_at[replied_to]


@dataclass(frozen=True)
class Probes:
    """How the check looks at the world: real probes by default, fakes in unit tests."""

    read_metrics: Callable[[str, float], str] = fetch_metrics
    link_flags: Callable[[str], int | None] = interface_flags
    echo: Callable[[Sequence[str], float], tuple[str, float] | None] = echo_any
    clock: Callable[[], float] = time.monotonic


# --- the check ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str  # the failed step, or a summary of what was found
    facts: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return f"{'ready' if self.ready else 'not ready'}: {self.reason}"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as {"name{labels}": value}; comments and junk lines skipped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, number = line.rpartition(" ")
        try:
            values[name] = float(number)
        except ValueError:
            continue
    return values


@dataclass(frozen=True)
class Target:
    """What the check needs from the gateway's configuration."""

    tun: str
    home_agents: tuple[str, ...]
    metrics_url: str | None


def read_target(path: Path) -> Target:
    """The keys `tun`, `home_agents` and `metrics_listen` of a gateway configuration;
    HealthError names what is wrong with them."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise HealthError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HealthError(f"{path} is not valid TOML: {exc}") from None
    tun = data.get("tun", DEFAULT_TUN)
    if not isinstance(tun, str) or not 1 <= len(tun) <= 15:
        raise HealthError(f"tun: {tun!r} is not an interface name")
    agents = data.get("home_agents")
    if not isinstance(agents, list) or not agents:
        raise HealthError("home_agents: expected a non-empty list of IPv6 addresses")
    try:
        home_agents = tuple(str(ipaddress.IPv6Address(a)) for a in agents)
    except (ValueError, TypeError):
        raise HealthError(f"home_agents: {agents!r} are not IPv6 addresses") from None
    url = None
    listen = data.get("metrics_listen")
    if listen is not None:
        host, _, port = str(listen).rpartition(":")
        url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/metrics"
    return Target(tun, home_agents, url)


def check(target: Target, url: str, timeout: float = DEFAULT_TIMEOUT,
          probes: Probes | None = None) -> Verdict:
    """Ready or not, and why; never longer than `timeout` (plus one probe's overrun)."""
    probes = probes or Probes()
    deadline = probes.clock() + timeout
    facts: dict[str, str] = {}

    try:
        text = probes.read_metrics(url, deadline - probes.clock())
    except OSError as exc:
        return Verdict(False, f"the gateway does not answer on {url}: "
                              f"{exc.strerror or exc}", facts)
    metrics = parse_metrics(text)
    if READY not in metrics:
        return Verdict(False, f"{url} has no {READY} (not an m6t gateway, or an older one)",
                       facts)
    if START_TIME in metrics:
        facts["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                         time.gmtime(metrics[START_TIME]))
    if metrics[READY] != 1:
        return Verdict(False, "the gateway is not serving (starting, reloading or stopping)",
                       facts)

    try:
        flags = probes.link_flags(target.tun)
    except OSError as exc:
        return Verdict(False, f"cannot read the flags of {target.tun}: {exc.strerror}", facts)
    if flags is None:
        return Verdict(False, f"no TUN device {target.tun} (another network namespace?)", facts)
    if flags & (IFF_UP | IFF_RUNNING) != IFF_UP | IFF_RUNNING:
        return Verdict(False, f"{target.tun} is down", facts)

    agents = sorted(target.home_agents)
    remaining = deadline - probes.clock()
    try:
        answer = probes.echo(agents, remaining) if remaining > 0 else None
    except OSError as exc:
        return Verdict(False, f"cannot send ICMPv6 echoes: {exc.strerror or exc} (needs root "
                              "or CAP_NET_RAW)", facts)
    if answer is None:
        return Verdict(False, f"no home agent answered an ICMPv6 echo within {timeout:g} s "
                              f"({', '.join(agents)})", facts)
    agent, rtt = answer
    facts["home_agent"] = agent
    facts["rtt_ms"] = f"{rtt * 1000:.2f}"
    since = f" since {facts['started']}" if "started" in facts else ""
    return Verdict(True, f"serving{since}, {target.tun} up, home agent {agent} answered in "
                         f"{rtt * 1000:.2f} ms", facts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="m6t-gateway-health",
        description="Exit 0 if the local m6t-gateway is fit to serve: it reports ready on its "
                    "metrics endpoint (listen ports bound, packet loop running), its TUN device "
                    "is up and a home agent answers an ICMPv6 echo; exit 1 otherwise. For "
                    "keepalived's vrrp_script (docs/operating.md). Needs root or CAP_NET_RAW "
                    "for the echo, and metrics_listen in the gateway's configuration.")
    parser.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG,
                        help=f"the gateway's TOML configuration (default {DEFAULT_CONFIG})")
    parser.add_argument("--metrics", metavar="URL",
                        help="the gateway's metrics URL (default: from metrics_listen)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds for the whole check (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if not 0 < args.timeout <= 60:
        parser.error("--timeout must be in (0, 60]")
    try:
        target = read_target(args.config)
        url = args.metrics or target.metrics_url
        if url is None:
            raise HealthError("metrics_listen is not set: the check reads the gateway's "
                              "readiness from its metrics endpoint (e.g. \"127.0.0.1:9464\")")
        _split_url(url)
    except HealthError as exc:
        print(f"m6t-gateway-health: {args.config}: {exc}", file=sys.stderr)
        return 2
    verdict = check(target, url, args.timeout)
    if not args.quiet:
        print(verdict.line(), flush=True)
    return 0 if verdict.ready else 1


if __name__ == "__main__":
    sys.exit(main())
