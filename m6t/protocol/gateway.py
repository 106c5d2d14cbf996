"""The tunnel gateway's state table and forwarding decisions (sans-I/O).

Implements "Route management on the tunnel GW" and "Security Considerations / Against the GW"
of draft-ebalard-mext-m6t-02. A state binds a client's IPv6 address to the IPv4 address and UDP
port it was first seen from. States are temporary (created by a valid client packet, short
lifetime) or active (confirmed by a packet from the HA, idle lifetime refreshed by traffic
either way and by keepalives). They are never updated.

A peer (the client's outside IPv4 address and UDP port as the gateway sees them, i.e. after
NAT, plus which of the gateway's listening ports it talks to, since replies must leave from
that port) is one int: IPv4 << 24 | port << 8 | listener. Ints are small and hash fast.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import math
from collections import Counter
from dataclasses import dataclass, field

from m6t.protocol.constants import (
    DEFAULT_TUNNEL_MTU,
    ENCAPSULATION_OVERHEAD,
    IPV6_MINIMUM_MTU,
    KEEPALIVE_ADDRESS,
    NEXT_HEADER_NONE,
)
from m6t.protocol.drops import DropReason
from m6t.protocol.limits import (
    DEFAULT_ACTIVE_LIFETIME,
    DEFAULT_MAX_STATES,
    DEFAULT_NEW_STATES_BURST,
    DEFAULT_NEW_STATES_PER_SECOND,
    DEFAULT_TEMPORARY_LIFETIME,
    MAX_CLIENT_MTU_ENTRIES,
    MAX_RATE_LIMITER_SOURCES,
    PACKET_TOO_BIG_BURST,
    PACKET_TOO_BIG_PER_SECOND,
    RATE_LIMITER_TRIM_INTERVAL,
    TEMPORARY_SHARE_OF_STATES,
)
from m6t.protocol.packets import build_keepalive_reply, build_packet_too_big, check_ipv6
from m6t.protocol.ratelimit import TokenBuckets

Peer = int
"""A client's outside (post-NAT) IPv4 address, UDP port and our listener index, packed."""

# Expiry runs on a coarse wheel: a state is gone at most one tick after its deadline.
EXPIRY_TICK = 0.01


MAX_LISTENERS = 256


def pack_peer(ipv4: bytes, port: int, listener: int = 0) -> Peer:
    return int.from_bytes(ipv4, "big") << 24 | port << 8 | listener


def unpack_peer(peer: Peer) -> tuple[bytes, int, int]:
    """(IPv4 address, UDP port, listener index)."""
    return (peer >> 24).to_bytes(4, "big"), peer >> 8 & 0xFFFF, peer & 0xFF


def peer_ipv4(peer: Peer) -> int:
    """The part of a peer that rate limits count: "not considering the source port"."""
    return peer >> 24


class StateKind(enum.StrEnum):
    TEMPORARY = "temporary"
    ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class Drop:
    reason: DropReason


@dataclass(frozen=True, slots=True)
class Reply:
    """Send this packet back where the triggering packet came from (keepalive reply to the
    client over UDP, or a Packet Too Big into the TUN towards the home side)."""

    packet: bytes


