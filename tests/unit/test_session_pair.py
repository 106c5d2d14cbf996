"""A ClientSession against the real gateway core, through a fake NAT and a lossy fake link, on a
fake clock: the client's whole life (race, keepalives, liveness, NAT rebinding, network change,
back-off) without a socket, a thread or a sleep.

`Driver` is what helper/tunnel.py is around a session, with the link instead of the kernel: it
carries out the session's actions and feeds it what arrives and the passing of time.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
from dataclasses import dataclass, field

from m6t.protocol import session as s
from m6t.protocol.client import Inbound, classify_from_gateway
from m6t.protocol.constants import DEFAULT_TUNNEL_MTU, KEEPALIVE_INTERVAL
from m6t.protocol.gateway import StateKind
from m6t.protocol.packets import build_echo, build_ipv6
from tests.unit.fake_link import ESP, GATEWAY_PORTS, HOME_AGENT, PREFIX, FakeLink, make_world

GATEWAY = "198.51.100.1"
WIFI = s.Ipv4Path("wlan0", "192.168.1.1", "192.168.1.20", 1500)
WIRED = s.Ipv4Path("eth0", "10.0.0.1", "10.0.0.5", 1500)


@dataclass
class Driver:
    link: FakeLink
    session: s.ClientSession
    path: s.Ipv4Path | None = WIFI
    open_ports: set[int] = field(default_factory=set)
    states: list[tuple[float, s.TunnelState, s.Cause]] = field(default_factory=list)
    addresses: list[tuple[float, bytes, s.AddressReason]] = field(default_factory=list)
    mtus: list[tuple[int, s.MtuReason]] = field(default_factory=list)
    keepalives: list[float] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)  # what went to the TUN
    sent_at: float = 0.0
    received_at: float = 0.0
    app_ping: bool = False  # the application pings the HA (answered) instead of sending ESP
    memory: dict[str, s.Remembered] = field(default_factory=dict)  # the helper's, per network
    portal: str | None = None  # a captive portal's login page, while it holds us
    portal_checks: list[float] = field(default_factory=list)
    probes_sent: list[tuple[float, int]] = field(default_factory=list)  # race probes: (at, port)
    addresses_of: dict[str, str] = field(default_factory=dict)  # host names the resolver knows

    @property
    def now(self) -> float:
        return self.link.clock.now

    def start(self) -> None:
        self._do(self.session.start(self.now))

    def feed(self, event: s.Event) -> None:
        self._do(self.session.handle(event, self.now))

    def _do(self, actions: list[s.Action]) -> None:
        for action in actions:
            match action:
                case s.Resolve(hosts):
                    network = self.path.interface if self.path else None
                    gateways = tuple(s.Gateway(host, self.addresses_of.get(host, host))
                                     for host in hosts)
                    self.feed(s.Resolved(gateways, self.path, network=network,
                                         remembered=self.memory.get(network or "")))
                case s.OpenRace(_, ports):
                    self.open_ports = set(ports)
                case s.SendRaceProbe(gateway, port, packet):
                    self.probes_sent.append((self.now, port))
                    if gateway == GATEWAY:  # the one the link leads to; others are dead hosts
                        self.link.client_sends(port, packet)
                case s.CloseRace(keep):
                    self.open_ports = {keep[1]} if keep is not None else set()
                case s.UseAddress(address, _, _, _, _, reason):
                    self.addresses.append((self.now, address, reason))
                case s.ApplyMtu(mtu, _, reason):
                    self.mtus.append((mtu, reason))
                case s.SendKeepalive(packet):
                    self.keepalives.append(self.now)
                    assert self.session.port is not None
                    self.link.client_sends(self.session.port, packet)
                case s.StateChanged(state, cause, _):
                    self.states.append((self.now, state, cause))
                case s.Remember(network, gateway, port, mtu):
                    self.memory[network] = s.Remembered(port, mtu, gateway)
                case s.CheckPortal():
                    self.portal_checks.append(self.now)
                    self.feed(s.PortalChecked(self.portal))
                case s.Teardown():
                    self.open_ports = set()

    def send_app(self, payload: bytes = b"esp") -> None:
        """An application packet (ESP, say) to the HA through the tunnel."""
        address, port = self.session.address, self.session.port
        assert address is not None and port is not None
        if self.app_ping:
            packet = build_echo(address, HOME_AGENT.packed, 0x4D4E, len(self.delivered), payload)
        else:
            packet = build_ipv6(address, HOME_AGENT.packed, ESP, payload)
        self.link.client_sends(port, packet)
        self.sent_at = self.now

    def run_until(self, until: float, app_every: float | None = None) -> None:
        """Time passes to `until`: datagrams arrive, timers fire, and with `app_every` the
        application sends a packet that often while connected."""
        next_app = self.now if app_every else math.inf
        for _ in range(100_000):
            deadline = self.session.next_deadline()
            wake = min(deadline if deadline is not None else math.inf,
                       self.link.next_arrival(), next_app, until)
            self.link.clock.advance_to(max(wake, self.now))
            for port, packet in self.link.arrivals():
                self._arrived(port, packet)
            if self.now >= next_app:
                if self.session.state is s.TunnelState.CONNECTED:
                    self.send_app()
                next_app = self.now + (app_every or math.inf)
            deadline = self.session.next_deadline()
            if deadline is not None and self.now >= deadline:
                self.feed(s.Traffic(self.sent_at, self.received_at))
                self._do(self.session.handle_timer(self.now))
            if self.now >= until:
                return
        raise AssertionError("the clock never reached its goal")

    def _arrived(self, port: int, packet: bytes) -> None:
        if port not in self.open_ports:
            return  # a socket closed by now
        if self.session.phase is s.Phase.RACING:
            self.feed(s.RaceDatagram(GATEWAY, port, packet))
            return
        address = self.session.address
        if address is None or port != self.session.port:
            return
        kind = classify_from_gateway(packet, address)
        if kind is Inbound.KEEPALIVE_REPLY:
            self.feed(s.KeepaliveAnswered())
        elif kind is Inbound.TO_TUN:
            self.delivered.append(packet)
            self.received_at = self.now

    def connected_at(self, after: float = -math.inf) -> float:
        return next(t for t, state, _ in self.states
                    if state is s.TunnelState.CONNECTED and t >= after)


def make_driver(loss: float = 0.0, *, mtu: int | str = DEFAULT_TUNNEL_MTU,
                keepalive: float = KEEPALIVE_INTERVAL, blocked: tuple[int, ...] = (),
                path: s.Ipv4Path | None = WIFI,
                memory: dict[str, s.Remembered] | None = None,
                hosts: tuple[str, ...] = (GATEWAY,)) -> Driver:
    link = make_world()
    link.loss = loss
    link.blocked.update(blocked)
    config = s.SessionConfig(hosts=tuple(hosts), ports=tuple(GATEWAY_PORTS), prefix=PREFIX,
                             home_agent=HOME_AGENT.packed, mtu=mtu,  # type: ignore[arg-type]
                             keepalive=keepalive)
    driver = Driver(link, s.ClientSession(config, random=lambda: 0.5), path=path,
                    memory=dict(memory or {}))
    driver.start()
    return driver


def gateway_state(driver: Driver, address: bytes) -> StateKind | None:
    view = driver.link.gateway.lookup(ipaddress.IPv6Address(address))
    return None if view is None else view.kind


# --- connecting -------------------------------------------------------------------------------


def test_connects_through_the_gateway_and_the_address_is_active_there() -> None:
    driver = make_driver()
    driver.run_until(driver.now + 1)
    assert driver.session.state is s.TunnelState.CONNECTED
    assert driver.states[-1][2] is s.Cause.PORT_RACE_WON
    assert [reason for _, _, reason in driver.addresses] == [s.AddressReason.CONNECT]
    address = driver.session.address
    assert address is not None and ipaddress.IPv6Address(address) in PREFIX.network
    # "If no active state exists, then, a lookup at the temporary states is performed: if one
    # is found, it is marked active" (Protocol operations): the HA's answer did it.
    assert gateway_state(driver, address) is StateKind.ACTIVE
    assert driver.open_ports == {driver.session.port}  # the losers' sockets are closed


def test_a_lossy_link_still_connects_and_carries_traffic() -> None:
    driver = make_driver(loss=0.3)
    driver.run_until(driver.now + 20, app_every=0.5)
    assert driver.session.state is s.TunnelState.CONNECTED
    assert driver.link.lost > 0  # the link did lose datagrams
    assert driver.session.address is not None


def test_a_blocked_first_port_connects_on_the_next_and_says_so() -> None:
    driver = make_driver(blocked=(GATEWAY_PORTS[0],))
    driver.run_until(driver.now + 5)
    assert driver.session.state is s.TunnelState.CONNECTED
    assert driver.session.port != GATEWAY_PORTS[0]
    assert driver.states[-1][2] is s.Cause.PORT_FALLBACK
    first = next(p for p in driver.session.ports if p.port == GATEWAY_PORTS[0])
    assert first.rtt is None and first.error == "no answer"


def test_no_port_answers_waits_with_back_off_then_connects_when_unblocked() -> None:
    driver = make_driver(blocked=tuple(GATEWAY_PORTS))
    start = driver.now
    driver.run_until(start + 40)
    waits = [t for t, state, cause in driver.states
             if (state, cause) == (s.TunnelState.WAITING, s.Cause.GATEWAY_UNREACHABLE)]
    retries = [t for t, state, cause in driver.states
               if (state, cause) == (s.TunnelState.CONNECTING, s.Cause.RETRYING)]
    # Each race lasts 4 s; the pause after it doubles: 1, 2, 4, 8, 16 s.
    gaps = [retry - wait for wait, retry in zip(waits, retries, strict=False)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]
    driver.link.blocked.clear()
    driver.run_until(driver.now + 40)
    assert driver.session.state is s.TunnelState.CONNECTED


def test_no_ipv4_route_waits_without_a_timer_until_the_network_comes() -> None:
    driver = make_driver(path=None)
    driver.run_until(driver.now + 1)
    assert (driver.session.state, driver.session.cause) == (s.TunnelState.WAITING,
                                                            s.Cause.NO_IPV4_NETWORK)
    assert driver.session.next_deadline() is None  # nothing to retry until netlink speaks
    driver.path = WIRED
    driver.feed(s.NetworkChanged(WIRED))
    driver.run_until(driver.now + 1)
    assert driver.session.state is s.TunnelState.CONNECTED
    assert [reason for _, _, reason in driver.addresses] == [s.AddressReason.CONNECT]


# --- staying connected ------------------------------------------------------------------------


def test_a_quiet_healthy_tunnel_sends_one_keepalive_per_interval_and_never_regenerates() -> None:
    driver = make_driver()
    driver.run_until(driver.now + 1)
    connected = driver.now
    driver.run_until(connected + 180)
    assert len(driver.addresses) == 1  # never a new address on a healthy path
    assert driver.session.state is s.TunnelState.CONNECTED
    gaps = [b - a for a, b in zip([connected, *driver.keepalives], driver.keepalives,
                                  strict=False)]
    # "If the MN has not sent and received traffic via the tunnel for 30 seconds ... send an
    # empty IPv6 packet" (Maintaining NAT states), with a downward jitter (1.5 s here).
    assert gaps and all(27 <= gap <= KEEPALIVE_INTERVAL for gap in gaps)
    assert len(driver.keepalives) <= 180 / 27 + 1


def test_traffic_both_ways_needs_no_keepalive() -> None:
    driver = make_driver()
    driver.run_until(driver.now + 1)
    driver.app_ping = True  # the HA answers each: traffic comes back
    driver.run_until(driver.now + 120, app_every=1.0)
    assert driver.keepalives == []
    assert len(driver.delivered) >= 100


def test_traffic_one_way_is_probed_every_reply_timeout_and_stays_up() -> None:
    """ESP that nothing answers says nothing of the way back: "sent data, no reply" for 3 s
    asks the gateway with a keepalive; answered, all is well, and the count starts again."""
    driver = make_driver()
    driver.run_until(driver.now + 1)
    driver.run_until(driver.now + 120, app_every=1.0)
    assert driver.delivered == []
    gaps = [b - a for a, b in itertools.pairwise(driver.keepalives)]
    assert gaps and all(3.0 <= gap <= 4.5 for gap in gaps)
    assert len(driver.addresses) == 1
    assert driver.session.address is not None
    assert gateway_state(driver, driver.session.address) is StateKind.ACTIVE


def test_a_nat_rebinding_under_traffic_is_recovered_within_10_seconds() -> None:
    driver = make_driver()
    driver.run_until(driver.now + 1)
    old, port = driver.session.address, driver.session.port
    assert old is not None and port is not None
    driver.link.nat.rebind(port)  # the NAT forgot us and maps the same socket anew
    rebound = driver.now
    driver.run_until(rebound + 30, app_every=0.2)
    assert driver.addresses[-1][2] is s.AddressReason.NAT_MAPPING_CHANGED
    new = driver.session.address
    assert new is not None and new != old
    recovered = driver.connected_at(after=rebound)
    # sent data, no reply for 3 s (noticed within 1 s) + 3 unanswered probes 1 s apart + race
    assert recovered - rebound <= 3 + 1 + 3 + 0.5
    assert gateway_state(driver, new) is StateKind.ACTIVE
    # "states bind an IPv6 address to an IPv4 address + UDP port and are never updated": the
    # old address's state still points at the old mapping, so it could not be reused.
    print(f"NAT rebinding recovered in {recovered - rebound:.2f} s of fake time")


def test_a_dead_path_after_a_resume_is_blamed_on_the_resume() -> None:
    driver = make_driver()
    driver.run_until(driver.now + 1)
    assert driver.session.port is not None
    driver.link.nat.rebind(driver.session.port)
    driver.feed(s.Resumed())  # probe at once instead of after 28.5 s
    resumed = driver.now
    driver.run_until(resumed + 6)
    assert driver.addresses[-1][2] is s.AddressReason.RESUME
    assert driver.connected_at(after=resumed) - resumed < 5


def test_a_network_change_takes_a_new_address_and_a_same_network_event_does_not() -> None:
    driver = make_driver()
    driver.run_until(driver.now + 1)
    driver.feed(s.NetworkChanged(WIFI))  # a DHCP renewal: same route
    driver.run_until(driver.now + 1)
    assert len(driver.addresses) == 1
    driver.path = WIRED
    driver.feed(s.NetworkChanged(WIRED))
    driver.run_until(driver.now + 1)
    assert [reason for _, _, reason in driver.addresses] == [s.AddressReason.CONNECT,
                                                             s.AddressReason.NETWORK_CHANGED]
    assert driver.states[-1][1:] == (s.TunnelState.CONNECTED, s.Cause.NETWORK_CHANGED)


def test_regenerate_gives_a_new_address_on_request() -> None:
    driver = make_driver()
    driver.run_until(driver.now + 1)
    old = driver.session.address
    driver.feed(s.RegenerateRequested())
    driver.run_until(driver.now + 1)
    assert driver.session.address != old
    assert driver.addresses[-1][2] is s.AddressReason.USER_REQUEST
    assert driver.states[-1][1:] == (s.TunnelState.CONNECTED, s.Cause.USER_REQUEST)


# --- MTU: a property of each network ----------------------------------------------------------


def test_a_lowered_mtu_is_kept_on_the_same_network_and_forgotten_on_a_new_one() -> None:
    driver = make_driver()
    driver.run_until(driver.now + 1)
    driver.feed(s.FragmentationNeeded(1400))
    assert driver.session.mtu == 1372
    driver.feed(s.RegenerateRequested())  # same network, new address: what was learned stays
    driver.run_until(driver.now + 1)
    assert driver.session.mtu == 1372
    driver.path = WIRED
    driver.feed(s.NetworkChanged(WIRED))
    driver.run_until(driver.now + 1)
    assert driver.session.mtu == DEFAULT_TUNNEL_MTU
    assert driver.mtus == [(1372, s.MtuReason.FRAGMENTATION_NEEDED),
                           (DEFAULT_TUNNEL_MTU, s.MtuReason.NETWORK_CHANGED)]


def test_auto_mtu_is_worked_out_for_each_network() -> None:
    driver = make_driver(mtu="auto", path=s.Ipv4Path("wwan0", "10.64.0.1", "10.64.0.9", 1400))
    driver.run_until(driver.now + 1)
    assert driver.session.mtu == 1372
    driver.path = WIRED  # 1500
    driver.feed(s.NetworkChanged(WIRED))
    driver.run_until(driver.now + 1)
    assert driver.session.mtu == 1472
    assert [reason for _, reason in driver.mtus] == [s.MtuReason.AUTO, s.MtuReason.AUTO]


# --- what the helper remembers of each network -------------------------------------------------


def test_a_known_network_is_joined_on_its_remembered_port_without_a_race() -> None:
    driver = make_driver(blocked=(GATEWAY_PORTS[0],))
    driver.run_until(driver.now + 5)
    assert driver.session.port == GATEWAY_PORTS[1]
    assert driver.memory == {"wlan0": s.Remembered(GATEWAY_PORTS[1], DEFAULT_TUNNEL_MTU,
                                                   GATEWAY)}
    driver.path = WIRED
    driver.feed(s.NetworkChanged(WIRED))  # leave...
    driver.run_until(driver.now + 5)
    driver.probes_sent.clear()
    driver.path = WIFI
    rejoined = driver.now
    driver.feed(s.NetworkChanged(WIFI))  # ...and come back
    driver.run_until(driver.now + 5)
    assert driver.session.port == GATEWAY_PORTS[1]
    # The remembered port answered within its head start: nothing else was tried, and the
    # tunnel was up one round trip after the network came back, with no grace period.
    assert {port for _, port in driver.probes_sent} == {GATEWAY_PORTS[1]}
    assert driver.connected_at(after=rejoined) - rejoined <= 0.05
    untried = [p for p in driver.session.ports if p.port != GATEWAY_PORTS[1]]
    assert all(p.error and p.error.startswith("not tried") for p in untried)


def test_a_remembered_port_that_no_longer_answers_loses_only_its_head_start() -> None:
    # This network now filters what worked before.
    driver = make_driver(blocked=(GATEWAY_PORTS[2],),
                         memory={"wlan0": s.Remembered(GATEWAY_PORTS[2], DEFAULT_TUNNEL_MTU,
                                                       GATEWAY)})
    start = driver.now
    driver.run_until(start + 5)
    assert driver.session.state is s.TunnelState.CONNECTED
    connected = driver.connected_at(after=start) - start
    assert s.HEAD_START <= connected <= s.HEAD_START + 0.1 + s.RACE_REPORT_GRACE
    assert driver.memory["wlan0"].port in GATEWAY_PORTS[:2]  # memory follows what works now


def test_a_remembered_mtu_is_applied_at_once_and_learning_updates_it() -> None:
    driver = make_driver(memory={"wlan0": s.Remembered(GATEWAY_PORTS[0], 1372, GATEWAY)})
    driver.run_until(driver.now + 1)
    assert driver.mtus[0] == (1372, s.MtuReason.REMEMBERED)
    assert driver.session.mtu == 1372
    driver.feed(s.FragmentationNeeded(1350))
    assert driver.memory["wlan0"] == s.Remembered(GATEWAY_PORTS[0], 1322, GATEWAY)


# --- captive portals --------------------------------------------------------------------------


def test_a_captive_portal_is_said_and_the_tunnel_comes_once_it_lets_us_through() -> None:
    driver = make_driver(blocked=tuple(GATEWAY_PORTS))
    driver.portal = "http://192.168.1.1/login"
    driver.run_until(driver.now + 5)
    assert (driver.session.state, driver.session.cause) == (s.TunnelState.WAITING,
                                                            s.Cause.CAPTIVE_PORTAL)
    assert driver.session.portal_url == "http://192.168.1.1/login"
    waiting = driver.now
    driver.run_until(waiting + 12)
    assert len(driver.portal_checks) >= 3  # looked again every 3 s, no race meanwhile
    assert driver.session.cause is s.Cause.CAPTIVE_PORTAL
    driver.portal = None  # the user logged in
    driver.link.blocked.clear()
    logged_in = driver.now
    driver.run_until(logged_in + 6)
    assert driver.session.state is s.TunnelState.CONNECTED
    assert driver.session.portal_url is None
    assert driver.connected_at(after=logged_in) - logged_in <= s.PORTAL_RECHECK + 0.1


def test_no_portal_keeps_gateway_unreachable_with_its_back_off() -> None:
    driver = make_driver(blocked=tuple(GATEWAY_PORTS))
    driver.run_until(driver.now + 4.5)  # the race (4 s) is over, the retry (1 s) not yet due
    assert driver.session.cause is s.Cause.GATEWAY_UNREACHABLE
    assert len(driver.portal_checks) == 1


# --- several gateways ---------------------------------------------------------------------------


def test_several_gateways_are_raced_like_ports_and_a_dead_one_costs_nothing() -> None:
    # "a profile may list several gateways and the helper races them as it races ports"
    dead = "203.0.113.99"  # listed first, but its host is gone
    driver = make_driver(hosts=(dead, GATEWAY))
    start = driver.now
    driver.run_until(start + 2)
    assert driver.session.state is s.TunnelState.CONNECTED
    assert (driver.session.gateway, driver.session.gateway_address) == (GATEWAY, GATEWAY)
    assert driver.states[-1][2] is s.Cause.PORT_FALLBACK  # the preferred gateway is down
    assert driver.connected_at(after=start) - start <= 0.1 + s.RACE_REPORT_GRACE
    by_gateway = {(p.gateway, p.port): p.rtt for p in driver.session.ports}
    assert all(by_gateway[dead, port] is None for port in GATEWAY_PORTS)


def test_a_remembered_gateway_is_tried_first_on_a_known_network() -> None:
    memory = {"wlan0": s.Remembered(GATEWAY_PORTS[1], DEFAULT_TUNNEL_MTU, GATEWAY)}
    driver = make_driver(hosts=("203.0.113.99", GATEWAY), memory=memory)
    start = driver.now
    driver.run_until(start + 2)
    assert driver.session.port == GATEWAY_PORTS[1]
    assert {port for _, port in driver.probes_sent} == {GATEWAY_PORTS[1]}
    assert driver.connected_at(after=start) - start <= 0.05
