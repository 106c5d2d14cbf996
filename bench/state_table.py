"""Benchmark of the m6t-gateway state table (m6t.protocol.gateway.Gateway), on one core.

    .venv/bin/python bench/state_table.py [--quick] [--reps N]

Measures, in one invocation, on one pinned core (sizes below; --quick uses 20 000 states,
3 repetitions and no 1 000 000-state memory run, a few seconds in all):

* lookups/s: `receive_from_client` for packets whose source has an ACTIVE state, and
  `receive_from_home` for packets to an active state (the data path), over a table of
  100 000 active states, with pre-built packets visited in a shuffled order;
* creations/s: `receive_from_client` from unknown sources until 100 000 temporary states exist
  (a policy with effectively unlimited rates and caps, so the limiter is not the bottleneck;
  sources spread over many IPv4 addresses, four ports each);
* expiries/s: `expire(now)` once the clock has passed the lifetime of 100 000 states
  (temporary ones, and active ones, which also pay for one lazy re-filing each);
* bytes per active state, with 100 000 and 1 000 000 states, and with the largest size below
  100 000 at which the state dict has just doubled (its worst case) (tracemalloc, see
  `measure_memory`), cross-checked against the resident set size in a child process;
* baselines in the same run, since the machine is noisy: the same Python loop doing a bare
  `dict.get` (or insert, or delete) of 16-byte keys over the same number of keys. Ratios say
  how many bare dict operations one gateway operation costs.

Rates are the best of several repetitions (time.perf_counter). The garbage collector stays
enabled, as in the daemon. This is a measurement, not a test: the exit status is 0 whatever
the figures, non-zero only if something crashes or the gateway decides unexpectedly.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import linecache
import math
import os
import platform
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from m6t.protocol.gateway import FORWARD, Gateway, GatewayPolicy, StateKind, pack_peer
from m6t.protocol.packets import build_ipv6

TARGET_LOOKUPS_PER_SECOND = 500_000
TARGET_CREATIONS_PER_SECOND = 200_000
TARGET_BYTES_PER_STATE = 300

CLIENT_PREFIX = ipaddress.IPv6Network("fd6d:3674:1::/48")
HOME_AGENT = ipaddress.IPv6Address("2001:db8:4a::1")
HA = HOME_AGENT.packed
NEXT_HEADER_UDP = 17
PAYLOAD = bytes(32)  # a UDP header and a little data; the table only reads the IPv6 header
T0 = 1000.0  # the gateway's clock at the start of every scenario (seconds, monotonic)
# Odd multipliers: i -> i * MIX mod 2**bits is a bijection, so addresses and peers are
# distinct, random-looking and need no storage (the memory run must not hold them).
ADDRESS_MIX = 0x9E3779B97F4A7C15F39D
IPV4_MIX = 2654435761
CGNAT = int(ipaddress.IPv4Address("100.64.0.0"))  # 100.64.0.0/10: 4 Mi client addresses
PORTS_PER_IPV4 = 4  # lookups and creations: four ports (four clients behind a NAT) per IPv4

# Rates and caps out of the way: creations measure the table, not the rate limiter.
UNLIMITED = {
    "new_states_per_second": 1e12,
    "new_states_burst": 10**12,
    "max_states": 10**8,
    "max_temporary_states": 10**8,
    "max_rate_limiter_sources": 10**8,
}


def policy(**tuning: Any) -> GatewayPolicy:
    return GatewayPolicy(client_prefix=CLIENT_PREFIX, home_agents=frozenset({HOME_AGENT}),
                         **tuning)


_PREFIX_BYTES = CLIENT_PREFIX.network_address.packed[:6]


def client_address(i: int) -> bytes:
    return _PREFIX_BYTES + (i * ADDRESS_MIX % 2**80).to_bytes(10, "big")


def client_peer(i: int, ports_per_ipv4: int) -> int:
    """The i-th client's outside IPv4 address and port (distinct for every i)."""
    ipv4 = CGNAT + (i // ports_per_ipv4) * IPV4_MIX % 2**22
    port = 1024 + i * 7919 % 64512
    return pack_peer(ipv4.to_bytes(4, "big"), port)


def to_home(src: bytes) -> bytes:
    return build_ipv6(src, HA, NEXT_HEADER_UDP, PAYLOAD)


def from_home(dst: bytes) -> bytes:
    return build_ipv6(HA, dst, NEXT_HEADER_UDP, PAYLOAD)


class Unexpected(RuntimeError):
    """The gateway did not decide what the scenario needs: the figures would be meaningless."""


@dataclass
class Workload:
    """n clients' pre-built packets, in the order their states are created, and again in
    another random order for lookups. Visiting states in creation order would walk memory in
    allocation order, kinder to caches than a gateway's traffic is; the lookup packets are
    built anew in lookup order, so walking them is sequential, as a just-received packet is
    in cache: the states are cold, the packets are not."""

    n: int
    addresses: list[bytes]
    peers: list[int]
    up: list[tuple[bytes, int]]  # (client -> HA packet, peer)
    down: list[bytes]  # HA -> client packets
    keys: list[bytes]  # 16-byte keys equal to `addresses` but other objects, for baselines
    visit_up: list[tuple[bytes, int]]  # the same, in lookup order
    visit_down: list[bytes]
    visit_peers: list[int]
    visit_keys: list[bytes]

    @classmethod
    def build(cls, n: int, seed: int = 6) -> Workload:
        rng = random.Random(seed)
        order = rng.sample(range(n), n)
        addresses = [client_address(i) for i in order]
        peers = [client_peer(i, PORTS_PER_IPV4) for i in order]
        up = [(to_home(a), p) for a, p in zip(addresses, peers, strict=True)]
        down = [from_home(a) for a in addresses]
        keys = [packet[8:24] for packet, _ in up]
        visit = rng.sample(range(n), n)
        visit_up = [(to_home(addresses[i]), peers[i]) for i in visit]
        return cls(n, addresses, peers, up, down, keys, visit_up,
                   [from_home(addresses[i]) for i in visit], [peers[i] for i in visit],
                   [packet[8:24] for packet, _ in visit_up])


def active_gateway(work: Workload, gateway_policy: GatewayPolicy, span: float = 0.0) -> Gateway:
    """A gateway holding one active state per client of `work` (created, then confirmed by the
    HA), the clock running from T0 to T0 + span while they are made."""
    gateway = temporary_gateway(work, gateway_policy, span)
    receive = gateway.receive_from_home
    for i, (packet, peer) in enumerate(zip(work.down, work.peers, strict=True)):
        if receive(packet, T0 + i * span / work.n) != peer:
            raise Unexpected("receive_from_home did not confirm a temporary state")
    if gateway.counts() != {"temporary": 0, "active": work.n}:
        raise Unexpected(f"unexpected table: {gateway.counts()}")
    return gateway


def temporary_gateway(work: Workload, gateway_policy: GatewayPolicy,
                      span: float = 0.0) -> Gateway:
    gateway = Gateway(gateway_policy)
    receive = gateway.receive_from_client
    for i, (packet, peer) in enumerate(work.up):
        if receive(packet, peer, T0 + i * span / work.n) is not FORWARD:
            raise Unexpected(f"receive_from_client did not create a state: {gateway.drops}")
    return gateway


# --- timing ----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    ops: int
    seconds: float = math.inf  # best of the repetitions
    baseline: Row | None = None
    target: float | None = None  # ops/s

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    @property
    def ns(self) -> float:
        return self.seconds / self.ops * 1e9


@dataclass
class Scenario:
    row: Row
    run: Callable[[Any], object]  # timed
    setup: Callable[[], Any]  # untimed; its result is run's argument


def run_rounds(scenarios: list[Scenario], reps: int) -> None:
    """`reps` rounds, each running every scenario once, keeping each one's best time. Rounds
    interleave baselines and gateway work, so a noisy moment hits both rather than one."""
    for _ in range(reps):
        for scenario in scenarios:
            argument = scenario.setup()
            gc.collect()
            start = time.perf_counter()
            scenario.run(argument)
            elapsed = time.perf_counter() - start
            del argument
            scenario.row.seconds = min(scenario.row.seconds, elapsed)


@dataclass
class Memory:
    states: int
    after_build: float  # bytes/state, rate-limiter buckets included
    steady: float  # bytes/state once expire() has re-filed states and trimmed the limiter
    rss: float | None = None  # bytes/state of resident set size, child process
    breakdown: list[tuple[str, float]] = field(default_factory=list)


def measure_rates(n: int, reps: int) -> list[Row]:
    work = Workload.build(n)
    unlimited = policy(**UNLIMITED)

    # Baselines: the same loops with a bare dict and 16-byte keys.
    table = {address: object() for address in work.addresses}

    def bare_get(keys: Sequence[bytes]) -> None:
        get = table.get
        for key in keys:
            get(key)

    def sliced_get(packets: Sequence[bytes]) -> None:
        get = table.get
        for packet in packets:
            get(packet[24:40])

    def bare_insert(fresh: dict[bytes, object]) -> None:
        value = object()
        for key in work.keys:
            fresh[key] = value

    def bare_delete(copy: dict[bytes, object]) -> None:
        for key in work.keys:
            del copy[key]

    get_row = Row("baseline: dict.get, 16-byte key", n)
    insert_row = Row("baseline: dict[key] = v (new key)", n)
    delete_row = Row("baseline: del dict[key]", n)
    scenarios = [
        Scenario(get_row, bare_get, lambda: work.visit_keys),
        Scenario(Row("baseline: dict.get(packet[24:40])", n), sliced_get,
                 lambda: work.visit_down),
        Scenario(insert_row, bare_insert, dict),
        Scenario(delete_row, bare_delete, table.copy),
    ]

    # Lookups, the data path: every packet's address has an active state.
    lookups = active_gateway(work, unlimited)
    now = T0 + 1.0

    def check_lookups() -> None:
        for packet, peer in work.visit_up:
            if lookups.receive_from_client(packet, peer, now) is not FORWARD:
                raise Unexpected(f"client packet not forwarded: {lookups.drops}")
        for packet, peer in zip(work.visit_down, work.visit_peers, strict=True):
            if lookups.receive_from_home(packet, now) != peer:
                raise Unexpected(f"home packet not sent to its peer: {lookups.drops}")

    def client_lookups(pairs: Sequence[tuple[bytes, int]]) -> None:
        receive = lookups.receive_from_client
        for packet, peer in pairs:
            receive(packet, peer, now)

    def home_lookups(packets: Sequence[bytes]) -> None:
        receive = lookups.receive_from_home
        for packet in packets:
            receive(packet, now)

    scenarios += [
        Scenario(Row("receive_from_client, active state", n, baseline=get_row,
                     target=TARGET_LOOKUPS_PER_SECOND), client_lookups, lambda: work.visit_up),
        Scenario(Row("receive_from_home, active state", n, baseline=get_row,
                     target=TARGET_LOOKUPS_PER_SECOND), home_lookups, lambda: work.visit_down),
    ]

    # Creations: a fresh gateway each time, the clock advancing at the target rate.
    stamped = [(packet, peer, T0 + i / TARGET_CREATIONS_PER_SECOND)
               for i, (packet, peer) in enumerate(work.up)]

    def creations(gateway: Gateway) -> None:
        receive = gateway.receive_from_client
        for packet, peer, now in stamped:
            receive(packet, peer, now)
        if gateway.counts()[StateKind.TEMPORARY] != n:
            raise Unexpected(f"created {gateway.counts()} of {n}: {gateway.drops}")

    scenarios.append(Scenario(Row("receive_from_client, new source", n, baseline=insert_row,
                                  target=TARGET_CREATIONS_PER_SECOND),
                              creations, lambda: Gateway(unlimited)))

    # Expiries: states made over one simulated second; an untimed expire() at its end trims
    # the rate limiter (which expire() does every 10 s) so the timed one only expires states.
    def prepared(make: Callable[[], Gateway]) -> Callable[[], Gateway]:
        def setup() -> Gateway:
            gateway = make()
            if gateway.expire(T0 + 1.0) != 0:
                raise Unexpected("states expired early")
            return gateway
        return setup

    def expiry(at: float) -> Callable[[Gateway], None]:
        def run(gateway: Gateway) -> None:
            if gateway.expire(at) != n:
                raise Unexpected("expire() did not remove every state")
        return run

    scenarios += [
        Scenario(Row("expire(), temporary states", n, baseline=delete_row),
                 expiry(T0 + 1.0 + unlimited.temporary_lifetime + 0.1),
                 prepared(lambda: temporary_gateway(work, unlimited, span=1.0))),
        Scenario(Row("expire(), active states", n, baseline=delete_row),
                 expiry(T0 + 1.0 + unlimited.active_lifetime + 0.1),
                 prepared(lambda: active_gateway(work, unlimited, span=1.0))),
    ]

    check_lookups()
    run_rounds(scenarios, reps)
    check_lookups()
    return [scenario.row for scenario in scenarios]


# --- memory ----------------------------------------------------------------------------------

MEMORY_SPAN = 10.0  # simulated seconds over which the memory run's states are made


def fill_distinct(gateway: Gateway, n: int) -> None:
    """n active states, each a distinct IPv6 address from a distinct IPv4 address and port.

    Each packet is built, handed to the gateway and dropped before the next one, so nothing
    of it survives but what the gateway keeps (its address slices, the peer int).
    """
    receive_up, receive_down = gateway.receive_from_client, gateway.receive_from_home
    # build_ipv6 by template (the 1 000 000-state run under tracemalloc is slow enough).
    first = client_address(0)
    up_head, down_head = to_home(first)[:8], from_home(first)[:8]
    if up_head + first + HA + PAYLOAD != to_home(first) or \
            down_head + HA + first + PAYLOAD != from_home(first):
        raise Unexpected("packet templates differ from build_ipv6")
    join = b"".join
    for i in range(n):
        now = T0 + i * MEMORY_SPAN / n
        address = client_address(i)
        peer = client_peer(i, 1)
        if receive_up(join((up_head, address, HA, PAYLOAD)), peer, now) is not FORWARD:
            raise Unexpected(f"state {i} not created: {gateway.drops}")
        if receive_down(join((down_head, HA, address, PAYLOAD)), now) != peer:
            raise Unexpected(f"state {i} not confirmed: {gateway.drops}")


def memory_policy(n: int) -> GatewayPolicy:
    # The default rate limits (each IPv4 address makes one state) and lifetimes; room for n.
    return policy(max_states=max(n, 1))


def settle(gateway: Gateway, n: int) -> None:
    """What the daemon's next expire() does: re-file the now active states under their active
    deadline, trim refilled rate-limiter buckets. Nothing is old enough to go."""
    if gateway.expire(T0 + MEMORY_SPAN + gateway.policy.temporary_lifetime + 0.1) != 0:
        raise Unexpected("states expired during the memory run")
    if gateway.counts() != {"temporary": 0, "active": n}:
        raise Unexpected(f"unexpected table: {gateway.counts()}")


def measure_memory(n: int, breakdown: bool) -> Memory:
    """Bytes per active state, from tracemalloc's count of live traced bytes.

    tracemalloc starts before the gateway exists; the figure is the growth of traced memory
    from the empty gateway to the full one, after gc.collect(), divided by n. The packets are
    built and freed one at a time inside `fill_distinct`, so they are not live at either
    reading. tracemalloc counts requested bytes, not the allocator's rounding (see RSS).
    """
    gc.collect()
    tracemalloc.start(1)
    try:
        gateway = Gateway(memory_policy(n))
        gc.collect()
        empty = tracemalloc.get_traced_memory()[0]
        fill_distinct(gateway, n)
        gc.collect()
        built = tracemalloc.get_traced_memory()[0]
        settle(gateway, n)
        gc.collect()
        steady = tracemalloc.get_traced_memory()[0]
        lines: list[tuple[str, float]] = []
        if breakdown:
            snapshot = tracemalloc.take_snapshot()
            for stat in snapshot.statistics("lineno")[:12]:
                frame = stat.traceback[0]
                where = f"{os.path.relpath(frame.filename)}:{frame.lineno}"
                if stat.size >= n:  # at least a byte per state
                    lines.append((where, stat.size / n))
            del snapshot
    finally:
        tracemalloc.stop()
    del gateway
    gc.collect()
    return Memory(n, (built - empty) / n, (steady - empty) / n, breakdown=lines)


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_child(n: int) -> None:
    """Run in a fresh interpreter: resident-set growth per state, no tracemalloc."""
    gateway = Gateway(memory_policy(n))
    gc.collect()
    before = resident()
    fill_distinct(gateway, n)
    settle(gateway, n)
    gc.collect()
    print((resident() - before) / n)


def resize_point(limit: int) -> int:
    """The largest size <= limit at which a dict has just grown: the state table's worst
    bytes per entry (this Python's dict doubles; right after, half its slots are unused)."""
    probe: dict[int, None] = {}
    size, point = sys.getsizeof(probe), 1
    for i in range(limit):
        probe[i] = None
        if sys.getsizeof(probe) != size:
            size, point = sys.getsizeof(probe), i + 1
    return point


def measure_rss(n: int) -> float | None:
    try:
        done = subprocess.run([sys.executable, __file__, "--rss-child", str(n)],
                              capture_output=True, text=True, check=True)
        return float(done.stdout.strip())
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"(RSS cross-check failed: {exc})", file=sys.stderr)
        return None


