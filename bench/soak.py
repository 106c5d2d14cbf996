"""Gateway soak: a thousand clients behind the lab's NAT, churn, spoofers and a flood, for minutes.

    .venv/bin/python bench/soak.py [--quick] [--json PATH]      (root: it builds a lab)

The real m6t-gateway runs in the lab (m6t.lab), in front of a home agent; three agents, each a
process of this file in one namespace, make the load:

* clients (in mn, behind the NAT): `--clients` simulated clients, each its own UDP socket (its
  own port) and its own /80 (fd6d:6d74:1:5:<mn id>::/80) with 48 random bits. Four in five are
  busy (a UDP datagram to the home agent every `--interval` s, which answers it); one in five is
  idle (one datagram, then only keepalives, at most `keepalive` s apart with downward jitter as
  the helper sends them; an idle client whose keepalive goes unanswered takes a new address, as
  the helper's liveness check does). After the ramp-up, clients vanish (socket closed,
  no goodbye) and are replaced by new ones (a new /80: a new attachment), others change network
  (same /80, new random bits, new socket: a re-attachment), and spoofers open a fresh socket
  behind the same NAT (same IPv4 address, new port) to send a data packet and a keepalive with
  a live client's IPv6 source.
* home (in ha): the home agent's responder. It answers every datagram to its port, records the
  one-way latency client -> home agent, and sends one packet to each address whose client went
  away (vanished or moved), once neither side has used it for longer than the active lifetime
  (+3 s): the gateway must drop it as `no_state`, and must not bring the state back. (The
  clients agent tells it which addresses went away, and when, through a file.)
* attacker (in nat, from the NAT's other outside address, not masqueraded): floods of new
  random addresses in the client prefix from one IPv4 source, and spoofers from that other
  IPv4 address reusing the addresses of the long-lived "anchor" clients.

The last `active_lifetime + 3` s (the settle phase) carry steady traffic only, so that at the
end the gateway must hold exactly one active state per live client and no temporary state.

A spoof success is any of: (1) a spoofed datagram (payload tag SPOF, sent with a victim's IPv6
source from another IPv4 address or port) reaching the home agent; (2) the home agent's answer
to one (it answers them like any other) reaching the victim; (3) anything at all arriving on a
spoofer's socket (the gateway sent it the victim's traffic, or answered its keepalive: the state
was re-bound), each spoofer socket being read for 2 s after it sent. The soak also checks that
the gateway counted each spoofed data packet as `ipv4_mismatch` and each spoofed keepalive as
`keepalive_ipv4_mismatch`. Spoofers only target clients whose state is active at that moment
(answered in the last second), otherwise taking an expired address is the draft's normal case.

Latency: the sender stamps CLOCK_REALTIME into the payload just before send(); the receiver
takes the kernel's receive time-stamp (SO_TIMESTAMPNS). All namespaces share the clock, so
"up" is client send() -> home agent socket (NAT, gateway UDP in, the daemon, TUN, kernel
routing) and "down" is home agent send() -> client socket (TUN, the daemon, UDP out, NAT).

Bounded: every agent stops by itself at its deadline, floods are capped in count and time,
and the lab (namespaces, processes) is deleted at the end, even on failure. The gateway's RSS is
read from /proc every 2 s. The exit status is 0 when the invariants hold (no spoof success,
states as expected, RSS within bound), 1 otherwise.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import hashlib
import heapq
import ipaddress
import json
import random
import resource
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m6t.lab.client import udp_in_ipv6
from m6t.lab.lab import Lab, LabError, wait_for
from m6t.protocol.constants import NEXT_HEADER_NONE
from m6t.protocol.packets import build_ipv6, build_keepalive, check_ipv6, is_keepalive_reply

SITE = ipaddress.IPv6Network("fd6d:6d74:1::/48")
SUBNET_ID = 5  # the soak's clients live in fd6d:6d74:1:5::/64, one /80 (MN ID) each
HOME_PORT = 7000
GATEWAY_PORTS = (3544, 4500)
NEXT_HEADER_UDP = 17
PAYLOAD = struct.Struct("!4sIIQQ")  # tag, client id, sequence, sent at (ns), home sent at (ns)
DATA, SPOOF, STALE = b"DATA", b"SPOF", b"STAL"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SPOOFER_LISTEN = 2.0  # seconds a spoofer's socket is read after it sent
LOSS_AFTER = 3.0  # an answer later than this counts as lost
ANCHORS = 100  # clients 0..99 never vanish nor move: the outside attacker's victims
# RSS bound: the gateway's RSS at the end may exceed its RSS after the ramp-up by at most this
# much (one state is ~200 bytes, the daemon's per-sender cache ~150; see docs/performance.md).
RSS_GROWTH_BOUND = 8 * 1024 * 1024


@dataclass(frozen=True)
class Plan:
    duration: float
    clients: int
    ramp: float
    interval: float  # busy clients: one datagram per interval
    idle_share: float
    active_lifetime: float
    keepalive: float
    vanish_per_second: float
    reattach_per_second: float
    spoofs_per_second: float  # from behind the NAT
    outside_spoofs_per_second: float
    flood_every: float
    flood_seconds: float
    flood_rate: float  # datagrams/s in a flood
    flood_max: int  # datagrams per flood
    new_states_per_second: float
    new_states_burst: int

    @property
    def settle(self) -> float:
        return self.active_lifetime + 3.0

    @classmethod
    def make(cls, quick: bool, clients: int, duration: float | None) -> Plan:
        if quick:
            return cls(duration=duration or 60.0, clients=clients, ramp=5.0, interval=1.0,
                       idle_share=0.2, active_lifetime=10.0, keepalive=3.0,
                       vanish_per_second=5.0, reattach_per_second=3.0, spoofs_per_second=5.0,
                       outside_spoofs_per_second=2.0, flood_every=12.0, flood_seconds=2.0,
                       flood_rate=5000.0, flood_max=10_000, new_states_per_second=250.0,
                       new_states_burst=250)
        # The draft's timing: 30 s keepalives, the gateway's default 90 s active lifetime.
        return cls(duration=duration or 600.0, clients=clients, ramp=5.0, interval=1.0,
                   idle_share=0.2, active_lifetime=90.0, keepalive=30.0,
                   vanish_per_second=2.0, reattach_per_second=1.0, spoofs_per_second=5.0,
                   outside_spoofs_per_second=2.0, flood_every=30.0, flood_seconds=2.0,
                   flood_rate=5000.0, flood_max=10_000, new_states_per_second=250.0,
                   new_states_burst=250)


# --- shared by the agents ----------------------------------------------------------------------


def client_address(seed: int, client: int, generation: int) -> bytes:
    """Client `client`'s address after `generation` moves: its /80, then 48 bits that look
    random and that every agent can compute (the outside attacker knows the anchors')."""
    digest = hashlib.blake2b(f"{seed}:{client}:{generation}".encode(), digest_size=6).digest()
    prefix = int(SITE.network_address) | SUBNET_ID << 64 | (client + 1) << 48
    return (prefix | int.from_bytes(digest, "big")).to_bytes(16, "big")


def enable_timestamps(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def receive(sock: socket.socket) -> tuple[bytes, int, Any] | None:
    """One datagram, its kernel receive time (ns, CLOCK_REALTIME) and its sender."""
    try:
        data, ancillary, _flags, address = sock.recvmsg(65535, 64)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b"", 0, None  # an ICMP error surfacing (a closed port somewhere): no datagram
    stamp = 0
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            seconds, nanoseconds = struct.unpack_from("qq", value)
            stamp = seconds * 1_000_000_000 + nanoseconds
    return data, stamp or time.time_ns(), address


def percentiles(samples: array.array[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max of samples in microseconds, in milliseconds."""
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"count": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99),
            "p99.9": at(0.999), "max": ordered[-1] / 1000}


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- agent: the clients, behind the NAT --------------------------------------------------------


@dataclass
class Client:
    id: int
    generation: int
    address: bytes
    sock: socket.socket
    busy: bool
    anchor: bool
    sequence: int = 0
    answered: bool = False
    last_answer: float = 0.0  # monotonic
    last_sent: float = 0.0  # wall clock (shared by the agents)
    keepalive_pending: bool = False  # a keepalive not answered yet
    outstanding: dict[int, float] = field(default_factory=dict)  # sequence -> sent (monotonic)


class Clients:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = ipaddress.IPv6Address(args.home_agent).packed
        self.rng = random.Random(args.seed)
        self.poll = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.spoofers: dict[int, socket.socket] = {}
        self.live: dict[int, Client] = {}
        self.next_id = 0
        self.timers: list[tuple[float, int, str, int, int]] = []  # due, serial, kind, id, gen
        self.serial = 0
        self.down_us = array.array("q")
        self.rtt_us = array.array("q")
        self.counts = dict.fromkeys((
            "data_sent", "answers", "lost", "in_flight_at_vanish", "keepalives_sent",
            "keepalive_answers", "vanished", "new_clients", "reattached", "spoofs_sent",
            "spoofed_keepalives_sent", "spoof_answers_to_victims", "spoofer_receipts",
            "send_errors", "late_answers", "stale_to_live", "keepalives_unanswered",
            "liveness_reattached"), 0)
        self.gone = open(args.gone, "a", buffering=1)  # noqa: SIM115 - open for the whole run

    # --- clients ---

    def open_socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        enable_timestamps(sock)
        sock.bind(("0.0.0.0", 0))
        sock.connect((self.args.gateway, port))
        return sock

    def start_client(self, now: float, anchor: bool = False) -> Client:
        client_id = self.next_id
        self.next_id += 1
        busy = anchor or self.rng.random() >= self.args.idle_share
        port = GATEWAY_PORTS[client_id % len(GATEWAY_PORTS)]
        client = Client(client_id, 0, client_address(self.args.seed, client_id, 0),
                        self.open_socket(port), busy, anchor)
        self.attach(client, now)
        self.counts["new_clients"] += 1
        return client

    def attach(self, client: Client, now: float) -> None:
        self.live[client.id] = client
        self.by_fd[client.sock.fileno()] = client
        self.poll.register(client.sock.fileno(), select.EPOLLIN)
        self.send_data(client, now)
        # Busy clients: one datagram per interval; idle ones: keepalives once answered.
        self.schedule(now + self.jitter(self.args.interval if client.busy
                                        else self.args.keepalive), "tick", client)

    def detach(self, client: Client) -> None:
        """The client's socket closes; its address is gone (the home agent is told when it
        was last used, to probe it once the gateway must have forgotten it)."""
        self.gone.write(f"{ipaddress.IPv6Address(client.address)} {client.last_sent}\n")
        self.poll.unregister(client.sock.fileno())
        del self.by_fd[client.sock.fileno()]
        client.sock.close()
        self.counts["in_flight_at_vanish"] += len(client.outstanding)
        client.outstanding.clear()

    def vanish(self, now: float) -> None:
        client = self.pick(now, movable=True)
        if client is None:
            return
        self.detach(client)
        del self.live[client.id]
        self.counts["vanished"] += 1
        self.start_client(now)  # the population stays the same: someone new attaches

    def reattach(self, now: float, client: Client | None = None) -> None:
        """A network change: same /80, 48 new random bits, a new socket (a new NAT mapping)."""
        client = client or self.pick(now, movable=True)
        if client is None:
            return
        self.detach(client)
        client.keepalive_pending = False
        client.generation += 1
        client.address = client_address(self.args.seed, client.id, client.generation)
        client.sock = self.open_socket(GATEWAY_PORTS[client.id % len(GATEWAY_PORTS)])
        client.answered = False
        self.counts["reattached"] += 1
        self.attach(client, now)

    def pick(self, now: float, movable: bool) -> Client | None:
        """A random live client; for spoofing, one whose state is surely active now."""
        candidates = list(self.live.values())
        for _ in range(20):
            client = self.rng.choice(candidates)
            if movable and client.anchor:
                continue
            if not movable and not (client.answered and now - client.last_answer < 1.0):
                continue
            return client
        return None

    def jitter(self, seconds: float) -> float:
        return seconds * self.rng.uniform(0.9, 1.1)

    def schedule(self, due: float, kind: str, client: Client) -> None:
        self.serial += 1
        heapq.heappush(self.timers, (due, self.serial, kind, client.id, client.generation))

    # --- sending ---

    def send(self, sock: socket.socket, packet: bytes, client: Client | None = None) -> bool:
        try:
            sock.send(packet)
        except OSError:
            self.counts["send_errors"] += 1
            return False
        if client is not None:
            client.last_sent = time.time()
        return True

    def send_data(self, client: Client, now: float) -> None:
        client.sequence += 1
        payload = PAYLOAD.pack(DATA, client.id, client.sequence, time.time_ns(), 0)
        packet = udp_in_ipv6(client.address, self.home, 40000, HOME_PORT, payload)
        if self.send(client.sock, packet, client):
            client.outstanding[client.sequence] = now
            self.counts["data_sent"] += 1

    def tick(self, client: Client, now: float) -> None:
        if client.busy or not client.answered:
            self.send_data(client, now)
            self.schedule(now + self.jitter(self.args.interval), "tick", client)
        elif client.keepalive_pending:
            # No answer to the last keepalive: what the helper's liveness check does next is
            # take a new address (the NAT mapping is probably gone).
            self.counts["keepalives_unanswered"] += 1
            self.counts["liveness_reattached"] += 1
            self.reattach(now, client)
        else:
            if self.send(client.sock, build_keepalive(client.address), client):
                self.counts["keepalives_sent"] += 1
                client.keepalive_pending = True
            # "never more than 30 s apart when idle, with downward jitter" (DESIGN.md): a
            # keepalive later than the NAT's UDP timeout (30 s on Linux) finds no mapping.
            self.schedule(now + self.args.keepalive * self.rng.uniform(0.8, 0.97), "tick", client)

    def spoof(self, now: float) -> None:
        """A live client's IPv6 source from a new socket behind the same NAT: same IPv4
        address, another port (and either gateway port)."""
        victim = self.pick(now, movable=False)
        if victim is None:
            return
        sock = self.open_socket(self.rng.choice(GATEWAY_PORTS))
        payload = PAYLOAD.pack(SPOOF, victim.id, 0, time.time_ns(), 0)
        if self.send(sock, udp_in_ipv6(victim.address, self.home, 40000, HOME_PORT, payload)):
            self.counts["spoofs_sent"] += 1
        if self.send(sock, build_keepalive(victim.address)):
            self.counts["spoofed_keepalives_sent"] += 1
        self.spoofers[sock.fileno()] = sock
        self.poll.register(sock.fileno(), select.EPOLLIN)
        self.serial += 1
        heapq.heappush(self.timers, (now + SPOOFER_LISTEN, self.serial, "close_spoofer",
                                     sock.fileno(), 0))

    # --- receiving ---

    def readable(self, fd: int) -> None:
        spoofer = self.spoofers.get(fd)
        if spoofer is not None:
            while (got := receive(spoofer)) is not None:
                if got[0]:
                    self.counts["spoofer_receipts"] += 1
            return
        client = self.by_fd.get(fd)
        if client is None:
            return
        while (got := receive(client.sock)) is not None:
            data, stamp, _ = got
            if data:
                self.answer(client, data, stamp)

    def answer(self, client: Client, packet: bytes, stamp: int) -> None:
        if check_ipv6(packet) is not None or packet[24:40] != client.address:
            return
        now = time.monotonic()
        if is_keepalive_reply(packet):
            self.counts["keepalive_answers"] += 1
            client.last_answer = now
            client.keepalive_pending = False
            return
        if packet[6] != NEXT_HEADER_UDP or len(packet) < 48 + PAYLOAD.size:
            return
        tag, client_id, sequence, sent_at, home_sent_at = PAYLOAD.unpack_from(packet, 48)
        if tag == STALE:
            # A packet for an address its client had left, delivered: the gateway forwarded
            # it on a state that should have expired (or a new client took the address).
            self.counts["stale_to_live"] += 1
            return
        if tag == SPOOF:
            self.counts["spoof_answers_to_victims"] += 1
            return
        if tag != DATA or client_id != client.id:
            return
        sent = client.outstanding.pop(sequence, None)
        if sent is None:
            self.counts["late_answers"] += 1
            return
        self.counts["answers"] += 1
        client.answered = True
        client.last_answer = now
        self.down_us.append((stamp - home_sent_at) // 1000)
        self.rtt_us.append((stamp - sent_at) // 1000)

    def sweep(self, now: float) -> None:
        for client in self.live.values():
            late = [s for s, sent in client.outstanding.items() if now - sent > LOSS_AFTER]
            for sequence in late:
                del client.outstanding[sequence]
            self.counts["lost"] += len(late)

    # --- the run ---

    def run(self) -> dict[str, Any]:
        args = self.args
        start = time.monotonic()
        end = start + args.duration
        churn_end = end - args.settle
        ready_at: float | None = None
        next_start, started = start, 0
        accumulated = {"vanish": 0.0, "reattach": 0.0, "spoof": 0.0}
        rates = {"vanish": args.vanish_per_second, "reattach": args.reattach_per_second,
                 "spoof": args.spoofs_per_second}
        last_churn = last_sweep = start
        live_at_churn_end: int | None = None
        while (now := time.monotonic()) < end:
            # Ramp-up: clients start evenly over `ramp` seconds.
            while started < args.clients and next_start <= now:
                self.start_client(now, anchor=started < ANCHORS)
                started += 1
                next_start = start + started * args.ramp / args.clients
            if ready_at is None and started == args.clients and \
                    all(c.answered for c in self.live.values()):
                ready_at = now
                Path(args.ready).write_text(json.dumps({"at": time.time(),
                                                        "after": now - start}))
            if ready_at is None and now - start > args.ramp + 20:
                ready_at = now  # go on; the end check will say what is missing
                Path(args.ready).write_text(json.dumps({"at": time.time(), "after": now - start,
                                                        "incomplete": True}))
            # Churn and spoofs, at their rates, between ready and the settle phase.
            if ready_at is not None and now < churn_end:
                elapsed = now - last_churn
                for kind, action in (("vanish", self.vanish), ("reattach", self.reattach),
                                     ("spoof", self.spoof)):
                    accumulated[kind] += rates[kind] * elapsed
                    while accumulated[kind] >= 1:
                        accumulated[kind] -= 1
                        action(now)
            elif live_at_churn_end is None and now >= churn_end:
                live_at_churn_end = len(self.live)
            last_churn = now
            while self.timers and self.timers[0][0] <= now:
                _, _, kind, key, generation = heapq.heappop(self.timers)
                if kind == "close_spoofer":
                    sock = self.spoofers.pop(key)
                    # Whatever is queued still counts.
                    while (got := receive(sock)) is not None:
                        if got[0]:
                            self.counts["spoofer_receipts"] += 1
                    self.poll.unregister(key)
                    sock.close()
                    continue
                client = self.live.get(key)
                if client is not None and client.generation == generation:
                    self.tick(client, now)
            if now - last_sweep >= 1.0:
                self.sweep(now)
                last_sweep = now
            wait = 0.05 if not self.timers else min(0.05, max(0.0, self.timers[0][0] - now))
            for fd, _mask in self.poll.poll(wait):
                self.readable(fd)
        # The last answers: stop sending, keep reading for a moment.
        drain_end = time.monotonic() + 1.5
        while (now := time.monotonic()) < drain_end:
            for fd, _mask in self.poll.poll(max(0.0, drain_end - now)):
                self.readable(fd)
        for sock in self.spoofers.values():
            while (got := receive(sock)) is not None:
                if got[0]:
                    self.counts["spoofer_receipts"] += 1
        self.sweep(time.monotonic() + LOSS_AFTER + 1)  # whatever is still unanswered is lost
        return {
            "counts": self.counts,
            "live_clients": len(self.live),
            "live_answered": sum(c.answered for c in self.live.values()),
            "busy": sum(c.busy for c in self.live.values()),
            "ready_after": None if ready_at is None else ready_at - start,
            "down_ms": percentiles(self.down_us), "rtt_ms": percentiles(self.rtt_us),
        }


def run_clients(args: argparse.Namespace) -> int:
    raise_fd_limit()
    result = Clients(args).run()
    Path(args.out).write_text(json.dumps(result))
    return 0


# --- agent: the home agent's responder ---------------------------------------------------------


def run_home(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    enable_timestamps(sock)
    sock.bind(("::", HOME_PORT))
    sock.setblocking(False)
    Path(args.ready).write_text("listening")
    up_us = array.array("q")
    counts = dict.fromkeys(("data", "spoofs_received", "stale_probes", "other"), 0)
    heard: dict[str, float] = {}  # address -> when we last answered it (wall clock)
    probes: list[tuple[float, str]] = []  # (when, address): addresses gone, to probe once
    deadline = time.monotonic() + args.duration
    stop = Path(args.stop)
    gone = Path(args.gone)
    gone_offset = 0
    next_look = time.monotonic()
    while (now := time.monotonic()) < deadline and not stop.exists():
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            for _ in range(512):
                got = receive(sock)
                if got is None:
                    break
                data, stamp, address = got
                if len(data) < PAYLOAD.size or address is None:
                    continue
                tag, client_id, sequence, sent_at, _ = PAYLOAD.unpack_from(data)
                if tag == DATA:
                    counts["data"] += 1
                    up_us.append((stamp - sent_at) // 1000)
                elif tag == SPOOF:
                    counts["spoofs_received"] += 1  # a spoof success: the gateway let it in
                else:
                    counts["other"] += 1
                    continue
                # Answer like any server would, spoofs included (where it goes says who the
                # gateway thinks owns the address).
                reply = PAYLOAD.pack(tag, client_id, sequence, sent_at, time.time_ns())
                with contextlib.suppress(OSError):
                    sock.sendto(reply, address)
                heard[address[0]] = time.time()
        if now >= next_look:
            next_look = now + 0.5
            # Addresses whose clients went away: once neither side has used one for longer
            # than the active lifetime, the gateway has no state for it any more, and must drop
            # what the home side sends (no_state) without bringing the state back.
            with gone.open("rb") as lines:
                lines.seek(gone_offset)
                *complete, _partial = lines.read().split(b"\n")
            for line in complete:
                gone_offset += len(line) + 1
                address, last_sent = line.decode().split()
                last = max(float(last_sent), heard.pop(address, 0.0))
                heapq.heappush(probes, (last + args.stale_after, address))
            wall = time.time()
            while probes and probes[0][0] <= wall:
                _, address = heapq.heappop(probes)
                with contextlib.suppress(OSError):
                    sock.sendto(PAYLOAD.pack(STALE, 0, 0, 0, time.time_ns()), (address, 40000))
                    counts["stale_probes"] += 1
    Path(args.out).write_text(json.dumps({"counts": counts, "up_ms": percentiles(up_us)}))
    return 0


# --- agent: the attacker outside the NAT -------------------------------------------------------


def run_attacker(args: argparse.Namespace) -> int:
    home = ipaddress.IPv6Address(args.home_agent).packed
    rng = random.Random(args.seed + 1)
    counts: dict[str, float] = dict.fromkeys((
        "flood_sent", "floods", "flood_seconds", "spoofs_sent", "spoofed_keepalives_sent",
        "spoofer_receipts", "send_errors"), 0)
    listening: list[tuple[float, socket.socket]] = []
    start = time.monotonic()
    deadline = min(start + args.duration, start + 3600)
    next_flood = start + 2.0
    next_spoof = start
    base = int(SITE.network_address)

    def drain(sock: socket.socket) -> None:
        while (got := receive(sock)) is not None:
            if got[0]:
                counts["spoofer_receipts"] += 1

    while (now := time.monotonic()) < deadline:
        if now >= next_flood:
            # New random addresses of the client prefix from one IPv4 source (one socket per
            # flood: the port does not matter to a per-IPv4 budget). Capped in count and time.
            flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            flood.bind((args.bind, 0))
            flood.connect((args.gateway, GATEWAY_PORTS[0]))
            flood.setblocking(False)
            sent, flood_start = 0, time.monotonic()
            flood_end = min(flood_start + args.flood_seconds, deadline)
            while sent < args.flood_max and (t := time.monotonic()) < flood_end:
                due = int((t - flood_start) * args.flood_rate) + 1
                while sent < min(due, args.flood_max):
                    src = (base | rng.getrandbits(80)).to_bytes(16, "big")
                    try:
                        flood.send(build_ipv6(src, home, NEXT_HEADER_NONE, b""))
                    except OSError:
                        counts["send_errors"] += 1
                        break
                    sent += 1
                time.sleep(0.002)
            counts["flood_seconds"] += time.monotonic() - flood_start
            flood.close()
            counts["flood_sent"] += sent
            counts["floods"] += 1
            next_flood += args.flood_every
        if now >= next_spoof:
            # An anchor's address (a client that never moves) from this other IPv4 address.
            victim = rng.randrange(ANCHORS)
            address = client_address(args.seed, victim, 0)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            enable_timestamps(sock)
            sock.bind((args.bind, 0))
            sock.connect((args.gateway, rng.choice(GATEWAY_PORTS)))
            payload = PAYLOAD.pack(SPOOF, victim, 0, time.time_ns(), 0)
            try:
                sock.send(udp_in_ipv6(address, home, 40000, HOME_PORT, payload))
                counts["spoofs_sent"] += 1
                sock.send(build_keepalive(address))
                counts["spoofed_keepalives_sent"] += 1
            except OSError:
                counts["send_errors"] += 1
            listening.append((now + SPOOFER_LISTEN, sock))
            next_spoof += 1.0 / args.spoofs_per_second
        for _, sock in listening:
            drain(sock)
        while listening and listening[0][0] <= now:
            drain(listening[0][1])
            listening.pop(0)[1].close()
        time.sleep(0.01)
    for _, sock in listening:
        drain(sock)
        sock.close()
    Path(args.out).write_text(json.dumps({"counts": counts}))
    return 0


# --- the driver --------------------------------------------------------------------------------


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise LabError(f"no VmRSS for {pid}")


def udp_kernel_drops(lab: Lab, role: str) -> int:
    """UDP datagrams the kernel of a namespace dropped for a full receive buffer."""
    lines = [line.split() for line in lab.run(role, ["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Udp:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("RcvbufErrors")])


def delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict[str, int]:
    return {key[len(prefix):].split('"')[1]: int(after[key] - before.get(key, 0))
            for key in after if key.startswith(prefix)}


def agent(lab: Lab, role: str, name: str, args: list[str]) -> Any:
    return lab.spawn(role, [sys.executable, str(Path(__file__).resolve()), "--agent", name,
                            *args], log_name=f"soak-{name}")


def drive(plan: Plan, seed: int, progress: bool) -> dict[str, Any]:
    def say(text: str) -> None:
        if progress:
            print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    started = time.monotonic()
    with Lab() as lab:
        a = lab.addr
        gateway = lab.start_gateway(new_states_per_second=plan.new_states_per_second,
                                    new_states_burst=plan.new_states_burst,
                                    active_lifetime=plan.active_lifetime, log_level="warning")
        pid = gateway.pid  # ip netns exec replaced itself with the daemon
        rss: list[tuple[float, int]] = [(0.0, rss_of(pid))]
        before = lab.metrics()
        assert before is not None
        kernel_before = {role: udp_kernel_drops(lab, role) for role in ("gw", "mn", "ha")}
        work = lab.workdir
        (work / "gone.txt").write_text("")  # the clients' addresses that went away, and when
        common = ["--seed", str(seed), "--home-agent", a.home_agent, "--gone",
                  str(work / "gone.txt")]
        home = agent(lab, "ha", "home", [*common, "--ready", str(work / "home.ready"),
                                         "--out", str(work / "home.json"),
                                         "--stop", str(work / "home.stop"),
                                         "--duration", str(plan.duration + 60),
                                         "--stale-after", str(plan.active_lifetime + 3)])
        wait_for(lambda: (work / "home.ready").exists() or home.poll() is not None, 10,
                 "the home agent's responder")
        clients = agent(lab, "mn", "clients", [
            *common, "--gateway", a.gw_wan, "--ready", str(work / "clients.ready"),
            "--out", str(work / "clients.json"), "--duration", str(plan.duration),
            "--settle", str(plan.settle), "--clients", str(plan.clients),
            "--ramp", str(plan.ramp), "--interval", str(plan.interval),
            "--idle-share", str(plan.idle_share), "--keepalive", str(plan.keepalive),
            "--vanish-per-second", str(plan.vanish_per_second),
            "--reattach-per-second", str(plan.reattach_per_second),
            "--spoofs-per-second", str(plan.spoofs_per_second)])
        clients_start = time.monotonic()
        say(f"gateway up (pid {pid}), {plan.clients} clients ramping up")
        wait_for(lambda: (work / "clients.ready").exists() or clients.poll() is not None,
                 plan.ramp + 30, "the clients to be answered")
        ready = json.loads((work / "clients.ready").read_text())
        ramped = time.monotonic() - started
        rss.append((ramped, rss_of(pid)))
        rss_ramp = rss[-1][1]
        # The kernel's own packets into a fresh TUN (MLD reports for the groups it joins) are
        # no_state drops too; they are over by now, and no client has gone away yet.
        after_ramp = lab.metrics()
        assert after_ramp is not None
        say(f"ramp-up done after {ready['after']:.1f}s; churn, spoofers and floods")
        churn_left = plan.duration - plan.settle - (time.monotonic() - clients_start)
        attacker = agent(lab, "nat", "attacker", [
            *common, "--gateway", a.gw_wan, "--bind", a.outsider,
            "--out", str(work / "attacker.json"), "--duration", str(max(churn_left, 0.0)),
            "--flood-every", str(plan.flood_every), "--flood-seconds", str(plan.flood_seconds),
            "--flood-rate", str(plan.flood_rate), "--flood-max", str(plan.flood_max),
            "--spoofs-per-second", str(plan.outside_spoofs_per_second)])
        next_sample = time.monotonic() + 2
        middle_at = clients_start + plan.duration / 2
        rss_middle: int | None = None
        hard_stop = clients_start + plan.duration + 60
        settle_said = False
        while clients.poll() is None:
            now = time.monotonic()
            if now > hard_stop:
                raise LabError("the clients agent overran its deadline")
            if now >= next_sample:
                rss.append((now - started, rss_of(pid)))
                next_sample += 2
                if rss_middle is None and now >= middle_at:
                    rss_middle = rss[-1][1]
                    say(f"middle: gateway RSS {rss_middle / 2**20:.1f} MiB")
            if not settle_said and now >= clients_start + plan.duration - plan.settle:
                settle_said = True
                say("settle phase: steady traffic only")
            time.sleep(0.2)
        after = lab.metrics()
        assert after is not None
        rss.append((time.monotonic() - started, rss_of(pid)))
        rss_end = rss[-1][1]
        (work / "home.stop").write_text("stop")
        for process, name in ((attacker, "attacker"), (home, "home"), (clients, "clients")):
            if process.wait(30) != 0:
                raise LabError(f"soak agent {name} failed: {lab.log('soak-' + name)}")
        kernel = {role: udp_kernel_drops(lab, role) - kernel_before[role]
                  for role in ("gw", "mn", "ha")}
        gateway_alive = gateway.poll() is None
        results = {name: json.loads((work / f"{name}.json").read_text())
                   for name in ("clients", "home", "attacker")}
        gateway_log = lab.log("gateway")
    prefix_drops = "m6t_gateway_drops_total{"
    return {
        "plan": plan.__dict__, "seed": seed, "seconds": time.monotonic() - started,
        "ramp_seconds": ready["after"], "ready": ready,
        "forwarded": delta(before, after, "m6t_gateway_packets_total{"),
        "drops": {k: v for k, v in delta(before, after, prefix_drops).items() if v},
        "no_state_after_ramp": delta(after_ramp, after, prefix_drops)["no_state"],
        "send_failures": {k: v for k, v in delta(before, after,
                                                 "m6t_gateway_send_failures_total{").items()
                          if v},
        "states": {"active": int(after['m6t_gateway_states{kind="active"}']),
                   "temporary": int(after['m6t_gateway_states{kind="temporary"}'])},
        "rss": {"start": rss[0][1], "ramp": rss_ramp, "middle": rss_middle or rss_ramp,
                "end": rss_end, "max": max(r for _, r in rss), "series": rss},
        "kernel_udp_drops": kernel, "gateway_alive": gateway_alive,
        "gateway_traceback": "Traceback" in gateway_log, **results,
    }


def verdicts(report: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """Each invariant: (holds, what was seen)."""
    clients, home, attacker = report["clients"], report["home"], report["attacker"]
    c, h, x = clients["counts"], home["counts"], attacker["counts"]
    successes = (h["spoofs_received"] + c["spoof_answers_to_victims"] + c["spoofer_receipts"]
                 + x["spoofer_receipts"])
    drops = report["drops"]
    spoofed_data = c["spoofs_sent"] + x["spoofs_sent"]
    spoofed_keepalives = c["spoofed_keepalives_sent"] + x["spoofed_keepalives_sent"]
    lost_in_kernel = report["kernel_udp_drops"]["gw"]
    plan = report["plan"]
    # Temporary states a flood can create: its source's burst (refilled between floods, which
    # are further apart than burst / rate), then the rate for as long as floods last; one token
    # of slack per flood.
    flood_states = x["flood_sent"] - drops.get("rate_limited", 0) \
        - drops.get("too_many_temporary", 0)
    flood_budget = (plan["new_states_burst"] + 1) * x["floods"] \
        + plan["new_states_per_second"] * x["flood_seconds"]
    rss = report["rss"]
    sent = c["data_sent"] - c["in_flight_at_vanish"]
    return {
        "no spoof success": (successes == 0, f"{successes} of {spoofed_data} spoofed data "
                             f"packets and {spoofed_keepalives} spoofed keepalives"),
        "every spoofed packet dropped as ipv4_mismatch": (
            lost_in_kernel > 0 or (drops.get("ipv4_mismatch", 0) == spoofed_data
                                   and drops.get("keepalive_ipv4_mismatch", 0)
                                   == spoofed_keepalives),
            f"ipv4_mismatch {drops.get('ipv4_mismatch', 0)} (sent {spoofed_data}), "
            f"keepalive_ipv4_mismatch {drops.get('keepalive_ipv4_mismatch', 0)} "
            f"(sent {spoofed_keepalives})"),
        "states at the end as expected": (
            report["states"] == {"active": clients["live_clients"], "temporary": 0}
            and clients["live_answered"] == clients["live_clients"],
            f"active {report['states']['active']} (live clients {clients['live_clients']}), "
            f"temporary {report['states']['temporary']} (expected 0)"),
        "flood held to its IPv4 budget": (
            flood_states <= flood_budget,
            f"{flood_states} states from {x['flood_sent']} flood datagrams "
            f"(budget {flood_budget:.0f})"),
        "stale packets from home dropped as no_state": (
            report["no_state_after_ramp"] == h["stale_probes"] and c["stale_to_live"] == 0,
            f"no_state {report['no_state_after_ramp']} after the ramp-up, stale packets "
            f"{h['stale_probes']} (reached a client: {c['stale_to_live']})"),
        "RSS flat": (rss["end"] - rss["ramp"] <= RSS_GROWTH_BOUND,
                     f"end - after ramp-up = {(rss['end'] - rss['ramp']) / 2**20:+.2f} MiB "
                     f"(bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB)"),
        "legitimate traffic answered": (c["lost"] <= max(10, sent // 1000),
                                        f"{c['lost']} of {sent} lost (bound 0.1 %)"),
        "gateway alive, no traceback": (report["gateway_alive"]
                                        and not report["gateway_traceback"], ""),
    }


def print_report(report: dict[str, Any]) -> None:
    plan = report["plan"]
    c = report["clients"]["counts"]
    h = report["home"]["counts"]
    x = report["attacker"]["counts"]
    mib = 2**20
    print(f"m6t gateway soak: {plan['clients']} clients, {plan['duration']:.0f} s "
          f"({report['seconds']:.0f} s with set-up), seed {report['seed']}, "
          f"active lifetime {plan['active_lifetime']:.0f} s, keepalive {plan['keepalive']:.0f} s")
    print(f"ramp-up: all {plan['clients']} answered after {report['ramp_seconds']:.1f} s")
    print()
    print("load offered:")
    print(f"  data datagrams {c['data_sent']:,} (answered {c['answers']:,}, lost {c['lost']}, "
          f"in flight when their client vanished {c['in_flight_at_vanish']})")
    print(f"  keepalives {c['keepalives_sent']:,} (answered {c['keepalive_answers']:,}; idle "
          f"clients that took a new address after an unanswered one: "
          f"{c['liveness_reattached']})")
    print(f"  new attachments: {c['new_clients']:,} clients "
          f"({c['new_clients'] - plan['clients']:,} after the ramp-up), "
          f"{c['reattached']:,} re-attachments (network changes); {c['vanished']:,} vanished")
    print(f"  spoofers behind the NAT: {c['spoofs_sent']:,} data + "
          f"{c['spoofed_keepalives_sent']:,} keepalives; from another IPv4: "
          f"{x['spoofs_sent']:,} + {x['spoofed_keepalives_sent']:,}")
    print(f"  floods: {x['floods']} from one IPv4 source, {x['flood_sent']:,} datagrams of "
          f"new addresses in {x['flood_seconds']:.1f} s")
    print(f"  packets from home to addresses gone for longer than the active lifetime: "
          f"{h['stale_probes']:,}")
    print()
    fwd = report["forwarded"]
    print(f"forwarded: from clients {fwd.get('from_client', 0):,}, to clients "
          f"{fwd.get('to_client', 0):,}")
    print("dropped, by reason: " + (", ".join(f"{k} {v:,}" for k, v in
                                              sorted(report["drops"].items())) or "none"))
    startup = report["drops"].get("no_state", 0) - report["no_state_after_ramp"]
    print(f"  (of no_state, {startup} before the ramp-up ended: the kernel's own packets into "
          "the fresh TUN, MLD reports)")
    if report["send_failures"]:
        print("send failures: " + ", ".join(f"{k} {v:,}" for k, v in
                                            sorted(report["send_failures"].items())))
    print("kernel UDP receive-buffer drops: " + ", ".join(
        f"{k} {v}" for k, v in report["kernel_udp_drops"].items()))
    print(f"states at the end: active {report['states']['active']}, temporary "
          f"{report['states']['temporary']} (expected: active = {report['clients']['live_clients']}"
          " live clients, temporary 0)")
    rss = report["rss"]
    print(f"gateway RSS: start {rss['start'] / mib:.1f} MiB, after ramp-up {rss['ramp'] / mib:.1f}"
          f", middle {rss['middle'] / mib:.1f}, end {rss['end'] / mib:.1f}, max "
          f"{rss['max'] / mib:.1f} MiB")
    for name, figures in (("up (client -> home agent)", report["home"]["up_ms"]),
                          ("down (home agent -> client)", report["clients"]["down_ms"]),
                          ("round trip", report["clients"]["rtt_ms"])):
        if figures:
            print(f"latency {name}: p50 {figures['p50']:.3f} ms, p90 {figures['p90']:.3f}, "
                  f"p99 {figures['p99']:.3f}, p99.9 {figures['p99.9']:.3f}, max "
                  f"{figures['max']:.1f} ms ({figures['count']:,} samples)")
    print()
    for name, (holds, seen) in verdicts(report).items():
        print(f"{'PASS' if holds else 'FAIL'}  {name}{': ' + seen if seen else ''}")


def agent_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--agent", choices=("clients", "home", "attacker"))
    for name, kind in (("seed", int), ("home-agent", str), ("gateway", str), ("bind", str),
                       ("ready", str), ("out", str), ("stop", str), ("gone", str),
                       ("duration", float),
                       ("settle", float), ("clients", int), ("ramp", float),
                       ("interval", float), ("idle-share", float), ("keepalive", float),
                       ("vanish-per-second", float), ("reattach-per-second", float),
                       ("spoofs-per-second", float), ("stale-after", float),
                       ("flood-every", float), ("flood-seconds", float),
                       ("flood-rate", float), ("flood-max", int)):
        parser.add_argument(f"--{name}", type=kind)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--agent" in argv:
        args = agent_parser().parse_args(argv)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        return {"clients": run_clients, "home": run_home, "attacker": run_attacker}[
            args.agent](args)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="about a minute (10 s active lifetime) instead of ten")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--duration", type=float, help="seconds of load (600, quick 60)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path, help="also write the full report here")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if not 10 <= args.clients <= 5000:
        parser.error("--clients must be 10..5000")
    plan = Plan.make(args.quick, args.clients, args.duration)
    if plan.duration < plan.settle + plan.ramp + 10 or plan.duration > 3600:
        parser.error(f"--duration must be {plan.settle + plan.ramp + 10:.0f}..3600 s")
    report = drive(plan, args.seed, progress=not args.quiet)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print_report(report)
    return 0 if all(holds for holds, _ in verdicts(report).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
