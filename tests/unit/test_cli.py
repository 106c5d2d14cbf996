"""The `m6t` command line, driven through `main()` against a FakeHelper that speaks the real
control API on a real Unix socket: what each command prints (human and --json), what it sends
to the helper, and that every failure is one line on stderr that says what to do."""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from m6t import cli, profiles
from m6t.cli.errors import control_error_line
from m6t.cli.render import ADDRESS_REASON_WORDS, CAUSE_WORDS, MTU_REASON_WORDS
from m6t.control import schema
from m6t.control.client import HelperClient
from m6t.control.errors import (
    BadReply,
    Conflict,
    ConnectionLost,
    ControlError,
    ErrorData,
    HelperNotRunning,
    InternalError,
    InvalidParams,
    MethodNotFound,
    NotFound,
    PermissionDenied,
    TimedOut,
    Unavailable,
)
from m6t.control.schema import AddressReason, Cause, MtuReason
from m6t.profiles import ProfileBook
from m6t.protocol.addressing import TunnelPrefix
from tests.fake_helper import FakeHelper, known_network, status_for

OFFICE = schema.Profile(name="office", gateway="198.51.100.1", ports=[3544, 4500],
                        prefix="fd6d:6d74:1:1:1::/80", home_agent="fd48:4100::2")
LAB = schema.Profile(name="lab", gateway="gw.example.net", ports=[3544],
                     prefix="fd6d:6d74:1:2:1::/80", home_agent="fd48:4100::2", mtu="auto",
                     keepalive=15.0, routes="default", auto_connect=True)
OFFICE_OPTIONS = ["--gateway", "198.51.100.1", "--port", "3544", "--port", "4500",
                  "--prefix", "fd6d:6d74:1:1:1::/80", "--home-agent", "fd48:4100::2"]