class Forward:
    """Pass the packet on unchanged (client -> TUN)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD = Forward()
_DROPS = {reason: Drop(reason) for reason in DropReason}


@dataclass(frozen=True)
class GatewayPolicy:
    """What the operator configures; validated here so that a daemon cannot run a bad one."""

    client_prefix: ipaddress.IPv6Network
    home_agents: frozenset[ipaddress.IPv6Address]
    temporary_lifetime: float = DEFAULT_TEMPORARY_LIFETIME
    active_lifetime: float = DEFAULT_ACTIVE_LIFETIME
    new_states_per_second: float = DEFAULT_NEW_STATES_PER_SECOND
    new_states_burst: int = DEFAULT_NEW_STATES_BURST
    max_states: int = DEFAULT_MAX_STATES
    max_temporary_states: int = 0  # 0: a tenth of max_states
    mtu: int = DEFAULT_TUNNEL_MTU
    icmp_source: ipaddress.IPv6Address | None = None  # None: the client prefix's first address
    max_rate_limiter_sources: int = MAX_RATE_LIMITER_SOURCES
    packet_too_big_per_second: float = PACKET_TOO_BIG_PER_SECOND
    _home_agent_bytes: frozenset[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        def problem(key: str, why: str) -> ValueError:
            return ValueError(f"{key}: {why}")

        if not self.home_agents:
            raise problem("home_agents", "at least one home agent is needed")
        for home_agent in self.home_agents:
            if home_agent in self.client_prefix:
                raise problem("home_agents", f"{home_agent} is inside client_prefix")
        if not 0 < self.temporary_lifetime <= 60:
            raise problem("temporary_lifetime", "must be in (0, 60] seconds")
        if not self.temporary_lifetime < self.active_lifetime <= 86400:
            raise problem("active_lifetime", "must exceed temporary_lifetime, at most a day")
        if not (math.isfinite(self.new_states_per_second) and self.new_states_per_second > 0):
            raise problem("new_states_per_second", "must be a finite number > 0")
        if not (math.isfinite(self.packet_too_big_per_second)
                and self.packet_too_big_per_second > 0):
            raise problem("packet_too_big_per_second", "must be a finite number > 0")
        for key in ("temporary_lifetime", "active_lifetime"):
            if not math.isfinite(getattr(self, key)):
                raise problem(key, "must be a finite number")
        if self.new_states_burst < 1:
            raise problem("new_states_burst", "must be >= 1")
        if self.max_states < 1:
            raise problem("max_states", "must be >= 1")
        if not 0 <= self.max_temporary_states <= self.max_states:
            raise problem("max_temporary_states", "must be between 0 and max_states")
        if not IPV6_MINIMUM_MTU <= self.mtu <= 65535 - ENCAPSULATION_OVERHEAD:
            raise problem("mtu", f"must be between {IPV6_MINIMUM_MTU} and 65507")
        if self.max_temporary_states == 0:
            object.__setattr__(self, "max_temporary_states",
                               max(1, self.max_states // TEMPORARY_SHARE_OF_STATES))
        if self.icmp_source is None:
            object.__setattr__(self, "icmp_source", self.client_prefix.network_address + 1)
        object.__setattr__(self, "_home_agent_bytes",
                           frozenset(address.packed for address in self.home_agents))


class TunnelState:
    """One binding. Deliberately tiny (no kind: the table it sits in says which). `address`
    is the very bytes object used as the key in the table and the expiry wheel, so a state
    holds its 16 bytes once however it moves between tables."""

    __slots__ = ("address", "expires_at", "peer")

    def __init__(self, address: bytes, peer: Peer, expires_at: float) -> None:
        self.address = address
        self.peer = peer
        self.expires_at = expires_at


@dataclass(frozen=True, slots=True)
class StateView:
    """A state as shown to operators and tests."""

    address: ipaddress.IPv6Address
    kind: StateKind
    peer: Peer
    expires_at: float


class Gateway:
    """Decides, for each packet, forward / reply / drop-with-reason, and expires states.

    `receive_from_client(packet, peer, now)` for a datagram's payload from UDP;
    `receive_from_home(packet, now)` for a packet read from the TUN;
    `expire(now)` when `next_deadline()` is reached.
    """

    def __init__(self, policy: GatewayPolicy) -> None:
        # Every reason present from the start: readers in other threads copy it safely.
        self.drops: Counter[DropReason] = Counter(dict.fromkeys(DropReason, 0))
        self._temporary: dict[bytes, TunnelState] = {}
        self._active: dict[bytes, TunnelState] = {}
        # Expiry wheel: tick -> addresses whose deadline falls in it, plus a heap of ticks.
        # A state refreshed since it was filed is re-filed when its tick comes (lazy), so a
        # packet never touches the wheel and expiry never scans the whole table.
        self._wheel: dict[int, list[bytes]] = {}
        self._ticks: list[int] = []
        self._client_mtu: dict[Peer, int] = {}
        self._next_trim = 0.0
        self._adopt(policy)

    def apply_policy(self, policy: GatewayPolicy, now: float) -> None:
        """Adopt a new policy (SIGHUP). Existing states stay; lifetimes apply from their next
        refresh, and states outside a narrowed prefix age out without being refreshed.

        The expiry wheel only ever learns of deadlines moving later (see `expire`). A shorter
        lifetime would let a refresh move one earlier than the tick its state is filed under,
        and the state would outlive its lifetime; so every state is filed again, no later than
        `now` plus the new active lifetime, which no refresh from now on can undercut.
        """
        self._adopt(policy)
        latest = now + policy.active_lifetime
        self._wheel.clear()
        self._ticks.clear()
        for table in (self._active, self._temporary):
            for address, state in table.items():
                self._file(address, min(state.expires_at, latest))

    def _adopt(self, policy: GatewayPolicy) -> None:
        self.policy = policy
        self._active_lifetime = policy.active_lifetime  # read per packet: one lookup, not two
        prefix = policy.client_prefix
        self._prefix_bytes = prefix.network_address.packed[: prefix.prefixlen // 8]
        remainder = prefix.prefixlen % 8
        self._prefix_partial = (
            (prefix.prefixlen // 8, (0xFF << (8 - remainder)) & 0xFF,
             prefix.network_address.packed[prefix.prefixlen // 8]) if remainder else None)
        self._home_agents = policy._home_agent_bytes
        self._icmp_source = policy.icmp_source.packed if policy.icmp_source else b""
        self._new_states = TokenBuckets(policy.new_states_per_second, policy.new_states_burst,
                                        policy.max_rate_limiter_sources)
        self._packet_too_big_budget = TokenBuckets(policy.packet_too_big_per_second,
                                            PACKET_TOO_BIG_BURST, 1)

    # --- packets from a client (UDP side) --------------------------------------------------------

    def receive_from_client(self, packet: bytes, peer: Peer, now: float) -> Forward | Reply | Drop:
        """Forward this client's packet home, answer it (a keepalive), or drop it.

        The decision depends only on `peer`, the packet's well-formedness (check_ipv6), its
        source and destination (bytes 8-40) and the tables. A FORWARD leaves the tables so that
        a packet alike in those returns FORWARD again at the same `now`; the daemon relies on
        this to skip the core for the rest of a flow within one batch.
        """
        reason = check_ipv6(packet)
        if reason is not None:
            return self._drop(reason)
        src = packet[8:24]
        dst = packet[24:40]
        state = self._active.get(src)
        if dst == KEEPALIVE_ADDRESS:
            return self._keepalive(packet, src, state, peer, now)
        if not packet.startswith(self._prefix_bytes, 8) or (
                self._prefix_partial is not None and not self._in_client_prefix(packet)):
            return self._drop(DropReason.SRC_OUTSIDE_PREFIX)
        if dst not in self._home_agents:
            return self._drop(DropReason.DST_NOT_HOME_AGENT)
        if state is not None:
            # "address-related information ... in states (active or temporary) are never
            # updated ... if the source address of an IPv6 packet received over UDP matches an
            # existing state but there is a mismatch in IPv4-related information, the packet
            # should be dropped" (Route management on the tunnel GW)
            if state.peer != peer:
                return self._drop(DropReason.IPV4_MISMATCH)
            # "An active state has a longer lifetime which is extended each time traffic is
            # exchanged with the MN (data or keep-alive messages)."
            state.expires_at = now + self._active_lifetime
            return FORWARD
        state = self._temporary.get(src)
        if state is not None:
            if state.peer != peer:
                return self._drop(DropReason.IPV4_MISMATCH)
            return FORWARD  # a retransmission: forwarded, but a temporary state never grows
        return self._create_temporary(src, peer, now)

    def _in_client_prefix(self, packet: bytes) -> bool:
        if not packet.startswith(self._prefix_bytes, 8):
            return False
        partial = self._prefix_partial
        if partial is None:
            return True
        index, mask, value = partial
        return packet[8 + index] & mask == value

    def _keepalive(self, packet: bytes, src: bytes, state: TunnelState | None, peer: Peer,
                   now: float) -> Reply | Drop:
        # "the specific destination address (fe80::1) and the absence of upper layer (next
        # header set to 59) indicate the packet is a keep-alive message." (Maintaining NAT
        # states)
        if packet[6] != NEXT_HEADER_NONE or len(packet) != 40:
            return self._drop(DropReason.BAD_KEEPALIVE)
        # "It verifies an active state exists for the source address in the packet and that
        # the IPv4 parameters match the state. If this is the case, it replies with a similar
        # message but with the addresses reversed. Otherwise, it silently drops the packet."
        if state is None:
            return self._drop(DropReason.KEEPALIVE_NO_STATE)
        if state.peer != peer:
            return self._drop(DropReason.KEEPALIVE_IPV4_MISMATCH)
        state.expires_at = now + self.policy.active_lifetime
        return Reply(build_keepalive_reply(packet))

    def _create_temporary(self, src: bytes, peer: Peer, now: float) -> Forward | Drop:
        # "A temporary state is created when a valid UDP-encapsulated IPv6 packet is received
        # from a MN and the IPv6 address is not already known." Caps are checked before the
        # rate limiter so that a full table does not also burn the client's budget.
        if len(self._temporary) + len(self._active) >= self.policy.max_states:
            return self._drop(DropReason.TABLE_FULL)
        if len(self._temporary) >= self.policy.max_temporary_states:
            return self._drop(DropReason.TOO_MANY_TEMPORARY)
        # "Creation of such states should also be rate-limited on a per IPv4 address basis
        # (not considering the source port)" (Against the GW)
        if not self._new_states.take(peer >> 24, now):
            return self._drop(DropReason.RATE_LIMITED)
        expires_at = now + self.policy.temporary_lifetime
        self._temporary[src] = TunnelState(src, peer, expires_at)
        self._file(src, expires_at)
        return FORWARD

    # --- packets from the home side (TUN) --------------------------------------------------------

    def receive_from_home(self, packet: bytes, now: float) -> Peer | Reply | Drop:
        """Where to send this packet: the client's peer, a Packet Too Big back home, or a drop.

        Once this returns a peer, a well-formed packet to the same destination and no larger
        than client_mtu(peer) returns the same peer at the same `now`, whatever its source;
        the daemon relies on this to skip the core for the rest of a flow within one batch.
        """
        reason = check_ipv6(packet)
        if reason is not None:
            return self._drop(reason)
        dst = packet[24:40]
        # "first verifies if an active state exists for that destination ... If no active state
        # exists, then, a lookup at the temporary states is performed: if one is found, it is
        # marked active and used." (Protocol operations)
        state = self._active.get(dst)
        if state is None:
            state = self._temporary.get(dst)
            if state is None:
                return self._drop(DropReason.NO_STATE)
            # "A temporary state becomes active when a packet from the HA to the MN is
            # processed": only a home agent confirms, or anyone on the home side could.
            if packet[8:24] not in self._home_agents:
                return self._drop(DropReason.NOT_FROM_HOME_AGENT)
            del self._temporary[dst]
            self._active[state.address] = state
        state.expires_at = now + self._active_lifetime
        if self._client_mtu and len(packet) > self._client_mtu.get(state.peer, 65535):
            return self._packet_too_big(packet, self._client_mtu[state.peer], now)
        if len(packet) > self.policy.mtu:
            return self._packet_too_big(packet, self.policy.mtu, now)
        return state.peer

    def _packet_too_big(self, packet: bytes, mtu: int, now: float) -> Reply | Drop:
        # "Reception of ICMP Packet too big messages from IPv4 routers on the path may be used
        # to locally update the MTU of the path." (MTU considerations) The HA learns it from us.
        if not self._packet_too_big_budget.take(None, now):
            return self._drop(DropReason.PACKET_TOO_BIG_RATE_LIMITED)
        self.drops[DropReason.TOO_BIG] += 1
        return Reply(build_packet_too_big(self._icmp_source, mtu, packet))

    def lower_client_mtu(self, peer: Peer, ipv4_path_mtu: int) -> int | None:
        """An ICMPv4 "fragmentation needed" said the IPv4 path to `peer` carries `ipv4_path_mtu`.
        Returns the client's new tunnel MTU if it went down, else None."""
        current = self.client_mtu(peer)
        lowered = max(IPV6_MINIMUM_MTU, ipv4_path_mtu - ENCAPSULATION_OVERHEAD)
        if lowered >= current:
            return None
        # Bounded: ICMP errors are easy to forge, so the oldest entry makes room.
        if peer not in self._client_mtu and len(self._client_mtu) >= MAX_CLIENT_MTU_ENTRIES:
            del self._client_mtu[next(iter(self._client_mtu))]
        self._client_mtu[peer] = lowered
        return lowered

    def client_mtu(self, peer: Peer) -> int:
        """The largest packet sent to `peer` without a Packet Too Big."""
        return min(self._client_mtu.get(peer, self.policy.mtu), self.policy.mtu)

    # --- expiry ---

    def _file(self, address: bytes, expires_at: float, at_least: int = 0) -> None:
        # `at_least`: a state re-filed while its tick is processed goes to a later tick, so
        # `expire` always moves on.
        tick = max(int(expires_at / EXPIRY_TICK) + 1, at_least)
        bucket = self._wheel.get(tick)
        if bucket is None:
            self._wheel[tick] = [address]
            heapq.heappush(self._ticks, tick)
        else:
            bucket.append(address)

    def next_deadline(self) -> float | None:
        """When `expire` next has work to do, or None with an empty table."""
        return self._ticks[0] * EXPIRY_TICK if self._ticks else None

    def expire(self, now: float) -> int:
        """Remove states whose lifetime has passed; returns how many went."""
        removed = 0
        ticks, wheel = self._ticks, self._wheel
        # Compare in the same terms as `next_deadline` (tick * EXPIRY_TICK), so expiring at
        # exactly the announced deadline always does the work (no float round-trip miss).
        while ticks and ticks[0] * EXPIRY_TICK <= now:
            tick = heapq.heappop(ticks)
            for address in wheel.pop(tick):
                table = self._active if address in self._active else self._temporary
                state = table.get(address)
                if state is None:
                    continue
                if state.expires_at <= now:
                    del table[address]
                    if self._client_mtu:
                        self._client_mtu.pop(state.peer, None)
                    removed += 1
                else:
                    self._file(address, state.expires_at, at_least=tick + 1)
        if now >= self._next_trim:
            self._new_states.forget_refilled(now)
            self._next_trim = now + RATE_LIMITER_TRIM_INTERVAL
        return removed

    # --- views ---

    def _drop(self, reason: DropReason) -> Drop:
        self.drops[reason] += 1
        return _DROPS[reason]

    def counts(self) -> dict[StateKind, int]:
        return {StateKind.TEMPORARY: len(self._temporary), StateKind.ACTIVE: len(self._active)}

    def lookup(self, address: ipaddress.IPv6Address) -> StateView | None:
        key = address.packed
        for kind, table in ((StateKind.ACTIVE, self._active),
                            (StateKind.TEMPORARY, self._temporary)):
            state = table.get(key)
            if state is not None:
                return StateView(address, kind, state.peer, state.expires_at)
        return None

    def states(self) -> list[StateView]:
        return [StateView(ipaddress.IPv6Address(key), kind, s.peer, s.expires_at)
                for kind, table in ((StateKind.ACTIVE, self._active),
                                    (StateKind.TEMPORARY, self._temporary))
                for key, s in table.items()]