# --- report ----------------------------------------------------------------------------------


def pin() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1]  # core 0 tends to take more interrupts
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core} of {os.cpu_count()}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(rows: list[Row], memories: list[Memory], n: int, reps: int, where: str,
           elapsed: float) -> None:
    print(f"m6t state table benchmark: Python {platform.python_version()}, {cpu_model()}, "
          f"{where}, best of {reps}, GC enabled")
    print(f"rates over {n:,} states; packets pre-built (40-byte IPv6 header + "
          f"{len(PAYLOAD)} bytes), visited in shuffled order")
    print()
    header = f"{'operation':<38} {'ops/s':>12} {'ns/op':>8} {'x bare dict':>12} " \
             f"{'target':>16} {'result':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.ns / row.baseline.ns:.1f}" if row.baseline else ""
        target = f">= {row.target:,.0f}/s" if row.target else ""
        result = verdict(row.rate >= row.target) if row.target else ""
        print(f"{row.name:<38} {row.rate:>12,.0f} {row.ns:>8.0f} {ratio:>12} "
              f"{target:>16} {result:>6}")
    print()
    print("'x bare dict': ns/op divided by that of the matching baseline row (dict.get for "
          "lookups,\ninsert of a new key for creations, delete for expiries), same loop, "
          "same keys, same run.")
    print()
    sizes = "".join(f"{f'{memory.states:,} states':>18}" for memory in memories)
    header = f"{'bytes per active state':<38}{sizes} {'target':>10} {'result':>8}"
    print(header)
    print("-" * len(header))
    worst = max(memory.steady for memory in memories)
    rss = [memory.rss for memory in memories if memory.rss is not None]
    for name, figures, result in (
            ("tracemalloc, steady state", [m.steady for m in memories],
             verdict(worst <= TARGET_BYTES_PER_STATE)),
            ("tracemalloc, + rate-limiter buckets", [m.after_build for m in memories], "info"),
            ("RSS growth, steady state", [m.rss for m in memories],
             "info" if not rss else "(within)" if max(rss) <= TARGET_BYTES_PER_STATE
             else "(over)")):
        cells = "".join(f"{'n/a' if f is None else f'{f:.0f}':>18}" for f in figures)
        target = f"<= {TARGET_BYTES_PER_STATE}" if result != "info" else ""
        print(f"{name:<38}{cells} {target:>10} {result:>8}")
    print()
    print("Method: tracemalloc starts before the gateway exists; the figure is the growth of "
          "live traced\nbytes from the empty gateway to n active states, after gc.collect(), "
          "divided by n. Each\nstate: a client packet (distinct IPv6 source, distinct IPv4 "
          "address and port) then an HA\nreply confirming it; both packets are built and "
          "freed inside the loop, so no packet is live\nat either reading (the breakdown below "
          "shows no packet-building line). 'steady state': after\nthe daemon's next expire() "
          "pass (states re-filed under their active deadline, refilled\nrate-limiter buckets "
          "trimmed). '+ rate-limiter buckets': before that pass (one bucket per\nIPv4 address "
          "seen lately, at most max_rate_limiter_sources). 'RSS growth': the same steady\n"
          "state in a fresh interpreter without tracemalloc, so allocator rounding (16-byte "
          "size\nclasses) and fragmentation left by the freed rate-limiter buckets are "
          "included. The first\nsize is the largest up to "
          f"{memories[1].states if len(memories) > 1 else memories[0].states:,} at which the "
          "state dict has just doubled (half its slots\nunused: the worst bytes per state "
          "nearby). The verdict is on the tracemalloc steady-state\nfigure at every size; "
          "RSS is information.")
    for memory in memories:
        if memory.breakdown:
            print()
            print(f"Where the bytes are ({memory.states:,} states, steady state, bytes/state, "
                  "by allocating line):")
            for where, size in memory.breakdown:
                path, _, line = where.rpartition(":")
                code = linecache.getline(path, int(line)).strip()
                print(f"  {size:7.1f}  {where:<36} {code[:60]}")
    print()
    print(f"({elapsed:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 000 states, 3 repetitions, no 1 000 000-state memory run")
    parser.add_argument("--reps", type=int, help="repetitions per rate (default 5, quick 3)")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child is not None:
        rss_child(args.rss_child)
        return 0

    start = time.perf_counter()
    where = pin()
    n = 20_000 if args.quick else 100_000
    reps = args.reps or (3 if args.quick else 5)
    memory_sizes = [resize_point(n), n] + ([] if args.quick else [1_000_000])

    rows = measure_rates(n, reps)
    memories = []
    for size in memory_sizes:
        memory = measure_memory(size, breakdown=size == n)
        memory.rss = measure_rss(size)
        memories.append(memory)
    report(rows, memories, n, reps, where, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
