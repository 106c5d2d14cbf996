"""Prometheus metrics for the gateway, read at scrape time from the packet loop's counters.

The packet loop never touches prometheus_client: it keeps plain dicts whose keys are all
present from the start, so the scrape thread's copies (single C-level dict copies under the
GIL) never see a dict change size. No lock on the packet path, and no stale figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from m6t.protocol.drops import DropReason


@dataclass(frozen=True)
class Snapshot:
    states: dict[str, int] = field(default_factory=dict)
    packets: dict[str, int] = field(default_factory=dict)  # direction -> count
    bytes: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    client_mtu_lowered: int = 0
    reloads: int = 0
    send_failures: dict[str, int] = field(default_factory=dict)  # errno name -> packets
    offloads: dict[str, int] = field(default_factory=dict)  # feature -> 1 in use, 0 not
    offload_fallbacks: dict[str, str] = field(default_factory=dict)  # feature -> why not
    super_packets: dict[str, int] = field(default_factory=dict)  # direction -> count
    super_packet_segments: dict[str, int] = field(default_factory=dict)  # direction -> packets
    offload_drops: dict[str, int] = field(default_factory=dict)  # segmenter's reason -> count
    start_time: float = 0.0  # Unix time the gateway process started: every state is newer
    ready: bool = False  # the packet loop serves: listen ports bound, TUN device up


class GatewayCollector(Collector):
    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snap = self.read()
        # A restart loses every state (the draft's states are soft and never move between
        # gateways): one alert on a changed start time tells "all clients had to re-attach".
        yield GaugeMetricFamily("m6t_gateway_start_time_seconds",
                                "Start time of the gateway process since the Unix epoch",
                                value=snap.start_time)
        yield GaugeMetricFamily("m6t_gateway_ready",
                                "1 while the gateway serves (listen ports bound, TUN device up, "
                                "packet loop running), else 0", value=int(snap.ready))
        states = GaugeMetricFamily("m6t_gateway_states", "Tunnel states by kind", labels=["kind"])
        for kind, count in snap.states.items():
            states.add_metric([kind], count)
        yield states
        packets = CounterMetricFamily("m6t_gateway_packets", "Packets forwarded",
                                      labels=["direction"])
        octets = CounterMetricFamily("m6t_gateway_bytes", "Bytes forwarded (IPv6 packets)",
                                     labels=["direction"])
        for direction in ("from_client", "to_client"):
            packets.add_metric([direction], snap.packets.get(direction, 0))
            octets.add_metric([direction], snap.bytes.get(direction, 0))
        yield packets
        yield octets
        drops = CounterMetricFamily("m6t_gateway_drops", "Packets dropped, by reason",
                                    labels=["reason"])
        for reason in DropReason:
            drops.add_metric([reason.value], snap.drops.get(reason.value, 0))
        for name, count in snap.offload_drops.items():  # super-packets that cannot be cut
            drops.add_metric([name], count)
        yield drops
        yield CounterMetricFamily("m6t_gateway_rate_limit_hits",
                                  "New states refused by the per-IPv4 rate limit",
                                  value=snap.drops.get(DropReason.RATE_LIMITED.value, 0))
        yield CounterMetricFamily("m6t_gateway_client_mtu_lowered",
                                  "Client path MTUs lowered by ICMPv4 errors",
                                  value=snap.client_mtu_lowered)
        yield CounterMetricFamily("m6t_gateway_reloads", "Configuration reloads (SIGHUP)",
                                  value=snap.reloads)
        failures = CounterMetricFamily("m6t_gateway_send_failures",
                                       "Packets to clients the kernel would not send, by error",
                                       labels=["error"])
        for error, count in snap.send_failures.items():
            failures.add_metric([error], count)
        yield failures
        offloads = GaugeMetricFamily("m6t_gateway_offload",
                                     "Offloads in use (1) or not (0), by feature",
                                     labels=["feature"])
        for feature, on in snap.offloads.items():
            offloads.add_metric([feature], on)
        yield offloads
        fallbacks = GaugeMetricFamily(
            "m6t_gateway_offload_off",
            "Offloads not in use and why: turned off, or refused by the kernel (the plain path "
            "is used instead)", labels=["feature", "reason"])
        for feature, why in snap.offload_fallbacks.items():
            fallbacks.add_metric([feature, why], 1)
        yield fallbacks
        supers = CounterMetricFamily(
            "m6t_gateway_super_packets",
            "GSO super-packets written to (to_home) or read from (from_home) the TUN device",
            labels=["direction"])
        segments = CounterMetricFamily("m6t_gateway_super_packet_segments",
                                       "Packets carried in those super-packets",
                                       labels=["direction"])
        for direction in ("to_home", "from_home"):
            supers.add_metric([direction], snap.super_packets.get(direction, 0))
            segments.add_metric([direction], snap.super_packet_segments.get(direction, 0))
        yield supers
        yield segments
