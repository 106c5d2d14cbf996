"""m6t-helper end to end: the real helper in mn, the real gateway, the real NAT.

Clients talk to the helper over its real Unix socket from the host namespace, as the CLI and
the desktop app do. Everything waits on conditions, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from m6t.control.client import HelperClient
from m6t.control.errors import ControlError, HelperNotRunning
from m6t.lab.inject import UDP_SOCKET_ERRORS
from m6t.lab.lab import Lab, frozen, wait_for

pytestmark = pytest.mark.netns


@pytest.fixture
def world(lab: Lab) -> Iterator[Lab]:
    lab.start_gateway()
    lab.start_helper()
    yield lab


def call(client: HelperClient, method: str, **params: Any) -> Any:
    """A call's result as it travels (plain JSON values): what these tests check is the wire."""
    return msgspec.to_builtins(client.call(method, **params))


def connect(lab: Lab, **overrides: Any) -> dict[str, Any]:
    with HelperClient(lab.helper_socket) as client:
        return dict(call(client, "connect", profile=lab.profile(**overrides)))


def status(lab: Lab) -> dict[str, Any]:
    with HelperClient(lab.helper_socket) as client:
        tunnels = call(client, "status")["tunnels"]
    assert len(tunnels) == 1
    return dict(tunnels[0])


def ping(lab: Lab, count: int = 3, size: int = 56, timeout: float = 2) -> bool:
    result = lab.run("mn", ["ping", "-6", "-c", str(count), "-i", "0.2", "-W", str(timeout),
                            "-s", str(size), lab.addr.home_agent], check=False, timeout=30)
    return result.returncode == 0


def mn_addresses(lab: Lab) -> list[str]:
    out = lab.ip("mn", "-6", "-o", "addr", "show", "dev", "m6t0", check=False).stdout
    return re.findall(r"inet6 (\S+)/128", out)


def test_ping_through_the_tunnel(world: Lab) -> None:
    result = connect(world)
    assert result["state"] == "connected"
    assert result["port"] == 3544
    assert mn_addresses(world) == [result["address"]]
    assert result["address"].startswith("fd6d:6d74:1:1:1:")
    assert ping(world, count=5)
    after = status(world)
    assert after["tx_packets"] >= 5 and after["rx_packets"] >= 5


def test_ike_like_udp_exchange_between_mn_and_home_agent(world: Lab) -> None:
    world.start_udp_echo(500)
    address = connect(world)["address"]
    script = (
        "import socket,sys;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);"
        f"s.bind(('{address}',500));s.settimeout(3);"
        f"s.sendto(bytes.fromhex('00112233445566778899'),('{world.addr.home_agent}',500));"
        "d,a=s.recvfrom(100);print(d.hex(),a[0],a[1])")
    out = world.run("mn", [sys.executable, "-c", script]).stdout.split()
    assert out == ["99887766554433221100", world.addr.home_agent, "500"]


def test_iperf3_through_the_tunnel(world: Lab) -> None:
    world.start_iperf_server()
    connect(world)
    result = world.run("mn", ["iperf3", "-6", "-c", world.addr.home_agent, "-t", "2", "-J"],
                       timeout=30)
    report = json.loads(result.stdout)
    received = report["end"]["sum_received"]["bits_per_second"]
    assert received > 10e6  # at least 10 Mbit/s through the whole path
    assert status(world)["drops"].get("not_for_us", 0) == 0


def test_network_change_gives_new_address_and_traffic_flows(world: Lab) -> None:
    old = connect(world)["address"]
    assert ping(world)
    started = time.monotonic()
    world.roam()  # new IPv4 address and default route on mn
    new = wait_for(lambda: (s := status(world))["state"] == "connected"
                   and s["address"] != old and s["address"], 10, "a new tunnel address")
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert mn_addresses(world) == [new]  # the old address is gone
    history = status(world)["history"]
    assert [h["reason"] for h in history] == ["connect", "network_changed"]
    assert ping(world)


def test_no_ipv4_network_waits_and_comes_back(world: Lab) -> None:
    connect(world)
    world.ip("mn", "route", "del", "default")
    world.ip("mn", "addr", "flush", "dev", "eth0")
    wait_for(lambda: status(world)["state"] == "waiting", 10, "state waiting")
    assert status(world)["cause"] == "no_ipv4_network"
    world.ip("mn", "addr", "add", f"{world.addr.mn}/24", "dev", "eth0")
    world.ip("mn", "route", "add", "default", "via", world.addr.nat_lan)
    wait_for(lambda: status(world)["state"] == "connected", 10, "reconnected")
    assert ping(world)


