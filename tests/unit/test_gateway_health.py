"""m6t-gateway-health and the readiness it reads: the daemon's failover metrics on fakes, the
check's verdicts on fake probes (each way to fail, the time bound), the real HTTP reader
against a local metrics server. The ICMPv6 echo and keepalived itself run for real in
tests/netns/test_redundancy.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import generate_latest, start_http_server
from prometheus_client.registry import CollectorRegistry

from m6t.gateway import health
from m6t.gateway.config import DEFAULT_TUN, load_config, parse_config
from m6t.gateway.daemon import GatewayDaemon, GatewayIO
from m6t.gateway.health import (
    IFF_RUNNING,
    IFF_UP,
    HealthError,
    Probes,
    Target,
    check,
    fetch_metrics,
    interface_flags,
    read_target,
)
from m6t.gateway.metrics import GatewayCollector, Snapshot
from m6t.linux.tuntest import ChannelTun, FakeNetlink, FakeNetwork

REPO = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:9464/metrics"
TARGET = Target("m6tgw0", ("fd48:4100::2", "fd48:4100::3"), URL)
READY_TEXT = ("# HELP m6t_gateway_ready ...\nm6t_gateway_start_time_seconds 1.7e+09\n"
              "m6t_gateway_ready 1.0\nm6t_gateway_states{kind=\"active\"} 3.0\n")
UP = IFF_UP | IFF_RUNNING


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def probes(text: str | OSError = READY_TEXT, flags: int | OSError | None = UP,
           answer: tuple[str, float] | OSError | None = ("fd48:4100::2", 0.0004),
           clock: FakeClock | None = None, cost: float = 0.0,
           asked: list[tuple[str, float]] | None = None) -> Probes:
    """Fake probes; each costs `cost` seconds of the fake clock and records its time budget."""
    clock = clock or FakeClock()
    asked = asked if asked is not None else []

    def read_metrics(url: str, timeout: float) -> str:
        asked.append(("metrics", timeout))
        clock.now += cost
        if isinstance(text, OSError):
            raise text
        return text

    def link_flags(name: str) -> int | None:
        assert name == "m6tgw0"
        if isinstance(flags, OSError):
            raise flags
        return flags

    def echo(agents: Sequence[str], timeout: float) -> tuple[str, float] | None:
        asked.append(("echo", timeout))
        assert list(agents) == ["fd48:4100::2", "fd48:4100::3"]
        clock.now += min(cost, timeout)
        if isinstance(answer, OSError):
            raise answer
        return answer

    return Probes(read_metrics=read_metrics, link_flags=link_flags, echo=echo, clock=clock)


# --- the daemon's side: start time and readiness --------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayDaemon]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    network, netlink = FakeNetwork(), FakeNetlink()
    config = parse_config({"listen": ["198.51.100.1:3544"], "client_prefix": "fd6d:6d74:1::/48",
                           "home_agents": ["fd48:4100::2"], "tun": "m6tfake0"})
    io = GatewayIO(open_tun=ChannelTun, open_listener=network.open,
                   open_icmp_listener=network.icmp_listener, open_routing=lambda: netlink)
    made = GatewayDaemon(config, None, io)
    yield made
    made.teardown()
    network.close()


def metrics_text(daemon: GatewayDaemon) -> str:
    registry = CollectorRegistry()
    registry.register(daemon.collector)
    return generate_latest(registry).decode()


def test_ready_only_while_the_loop_serves(daemon: GatewayDaemon) -> None:
    before = time.time()
    assert daemon.snapshot().ready is False
    assert "m6t_gateway_ready 0.0" in metrics_text(daemon)
    daemon.setup()
    assert daemon.snapshot().ready is False  # bound, but the loop does not run yet
    loop = threading.Thread(target=daemon.run, kwargs={"handle_signals": False}, daemon=True)
    loop.start()
    deadline = time.monotonic() + 2
    while not daemon.snapshot().ready:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.001)
    assert "m6t_gateway_ready 1.0" in metrics_text(daemon)
    daemon.stop()
    loop.join(2)
    assert not loop.is_alive()
    assert daemon.snapshot().ready is False
    assert before - 60 < daemon.snapshot().start_time <= time.time()


def test_start_time_is_the_process_start_not_the_scrape(daemon: GatewayDaemon) -> None:
    first = daemon.snapshot().start_time
    assert daemon.snapshot().start_time == first
    line = next(line for line in metrics_text(daemon).splitlines()
                if line.startswith("m6t_gateway_start_time_seconds "))
    assert float(line.split()[1]) == pytest.approx(first)


def test_a_gateway_without_listeners_is_not_ready() -> None:
    text = generate_latest_of(Snapshot(ready=False, start_time=5.0))
    assert "m6t_gateway_ready 0.0" in text and "m6t_gateway_start_time_seconds 5.0" in text


def generate_latest_of(snapshot: Snapshot) -> str:
    registry = CollectorRegistry()
    registry.register(GatewayCollector(lambda: snapshot))
    return generate_latest(registry).decode()


# --- the check -----------------------------------------------------------------------------------


def test_ready_says_what_it_found() -> None:
    verdict = check(TARGET, URL, 1.0, probes())
    assert verdict.ready
    assert verdict.line() == ("ready: serving since 2023-11-14T22:13:20Z, m6tgw0 up, home agent "
                              "fd48:4100::2 answered in 0.40 ms")
    assert verdict.facts == {"started": "2023-11-14T22:13:20Z", "home_agent": "fd48:4100::2",
                             "rtt_ms": "0.40"}


@pytest.mark.parametrize(("fake", "reason"), [
    (probes(text=ConnectionRefusedError(111, "Connection refused")),
     f"the gateway does not answer on {URL}: Connection refused"),
    (probes(text="up 1\n"),
     f"{URL} has no m6t_gateway_ready (not an m6t gateway, or an older one)"),
    (probes(text="m6t_gateway_ready 0.0\n"),
     "the gateway is not serving (starting, reloading or stopping)"),
    (probes(flags=None), "no TUN device m6tgw0 (another network namespace?)"),
    (probes(flags=IFF_UP), "m6tgw0 is down"),  # up, but no carrier: no process behind it
    (probes(flags=IFF_RUNNING), "m6tgw0 is down"),
    (probes(flags=PermissionError(1, "Operation not permitted")),
     "cannot read the flags of m6tgw0: Operation not permitted"),
    (probes(answer=None), "no home agent answered an ICMPv6 echo within 1 s "
                          "(fd48:4100::2, fd48:4100::3)"),
    (probes(answer=PermissionError(1, "Operation not permitted")),
     "cannot send ICMPv6 echoes: Operation not permitted (needs root or CAP_NET_RAW)"),
], ids=["refused", "not_m6t", "not_serving", "no_tun", "tun_no_carrier", "tun_down",
        "tun_flags_error", "home_agent_silent", "no_raw_socket"])
def test_not_ready_names_the_failed_step(fake: Probes, reason: str) -> None:
    verdict = check(TARGET, URL, 1.0, fake)
    assert not verdict.ready
    assert verdict.line() == f"not ready: {reason}"


def test_one_deadline_for_the_whole_check() -> None:
    """The echo gets what the metrics read left of the budget; nothing left, no echo at all."""
    asked: list[tuple[str, float]] = []
    assert check(TARGET, URL, 1.0, probes(cost=0.3, asked=asked)).ready
    assert asked == [("metrics", 1.0), ("echo", pytest.approx(0.7))]
    asked.clear()
    slow = check(TARGET, URL, 1.0, probes(cost=1.5, asked=asked))
    assert not slow.ready and "no home agent answered" in slow.reason
    assert [what for what, _ in asked] == ["metrics"]


# --- the real probes -------------------------------------------------------------------------


@pytest.fixture
def metrics_server() -> Iterator[str]:
    registry = CollectorRegistry()
    registry.register(GatewayCollector(lambda: Snapshot(ready=True, start_time=1.7e9)))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(2)


def test_fetch_metrics_reads_a_real_endpoint(metrics_server: str) -> None:
    values = health.parse_metrics(fetch_metrics(metrics_server, 2.0))
    assert values["m6t_gateway_ready"] == 1.0
    assert values["m6t_gateway_start_time_seconds"] == 1.7e9


def test_fetch_metrics_is_bounded_by_its_timeout() -> None:
    """A listener that never answers (accepted by the kernel, never served) costs the timeout,
    not a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(OSError):
            fetch_metrics(f"http://127.0.0.1:{port}/metrics", 0.3)
        assert time.monotonic() - started < 1.5