M6T_SCRIPT = Path(sys.executable).parent / "m6t"
JOIN_GROUP = "join group m6t (sudo usermod -aG m6t $USER, then log in again)"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The one line a failure prints, checked to be one line, "m6t: "-prefixed."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("m6t: "), self.err
        return lines[0]


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the developer's settings nor their profiles file take part in a test."""
    monkeypatch.delenv("M6T_SOCKET", raising=False)
    monkeypatch.delenv("M6T_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture
def sock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "helper.sock"
    monkeypatch.setenv("M6T_SOCKET", str(path))
    return path


@pytest.fixture
def book_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config" / "profiles.toml"
    monkeypatch.setenv("M6T_PROFILES", str(path))
    return path


@pytest.fixture
def helper(sock: Path, book_path: Path) -> Iterator[FakeHelper]:
    with FakeHelper(sock) as fake:
        yield fake


@pytest.fixture
def m6t(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    def run(*argv: str) -> Run:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Run(code, out, err)
    return run


def write_book(path: Path, *entries: schema.Profile, default: str | None = None) -> None:
    profiles.save(ProfileBook(profiles=list(entries), default=default), path)


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


def wait_for_subscriber(helper: FakeHelper) -> None:
    # FakeHelper has no public way to tell that a subscription is registered; emitting before
    # that would lose the event.
    wait_for(lambda: helper._subscribers)


def connected(profile: schema.Profile = OFFICE, **fields: Any) -> dict[str, Any]:
    return {**status_for(profile), **fields}


# --- status ---


def test_status_without_tunnels_says_so(helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("status")
    assert (run.code, run.out, run.err) == (0, "no tunnels\n", "")


def test_status_shows_one_block_per_tunnel(helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["office"] = connected(rx_bytes=1104, tx_bytes=512, rx_packets=12,
                                         tx_packets=1, rtt_ms=0.61, drops={"not_for_us": 3},
                                         since=time.time() - 300)
    helper.tunnels["lab"] = connected(LAB, name="m6t1", state="waiting",
                                      cause="gateway_unreachable", address=None, suffix=None,
                                      gateway_address=None, port=None, rtt_ms=None)
    run = m6t("status")
    assert run.code == 0
    office, lab = run.out.split("\n\n")
    assert office.splitlines()[:10] == [
        "office (m6t0): connected (the first port answered)",
        "  address     fd6d:6d74:1:1:1:8d2e:41f0:977c",
        "              = fd6d:6d74:1:1:1::/80 + random 8d2e:41f0:977c",
        "  gateway     198.51.100.1:3544",
        "  home agent  fd48:4100::2",
        "  MTU         1472",
        "  RTT         0.61 ms",
        "  traffic     in 1.1 KiB (12 packets), out 512 B (1 packet)",
        "  data path   tun_coalesce_tcp, tun_coalesce_udp, udp_gro, udp_gso (30 packets "
        "coalesced)",
        "  dropped     3 not_for_us",
    ]
    assert re.fullmatch(r"  since       \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(5 min ago\)",
                        office.splitlines()[10])
    assert lab.splitlines()[:4] == [
        "lab (m6t1): waiting (no port of the gateway answered; retrying with back-off)",
        "  address     none yet (prefix fd6d:6d74:1:2:1::/80)",
        "  gateway     gw.example.net (no port answered yet)",
        "  home agent  fd48:4100::2",
    ]
    assert "  RTT         -" in lab


def test_status_tells_a_port_fallback_and_a_resolved_gateway_apart(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["office"] = connected(
        OFFICE, gateway="gw.example.net", gateway_address="198.51.100.1", port=4500,
        cause="port_fallback",
        ports=[{"port": 3544, "reachable": False, "rtt_ms": None, "error": "timeout"},
               {"port": 4500, "reachable": True, "rtt_ms": 0.7, "error": None}])
    lines = m6t("status").out.splitlines()
    assert lines[0] == "office (m6t0): connected (port 3544 did not answer; using 4500)"
    assert lines[3] == "  gateway     198.51.100.1:4500 (gw.example.net)"


def test_status_shows_the_data_path_and_what_the_kernel_refused(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    # Off by choice (tun_tso) stays out of the short form; refused (udp_gro) is told, since the
    # plain path standing in is slower.
    helper.tunnels["office"] = connected(datapath={
        "offloads": ["tun_coalesce_tcp", "udp_gso"],
        "off": {"tun_tso": "off by default (M6T_OFFLOADS=+tun_tso turns it on)",
                "udp_gro": "setsockopt(UDP_GRO) refused: ENOPROTOOPT"},
        "fallbacks": {"udp_gro": "setsockopt(UDP_GRO) refused: ENOPROTOOPT"},
        "coalesced_packets": 1, "segmented_packets": 0})
    lines = m6t("status").out.splitlines()
    assert "  data path   tun_coalesce_tcp, udp_gso (1 packet coalesced)" in lines
    assert ("  fallback    udp_gro: setsockopt(UDP_GRO) refused: ENOPROTOOPT (the plain path "
            "instead)") in lines
    assert not any("tun_tso" in line for line in lines)
    helper.tunnels["office"] = connected(datapath={"offloads": [], "coalesced_packets": 0})
    assert "  data path   none (the plain path)" in m6t("status").out.splitlines()


def test_status_json_is_the_helpers_result_unchanged(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["office"] = connected(rx_bytes=7, since=1796000000.5)
    run = m6t("status", "--json")
    assert run.code == 0
    assert json.loads(run.out) == {"tunnels": [helper.tunnels["office"]], "access": "read-write",
                                 "group": "m6t"}
    assert list(json.loads(run.out)["tunnels"][0]) == list(helper.tunnels["office"])


def test_status_on_a_read_only_connection_says_how_to_get_more(
        sock: Path, m6t: Callable[..., Run]) -> None:
    with FakeHelper(sock, read_only=True):
        run = m6t("status")
    assert run.code == 0
    assert run.out == ("no tunnels\n"
                       "(read-only: join group m6t to connect or change tunnels)\n")


# --- connect ---


def test_connect_name_sends_the_profile_of_the_file(
        helper: FakeHelper, book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE, LAB)
    run = m6t("connect", "lab")
    assert run.code == 0, run.err
    assert helper.calls == [("connect", {"profile": profiles.profile_to_dict(LAB)})]
    assert run.out.splitlines()[0] == "lab (m6t0): connected (the first port answered)"
    assert "  address     fd6d:6d74:1:2:1:8d2e:41f0:977c" in run.out.splitlines()


def test_connect_without_a_name_uses_the_default_profile(
        helper: FakeHelper, book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE, LAB, default="lab")
    assert m6t("connect").code == 0
    assert helper.calls[0][1]["profile"]["name"] == "lab"


def test_connect_without_a_name_and_without_a_default_asks_which(
        helper: FakeHelper, book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE, LAB)
    run = m6t("connect")
    assert run.code == 1
    assert run.error == (f"m6t: which profile? {book_path} has no default (profiles: office, "
                         "lab): name one, or set a default with `m6t profiles default NAME`")
    assert helper.calls == []


def test_connect_without_any_profile_says_how_to_add_one(
        helper: FakeHelper, book_path: Path, m6t: Callable[..., Run]) -> None:
    run = m6t("connect")
    assert run.code == 1
    assert run.error.startswith(f"m6t: no profiles in {book_path}: add one with `m6t profiles "
                                "add NAME --gateway ...`")


def test_connect_an_unknown_profile_lists_the_known_ones(
        helper: FakeHelper, book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE, LAB)
    run = m6t("connect", "home")
    assert run.code == 1
    assert run.error == f"m6t: no profile named 'home' in {book_path} (profiles: office, lab)"
    assert helper.calls == []


def test_connect_ad_hoc_builds_the_profile_from_options(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("connect", "--gateway", "gw.example.net", "--port", "3544,4500", "--port", "53",
              "--prefix", "fd6d:6d74:1:1:1::/80", "--home-agent", "fd48:4100::2",
              "--mtu", "auto", "--keepalive", "15", "--routes", "2001:db8::/32,fd48::/16")
    assert run.code == 0, run.err
    assert helper.calls == [("connect", {"profile": {
        "name": "adhoc", "gateway": "gw.example.net", "ports": [3544, 4500, 53],
        "prefix": "fd6d:6d74:1:1:1::/80", "home_agent": "fd48:4100::2", "mtu": "auto",
        "keepalive": 15.0, "routes": ["2001:db8::/32", "fd48::/16"], "auto_connect": False,
        "liveness": {"reply_timeout": 3.0, "probe_interval": 1.0, "probes": 3},
        "more_gateways": []}})]


def test_connect_ad_hoc_does_not_need_a_readable_profiles_file(
        helper: FakeHelper, book_path: Path, m6t: Callable[..., Run]) -> None:
    book_path.parent.mkdir(parents=True)
    book_path.write_text("not toml [")
    assert m6t("connect", *OFFICE_OPTIONS, "--name", "trip").code == 0
    assert helper.calls[0][1]["profile"]["name"] == "trip"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--mtu", "1000"], "m6t: invalid --mtu: 1000 is outside 1280-65507 (IPv6 needs at "
                            "least 1280)"),
        (["--prefix", "fd6d:6d74:1:1::/64"], "m6t: invalid --prefix: fd6d:6d74:1:1::/64 must "
                                             "be a /80 (/48 + 16-bit subnet ID + 16-bit MN ID)"),
        (["--home-agent", "192.0.2.1"], "m6t: invalid --home-agent: '192.0.2.1' is not an IPv6 "
                                        "address"),
        (["--gateway", "2001:db8::1"], "m6t: invalid --gateway: the tunnel runs over IPv4: give "
                                       "an IPv4 address or a host name, not an IPv6 address"),
        (["--port", "70000"], "m6t: invalid --port: 70000 is not a UDP port (1-65535)"),
        (["--keepalive", "60"], "m6t: invalid --keepalive: 60 s is outside 1-30 s (the draft's "
                                "30 s is the longest NATs reliably tolerate)"),
        (["--routes", "2001:db8::1/32"], "m6t: invalid --routes: '2001:db8::1/32': "
                                         "2001:db8::1/32 has host bits set"),
        (["--routes", "default,fd00::/8"], "m6t: invalid --routes: home-agent or default "
                                           "alone, or IPv6 prefixes"),
        (["--name", "a/b"], "m6t: invalid --name: 1-64 characters: letters, digits, space and "
                           "._@+- (starting with a letter or digit)"),
        (["--port", "http"], "m6t: argument --port: 'http' is not a port number (or a "
                             "comma-separated list of them) (see `m6t connect --help`)"),
    ],
    ids=["mtu", "prefix", "home_agent", "gateway", "port", "keepalive", "routes",
         "routes_mixed", "name", "port_not_a_number"],
)
def test_connect_ad_hoc_names_the_invalid_option_before_calling_the_helper(
        helper: FakeHelper, m6t: Callable[..., Run], options: list[str], expected: str) -> None:
    # The option given last wins over the valid one before it; --port adds to the ports.
    run = m6t("connect", *OFFICE_OPTIONS, *options)
    assert (run.code, run.error) == (2, expected)
    assert helper.calls == []


def test_connect_ad_hoc_names_the_missing_options(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("connect", "--gateway", "198.51.100.1", "--mtu", "1400")
    assert run.code == 2
    assert run.error.startswith("m6t: missing --port, --prefix, --home-agent: a profile needs")


def test_connect_refuses_a_name_together_with_ad_hoc_options(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("connect", "office", "--gateway", "198.51.100.1")
    assert run.code == 2
    assert run.error.startswith("m6t: give a profile NAME or ad hoc options")


def test_connect_says_which_earlier_ports_did_not_answer(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    won = connected(port=4500, cause="port_fallback", ports=[
        {"port": 3544, "reachable": False, "rtt_ms": None, "error": None},
        {"port": 4500, "reachable": True, "rtt_ms": 0.7, "error": None}])
    helper.handlers["connect"] = lambda params: won
    run = m6t("connect", *OFFICE_OPTIONS, "--name", "office")
    assert run.code == 0
    assert run.out.splitlines()[0] == \
        "office (m6t0): connected (port 3544 did not answer; using 4500)"
    assert "  gateway     198.51.100.1:4500" in run.out.splitlines()


def test_connect_that_ends_waiting_fails_and_says_the_helper_keeps_trying(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.handlers["connect"] = lambda params: connected(
        state="waiting", cause="gateway_unreachable", address=None, suffix=None, port=None)
    run = m6t("connect", *OFFICE_OPTIONS, "--name", "office")
    assert run.code == 1
    assert run.out.startswith("office (m6t0): waiting (no port of the gateway answered;")
    assert run.error == ("m6t: office is waiting (no port of the gateway answered; retrying "
                         "with back-off): the helper keeps trying (`m6t disconnect office` to "
                         "stop)")


def test_connect_json_prints_the_tunnel_status(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("connect", "--json", *OFFICE_OPTIONS, "--name", "office")
    assert run.code == 0
    assert json.loads(run.out) == status_for(OFFICE)


# --- errors from the helper and the socket ---


def test_no_helper_says_to_start_it(sock: Path, m6t: Callable[..., Run]) -> None:
    run = m6t("status")
    assert run.code == 1
    assert run.error == f"m6t: helper not running: start m6t-helper (no socket at {sock})"


def test_a_stale_socket_says_to_start_the_helper(
        tmp_path: Path, m6t: Callable[..., Run]) -> None:
    stale = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the file stays, nobody listens: what a crashed helper leaves
    run = m6t("--socket", str(stale), "status")
    assert run.error == f"m6t: helper not running: start m6t-helper (stale socket {stale})"


def test_socket_option_wins_over_the_environment_before_or_after_the_command(
        tmp_path: Path, sock: Path, m6t: Callable[..., Run]) -> None:
    elsewhere = tmp_path / "other.sock"
    with FakeHelper(elsewhere) as other:
        other.tunnels["office"] = connected()
        assert m6t("--socket", str(elsewhere), "status").out.startswith("office (m6t0)")
        assert m6t("status", "--socket", str(elsewhere)).out.startswith("office (m6t0)")
        assert m6t("status").error.startswith("m6t: helper not running")  # $M6T_SOCKET


def test_read_only_helper_says_to_join_the_group(
        sock: Path, book_path: Path, m6t: Callable[..., Run]) -> None:
    with FakeHelper(sock, read_only=True) as helper:
        run = m6t("connect", *OFFICE_OPTIONS)
    assert run.code == 1
    assert run.error == f"m6t: permission denied: {JOIN_GROUP}"
    assert [method for method, _ in helper.calls] == ["connect"]


def test_the_helpers_own_permission_message_gets_the_command_for_its_group(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    def refuse(params: dict[str, Any]) -> Any:
        raise PermissionDenied("permission denied: regenerate needs root or membership of "
                               "group netdev (join group netdev)", ErrorData(group="netdev"))
    helper.handlers["regenerate"] = refuse
    run = m6t("regenerate", "office")
    assert (run.code, run.error) == (
        1, "m6t: permission denied: regenerate needs root or membership of group netdev (join "
           "group netdev); sudo usermod -aG netdev $USER, then log in again")


def test_a_refused_socket_connection_says_to_join_the_group(
        sock: Path, monkeypatch: pytest.MonkeyPatch, m6t: Callable[..., Run]) -> None:
    # What connect(2) does for a caller outside the socket's group (tests run as root, who
    # may open any socket; tests/netns/test_helper.py checks a real non-root caller).
    class RefusingSocket(socket.socket):
        def connect(self, address: Any) -> None:
            raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("m6t.control.client.socket.socket", RefusingSocket)
    run = m6t("status")
    assert (run.code, run.error) == (1, f"m6t: permission denied on {sock}: {JOIN_GROUP}")


def test_invalid_params_from_the_helper_name_the_field(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    def refuse(params: dict[str, Any]) -> Any:
        raise InvalidParams("mtu: 9000 is larger than the route allows",
                            ErrorData(field="profile.mtu"))
    helper.handlers["connect"] = refuse
    run = m6t("connect", *OFFICE_OPTIONS, "--mtu", "9000")
    assert (run.code, run.error) == (
        1, "m6t: the helper refused profile.mtu: 9000 is larger than the route allows")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Unavailable("no IPv4 route to 198.51.100.1"),
         "m6t: unavailable: no IPv4 route to 198.51.100.1"),
        (Unavailable("cannot resolve gw.example.net: [Errno -2] Name or service not known",
                     ErrorData(cause=Cause.RESOLVE_FAILED)),
         "m6t: unavailable: cannot resolve gw.example.net: [Errno -2] Name or service not known: "
         "check the gateway's name, and DNS"),
        (Conflict("a probe is already running"), "m6t: conflict: a probe is already running"),
        (InternalError("KeyError: 'x'"),
         "m6t: the helper failed: KeyError: 'x' (a bug in m6t-helper: please report it; its "
         "tunnels keep running)"),
        (ControlError("something new", code=-32099), "m6t: helper error -32099: something new"),
    ],
    ids=["unavailable", "unavailable_with_cause", "conflict", "internal", "unknown_code"],
)
def test_other_helper_errors_are_one_line(helper: FakeHelper, m6t: Callable[..., Run],
                                          error: ControlError, expected: str) -> None:
    def fail(params: dict[str, Any]) -> Any:
        raise error
    helper.handlers["probe"] = fail
    run = m6t("probe", *OFFICE_OPTIONS)
    assert (run.code, run.error) == (1, expected)


def test_a_helper_that_answers_garbage_is_reported_not_a_traceback(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.handlers["status"] = lambda params: helper.send_raw(b"\x00garbage\n")
    run = m6t("status")
    assert run.code == 1
    assert run.error.startswith("m6t: the helper sent a malformed message (")
    assert run.error.endswith(f"is {helper.path} an m6t-helper socket?")


def test_a_path_that_cannot_be_a_socket_says_to_check_the_option(
        tmp_path: Path, m6t: Callable[..., Run]) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "helper.sock"  # connect(2) fails with ENOTDIR
    run = m6t("--socket", str(path), "status")
    assert (run.code, run.error) == (
        1, f"m6t: {path} is not a helper socket: check --socket or M6T_SOCKET")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionLost("the helper closed the connection (was it stopped or restarted?)"),
         "the helper closed the connection (was it stopped or restarted?)"),
        (HelperNotRunning("no socket at /run/x.sock", ErrorData(socket="/run/x.sock")),
         "helper not running: start m6t-helper (no socket at /run/x.sock)"),
        (TimedOut("the helper did not answer in time"),
         "the helper did not answer in time: is it stuck? (journalctl -u m6t-helper)"),
        (BadReply("a line longer than 65536 bytes", ErrorData(socket="/run/x.sock")),
         "the helper sent a malformed message (a line longer than 65536 bytes): is /run/x.sock "
         "an m6t-helper socket?"),
        (PermissionDenied("permission denied: join group wheel (connect needs root or "
                          "membership of that group)", ErrorData(group="wheel")),
         "permission denied: join group wheel (connect needs root or membership of that "
         "group); sudo usermod -aG wheel $USER, then log in again"),
        (InvalidParams("invalid params: Expected `float`, got `str`"),
         "the helper refused the request: invalid params: Expected `float`, got `str`"),
        (InvalidParams("timeout must be 0.2-30 s", ErrorData(field="timeout")),
         "the helper refused timeout: timeout must be 0.2-30 s"),
        (Unavailable("no IPv4 route to 198.51.100.1", ErrorData(cause=Cause.NO_IPV4_NETWORK)),
         "unavailable: no IPv4 route to 198.51.100.1: connect this machine to an IPv4 network "
         "first"),
        (MethodNotFound("unknown method 'frobnicate'"),
         "helper error -32601: unknown method 'frobnicate'"),
    ],
    ids=["connection_lost", "not_running", "timed_out", "bad_reply", "permission_denied",
         "invalid_params", "invalid_params_field", "unavailable_no_ipv4", "method_not_found"],
)
def test_each_control_error_is_said_from_its_class_and_data(
        error: ControlError, expected: str) -> None:
    assert control_error_line(error) == expected


def test_usage_errors_are_one_line_with_status_2(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    assert m6t("frobnicate").code == 2
    run = m6t()
    assert (run.code, run.error) == (2, "m6t: the following arguments are required: COMMAND "
                                        "(see `m6t --help`)")
    run = m6t("set-mtu", "office", "big")
    assert (run.code, run.error) == (2, "m6t: argument N|auto: 'big': a number of bytes or auto "
                                        "(see `m6t set-mtu --help`)")


def test_help_exits_0_and_lists_every_command(m6t: Callable[..., Run]) -> None:
    run = m6t("--help")
    assert run.code == 0
    for command in ("status", "connect", "disconnect", "probe", "probe-mtu", "set-mtu",
                    "regenerate", "watch", "networks", "prefix", "profiles"):
        assert re.search(rf"^    {command} ", run.out, re.MULTILINE), command
    assert "--count" not in m6t("watch", "--help").out


# --- disconnect, probe, probe-mtu, set-mtu, regenerate ---


def test_disconnect_one_and_then_all(helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["office"] = connected()
    helper.tunnels["lab"] = connected(LAB, name="m6t1")
    helper.tunnels["home"] = {**connected(LAB, name="m6t2"), "profile": "home"}
    assert m6t("disconnect", "lab").out == "disconnected lab\n"
    assert helper.calls[-1] == ("disconnect", {"profile": "lab"})
    assert m6t("disconnect").out == "disconnected office, home\n"
    assert helper.calls[-1] == ("disconnect", {})
    assert m6t("disconnect").out == "no tunnels to disconnect\n"
    assert helper.tunnels == {}


def test_disconnect_json(helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["office"] = connected()
    assert json.loads(m6t("disconnect", "--json").out) == {"disconnected": ["office"]}


def test_a_command_on_a_missing_tunnel_lists_the_tunnels_that_are_up(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    for argv in (["disconnect", "home"], ["probe-mtu", "home"], ["set-mtu", "home", "1400"],
                 ["regenerate", "home"]):
        run = m6t(*argv)
        assert (run.code, run.error) == (1, "m6t: no tunnel for profile 'home' (no tunnel is "
                                            "up: `m6t connect NAME` first)")
    helper.tunnels["office"] = connected()
    helper.tunnels["lab"] = connected(LAB, name="m6t1")

    def not_found_as_the_real_helper_says_it(params: dict[str, Any]) -> Any:
        raise NotFound("no tunnel for profile 'home' (connected: lab, office)",
                       ErrorData(tunnels=["lab", "office"]))
    helper.handlers["regenerate"] = not_found_as_the_real_helper_says_it
    run = m6t("regenerate", "home")
    assert run.error == "m6t: no tunnel for profile 'home' (tunnels up: lab, office)"

    def not_found_without_the_tunnels(params: dict[str, Any]) -> Any:
        raise NotFound("no tunnel for profile 'home'")
    helper.handlers["regenerate"] = not_found_without_the_tunnels
    assert m6t("regenerate", "home").error == "m6t: no tunnel for profile 'home'"


def test_probe_prints_a_table_of_ports(
        helper: FakeHelper, book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE)
    helper.handlers["probe"] = lambda params: {
        "gateway_address": "198.51.100.1",
        "ports": [{"port": 3544, "reachable": False, "rtt_ms": None, "error": "timeout"},
                  {"port": 4500, "reachable": True, "rtt_ms": 12.345, "error": None}]}
    run = m6t("probe", "office", "--timeout", "2")
    assert run.code == 0
    assert run.out.splitlines() == [
        "office: gateway 198.51.100.1",
        "  PORT  REACHABLE  RTT",
        "  3544  no         -        timeout",
        "  4500  yes        12.3 ms",
    ]
    assert helper.calls == [("probe", {"profile": profiles.profile_to_dict(OFFICE),
                                       "timeout": 2.0})]


def test_probe_where_no_port_answers_fails_and_suggests_other_ports(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.handlers["probe"] = lambda params: {
        "gateway_address": "203.0.113.9",
        "ports": [{"port": 3544, "reachable": False, "rtt_ms": None, "error": "timeout"}]}
    run = m6t("probe", *OFFICE_OPTIONS[:2], "--port", "3544", *OFFICE_OPTIONS[6:])
    assert run.code == 1
    assert run.out.splitlines()[0] == "adhoc: gateway 198.51.100.1 (203.0.113.9)"
    assert run.error == ("m6t: no port of 198.51.100.1 answered: check the gateway's address "
                         "and ports, and that this network lets UDP through (other ports to "
                         "try: 4500, 3478, 500, 53)")


def test_probe_json(helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("probe", "--json", *OFFICE_OPTIONS)
    assert json.loads(run.out) == {"gateway_address": "198.51.100.1", "ports": [
        {"port": 3544, "reachable": True, "rtt_ms": 0.5, "error": None,
         "gateway": "198.51.100.1"},
        {"port": 4500, "reachable": True, "rtt_ms": 0.5, "error": None,
         "gateway": "198.51.100.1"}]}


def test_probe_mtu_reports_the_largest_packet_and_how_to_use_it(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["my office"] = {**connected(), "profile": "my office"}
    run = m6t("probe-mtu", "my office")
    assert run.code == 0
    assert run.out.splitlines() == [
        "my office: packets up to 1472 bytes get through the tunnel",
        "  IPv4 path MTU to the gateway: 1500; IPv4 fragments get through",
        "  tried 1280 1472 2000; answered 1280 1472 2000",
        "  to use it: m6t set-mtu 'my office' 1472",
    ]
    assert json.loads(m6t("probe-mtu", "--json", "my office").out)["fragments_pass"] is True


def test_set_mtu_sends_a_number_or_auto_and_checks_the_range_first(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["office"] = connected()
    assert m6t("set-mtu", "office", "1400").out == "office: MTU 1400\n"
    assert helper.calls[-1] == ("set_mtu", {"profile": "office", "mtu": 1400})
    assert m6t("set-mtu", "office", "auto").out == "office: MTU 1472 (auto)\n"
    assert helper.calls[-1] == ("set_mtu", {"profile": "office", "mtu": "auto"})
    assert json.loads(m6t("set-mtu", "--json", "office", "1400").out)["mtu"] == 1400
    calls = len(helper.calls)
    run = m6t("set-mtu", "office", "1279")
    assert (run.code, run.error) == (2, "m6t: invalid MTU: 1279 is outside 1280-65507 (IPv6 "
                                        "needs at least 1280)")
    assert len(helper.calls) == calls


def test_regenerate_prints_the_new_address_and_the_old_one(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    new = "fd6d:6d74:1:1:1:aaaa:bbbb:cccc"
    old = "fd6d:6d74:1:1:1:8d2e:41f0:977c"
    helper.tunnels["office"] = connected()
    helper.handlers["regenerate"] = lambda params: connected(
        address=new, suffix="aaaa:bbbb:cccc", cause="user_request",
        history=[{"address": old, "previous": None, "reason": "connect", "at": 1.0},
                 {"address": new, "previous": old, "reason": "user_request", "at": 2.0}])
    run = m6t("regenerate", "office")
    assert run.out.splitlines() == [f"office: new address {new}",
                                    "  = fd6d:6d74:1:1:1::/80 + random aaaa:bbbb:cccc",
                                    f"  (was {old})"]
    assert helper.calls == [("regenerate", {"profile": "office"})]


# --- watch ---

ADDRESS_EVENT = {"type": "address", "tunnel": "m6t0", "profile": "office",
                 "address": "fd6d:6d74:1:1:1:aaaa:bbbb:cccc",
                 "previous": "fd6d:6d74:1:1:1:8d2e:41f0:977c", "reason": "network_changed",
                 "at": 1796000100.2}
MTU_EVENT = {"type": "mtu", "tunnel": "m6t0", "profile": "office", "mtu": 1372,
             "previous": 1472, "reason": "fragmentation_needed"}
TRAFFIC_EVENT = {"type": "traffic", "tunnel": "m6t0", "profile": "office", "rx_bytes": 5120,
                 "tx_bytes": 4096, "rx_packets": 40, "tx_packets": 38, "rx_rate": 2048.0,
                 "tx_rate": 512.0, "rtt_ms": 0.6}
REMOVED_EVENT = {"type": "removed", "tunnel": "m6t0", "profile": "office"}


class Watcher:
    """`m6t watch` in a thread, since it blocks until its events have come."""

    def __init__(self, *argv: str) -> None:
        self.code: int | None = None
        self._thread = threading.Thread(target=self._run, args=(list(argv),), daemon=True)
        self._thread.start()

    def _run(self, argv: list[str]) -> None:
        self.code = cli.main(["watch", *argv])

    def wait(self) -> int | None:
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "watch did not end"
        return self.code


def test_watch_prints_the_state_then_each_event_as_a_json_line(
        helper: FakeHelper, capsys: pytest.CaptureFixture[str]) -> None:
    helper.tunnels["office"] = connected()
    watcher = Watcher("--count", "4")
    wait_for_subscriber(helper)
    for event in (ADDRESS_EVENT, MTU_EVENT, REMOVED_EVENT):
        helper.emit(event)
    assert watcher.wait() == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "state", "tunnel": "m6t0", "profile": "office", "state": "connected",
         "cause": "port_race_won", "status": helper.tunnels["office"], "message": None},
        ADDRESS_EVENT, MTU_EVENT, REMOVED_EVENT]


def test_watch_text_prints_short_lines(
        helper: FakeHelper, capsys: pytest.CaptureFixture[str]) -> None:
    helper.tunnels["office"] = connected()
    watcher = Watcher("--text", "--count", "6")
    wait_for_subscriber(helper)
    news = "data path: udp_gso refused: EIO; the plain path instead"
    for event in (ADDRESS_EVENT, MTU_EVENT, TRAFFIC_EVENT,
                  {"type": "state", "tunnel": "m6t0", "profile": "office", "state": "connected",
                   "cause": "port_race_won", "status": helper.tunnels["office"],
                   "message": news}, REMOVED_EVENT):
        helper.emit(event)
    assert watcher.wait() == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines)
    assert [line[9:] for line in lines] == [
        "office: connected (the first port answered), address fd6d:6d74:1:1:1:8d2e:41f0:977c",
        "office: new address fd6d:6d74:1:1:1:aaaa:bbbb:cccc (the network changed; was "
        "fd6d:6d74:1:1:1:8d2e:41f0:977c)",
        "office: MTU 1472 -> 1372 (a packet was too big on the way)",
        "office: in 2.0 KiB/s, out 512 B/s, RTT 0.60 ms",
        "office: connected (the first port answered), address fd6d:6d74:1:1:1:8d2e:41f0:977c; "
        + news,
        "office: tunnel removed",
    ]


def test_watch_ends_quietly_on_ctrl_c(
        helper: FakeHelper, monkeypatch: pytest.MonkeyPatch, m6t: Callable[..., Run]) -> None:
    def events_then_ctrl_c(self: HelperClient) -> Iterator[schema.Event]:
        yield msgspec.convert(REMOVED_EVENT, schema.RemovedEvent)
        raise KeyboardInterrupt
    monkeypatch.setattr(HelperClient, "events", events_then_ctrl_c)
    run = m6t("watch")
    assert (run.code, run.err) == (0, "")
    assert [json.loads(line) for line in run.out.splitlines()] == [REMOVED_EVENT]


def test_watch_reports_a_helper_that_goes_away(
        helper: FakeHelper, capsys: pytest.CaptureFixture[str]) -> None:
    watcher = Watcher()
    wait_for_subscriber(helper)
    helper.stop()
    assert watcher.wait() == 1
    assert capsys.readouterr().err == ("m6t: the helper closed the connection (was it stopped "
                                       "or restarted?)\n")


def test_watch_reports_a_malformed_event_line(
        helper: FakeHelper, capsys: pytest.CaptureFixture[str]) -> None:
    watcher = Watcher()
    wait_for_subscriber(helper)
    helper.send_raw(b"{not json\n")
    assert watcher.wait() == 1
    err = capsys.readouterr().err
    assert err.startswith("m6t: the helper sent a malformed message (")
    assert err.count("\n") == 1


# --- words ---


@pytest.mark.parametrize(
    ("members", "words"),
    [(Cause, CAUSE_WORDS), (AddressReason, ADDRESS_REASON_WORDS),
     (MtuReason, MTU_REASON_WORDS)],
    ids=["cause", "address_reason", "mtu_reason"],
)
def test_every_cause_and_reason_of_the_api_has_words(
        members: type[enum.Enum], words: dict[Any, str]) -> None:
    # A member added to the API without words here would reach users as a bare identifier.
    assert set(words) == set(members)
    assert all(text and "_" not in text for text in words.values())


# --- networks ---

CAFE = "Wi-Fi CoffeeShop, router 192.168.1.1 (02:fc:00:00:00:01), on wlan0"
OFFICE_LAN = "router 10.0.0.1 (52:54:00:12:34:56), on eth0"
PORTAL = "http://192.168.1.1/login?next=%2F"


def remembered(helper: FakeHelper) -> None:
    """Two networks: the cafe (for two profiles, the tunnel runs over it now), the office LAN;
    their ids share a 4-digit start."""
    now = time.time()
    helper.networks += [
        known_network("5f0c2d9a61b7e3a4", "office", CAFE, port=4500, mtu=1372,
                      fragments_pass=True, last_seen=now - 2, current=True),
        known_network("5f0c2d9a61b7e3a4", "lab", CAFE, port=53, last_seen=now - 300),
        known_network("5f0c8e11aa2299cc", "office", OFFICE_LAN, fragments_pass=False,
                      last_seen=now - 3 * 86400),
    ]


def test_networks_lists_what_the_helper_remembers(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    remembered(helper)
    run = m6t("networks")
    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == [
        "  ID      PROFILE  PORT  MTU   FRAGMENTS  LAST SEEN   NETWORK",
        f"* 5f0c2d  office   4500  1372  yes        now         {CAFE}",
        f"  5f0c2d  lab      53    1472  untested   5 min ago   {CAFE}",
        f"  5f0c8e  office   3544  1472  no         3 days ago  {OFFICE_LAN}",
        "(* = a tunnel runs over it now)",
    ]
    assert helper.calls == [("networks", {})]
    assert m6t("networks", "list").out == run.out


def test_networks_show_ids_long_enough_to_tell_apart(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.networks += [known_network("5f0c2d9a61b7e3a4", "office"),
                        known_network("5f0c2d9b00000000", "office")]
    lines = m6t("networks").out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["5f0c2d9a", "5f0c2d9b"]


def test_networks_json_is_the_helpers_result_unchanged(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    remembered(helper)
    for argv in (["networks", "--json"], ["networks", "list", "--json"],
                 ["networks", "--json", "list"]):
        run = m6t(*argv)
        assert json.loads(run.out) == {"networks": helper.networks, "saved": True}, argv
        assert list(json.loads(run.out)["networks"][0]) == list(helper.networks[0])


def test_networks_when_none_is_known_or_the_memory_cannot_be_saved(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("networks")
    assert run.out == ("no networks remembered yet: the helper learns a network's port and MTU "
                       "when a tunnel connects over it\n")
    helper.networks_saved = False
    assert m6t("networks").out.splitlines()[-1] == (
        "(the helper cannot write its memory file: it forgets these networks when it stops; "
        "see journalctl -u m6t-helper)")


@pytest.mark.parametrize("given", ["5f0c2d9a61b7e3a4", "5f0c2", "5F0C2D"])
def test_networks_forget_one_by_its_id_or_a_unique_start_of_it(
        helper: FakeHelper, m6t: Callable[..., Run], given: str) -> None:
    remembered(helper)
    run = m6t("networks", "forget", given)
    assert (run.code, run.err) == (0, "")
    assert run.out == f"forgot network 5f0c2d9a61b7e3a4 ({CAFE})\n"
    assert helper.calls == [("networks", {}), ("forget_network", {"network": "5f0c2d9a61b7e3a4"})]
    assert [entry["id"] for entry in helper.networks] == ["5f0c8e11aa2299cc"]


def test_networks_forget_all(helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    remembered(helper)
    assert m6t("networks", "forget", "--all").out == "forgot 2 networks\n"
    assert helper.calls[-1] == ("forget_network", {})
    assert helper.networks == []
    assert m6t("networks", "forget", "--all").out == "no networks to forget\n"


def test_networks_forget_json_is_the_helpers_result(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    remembered(helper)
    run = m6t("networks", "forget", "--json", "5f0c8e")
    assert json.loads(run.out) == {"networks": helper.networks, "saved": True}
    assert len(helper.networks) == 2


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("5f0c", "m6t: '5f0c' could be any of 5f0c2d9a61b7e3a4, 5f0c8e11aa2299cc: give more of "
                 "the ID"),
        ("77", "m6t: no known network '77' (known: 5f0c2d, 5f0c8e; see `m6t networks`)"),
    ],
    ids=["ambiguous", "unknown"],
)
def test_networks_forget_an_ambiguous_or_unknown_id_is_one_line_and_forgets_nothing(
        helper: FakeHelper, m6t: Callable[..., Run], given: str, expected: str) -> None:
    remembered(helper)
    run = m6t("networks", "forget", given)
    assert (run.code, run.error) == (1, expected)
    assert [method for method, _ in helper.calls] == ["networks"]
    assert len(helper.networks) == 3


def test_networks_forget_when_nothing_is_known(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("networks", "forget", "5f0c")
    assert (run.code, run.error) == (1, "m6t: no known network '5f0c': the helper remembers "
                                        "no network yet")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "m6t: which network? give its ID (see `m6t networks`), or --all"),
        (["5f0c2d", "--all"], "m6t: give a network ID or --all, not both"),
        ([" "], "m6t: an empty network ID: give one from `m6t networks`, or --all"),
    ],
    ids=["neither", "both", "empty"],
)
def test_networks_forget_needs_an_id_or_all(
        helper: FakeHelper, m6t: Callable[..., Run], argv: list[str], expected: str) -> None:
    remembered(helper)
    run = m6t("networks", "forget", *argv)
    assert (run.code, run.error) == (2, expected)
    assert "forget_network" not in [method for method, _ in helper.calls]


def test_networks_read_only_may_list_but_not_forget(
        sock: Path, book_path: Path, m6t: Callable[..., Run]) -> None:
    with FakeHelper(sock, read_only=True) as helper:
        remembered(helper)
        assert m6t("networks").code == 0
        run = m6t("networks", "forget", "--all")
    assert (run.code, run.error) == (1, f"m6t: permission denied: {JOIN_GROUP}")
    assert len(helper.networks) == 3


def test_networks_forgotten_meanwhile_is_the_helpers_not_found(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    remembered(helper)

    def forgotten_by_someone_else(params: dict[str, Any]) -> Any:
        raise NotFound("no known network '5f0c8e11aa2299cc' (known: 5f0c2d9a61b7e3a4)")
    helper.handlers["forget_network"] = forgotten_by_someone_else
    run = m6t("networks", "forget", "5f0c8e")
    assert (run.code, run.error) == (
        1, "m6t: no known network '5f0c8e11aa2299cc' (known: 5f0c2d9a61b7e3a4)")


def test_networks_with_a_malformed_reply_is_one_line(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.handlers["networks"] = lambda params: {"networks": [{"id": 7}], "saved": True}
    run = m6t("networks")
    assert run.code == 1
    assert run.error.startswith("m6t: the helper sent a malformed message (")


# --- a known network and a captive portal in the status ---


def test_status_names_the_network_and_says_how_to_pass_a_captive_portal(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["office"] = connected(
        state="waiting", cause="captive_portal", address=None, suffix=None, port=None,
        network="5f0c2d9a61b7e3a4", network_label=CAFE, portal_url=PORTAL)
    lines = m6t("status").out.splitlines()
    assert lines[0] == (f"office (m6t0): waiting (this network wants you to log in first: "
                        f"open {PORTAL}, then the tunnel connects by itself)")
    assert f"  network     {CAFE}" in lines


def test_a_captive_portal_without_its_page_still_says_what_to_do(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.tunnels["office"] = connected(state="waiting", cause="captive_portal", port=None)
    assert m6t("status").out.splitlines()[0] == (
        "office (m6t0): waiting (this network wants you to log in first (open any web page), "
        "then the tunnel connects by itself)")


def test_connect_behind_a_captive_portal_says_where_to_log_in(
        helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    helper.handlers["connect"] = lambda params: connected(
        state="waiting", cause="captive_portal", address=None, suffix=None, port=None,
        portal_url=PORTAL)
    run = m6t("connect", *OFFICE_OPTIONS, "--name", "office")
    assert (run.code, run.error) == (
        1, f"m6t: office is waiting (this network wants you to log in first: open {PORTAL}, "
           "then the tunnel connects by itself): the helper keeps trying (`m6t disconnect "
           "office` to stop)")


def test_watch_text_says_a_captive_portal_and_a_remembered_mtu(
        helper: FakeHelper, capsys: pytest.CaptureFixture[str]) -> None:
    watcher = Watcher("--text", "--count", "3")
    wait_for_subscriber(helper)
    portal = connected(state="waiting", cause="captive_portal", address=None, suffix=None,
                       port=None, network_label=CAFE, portal_url=PORTAL)
    helper.emit({"type": "state", "tunnel": "m6t0", "profile": "office", "state": "waiting",
                 "cause": "captive_portal", "status": portal, "message": None})
    helper.emit({"type": "mtu", "tunnel": "m6t0", "profile": "office", "mtu": 1372,
                 "previous": None, "reason": "remembered"})
    helper.emit({**MTU_EVENT, "previous": 1472, "mtu": 1400, "reason": "remembered"})
    assert watcher.wait() == 0
    assert [line[9:] for line in capsys.readouterr().out.splitlines()] == [
        f"office: waiting (this network wants you to log in first: open {PORTAL}, then the "
        "tunnel connects by itself)",
        "office: MTU 1372 (remembered from the last time on this network)",
        "office: MTU 1472 -> 1400 (remembered from the last time on this network)",
    ]


# --- prefix new ---


def test_prefix_new_is_a_fresh_rfc4193_80(m6t: Callable[..., Run]) -> None:
    run = m6t("prefix", "new")
    assert run.code == 0
    prefix = TunnelPrefix.parse(run.out.strip())
    assert prefix.network.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert prefix.subnet_id == 0
    others = {m6t("prefix", "new").out for _ in range(3)}
    assert run.out not in others  # a new global ID (time) and MN ID (random) each time


def test_prefix_new_composes_subnet_and_mn_id(m6t: Callable[..., Run]) -> None:
    run = m6t("prefix", "new", "--subnet", "0x2a", "--mn-id", "7", "--json")
    result = json.loads(run.out)
    assert set(result) == {"prefix", "site", "subnet_id", "mn_id"}
    assert (result["subnet_id"], result["mn_id"]) == (42, 7)
    site = ipaddress.IPv6Network(result["site"])
    assert result["prefix"] == str(TunnelPrefix.compose(site, 42, 7))
    assert result["prefix"].endswith(":2a:7::/80")


def test_prefix_new_on_a_given_site(m6t: Callable[..., Run]) -> None:
    run = m6t("prefix", "new", "--site", "fd6d:6d74:1::/48", "--subnet", "1", "--mn-id", "1")
    assert run.out == "fd6d:6d74:1:1:1::/80\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--subnet", "65536"], "m6t: argument --subnet: '65536' is not a 16-bit ID (0-65535, "
                                "or 0x0-0xffff) (see `m6t prefix new --help`)"),
        (["--mn-id", "-1"], "m6t: argument --mn-id: '-1' is not a 16-bit ID (0-65535, or "
                            "0x0-0xffff) (see `m6t prefix new --help`)"),
        (["--site", "fd6d:6d74::/32"], "m6t: invalid --site: fd6d:6d74::/32 must be a /48"),
        (["--site", "ff02::/48"], "m6t: invalid --site: site prefix ff02::/48 is not a "
                                  "routable unicast prefix"),
    ],
    ids=["subnet", "mn_id", "site_length", "site_multicast"],
)
def test_prefix_new_rejects(m6t: Callable[..., Run], argv: list[str], expected: str) -> None:
    run = m6t("prefix", "new", *argv)
    assert (run.code, run.error) == (2, expected)


# --- profiles ---


def test_profiles_round_trip(helper: FakeHelper, book_path: Path, tmp_path: Path,
                             m6t: Callable[..., Run]) -> None:
    assert m6t("profiles", "list").out.startswith(f"no profiles in {book_path}: add one with")
    run = m6t("profiles", "add", "office", *OFFICE_OPTIONS)
    assert run.out == f"added profile office (default) in {book_path}\n"
    run = m6t("profiles", "add", "lab", "--gateway", "gw.example.net", "--port", "3544",
              "--prefix", "fd6d:6d74:1:2:1::/80", "--home-agent", "fd48:4100::2",
              "--mtu", "auto", "--keepalive", "15", "--routes", "default", "--auto-connect")
    assert run.out == f"added profile lab in {book_path}\n"
    assert profiles.load(book_path) == ProfileBook([OFFICE, LAB], default="office")
    assert m6t("profiles", "list").out.splitlines() == [
        "  NAME    GATEWAY         PORTS      PREFIX                HOME AGENT",
        "* office  198.51.100.1    3544,4500  fd6d:6d74:1:1:1::/80  fd48:4100::2",
        "  lab     gw.example.net  3544       fd6d:6d74:1:2:1::/80  fd48:4100::2  MTU auto, "
        "keepalive 15 s, routes default, auto-connect",
        "(* = default)",
    ]
    assert json.loads(m6t("profiles", "list", "--json").out) == {
        "file": str(book_path), "default": "office",
        "profiles": [profiles.profile_to_dict(OFFICE), profiles.profile_to_dict(LAB)]}

    assert m6t("profiles", "default", "lab").out == "default profile: lab\n"
    assert m6t("profiles", "default").out == "lab\n"
    assert profiles.load(book_path).default == "lab"

    exported = m6t("profiles", "export").out
    assert tomllib.loads(exported)["default"] == "lab"
    assert profiles.parse_profiles(exported) == profiles.load(book_path)
    export_file = tmp_path / "exported.toml"
    assert m6t("profiles", "export", str(export_file)).out == \
        f"exported 2 profiles to {export_file}\n"
    assert export_file.read_text() == exported

    assert m6t("profiles", "remove", "lab").out == "removed profile lab\n"
    assert m6t("profiles", "default").out == "office (the only profile)\n"
    assert m6t("profiles", "remove", "office").out == "removed profile office\n"
    assert profiles.load(book_path) == ProfileBook()

    run = m6t("profiles", "import", str(export_file))
    assert run.out == f"imported from {export_file}: added office, lab; default lab\n"
    assert profiles.load(book_path) == ProfileBook([OFFICE, LAB], default="lab")
    assert m6t("connect").code == 0  # the default, through the helper
    assert helper.calls[-1][1]["profile"]["name"] == "lab"


def test_profiles_add_refuses_a_duplicate_unless_replace(
        book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE)
    run = m6t("profiles", "add", "office", *OFFICE_OPTIONS, "--mtu", "1400")
    assert (run.code, run.error) == (1, f"m6t: profile 'office' already exists in {book_path}: "
                                        "add --replace to replace it")
    run = m6t("profiles", "add", "office", *OFFICE_OPTIONS, "--mtu", "1400", "--replace")
    assert run.out == f"replaced profile office (default) in {book_path}\n"
    assert profiles.load(book_path).profiles[0].mtu == 1400


def test_profiles_add_validates_and_names_the_field(
        book_path: Path, m6t: Callable[..., Run]) -> None:
    run = m6t("profiles", "add", "bad/name", *OFFICE_OPTIONS)
    assert run.code == 2
    assert run.error.startswith("m6t: invalid NAME: 1-64 characters")
    run = m6t("profiles", "add", "office", *OFFICE_OPTIONS, "--keepalive", "0")
    assert run.error.startswith("m6t: invalid --keepalive: 0 s is outside 1-30 s")
    assert not book_path.exists()


def test_profiles_add_default_and_unknown_names(
        book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE, default="office")
    m6t("profiles", "add", "lab", "--gateway", "gw.example.net", "--port", "3544", "--prefix",
        "fd6d:6d74:1:2:1::/80", "--home-agent", "fd48:4100::2", "--default")
    assert profiles.load(book_path).default == "lab"
    for argv in (["profiles", "remove", "home"], ["profiles", "default", "home"]):
        run = m6t(*argv)
        assert (run.code, run.error) == (
            1, f"m6t: no profile named 'home' in {book_path} (profiles: office, lab)")


def test_profiles_import_reports_conflicts_and_replaces_only_when_asked(
        tmp_path: Path, book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE, LAB, default="office")
    before = book_path.read_bytes()
    incoming = tmp_path / "incoming.toml"
    changed_office = msgspec.structs.replace(OFFICE, mtu=1400)
    home = msgspec.structs.replace(OFFICE, name="home")
    write_book(incoming, changed_office, LAB, home, default="home")

    run = m6t("profiles", "import", str(incoming))
    assert (run.code, run.error) == (
        1, f"m6t: {incoming} has profiles that differ from the ones in {book_path}: office; "
           "nothing imported (add --replace to replace them)")
    assert book_path.read_bytes() == before

    run = m6t("profiles", "import", "--replace", str(incoming))
    assert run.out == f"imported from {incoming}: added home; replaced office; unchanged lab\n"
    assert profiles.load(book_path) == ProfileBook([changed_office, LAB, home],
                                                   default="office")


def test_profiles_import_of_a_bad_file_names_the_profile_and_field(
        tmp_path: Path, book_path: Path, m6t: Callable[..., Run]) -> None:
    incoming = tmp_path / "incoming.toml"
    incoming.write_text('[[profile]]\nname = "office"\ngateway = "198.51.100.1"\n'
                        'ports = [3544]\nprefix = "fd6d:6d74:1:1:1::/80"\n'
                        'home_agent = "fd48:4100::2"\nmtu = 9\n')
    run = m6t("profiles", "import", str(incoming))
    assert (run.code, run.error) == (
        1, f"m6t: {incoming}: profile office: mtu: 9 is outside 1280-65507 (IPv6 needs at "
           "least 1280); nothing imported")
    run = m6t("profiles", "import", str(tmp_path / "missing.toml"))
    assert run.error == f"m6t: cannot read {tmp_path / 'missing.toml'}: No such file or directory"
    assert not book_path.exists()


def test_profiles_live_in_the_user_config_directory_by_default(
        tmp_path: Path, m6t: Callable[..., Run]) -> None:
    assert m6t("profiles", "add", "office", *OFFICE_OPTIONS).code == 0
    assert profiles.load(tmp_path / "xdg-config" / "m6t" / "profiles.toml").names() == ["office"]
    explicit = tmp_path / "explicit.toml"
    assert m6t("--profiles", str(explicit), "profiles", "add", "lab", *OFFICE_OPTIONS).code == 0
    listed = json.loads(m6t("profiles", "list", "--profiles", str(explicit), "--json").out)
    assert [p["name"] for p in listed["profiles"]] == ["lab"]


@pytest.mark.parametrize(
    "corrupt",
    [b'default = "office"\n[[profile]]\nname = "office"\ngateway = \n',
     b'[[profile]]\nname = "caf\xe9"\n'],
    ids=["not_toml", "not_utf8"],
)
@pytest.mark.parametrize(
    "argv",
    [
        ["profiles", "list"],
        ["profiles", "add", "office", *OFFICE_OPTIONS],
        ["profiles", "remove", "office"],
        ["profiles", "default", "office"],
        ["profiles", "export"],
        ["profiles", "import", "/dev/null"],
        ["connect", "office"],
        ["connect"],
        ["probe", "office"],
    ],
    ids=lambda argv: "_".join(argv[:2]),
)
def test_a_corrupt_profiles_file_is_reported_and_left_untouched(
        helper: FakeHelper, book_path: Path, m6t: Callable[..., Run], argv: list[str],
        corrupt: bytes) -> None:
    book_path.parent.mkdir(parents=True)
    book_path.write_bytes(corrupt)
    run = m6t(*argv)
    assert run.code == 1
    assert run.error.startswith(f"m6t: {book_path} ")
    assert re.search(r"fix it or move it away.*it was left untouched\)?$", run.error)
    assert book_path.read_bytes() == corrupt
    assert os.listdir(book_path.parent) == ["profiles.toml"]
    assert helper.calls == []


def test_a_profiles_file_with_a_bad_value_says_which_profile_and_field(
        book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE)
    text = book_path.read_text().replace('prefix = "fd6d:6d74:1:1:1::/80"',
                                         'prefix = "fd6d:6d74:1:1::/64"')
    book_path.write_text(text)
    run = m6t("profiles", "add", "lab", *OFFICE_OPTIONS)
    assert run.error == (f"m6t: {book_path}: profile office: prefix: fd6d:6d74:1:1::/64 must "
                         "be a /80 (/48 + 16-bit subnet ID + 16-bit MN ID); fix it or move it "
                         "away (it was left untouched)")
    assert book_path.read_text() == text


def test_export_refuses_to_write_over_a_file_that_is_not_a_profiles_file(
        tmp_path: Path, book_path: Path, m6t: Callable[..., Run]) -> None:
    write_book(book_path, OFFICE)
    other = tmp_path / "notes.toml"
    other.write_text("these are my notes, not TOML\n")
    run = m6t("profiles", "export", str(other))
    assert run.code == 1
    assert run.error.startswith(f"m6t: {other} is not valid TOML")
    assert other.read_text() == "these are my notes, not TOML\n"


# --- the installed console script ---


def test_the_console_script_runs_main(sock: Path, book_path: Path) -> None:
    env = {**os.environ, "M6T_SOCKET": str(sock), "M6T_PROFILES": str(book_path)}
    result = subprocess.run([str(M6T_SCRIPT), "--help"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: m6t ")

    result = subprocess.run([str(M6T_SCRIPT), "status"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"m6t: helper not running: start m6t-helper (no socket at {sock})\n"

    with FakeHelper(sock) as helper:
        helper.tunnels["office"] = connected()
        result = subprocess.run([str(M6T_SCRIPT), "status"], capture_output=True, text=True,
                                env=env, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == "office (m6t0): connected (the first port answered)"
    assert helper.calls == [("status", {})]


def test_profiles_file_written_by_the_cli_is_private(
        book_path: Path, m6t: Callable[..., Run]) -> None:
    m6t("profiles", "add", "office", *OFFICE_OPTIONS)
    assert stat.S_IMODE(book_path.stat().st_mode) == 0o600


def test_a_profile_may_list_more_gateways(helper: FakeHelper, m6t: Callable[..., Run]) -> None:
    run = m6t("connect", *OFFICE_OPTIONS, "--more-gateway", "198.51.100.2",
              "--more-gateway", "gw2.example.net")
    assert run.code == 0, run.err
    assert helper.calls[-1][1]["profile"]["more_gateways"] == ["198.51.100.2", "gw2.example.net"]
    run = m6t("connect", *OFFICE_OPTIONS, "--more-gateway", "198.51.100.1")
    assert (run.code, run.error) == (
        2, "m6t: invalid --more-gateway: each gateway once (and not `gateway` again)")