def test_nat_mapping_change_is_recovered_by_liveness(world: Lab) -> None:
    old = connect(world, keepalive=2)["address"]
    assert ping(world)
    world.change_nat_mapping()
    new = wait_for(lambda: (s := status(world))["state"] == "connected"
                   and s["address"] != old and s["address"], 20, "a new address after the "
                   "NAT changed its mapping")
    assert status(world)["history"][-1]["reason"] == "nat_mapping_changed"
    assert mn_addresses(world) == [new]
    assert ping(world)


def test_conntrack_flush_keeps_or_recovers_the_tunnel(world: Lab) -> None:
    connect(world, keepalive=2)
    world.flush_conntrack()
    wait_for(lambda: ping(world, count=1, timeout=1), 20, "traffic after a conntrack flush")
    assert status(world)["state"] == "connected"


def recovery_under_ping(lab: Lab, disrupt: Callable[[], None], seconds: float = 16
                        ) -> float | None:
    """Ping the HA every 0.1 s; once replies flow, `disrupt` the path; return how long after
    it the first reply came back (None: none did)."""
    log = lab.workdir / "recovery-ping.log"
    pinger = lab.spawn("mn", ["ping", "-6", "-D", "-n", "-i", "0.1", "-W", "1", "-w",
                              str(seconds), lab.addr.home_agent], log_name="recovery-ping")

    def replies() -> list[float]:
        text = log.read_text() if log.exists() else ""
        return [float(at) for at in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", text, re.M)]

    wait_for(lambda: len(replies()) >= 5, 5, "the ping to flow before the disruption")
    disrupted = time.time()
    disrupt()
    pinger.wait(seconds + 10)
    after = [at for at in replies() if at > disrupted + 0.05]
    return round(after[0] - disrupted, 2) if after else None


@pytest.mark.parametrize("disruption", ["rebind_nat_port", "change_nat_mapping"])
def test_a_lost_nat_mapping_under_a_running_ping_is_recovered_within_10_s(
        world: Lab, disruption: str) -> None:
    """The default profile (no keepalive tuning): "sent data, no reply" for 3 s, three probes
    1 s apart, a new address; the ping flows again well within 10 s."""
    old = connect(world)["address"]
    recovered = recovery_under_ping(world, getattr(world, disruption))
    print(f"\n{disruption}: ping flows again {recovered} s after the mapping was lost")
    assert recovered is not None and recovered <= 10.0
    assert status(world)["address"] != old
    assert status(world)["history"][-1]["reason"] == "nat_mapping_changed"


def test_blocked_first_port_falls_back_to_the_next(world: Lab) -> None:
    world.set_nat_rules(extra="udp dport 3544 drop")
    result = connect(world)
    assert result["state"] == "connected"
    assert result["port"] == 4500
    assert result["cause"] == "port_fallback"
    by_port = {p["port"]: p for p in result["ports"]}
    assert by_port[3544]["reachable"] is False and by_port[4500]["reachable"] is True
    assert ping(world)


def test_all_ports_blocked_waits_as_gateway_unreachable(world: Lab) -> None:
    world.set_nat_rules(extra="udp dport { 3544, 4500 } drop")
    result = connect(world)
    assert (result["state"], result["cause"]) == ("waiting", "gateway_unreachable")
    world.set_nat_rules()
    wait_for(lambda: status(world)["state"] == "connected", 15, "connected after unblocking")


def test_probe_reports_every_port(world: Lab) -> None:
    world.set_nat_rules(extra="udp dport 4500 drop")
    with HelperClient(world.helper_socket) as client:
        result = call(client, "probe", profile=world.profile(ports=[3544, 4500]), timeout=1.5)
    ports = {p["port"]: p for p in result["ports"]}
    assert ports[3544]["reachable"] and ports[3544]["rtt_ms"] > 0
    assert not ports[4500]["reachable"]
    with HelperClient(world.helper_socket) as client:
        assert call(client, "status")["tunnels"] == []  # probing connects nothing


def test_lower_link_mtu_on_the_path(world: Lab) -> None:
    """DF is never set: with a 1400-byte link between NAT and gateway, full-size tunnel packets
    are fragmented on the IPv4 path and still arrive; the MTU probe says so."""
    world.ip("nat", "link", "set", "wan", "mtu", "1400")
    world.ip("gw", "link", "set", "wan", "mtu", "1400")
    connect(world)
    assert ping(world, count=2, size=1472 - 48)  # a 1472-byte IPv6 packet
    with HelperClient(world.helper_socket) as client:
        report = call(client, "probe_mtu", profile="lab")
    assert report["mtu"] == 1472
    assert report["fragments_pass"] is True


def test_fragments_dropped_on_the_path_are_reported(world: Lab) -> None:
    world.set_nat_rules(before_defrag="ip frag-off & 0x3fff != 0 drop")
    connect(world)
    with HelperClient(world.helper_socket) as client:
        report = call(client, "probe_mtu", profile="lab")
    assert report["fragments_pass"] is False
    assert report["mtu"] == 1472  # unfragmented full-size packets still pass


def test_fragmentation_needed_lowers_the_tunnel_mtu(world: Lab) -> None:
    connect(world)
    sockets = world.run("mn", ["ss", "-Huan"]).stdout
    # The tunnel's UDP socket, connected to the gateway: the only one in mn.
    ports = [int(m) for m in re.findall(r":(\d+)\s+198\.51\.100\.1:3544", sockets)]
    assert len(ports) == 1, sockets
    port = ports[0]
    # A router on the LAN side reports that our datagram to the gateway did not fit in 1400.
    world.python("nat", "m6t.lab.inject", "--from", world.addr.nat_lan, "--quoted-src",
                 f"{world.addr.mn}:{port}", "--quoted-dst", f"{world.addr.gw_wan}:3544",
                 "--mtu", "1400")
    wait_for(lambda: status(world)["mtu"] == 1372, 5, "the tunnel MTU to drop to 1400 - 28")
    assert "mtu 1372" in world.ip("mn", "link", "show", "m6t0").stdout


def test_several_tunnels_have_distinct_suffixes(world: Lab) -> None:
    first = connect(world)
    second = connect(world, name="second")
    assert {first["name"], second["name"]} == {"m6t0", "m6t1"}
    assert first["suffix"] != second["suffix"]
    with HelperClient(world.helper_socket) as client:
        assert len(call(client, "status")["tunnels"]) == 2


def test_regenerate_and_set_mtu(world: Lab) -> None:
    old = connect(world)["address"]
    with HelperClient(world.helper_socket) as client:
        regenerated = call(client, "regenerate", profile="lab")
        assert regenerated["address"] != old and regenerated["state"] == "connected"
        assert regenerated["history"][-1]["reason"] == "user_request"
        assert call(client, "set_mtu", profile="lab", mtu=1400)["mtu"] == 1400
    assert "mtu 1400" in world.ip("mn", "link", "show", "m6t0").stdout
    assert ping(world)


def test_subscribe_gets_state_then_events(world: Lab) -> None:
    with HelperClient(world.helper_socket) as watcher:
        assert call(watcher, "subscribe") == {"tunnels": [], "access": "read-write",
                                              "group": "m6t"}
        connect(world)
        events: list[dict[str, Any]] = []
        for event in watcher.events():
            events.append(msgspec.to_builtins(event))
            if events[-1]["type"] == "traffic":
                break
    kinds = [e["type"] for e in events]
    assert "state" in kinds and "address" in kinds
    assert any(e["type"] == "state" and e["state"] == "connected" for e in events)


def test_sigterm_tears_everything_down(world: Lab) -> None:
    connect(world)
    assert world.stop(world.helper_process, signal.SIGTERM) == 0
    assert "m6t0" not in world.ip("mn", "link").stdout
    assert "fd48:4100::2" not in world.ip("mn", "-6", "route").stdout
    assert not os.path.exists(world.helper_socket)


def test_sigkill_then_restart_leaves_the_host_as_before(world: Lab) -> None:
    before_routes = world.ip("mn", "-6", "route").stdout
    world.ip("mn", "tuntap", "add", "m6t7", "mode", "tun")  # a persistent leftover
    connect(world)
    world.stop(world.helper_process, signal.SIGKILL)
    assert os.path.exists(world.helper_socket)  # a stale socket file stays behind
    world.start_helper()  # replaces the stale socket, removes leftovers
    links = world.ip("mn", "link").stdout
    assert "m6t0" not in links and "m6t7" not in links
    assert world.ip("mn", "-6", "route").stdout == before_routes
    assert connect(world)["state"] == "connected"
    assert ping(world)


def test_a_second_helper_does_not_steal_the_socket(world: Lab) -> None:
    second = world.run("mn", [sys.executable, "-m", "m6t_helper", "--socket",
                              world.helper_socket], check=False, timeout=20)
    assert second.returncode == 1
    assert "another m6t-helper is running" in second.stderr
    with HelperClient(world.helper_socket) as client:
        assert call(client, "version")["api"] == 1


def _as_user(uid: int, gid: int, path: str, calls: list[tuple[str, dict[str, Any]]]
             ) -> list[Any]:
    """Run control calls from a forked process with another uid/gid (SO_PEERCRED sees it)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which must never return to pytest
        out: list[Any] = []
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with HelperClient(path) as client:
                for method, params in calls:
                    try:
                        out.append(["ok", call(client, method, **params)])
                    except ControlError as exc:
                        out.append([type(exc).__name__, str(exc)])
        except ControlError as exc:
            out.append([type(exc).__name__, str(exc)])
        except BaseException as exc:
            out.append(["crash", repr(exc)])
        finally:
            try:
                os.write(write_end, json.dumps(out).encode())
            finally:
                os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(child, 0)
    return list(json.loads(data))


def test_a_user_outside_the_group_gets_read_only(world: Lab) -> None:
    os.chmod(world.workdir, 0o755)
    nobody = 65534
    results = _as_user(nobody, nobody, world.helper_socket,
                       [("status", {}), ("connect", {"profile": world.profile()})])
    assert results[0][0] == "ok" and results[0][1]["access"] == "read-only"
    assert results[1][0] == "PermissionDenied" and "join group m6t" in results[1][1]
    with HelperClient(world.helper_socket) as client:
        assert call(client, "status")["tunnels"] == []


def test_group_members_may_connect_and_others_none_closes(lab: Lab) -> None:
    lab.start_gateway()
    os.chmod(lab.workdir, 0o755)
    lab.start_helper("--group", "nogroup", "--others", "none")
    nobody = 65534  # primary group nogroup: a member
    results = _as_user(nobody, nobody, lab.helper_socket, [("connect", {"profile": lab.profile()})])
    assert results[0][0] == "ok" and results[0][1]["state"] == "connected"
    daemon_user = 1  # not in nogroup, and others get nothing
    results = _as_user(daemon_user, daemon_user, lab.helper_socket, [("status", {})])
    assert results[0][0] in ("HelperNotRunning", "PermissionDenied")


MALFORMED = [
    (b"this is not json\n", -32700),
    (b"[1, 2, 3]\n", -32600),
    (b'{"jsonrpc": "1.0", "id": 1, "method": "status"}\n', -32600),
    (b'{"jsonrpc": "2.0", "id": 2, "method": "no_such_method"}\n', -32601),
    (b'{"jsonrpc": "2.0", "id": 3, "method": "connect", "params": {"profile": 5}}\n', -32602),
    (b'{"jsonrpc": "2.0", "id": 4, "method": "connect", "params": {"profile": {"name": "x", '
     b'"gateway": "198.51.100.1", "ports": [3544], "prefix": "fd00::/64", '
     b'"home_agent": "fd48:4100::2"}}}\n', -32602),
    (b'{"jsonrpc": "2.0", "id": 5, "method": "set_mtu", "params": {"profile": "lab", '
     b'"mtu": "big"}}\n', -32602),
    (b'{"jsonrpc": "2.0", "id": 6, "method": "disconnect", "params": {"profile": "nope"}}\n',
     -32002),
    (b"\xff\xfe\x00garbage\n", -32700),
]


def _raw_exchange(path: str, data: bytes, timeout: float = 5) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    try:
        sock.sendall(data)
        received = b""
        while not received.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received
    finally:
        sock.close()


def test_malformed_messages_get_errors_and_tunnels_keep_running(world: Lab) -> None:
    connect(world)
    for data, code in MALFORMED:
        reply = json.loads(_raw_exchange(world.helper_socket, data))
        assert reply["error"]["code"] == code, (data, reply)
    # An oversize line: an error, then the connection is closed.
    reply = _raw_exchange(world.helper_socket, b"x" * (70 * 1024) + b"\n")
    assert json.loads(reply)["error"]["code"] == -32600
    assert status(world)["state"] == "connected"
    assert ping(world)


def test_unfinished_line_and_connection_flood_are_bounded(lab: Lab) -> None:
    lab.start_gateway()
    lab.start_helper("--line-timeout", "1")
    connect(lab)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(lab.helper_socket)
    slow.sendall(b'{"jsonrpc": "2.0", "id": 1, "meth')
    slow.settimeout(5)
    started = time.monotonic()
    assert slow.recv(100) == b""  # closed by the helper
    assert time.monotonic() - started < 4
    slow.close()
    flood = []
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(lab.helper_socket)
        flood.append(s)
    try:
        assert ping(lab)
        served = 0
        for s in flood:
            s.settimeout(2)
            try:
                s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "version"}\n')
                if s.recv(1000):
                    served += 1
            except OSError:
                pass  # closed by the helper: over the connection limit
        assert 0 < served <= 64
    finally:
        for s in flood:
            s.close()
    with HelperClient(lab.helper_socket) as client:
        assert call(client, "version")["api"] == 1
    assert status(lab)["state"] == "connected"


def test_helper_not_running_is_a_clear_error(tmp_path: Any) -> None:
    path = str(tmp_path / "absent.sock")
    with pytest.raises(HelperNotRunning, match="no socket at") as raised:
        HelperClient(path)
    assert raised.value.data.socket == path



def test_esp_and_ipv6_fragments_pass_untouched(world: Lab) -> None:
    """IPsec's ESP (next header 50) and IPv6 fragments cross the tunnel byte for byte: what
    MIPv6 and IKE/IPsec need to run unchanged on top."""
    address = connect(world)["address"]
    receiver = world.spawn("ha", [sys.executable, "-c",
                                  "import socket;r=socket.socket(socket.AF_INET6,"
                                  "socket.SOCK_RAW,50);r.settimeout(10);"
                                  "d,a=r.recvfrom(2000);print(d.hex(),a[0],flush=True)"],
                           log_name="esp")
    wait_for(lambda: "raw" in world.run("ha", ["ss", "-Hw", "-a"]).stdout
             or "50" in world.run("ha", ["ss", "-Hwan"]).stdout, 5, "ESP receiver")
    esp = bytes.fromhex("0000100100000001") + bytes(range(48))  # SPI, sequence, payload
    world.run("mn", [sys.executable, "-c",
                     "import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_RAW,50);"
                     f"s.bind(('{address}',0));"
                     f"s.sendto(bytes.fromhex('{esp.hex()}'),('{world.addr.home_agent}',0))"])
    assert receiver.wait(10) == 0
    hexdata, source = world.log("esp").split()
    assert (bytes.fromhex(hexdata), source) == (esp, address)
    # A 3000-byte ping leaves mn as IPv6 fragments (tunnel MTU 1472) and is reassembled by
    # the HA; its answer may need one Packet Too Big round first, hence a few tries.
    assert ping(world, count=4, size=3000)


def test_no_forged_icmp_error_costs_the_helper_a_packet(world: Lab) -> None:
    """An ICMP error about the tunnel's datagrams (forged by anyone on the path) fails the
    helper's next send with IP_RECVERR: that packet must still leave. The helper is frozen
    while a ping is queued on m6t0 and then the error arrives, so that the send meets it."""
    connect(world)
    sockets = world.run("mn", ["ss", "-Huan"]).stdout
    (port,) = [int(m) for m in re.findall(r":(\d+)\s+198\.51\.100\.1:3544", sockets)]
    helper = world.helper_process

    def echoes_sent() -> int:  # by mn's IPv6 stack (m6t0 is its only IPv6 route)
        snmp6 = world.run("mn", ["cat", "/proc/net/snmp6"]).stdout
        return int(re.search(r"^Icmp6OutEchos\s+(\d+)", snmp6, re.MULTILINE).group(1))

    for icmp_type, code in UDP_SOCKET_ERRORS:
        with frozen(helper):
            before = echoes_sent()
            pinger = world.spawn("mn", ["ping", "-6", "-n", "-c", "1", "-W", "3",
                                        world.addr.home_agent], log_name="ping")
            wait_for(lambda before=before: echoes_sent() > before, 5, "the ping on m6t0")
            world.python("nat", "m6t.lab.inject", "--from", world.addr.nat_lan, "--quoted-src",
                         f"{world.addr.mn}:{port}", "--quoted-dst", f"{world.addr.gw_wan}:3544",
                         "--type", str(icmp_type), "--code", str(code))
        assert pinger.wait(10) == 0, f"ICMP {icmp_type}/{code}: the ping got no answer"
    after = status(world)
    assert after["state"] == "connected"
    assert not {"send_failed", "gateway_refused", "no_ipv4_route"} & set(after["drops"])