def test_fetch_metrics_refuses_an_error_answer() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 503 Service Unavailable\r\n\r\nm6t_gateway_ready 1\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        with pytest.raises(OSError, match="answered 503 Service Unavailable"):
            fetch_metrics(f"http://127.0.0.1:{server.getsockname()[1]}/metrics", 2.0)
        thread.join(2)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_interface_flags_reads_this_namespace() -> None:
    flags = interface_flags("lo")
    assert flags is not None and flags & IFF_UP
    assert interface_flags("m6t-no-such") is None


# --- configuration and command line ----------------------------------------------------------


def test_reads_what_the_gateway_reads(tmp_path: Path) -> None:
    assert health.DEFAULT_TUN == DEFAULT_TUN
    example = REPO / "packaging" / "m6t-gateway.toml"
    target = read_target(example)
    config = load_config(example)
    assert target.tun == config.tun
    assert set(target.home_agents) == {str(a) for a in config.policy.home_agents}
    assert target.metrics_url is None  # the example leaves metrics off
    path = tmp_path / "gateway.toml"
    path.write_text('listen = ["0.0.0.0:3544"]\nclient_prefix = "fd6d:6d74:1::/48"\n'
                    'home_agents = ["fd48:4100::2"]\ntun = "gw7"\n'
                    'metrics_listen = "0.0.0.0:9100"\n')
    assert read_target(path) == Target("gw7", ("fd48:4100::2",),
                                       "http://127.0.0.1:9100/metrics")


