"""The ClientSession's table and policies, one event at a time (the pair tests in
test_session_pair.py drive it against the gateway core)."""

from __future__ import annotations

import typing

import pytest

from m6t.protocol import session as s
from m6t.protocol.constants import DEFAULT_TUNNEL_MTU, IPV6_MINIMUM_MTU
from tests.unit.fake_link import HOME_AGENT, PREFIX

PATH = s.Ipv4Path("eth0", "10.0.0.1", "10.0.0.5", 1500)
T = 100.0


def session(**config: typing.Any) -> s.ClientSession:
    settings: dict[str, typing.Any] = {"hosts": ("gw.example.net",), "ports": (3544, 4500),
                                       "prefix": PREFIX, "home_agent": HOME_AGENT.packed}
    settings.update(config)
    return s.ClientSession(s.SessionConfig(**settings), random=lambda: 0.0)


def states(actions: list[s.Action]) -> list[tuple[s.TunnelState, s.Cause]]:
    return [(a.state, a.cause) for a in actions if isinstance(a, s.StateChanged)]


def test_every_event_is_taken_somewhere_and_every_handler_is_a_method() -> None:
    events = set(typing.get_args(s.Event))
    taken = {event for _, event in s.TRANSITIONS} | set(s.ANY_PHASE)
    assert taken == events
    for handler in [*s.TRANSITIONS.values(), *s.ANY_PHASE.values()]:
        assert getattr(s.ClientSession, handler.__name__) is handler


def test_start_resolves_the_gateway_and_says_connecting() -> None:
    client = session()
    actions = client.start(T)
    assert states(actions) == [(s.TunnelState.CONNECTING, s.Cause.USER_REQUEST)]
    assert actions[-1] == s.Resolve(("gw.example.net",))
    assert client.next_deadline() is None  # the resolver answers, not a timer


@pytest.mark.parametrize(("phase", "event"), [
    (s.Phase.CONNECTED, s.RaceDatagram("198.51.100.1", 3544, b"late answer")),
    (s.Phase.WAITING, s.RegenerateRequested()),
    (s.Phase.RESOLVING, s.KeepaliveAnswered()),
    (s.Phase.RACING, s.NetworkChanged(None)),
    (s.Phase.STOPPED, s.Stop()),
    (s.Phase.STOPPED, s.MtuRequested(1400)),
])
def test_an_event_a_phase_does_not_take_is_ignored(phase: s.Phase, event: s.Event) -> None:
    client = session()
    client.phase = phase
    assert client.handle(event, T) == []
    assert client.phase is phase


def test_a_name_that_does_not_resolve_waits_and_retries_with_back_off() -> None:
    client = session()
    client.start(T)
    actions = client.handle(s.ResolveFailed("Name or service not known"), T)
    assert actions == [s.StateChanged(s.TunnelState.WAITING, s.Cause.RESOLVE_FAILED,
                                      "Name or service not known")]
    assert client.next_deadline() == T + 1
    assert client.handle_timer(T + 0.5) == []
    retry = client.handle_timer(T + 1)
    assert states(retry) == [(s.TunnelState.CONNECTING, s.Cause.RETRYING)]
    client.handle(s.ResolveFailed("again"), T + 1)
    assert client.next_deadline() == T + 1 + 2  # doubled


def test_back_off_stops_doubling_at_its_ceiling() -> None:
    client = session()
    client.start(T)
    now = T
    for _ in range(12):
        client.handle(s.ResolveFailed("no"), now)
        deadline = client.next_deadline()
        assert deadline is not None
        now = deadline
        client.handle_timer(now)
    client.handle(s.ResolveFailed("no"), now)
    assert client.next_deadline() == now + s.MAX_BACKOFF


def test_a_failed_setup_is_an_error_with_its_message_then_a_retry() -> None:
    client = session()
    client.start(T)
    actions = client.handle(s.SetupFailed("cannot create TUN device m6t0"), T)
    assert actions == [s.StateChanged(s.TunnelState.ERROR, s.Cause.SETUP_FAILED,
                                      "cannot create TUN device m6t0")]
    assert client.message == "cannot create TUN device m6t0"
    assert states(client.handle_timer(T + 1)) == [(s.TunnelState.CONNECTING, s.Cause.RETRYING)]


@pytest.mark.parametrize("cause", [s.Cause.USER_REQUEST, s.Cause.HELPER_STOPPING])
def test_stop_tears_down_and_says_why(cause: s.Cause) -> None:
    client = session()
    client.start(T)
    client.handle(s.Resolved((s.Gateway("gw.example.net", "198.51.100.1"),), PATH), T)
    actions = client.handle(s.Stop(cause), T)
    assert actions == [s.CloseRace(None), s.Teardown(),
                       s.StateChanged(s.TunnelState.DISCONNECTED, cause, None)]
    assert client.next_deadline() is None


def test_fragmentation_needed_only_ever_lowers_and_never_below_1280() -> None:
    client = session()
    client.phase = s.Phase.CONNECTED
    assert client.handle(s.FragmentationNeeded(1500), T) == []  # 1472: no change
    assert client.handle(s.FragmentationNeeded(1400), T) == [
        s.ApplyMtu(1372, DEFAULT_TUNNEL_MTU, s.MtuReason.FRAGMENTATION_NEEDED)]
    assert client.handle(s.FragmentationNeeded(1450), T) == []  # never back up on its own
    client.handle(s.FragmentationNeeded(576), T)
    assert client.mtu == IPV6_MINIMUM_MTU


def test_a_requested_mtu_applies_now_and_auto_follows_the_route() -> None:
    client = session()
    client.phase = s.Phase.CONNECTED
    assert client.handle(s.MtuRequested(1400), T) == [
        s.ApplyMtu(1400, DEFAULT_TUNNEL_MTU, s.MtuReason.USER_REQUEST)]
    narrow = s.Ipv4Path("wwan0", "10.64.0.1", "10.64.0.9", 1360)
    assert client.handle(s.MtuRequested("auto", narrow), T) == [
        s.ApplyMtu(1332, 1400, s.MtuReason.AUTO)]
    assert client.configured_mtu == "auto"


def test_the_suffix_is_shown_as_the_address_last_three_groups() -> None:
    assert s.suffix_text(0x8D2E41F0977C) == "8d2e:41f0:977c"
    assert s.suffix_text(0x1) == "0:0:1"
