"""The client's side of the core, driven with bytes and a fake clock: no sockets, no sleeps.

Packet checks both ways ("Maintaining NAT states", and the TUN's kernel chatter), the port race
("Protocol operations", "Multiple tunnel interfaces on a MN"), the keepalive and liveness timers
("Maintaining NAT states") and the MTU helpers ("MTU considerations") of
draft-ebalard-mext-m6t-02. The client/gateway pair over a fake link is in test_client_pair.py.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.client import (
    PROBE_MARKER,
    Inbound,
    Liveness,
    LivenessMonitor,
    PortRace,
    RaceCandidate,
    build_probe,
    check_from_tun,
    classify_from_gateway,
    mtu_probe_sizes,
    tunnel_mtu_for_route,
)
from m6t.protocol.constants import (
    DEFAULT_TUNNEL_MTU,
    IPV6_MINIMUM_MTU,
    KEEPALIVE_INTERVAL,
    NEXT_HEADER_ICMPV6,
    NEXT_HEADER_NONE,
)
from m6t.protocol.drops import DropReason
from m6t.protocol.packets import (
    build_echo,
    build_ipv6,
    build_keepalive,
    build_keepalive_reply,
    echo_reply_for,
    parse_echo,
)
from tests.unit.helpers import ScriptedRandbits, bounded

PREFIX = TunnelPrefix.parse("fd6d:6d74:1:0:1::/80")
HOME_AGENT = ipaddress.IPv6Address("fd48:4100::2").packed
HOME_HOST = ipaddress.IPv6Address("fd48:4100::99").packed  # home side, but not the HA
OURS = PREFIX.address(0xA1B2_C3D4_E5F6).packed
NEIGHBOUR = PREFIX.address(0x0102_0304_0506).packed  # same /80: another tunnel of this MN
OUTSIDER = ipaddress.IPv6Address("2001:db8::1").packed
LINK_LOCAL = ipaddress.IPv6Address("fe80::2c0:ffee").packed
UNSPECIFIED = bytes(16)
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
ALL_ROUTERS = ipaddress.IPv6Address("ff02::2").packed
MLDV2_ROUTERS = ipaddress.IPv6Address("ff02::16").packed
ESP = 50
HOP_BY_HOP = 0
ROUTER_SOLICITATION = bytes([133, 0, 0, 0, 0, 0, 0, 0])
# Hop-by-hop header with Router Alert (next header ICMPv6), then an MLDv2 report with no record.
MLDV2_REPORT = bytes([NEXT_HEADER_ICMPV6, 0, 5, 2, 0, 0, 1, 0]) + bytes([143, 0, 0, 0, 0, 0, 0, 0])
IDENTIFIER = 0x6D36
T0 = 1000.0  # a monotonic clock is never near zero; keeps "0.0 means unset" bugs visible


def data_to(dst: bytes, src: bytes = HOME_AGENT) -> bytes:
    """An IPsec-protected packet from the HA (a Binding Ack, say)."""
    return build_ipv6(src, dst, ESP, b"esp payload")


def data_from(src: bytes, dst: bytes = HOME_AGENT) -> bytes:
    return build_ipv6(src, dst, ESP, b"esp payload")


def probe_reply(address: bytes = OURS, identifier: int = IDENTIFIER, sequence: int = 1,
                size: int = 0) -> bytes:
    reply = echo_reply_for(build_probe(address, HOME_AGENT, identifier, sequence, size))
    assert reply is not None
    return reply


def with_first_byte(packet: bytes, value: int) -> bytes:
    return bytes([value]) + packet[1:]


# --- packets from the gateway -----------------------------------------------------------------

FROM_GATEWAY: list[tuple[str, bytes, Inbound | DropReason]] = [
    ("data_for_us", data_to(OURS), Inbound.TO_TUN),
    ("data_for_another_address", data_to(NEIGHBOUR), DropReason.NOT_FOR_US),
    ("data_from_outside_home", data_to(OURS, src=OUTSIDER), Inbound.TO_TUN),
    # "it replies with a similar message but with the addresses reversed" (Maintaining NAT
    # states): the reply is the helper's, never the TUN's.
    ("keepalive_reply_for_us", build_keepalive_reply(build_keepalive(OURS)),
     Inbound.KEEPALIVE_REPLY),
    ("keepalive_reply_for_another_address", build_keepalive_reply(build_keepalive(NEIGHBOUR)),
     DropReason.NOT_FOR_US),
    ("our_probe_echo_reply", probe_reply(), Inbound.PROBE_REPLY),
    ("our_mtu_probe_echo_reply", probe_reply(size=1472), Inbound.PROBE_REPLY),
    ("our_probe_echo_reply_for_another_address", probe_reply(NEIGHBOUR), DropReason.NOT_FOR_US),
    # An application's own ping to the HA carries no marker: it is the application's reply.
    ("application_echo_reply", build_echo(HOME_AGENT, OURS, IDENTIFIER, 1, b"ping -6 data",
                                          request=False), Inbound.TO_TUN),
    ("application_echo_reply_without_data", build_echo(HOME_AGENT, OURS, 7, 1, request=False),
     Inbound.TO_TUN),
    # Someone pinging us with our marker in the data: a request, not a reply to our probe.
    ("echo_request_carrying_the_marker", build_echo(HOME_AGENT, OURS, IDENTIFIER, 1,
                                                    PROBE_MARKER), Inbound.TO_TUN),
    ("truncated_icmpv6_echo_reply", build_ipv6(HOME_AGENT, OURS, NEXT_HEADER_ICMPV6,
                                               bytes([129])), Inbound.TO_TUN),
    ("empty", b"", DropReason.SHORT_PACKET),
    ("shorter_than_a_header", data_to(OURS)[:39], DropReason.SHORT_PACKET),
    ("ipv4_header", with_first_byte(data_to(OURS), 0x45), DropReason.BAD_VERSION),
    ("version_0", with_first_byte(data_to(OURS), 0x00), DropReason.BAD_VERSION),
    ("trailing_byte", data_to(OURS) + b"\x00", DropReason.BAD_LENGTH),
    ("truncated_payload", data_to(OURS)[:-1], DropReason.BAD_LENGTH),
    ("keepalive_reply_with_trailing_byte", build_keepalive_reply(build_keepalive(OURS)) + b"x",
     DropReason.BAD_LENGTH),
]


@pytest.mark.parametrize(("packet", "expected"), [row[1:] for row in FROM_GATEWAY],
                         ids=[row[0] for row in FROM_GATEWAY])
def test_classify_from_gateway(packet: bytes, expected: Inbound | DropReason) -> None:
    assert classify_from_gateway(packet, OURS) == expected


def test_classify_from_gateway_depends_on_which_address_is_ours() -> None:
    # The same bytes are data for one tunnel and "not for us" for its neighbour on the /80.
    packet = data_to(NEIGHBOUR)
    assert classify_from_gateway(packet, NEIGHBOUR) is Inbound.TO_TUN
    assert classify_from_gateway(packet, OURS) is DropReason.NOT_FOR_US


def test_a_bare_icmpv6_header_for_us_is_classified_not_raised() -> None:
    # "Bad input is dropped with a name; misuse raises": a well-formed IPv6 packet whose upper
    # layer is empty is the kernel's business (the tunnel carries upper layers untouched).
    bare = build_ipv6(HOME_AGENT, OURS, NEXT_HEADER_ICMPV6, b"")
    assert classify_from_gateway(bare, OURS) is Inbound.TO_TUN


# --- packets from the TUN ---------------------------------------------------------------------

FROM_TUN: list[tuple[str, bytes, DropReason | None]] = [
    ("ours_to_home_agent", data_from(OURS), None),
    ("ours_to_an_internet_host", data_from(OURS, dst=OUTSIDER), None),
    ("ours_echo_request", build_echo(OURS, HOME_AGENT, 1, 1, b"ping"), None),
    ("neighbour_tunnel_source", data_from(NEIGHBOUR), DropReason.SRC_NOT_OURS),
    ("outside_source", data_from(OUTSIDER), DropReason.SRC_NOT_OURS),
    ("home_agent_as_source", data_from(HOME_AGENT, dst=OURS), DropReason.SRC_NOT_OURS),
    # The kernel's chatter on a fresh interface: router solicitations and MLD reports.
    ("router_solicitation", build_ipv6(LINK_LOCAL, ALL_ROUTERS, NEXT_HEADER_ICMPV6,
                                       ROUTER_SOLICITATION, hop_limit=255),
     DropReason.UNEXPECTED_FROM_TUN),
    ("router_solicitation_from_unspecified", build_ipv6(UNSPECIFIED, ALL_ROUTERS,
                                                        NEXT_HEADER_ICMPV6, ROUTER_SOLICITATION,
                                                        hop_limit=255),
     DropReason.UNEXPECTED_FROM_TUN),
    ("mld_report", build_ipv6(LINK_LOCAL, MLDV2_ROUTERS, HOP_BY_HOP, MLDV2_REPORT, hop_limit=1),
     DropReason.UNEXPECTED_FROM_TUN),
    ("mld_report_from_unspecified", build_ipv6(UNSPECIFIED, MLDV2_ROUTERS, HOP_BY_HOP,
                                               MLDV2_REPORT, hop_limit=1),
     DropReason.UNEXPECTED_FROM_TUN),
    ("ours_to_multicast", data_from(OURS, dst=ALL_NODES), DropReason.UNEXPECTED_FROM_TUN),
    ("link_local_to_home_agent", data_from(LINK_LOCAL), DropReason.UNEXPECTED_FROM_TUN),
    ("unspecified_to_home_agent", data_from(UNSPECIFIED), DropReason.UNEXPECTED_FROM_TUN),
    ("empty", b"", DropReason.SHORT_PACKET),
    ("shorter_than_a_header", data_from(OURS)[:39], DropReason.SHORT_PACKET),
    ("ipv4_header", with_first_byte(data_from(OURS), 0x45), DropReason.BAD_VERSION),
    ("trailing_byte", data_from(OURS) + b"\x00", DropReason.BAD_LENGTH),
    ("truncated_payload", data_from(OURS)[:-1], DropReason.BAD_LENGTH),
]


@pytest.mark.parametrize(("packet", "expected"), [row[1:] for row in FROM_TUN],
                         ids=[row[0] for row in FROM_TUN])
def test_check_from_tun(packet: bytes, expected: DropReason | None) -> None:
    assert check_from_tun(packet, OURS) == expected


# --- probes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 57, 1280, 1400, 1472, 4000])
def test_a_probe_is_a_valid_echo_request_of_the_asked_size(size: int) -> None:
    probe = build_probe(OURS, HOME_AGENT, IDENTIFIER, 3, size)
    # 40 (IPv6) + 8 (ICMPv6 echo) + the marker is the smallest probe there is.
    assert len(probe) == max(size, 40 + 8 + len(PROBE_MARKER))
    echo = parse_echo(probe)
    assert echo is not None
    assert (echo.source, echo.destination, echo.is_request, echo.identifier, echo.sequence) == (
        OURS, HOME_AGENT, True, IDENTIFIER, 3)
    assert echo.data.startswith(PROBE_MARKER)
    assert check_from_tun(probe, OURS) is None  # the helper may send it like any packet of ours


# --- the port race ----------------------------------------------------------------------------

PORTS = [3544, 4500, 3478, 500, 53]


def make_race(ports: list[int] | None = None, now: float = T0, **overrides: Any) -> PortRace:
    return PortRace(PREFIX, HOME_AGENT, list(PORTS if ports is None else ports), now,
                    identifier=IDENTIFIER, **overrides)


def answer(packet: bytes) -> bytes:
    """What the HA sends back to one probe."""
    reply = echo_reply_for(packet)
    assert reply is not None
    return reply


def test_the_race_has_one_fresh_address_per_port() -> None:
    # "it selects a random 48 bits value. It concatenates this values to its configured /80
    # prefix" (Protocol operations); one per port, so every port's state is its own.
    taken = {0x1111_2222_3333, 0x4444_5555_6666}
    race = make_race(taken=taken)
    assert list(race.candidates) == PORTS
    suffixes = [candidate.suffix for candidate in race.candidates.values()]
    assert len(set(suffixes)) == len(PORTS)
    assert not set(suffixes) & taken
    for port, candidate in race.candidates.items():
        assert candidate.port == port
        assert candidate.address == PREFIX.address(candidate.suffix).packed
        assert ipaddress.IPv6Address(candidate.address) in PREFIX.network
        assert (candidate.attempts, candidate.rtt) == (0, None)


def test_the_race_skips_suffixes_taken_by_other_tunnels_and_by_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # "if the same prefix, subnet ID and MN ID are used for all the tunnel interfaces of the MN
    # (i.e. the same /80 prefix), then some local synchronization is required to prevent the
    # simultaneous use of identical 48 bits random values" (Multiple tunnel interfaces on a MN)
    other_tunnel = 0xAAAA_AAAA_AAAA
    randbits = ScriptedRandbits([other_tunnel, 0x111, 0x111, other_tunnel, 0x222, 0x333])
    monkeypatch.setattr("m6t.protocol.addressing.secrets.randbits", randbits)
    race = make_race(ports=[4500, 3544, 53], taken=frozenset({other_tunnel}))
    assert [c.suffix for c in race.candidates.values()] == [0x111, 0x222, 0x333]
    assert randbits.requested_bits == [48] * 6


def test_due_sends_every_first_attempt_at_once() -> None:
    race = make_race()
    sent = race.due(T0)
    assert [port for port, _ in sent] == PORTS
    for port, packet in sent:
        echo = parse_echo(packet)
        assert echo is not None
        assert echo.is_request
        assert (echo.source, echo.destination) == (race.candidates[port].address, HOME_AGENT)
        assert (echo.identifier, echo.sequence) == (IDENTIFIER, 1)
        assert echo.data.startswith(PROBE_MARKER)
    assert all(c.attempts == 1 and c.sent_at == T0 for c in race.candidates.values())


def test_due_retransmits_after_the_interval_and_only_unanswered_candidates() -> None:
    race = make_race(retransmit=0.5)
    first = dict(race.due(T0))
    assert race.due(T0) == []
    assert race.due(T0 + 0.25) == []
    assert race.due(T0 + 0.4999) == []
    assert race.receive(4500, answer(first[4500]), T0 + 0.03) is not None
    second = race.due(T0 + 0.5)
    assert [port for port, _ in second] == [port for port in PORTS if port != 4500]
    sequences = {parse_echo(packet).sequence for _, packet in second}  # type: ignore[union-attr]
    assert sequences == {2}
    assert race.next_deadline() == pytest.approx(T0 + 1.0)
    assert race.receive(53, answer(dict(second)[53]), T0 + 0.6) is not None
    third = race.due(T0 + 1.0)
    assert [port for port, _ in third] == [3544, 3478, 500]
    assert race.candidates[4500].attempts == 1
    assert race.candidates[53].attempts == 2


def test_due_between_deadlines_sends_nothing_after_a_retransmission() -> None:
    race = make_race(retransmit=0.5)
    race.due(T0)
    assert len(race.due(T0 + 0.5)) == len(PORTS)
    # A wake-up before the next deadline (a reply on another port, say) must not resend.
    assert race.due(T0 + 0.6) == []
    assert all(c.attempts == 2 for c in race.candidates.values())


def test_next_deadline_before_the_first_send_is_now_or_earlier() -> None:
    race = make_race()
    assert race.next_deadline() <= T0


def test_next_deadline_follows_the_retransmissions_and_never_passes_the_timeout() -> None:
    race = make_race(retransmit=1.5, timeout=4.0)
    race.due(T0)
    assert race.next_deadline() == pytest.approx(T0 + 1.5)
    race.due(T0 + 1.5)
    assert race.next_deadline() == pytest.approx(T0 + 3.0)
    race.due(T0 + 3.0)
    assert race.next_deadline() == pytest.approx(T0 + 4.0)  # not T0 + 4.5


def test_next_deadline_is_the_timeout_once_everyone_answered() -> None:
    race = make_race(ports=[4500, 53], timeout=4.0)
    for port, packet in race.due(T0):
        race.receive(port, answer(packet), T0 + 0.1)
    assert race.next_deadline() == T0 + 4.0


def test_a_race_driven_by_its_own_deadlines_ends_at_the_timeout_with_bounded_sends() -> None:
    race = make_race(ports=[4500, 53], retransmit=0.5, timeout=4.0)
    now, wake_ups, sent = T0, 0, 0
    while not race.finished(now):
        sent += len(race.due(now))
        deadline = race.next_deadline()
        assert deadline > now
        now = deadline
        wake_ups += 1
        assert wake_ups < 20
    assert now == pytest.approx(T0 + 4.0)
    # Attempts at 0, 0.5, ..., 3.5 on each of the two ports.
    assert sent == 2 * 8
    assert all(c.rtt is None for c in race.candidates.values())


def test_receive_accepts_the_reply_and_measures_the_rtt() -> None:
    race = make_race()
    sent = dict(race.due(T0))
    winner = race.receive(3478, answer(sent[3478]), T0 + 0.042)
    assert isinstance(winner, RaceCandidate)
    assert winner is race.candidates[3478]
    assert winner.rtt == pytest.approx(0.042)
    assert [c.port for c in race.candidates.values() if c.rtt is not None] == [3478]


def test_receive_ignores_a_second_reply_for_an_answered_candidate() -> None:
    race = make_race()
    sent = dict(race.due(T0))
    assert race.receive(500, answer(sent[500]), T0 + 0.02) is not None
    assert race.receive(500, answer(sent[500]), T0 + 0.9) is None
    assert race.candidates[500].rtt == pytest.approx(0.02)


def _corrupt_checksum(packet: bytes) -> bytes:
    return packet[:-1] + bytes([packet[-1] ^ 0xFF])


# Each: what arrives on port 4500 instead of the HA's reply to 4500's probe.
RACE_REJECTS: list[tuple[str, Callable[[PortRace, dict[int, bytes]], tuple[int, bytes]]]] = [
    ("wrong_identifier", lambda race, sent: (4500, probe_reply(
        race.candidates[4500].address, identifier=IDENTIFIER ^ 1))),
    ("reply_for_port_53_address_on_port_4500", lambda race, sent: (4500, answer(sent[53]))),
    ("right_reply_on_an_unknown_port", lambda race, sent: (9999, answer(sent[4500]))),
    ("not_from_the_home_agent", lambda race, sent: (4500, build_echo(
        HOME_HOST, race.candidates[4500].address, IDENTIFIER, 1, PROBE_MARKER, request=False))),
    ("no_marker", lambda race, sent: (4500, build_echo(
        HOME_AGENT, race.candidates[4500].address, IDENTIFIER, 1, b"ping", request=False))),
    ("bad_checksum", lambda race, sent: (4500, _corrupt_checksum(answer(sent[4500])))),
    ("our_own_request_looped_back", lambda race, sent: (4500, sent[4500])),
    ("keepalive_reply", lambda race, sent: (4500, build_keepalive_reply(
        build_keepalive(race.candidates[4500].address)))),
    ("data_packet", lambda race, sent: (4500, data_to(race.candidates[4500].address))),
    ("short", lambda race, sent: (4500, answer(sent[4500])[:39])),
    ("truncated", lambda race, sent: (4500, answer(sent[4500])[:-1])),
]


@pytest.mark.parametrize("forge", [row[1] for row in RACE_REJECTS],
                         ids=[row[0] for row in RACE_REJECTS])
def test_receive_rejects_anything_but_the_right_reply_on_the_right_port(
        forge: Callable[[PortRace, dict[int, bytes]], tuple[int, bytes]]) -> None:
    race = make_race()
    sent = dict(race.due(T0))
    port, packet = forge(race, sent)
    assert race.receive(port, packet, T0 + 0.01) is None
    assert all(c.rtt is None for c in race.candidates.values())
    # The genuine reply is still accepted afterwards.
    assert race.receive(4500, answer(sent[4500]), T0 + 0.02) is race.candidates[4500]


def test_receive_accepts_a_reply_to_a_retransmission() -> None:
    race = make_race(retransmit=0.5)
    race.due(T0)
    retransmitted = dict(race.due(T0 + 0.5))
    answered = race.receive(53, answer(retransmitted[53]), T0 + 0.55)
    assert answered is race.candidates[53]
    assert answered.rtt is not None and answered.rtt > 0


def test_finished_when_everyone_answered_or_at_the_timeout() -> None:
    race = make_race(ports=[4500, 53], timeout=4.0)
    sent = dict(race.due(T0))
    assert not race.finished(T0)
    race.receive(4500, answer(sent[4500]), T0 + 0.1)
    assert not race.finished(T0 + 0.1)
    race.receive(53, answer(sent[53]), T0 + 0.2)
    assert race.finished(T0 + 0.2)

    silent = make_race(ports=[4500, 53], timeout=4.0)
    silent.due(T0)
    assert not silent.finished(T0 + 3.999)
    assert silent.finished(T0 + 4.0)


# --- keepalive and liveness -------------------------------------------------------------------


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def scripted(*values: float) -> Callable[[], float]:
    cycle = itertools.cycle(values)
    return lambda: next(cycle)


def started(now: float = T0, **overrides: Any) -> LivenessMonitor:
    monitor = LivenessMonitor(**overrides)
    monitor.start(now)
    return monitor


def idle_until_keepalive(monitor: LivenessMonitor, deadline: float) -> None:
    """Polls just before `deadline` stay idle; the poll at it sends."""
    assert monitor.next_deadline() == pytest.approx(deadline)
    assert monitor.poll(deadline - 0.01) is Liveness.IDLE
    assert monitor.poll(deadline) is Liveness.SEND_KEEPALIVE


def test_the_default_interval_is_the_drafts_30_seconds() -> None:
    # "If the MN has not sent and received traffic via the tunnel for 30 seconds"
    assert KEEPALIVE_INTERVAL == 30.0
    monitor = started(random=fixed(0.0))
    assert monitor.keepalive == 30.0
    idle_until_keepalive(monitor, T0 + 30.0)


@pytest.mark.parametrize(("keepalive", "draw", "jitter"), [
    (30.0, 0.0, 0.0),
    (30.0, 0.5, 1.5),
    (30.0, 0.999, 2.997),
    (10.0, 0.5, 0.5),  # 10 % of a short interval
    (60.0, 0.5, 1.5),  # at most 3 s of a long one
    (600.0, 0.999, 2.997),
])
def test_jitter_is_downward_and_at_most_10_percent_or_3_seconds(
        keepalive: float, draw: float, jitter: float) -> None:
    monitor = started(keepalive=keepalive, random=fixed(draw))
    assert monitor.jitter == pytest.approx(jitter)
    idle_until_keepalive(monitor, T0 + keepalive - jitter)


def test_the_default_random_jitter_stays_within_bounds() -> None:
    for _ in range(50):
        monitor = started()
        assert 0.0 <= monitor.jitter <= 3.0
        assert T0 + 27.0 <= monitor.next_deadline() <= T0 + 30.0


def test_receiving_postpones_the_keepalive_and_sending_does_not() -> None:
    monitor = started(random=fixed(0.5))
    monitor.last_sent = T0 + 20.0  # the application sent: no proof the path still answers
    assert monitor.next_deadline() == pytest.approx(T0 + 28.5)
    monitor.last_received = T0 + 20.0  # the HA's traffic came back
    assert monitor.poll(T0 + 28.5) is Liveness.IDLE
    idle_until_keepalive(monitor, T0 + 48.5)


def test_an_answered_keepalive_clears_the_probe_and_draws_a_new_jitter() -> None:
    monitor = started(random=scripted(0.5, 0.0))
    idle_until_keepalive(monitor, T0 + 28.5)
    assert (monitor.probe_sent, monitor.probes) == (T0 + 28.5, 1)
    monitor.last_received = T0 + 28.75  # the gateway's reply
    assert monitor.poll(T0 + 29.0) is Liveness.IDLE
    assert (monitor.probe_sent, monitor.probes, monitor.jitter) == (None, 0, 0.0)
    idle_until_keepalive(monitor, T0 + 58.75)


def test_a_reply_at_the_same_instant_as_the_keepalive_counts_as_an_answer() -> None:
    # A fake link delivers with no delay; last_received >= probe_sent is the rule.
    monitor = started(random=fixed(0.0))
    idle_until_keepalive(monitor, T0 + 30.0)
    monitor.last_received = T0 + 30.0
    assert monitor.poll(T0 + 31.0) is Liveness.IDLE
    assert monitor.probe_sent is None


def test_unanswered_keepalives_are_retried_then_the_path_is_dead() -> None:
    monitor = started(random=fixed(0.0), probe_timeout=1.0, attempts=3)
    idle_until_keepalive(monitor, T0 + 30.0)
    assert monitor.next_deadline() == T0 + 31.0
    assert monitor.poll(T0 + 30.99) is Liveness.IDLE
    assert monitor.poll(T0 + 31.0) is Liveness.SEND_KEEPALIVE
    assert monitor.poll(T0 + 31.5) is Liveness.IDLE
    assert monitor.poll(T0 + 32.0) is Liveness.SEND_KEEPALIVE
    assert monitor.probes == 3
    assert monitor.poll(T0 + 32.99) is Liveness.IDLE
    assert monitor.poll(T0 + 33.0) is Liveness.PATH_DEAD
    assert monitor.poll(T0 + 40.0) is Liveness.PATH_DEAD  # stays dead until restarted


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_the_path_is_dead_after_exactly_attempts_unanswered_keepalives(attempts: int) -> None:
    monitor = started(random=fixed(0.0), probe_timeout=0.5, attempts=attempts)
    results = [monitor.poll(T0 + 30.0 + 0.5 * k) for k in range(attempts + 1)]
    assert results == [Liveness.SEND_KEEPALIVE] * attempts + [Liveness.PATH_DEAD]


def test_an_answer_to_a_retry_resets_the_count() -> None:
    monitor = started(random=fixed(0.0), probe_timeout=1.0, attempts=3)
    assert monitor.poll(T0 + 30.0) is Liveness.SEND_KEEPALIVE
    assert monitor.poll(T0 + 31.0) is Liveness.SEND_KEEPALIVE
    assert monitor.poll(T0 + 32.0) is Liveness.SEND_KEEPALIVE
    monitor.last_received = T0 + 32.25  # the third one got through
    assert monitor.poll(T0 + 33.0) is Liveness.IDLE
    # A later outage needs three fresh unanswered keepalives again.
    results = [monitor.poll(T0 + 62.25 + k) for k in range(4)]
    assert results == [Liveness.SEND_KEEPALIVE] * 3 + [Liveness.PATH_DEAD]


def test_start_forgets_a_dead_path() -> None:
    monitor = started(random=fixed(0.0), attempts=1)
    monitor.poll(T0 + 30.0)
    assert monitor.poll(T0 + 31.0) is Liveness.PATH_DEAD
    monitor.start(T0 + 40.0)  # a new address won a new race
    assert (monitor.probe_sent, monitor.probes) == (None, 0)
    assert monitor.poll(T0 + 41.0) is Liveness.IDLE
    idle_until_keepalive(monitor, T0 + 70.0)


def test_check_now_makes_the_next_poll_send() -> None:
    monitor = started(random=fixed(0.5))
    monitor.last_received = T0 + 10.0
    monitor.check_now(T0 + 12.0)  # back from suspend
    assert monitor.next_deadline() <= T0 + 12.0
    assert monitor.poll(T0 + 12.0) is Liveness.SEND_KEEPALIVE
    # It is an ordinary probe: answered, all is well; unanswered, the path is dead.
    monitor.last_received = T0 + 12.1
    assert monitor.poll(T0 + 12.2) is Liveness.IDLE
    assert monitor.next_deadline() == pytest.approx(T0 + 12.1 + 28.5)


def test_check_now_right_after_start_sends_at_once() -> None:
    monitor = started(random=fixed(0.999))
    monitor.check_now(T0)
    assert monitor.poll(T0) is Liveness.SEND_KEEPALIVE


def test_check_now_sends_at_once_after_an_answered_but_unpolled_keepalive() -> None:
    monitor = started(random=fixed(0.0))
    assert monitor.poll(T0 + 30.0) is Liveness.SEND_KEEPALIVE
    monitor.last_received = T0 + 30.05  # answered; the next poll would clear the probe
    monitor.check_now(T0 + 30.1)
    assert monitor.poll(T0 + 30.1) is Liveness.SEND_KEEPALIVE


def test_check_now_never_declares_a_path_dead_that_answered() -> None:
    monitor = started(random=fixed(0.0), probe_timeout=1.0, attempts=3)
    for k in range(3):
        assert monitor.poll(T0 + 30.0 + k) is Liveness.SEND_KEEPALIVE
    monitor.last_received = T0 + 32.05  # the third keepalive was answered
    monitor.check_now(T0 + 32.1)
    assert monitor.poll(T0 + 33.0) is not Liveness.PATH_DEAD


def test_data_sent_and_nothing_back_probes_after_the_reply_timeout() -> None:
    # WireGuard's rule: "sent data, no reply" is what a lost NAT mapping looks like.
    monitor = started(random=fixed(0.0), reply_timeout=3.0, check_interval=1.0)
    assert monitor.next_deadline() == T0 + 1.0  # looks at the activity once a second
    monitor.last_sent = T0 + 0.5  # the application sent; nothing came back
    assert monitor.poll(T0 + 1.0) is Liveness.IDLE
    # The send came after the last look (T0) and the last receive (T0): counted from there,
    # which errs towards probing early, never late.
    assert monitor.unanswered_since == T0
    assert monitor.next_deadline() == T0 + 3.0
    monitor.last_sent = T0 + 2.5  # more sends do not postpone it
    assert monitor.poll(T0 + 2.99) is Liveness.IDLE
    assert monitor.poll(T0 + 3.0) is Liveness.SEND_KEEPALIVE
    results = [monitor.poll(T0 + 4.0 + k) for k in range(3)]
    assert results == [Liveness.SEND_KEEPALIVE, Liveness.SEND_KEEPALIVE, Liveness.PATH_DEAD]


def test_sends_that_get_answers_never_probe() -> None:
    monitor = started(random=fixed(0.0), reply_timeout=3.0, check_interval=1.0)
    for k in range(1, 60):
        monitor.last_sent = T0 + k - 0.5
        if monitor.poll(T0 + k - 0.25) is not Liveness.IDLE:
            raise AssertionError(f"probed at {k}")
        monitor.last_received = T0 + k - 0.2  # the answer, 300 ms later
        assert monitor.poll(T0 + k) is Liveness.IDLE
    assert monitor.unanswered_since is None


def test_an_answered_probe_clears_the_unanswered_send() -> None:
    monitor = started(random=fixed(0.0), reply_timeout=3.0, check_interval=1.0)
    monitor.last_sent = T0 + 0.5
    monitor.poll(T0 + 1.0)
    assert monitor.poll(T0 + 3.0) is Liveness.SEND_KEEPALIVE
    monitor.last_received = T0 + 3.6
    assert monitor.poll(T0 + 4.0) is Liveness.IDLE
    assert monitor.unanswered_since is None and monitor.probes == 0


def test_without_check_interval_an_idle_monitor_wakes_only_for_the_keepalive() -> None:
    monitor = started(random=fixed(0.0))
    assert monitor.next_deadline() == T0 + 30.0


@dataclass
class LivenessRun:
    """What a simulated idle tunnel did: keepalives sent, packets received, death."""

    sends: list[float]
    receives: list[float]
    dead_at: float | None


def simulate(monitor: LivenessMonitor, step: float, data_at: list[float],
             reply_delays: list[float | None], horizon: float, start: float = T0,
             ) -> LivenessRun:
    """Polls every `step` from `start`; data arrives at `data_at`; the k-th keepalive's reply
    arrives `reply_delays[k]` later (None: lost). After `horizon`, the path goes silent and the
    simulation runs until the monitor declares it dead (with a hard cap)."""
    monitor.start(start)
    arrivals = sorted(data_at)
    sends: list[float] = []
    receives: list[float] = []
    delays = iter(reply_delays)
    last_activity = start
    bound = monitor.keepalive + step + 1e-6
    for index in itertools.count(1):
        now = start + index * step
        while arrivals and arrivals[0] <= now:
            at = arrivals.pop(0)
            receives.append(at)
            monitor.last_received = max(monitor.last_received, at)
            last_activity = max(last_activity, at)
        # The property: never longer than one interval (+ one poll) without any exchange.
        assert now - last_activity <= bound, (now, last_activity)
        result = monitor.poll(now)
        if result is Liveness.PATH_DEAD:
            return LivenessRun(sends, receives, now)
        if result is Liveness.SEND_KEEPALIVE:
            sends.append(now)
            last_activity = now
            delay = next(delays, None) if now < start + horizon else None
            if delay is not None:
                arrivals.append(now + delay)
                arrivals.sort()
        assert index < 100_000
    raise AssertionError("unreachable")


@bounded(max_examples=120)
@given(
    keepalive=st.floats(5.0, 60.0),
    probe_timeout=st.floats(0.2, 3.0),
    attempts=st.integers(1, 5),
    step=st.floats(0.1, 1.0),
    draws=st.lists(st.floats(0.0, 0.999), min_size=1, max_size=4),
    data_fractions=st.lists(st.floats(0.0, 1.0), max_size=8),
    reply_delays=st.lists(st.one_of(st.none(), st.floats(0.0, 4.0)), max_size=12),
)
def test_property_keepalives_keep_an_idle_path_busy_and_death_needs_attempts_misses(
        keepalive: float, probe_timeout: float, attempts: int, step: float, draws: list[float],
        data_fractions: list[float], reply_delays: list[float | None]) -> None:
    monitor = LivenessMonitor(keepalive=keepalive, probe_timeout=probe_timeout,
                              attempts=attempts, random=scripted(*draws))
    horizon = 2.5 * keepalive
    run = simulate(monitor, step, [T0 + f * horizon for f in data_fractions], reply_delays,
                   horizon)
    assert run.dead_at is not None
    last_receive = max(run.receives, default=T0)
    # "Dead" only after `attempts` keepalives that got nothing back: every one of them was sent
    # after the last packet received, probe_timeout apart, and the last one had its time.
    unanswered = [sent for sent in run.sends if sent > last_receive]
    assert len(unanswered) == attempts
    assert all(b - a >= probe_timeout - 1e-9 for a, b in itertools.pairwise(unanswered))
    assert run.dead_at >= unanswered[-1] + probe_timeout - 1e-9
    # And it does find out: one interval, then the retries, each late by at most one poll.
    assert run.dead_at <= (last_receive + keepalive + step
                           + attempts * (probe_timeout + step) + 1e-6)


def test_simulated_idle_path_sends_one_keepalive_per_interval() -> None:
    # The property's simulation, pinned down on one case: instant replies, no data.
    monitor = LivenessMonitor(random=fixed(0.5))
    run = simulate(monitor, 0.5, [], [0.0] * 4, horizon=130.0)
    assert run.sends == [T0 + 28.5, T0 + 57.0, T0 + 85.5, T0 + 114.0,
                         T0 + 142.5, T0 + 143.5, T0 + 144.5]  # the last three unanswered
    assert run.receives == run.sends[:4]
    assert run.dead_at == T0 + 145.5


# --- MTU --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("route_mtu", "default", "expected"), [
    (None, DEFAULT_TUNNEL_MTU, 1472),  # no route MTU known: the configured default
    (None, 1400, 1400),
    (1500, DEFAULT_TUNNEL_MTU, 1472),  # "a default value of 1472 bytes" = 1500 - 20 - 8
    (1492, DEFAULT_TUNNEL_MTU, 1464),  # PPPoE
    (9000, DEFAULT_TUNNEL_MTU, 8972),
    (1308, DEFAULT_TUNNEL_MTU, 1280),
    (1300, DEFAULT_TUNNEL_MTU, 1280),  # IPv6 never goes below 1280
    (576, DEFAULT_TUNNEL_MTU, 1280),
])
def test_tunnel_mtu_for_route(route_mtu: int | None, default: int, expected: int) -> None:
    assert tunnel_mtu_for_route(route_mtu, default) == expected


@pytest.mark.parametrize("highest", [1280, 1281, 1300, 1400, 1472, 1500, 4000, 9000])
@pytest.mark.parametrize("beyond", [(2000, 4000), (), (1472, 9216)])
def test_mtu_probe_sizes_are_a_sorted_ladder_from_1280_to_the_highest(
        highest: int, beyond: tuple[int, ...]) -> None:
    sizes = mtu_probe_sizes(highest, beyond)
    assert sizes == sorted(set(sizes))
    assert sizes[0] == IPV6_MINIMUM_MTU
    assert highest in sizes
    assert [size for size in sizes if size > highest] == [size for size in beyond
                                                          if size > highest]
    ladder = [size for size in sizes if size <= highest]
    assert all(b - a <= 32 for a, b in itertools.pairwise(ladder))  # no big holes


def test_mtu_probe_sizes_default_beyond_reaches_past_ipv4_ethernet() -> None:
    assert mtu_probe_sizes(1472) == [1280, 1312, 1344, 1376, 1400, 1408, 1420, 1440, 1460,
                                     1472, 2000, 4000]
    assert mtu_probe_sizes(IPV6_MINIMUM_MTU) == [1280, 2000, 4000]


def test_every_mtu_probe_size_is_a_probe_of_exactly_that_size() -> None:
    sizes = mtu_probe_sizes(1472)
    for size in sizes:
        probe = build_probe(OURS, HOME_AGENT, IDENTIFIER, size, size)
        assert len(probe) == size
        assert classify_from_gateway(answer(probe), OURS) is Inbound.PROBE_REPLY


def test_keepalive_constants_match_the_packets_the_client_classifies() -> None:
    # The keepalive the monitor asks for is the one the gateway reflects and we recognise.
    keepalive = build_keepalive(OURS)
    assert keepalive[6] == NEXT_HEADER_NONE and len(keepalive) == 40
    assert check_from_tun(keepalive, OURS) is None
    assert classify_from_gateway(build_keepalive_reply(keepalive), OURS) is Inbound.KEEPALIVE_REPLY