@pytest.mark.parametrize(("text", "message"), [
    ("home_agents = 5\n", "home_agents: expected a non-empty list"),
    ('home_agents = ["not-an-address"]\n', "home_agents: ['not-an-address'] are not IPv6"),
    ('home_agents = ["fd48:4100::2"]\ntun = ""\n', "tun: '' is not an interface name"),
    ("= broken", "is not valid TOML"),
])
def test_bad_configuration_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(HealthError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_target(path)


def test_command_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('listen = ["0.0.0.0:3544"]\nclient_prefix = "fd6d:6d74:1::/48"\n'
                    'home_agents = ["fd48:4100::2"]\n')
    # No metrics endpoint configured: a usage error, not a silent "ready".
    assert health.main(["--config", str(path)]) == 2
    assert "metrics_listen is not set" in capsys.readouterr().err
    # Nothing listens: not ready, at once, and said on one line.
    url = f"http://127.0.0.1:{closed_port()}/metrics"
    started = time.monotonic()
    assert health.main(["--config", str(path), "--metrics", url, "--timeout", "0.5"]) == 1
    assert time.monotonic() - started < 1.5
    out = capsys.readouterr().out
    assert out.startswith(f"not ready: the gateway does not answer on {url}")
    assert out.count("\n") == 1
    assert health.main(["--config", str(path), "--metrics", url, "--quiet"]) == 1
    assert capsys.readouterr().out == ""
    assert health.main(["--config", str(path), "--metrics", "ftp://x/metrics"]) == 2
    with pytest.raises(SystemExit):
        health.main(["--config", str(path), "--timeout", "0"])


def test_the_keepalived_sample_runs_this_check() -> None:
    """The lab replaces exactly this line (m6t.lab.redundancy); the sample keeps the pair's
    promises: both start as backup, no preemption, the check tracked, both virtual addresses."""
    from m6t.lab.redundancy import SAMPLE_SCRIPT

    sample = (REPO / "packaging" / "keepalived" / "keepalived.conf.sample").read_text()
    assert sample.count(SAMPLE_SCRIPT) == 1
    assert "m6t-gateway-health" in SAMPLE_SCRIPT
    lines = [line.split("#")[0].strip() for line in sample.splitlines()]
    for needed in ("state BACKUP", "nopreempt", "track_script {", "m6t_gateway_ready",
                   "198.51.100.1/24 dev eth0", "fd48:4100::1/64 dev eth1", "fall 2", "rise 2"):
        assert needed in lines, needed
    assert "state MASTER" not in lines  # nopreempt needs both to start as BACKUP
