"""HelperConnection against FakeHelper over a real Unix socket: subscription, calls and their
errors, typed events, the helper missing, refusing, going away and coming back, and every kind
of malformed line (dropped by name, never breaking the link)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from m6t.control import schema
from m6t.control.errors import (
    BadReply,
    ConnectionLost,
    ControlError,
    ErrorCode,
    HelperNotRunning,
    PermissionDenied,
    TimedOut,
)
from m6t.control.schema import StateEvent, TrafficEvent, TunnelStatus
from m6t.profiles import profile_to_dict
from m6t_desktop.client import HelperConnection, Link
from tests.desktop.conftest import OFFICE
from tests.fake_helper import FakeHelper, status_for

TRAFFIC = {"type": "traffic", "tunnel": "m6t0", "profile": "office", "rx_bytes": 5120,
           "tx_bytes": 4096, "rx_packets": 40, "tx_packets": 38, "rx_rate": 1024.0,
           "tx_rate": 512.0, "rtt_ms": 0.6}


@pytest.fixture
def connection(socket_path: Path) -> Iterator[HelperConnection]:
    conn = HelperConnection(str(socket_path), backoff=(0.02, 0.2), restart_grace=30.0)
    yield conn
    conn.stop()
    conn.deleteLater()  # in the GUI thread (see collect_qt_objects_here)


def go_online(qtbot: QtBot, conn: HelperConnection) -> tuple[object, bool]:
    with qtbot.waitSignal(conn.subscribed, timeout=5000) as blocker:
        conn.start()
    return blocker.args[0], blocker.args[1]


def outcome(qtbot: QtBot, reply: object) -> tuple[str, object]:
    """Wait for a Reply; ("ok", result record) or ("error", ControlError)."""
    results: list[tuple[str, object]] = []
    reply.succeeded.connect(lambda result: results.append(("ok", result)))  # type: ignore[attr-defined]
    reply.failed.connect(lambda error: results.append(("error", error)))  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: bool(results), timeout=5000)
    return results[0]


def blocking_handler(helper: FakeHelper, method: str) -> threading.Event:
    """Make `method` hang in the helper until the returned event is set."""
    release = threading.Event()

    def handler(_params: dict) -> dict:
        release.wait(10)
        return {"late": True}

    helper.handlers[method] = handler
    return release


# --- subscription and calls ---


def test_subscribes_on_connect_and_gets_the_full_state_first(
        qtbot: QtBot, helper: FakeHelper, connection: HelperConnection) -> None:
    helper.tunnels["office"] = status_for(OFFICE)
    result, restarted = go_online(qtbot, connection)
    assert restarted is False
    assert connection.link is Link.ONLINE
    assert result.access == "read-write"  # type: ignore[attr-defined]
    assert [t.profile for t in result.tunnels] == ["office"]  # type: ignore[attr-defined]
    assert result.tunnels[0].suffix == "8d2e:41f0:977c"  # type: ignore[attr-defined]
    assert [method for method, _ in helper.calls] == ["version", "subscribe"]


def test_call_returns_the_helpers_result(qtbot: QtBot, helper: FakeHelper,
                                         connection: HelperConnection) -> None:
    go_online(qtbot, connection)
    kind, result = outcome(qtbot, connection.call("connect",
                                                  {"profile": profile_to_dict(OFFICE)}))
    assert kind == "ok"
    assert isinstance(result, TunnelStatus)  # decoded into the method's record
    assert result.state == "connected"
    assert result.port == 3544
    assert helper.calls[-1] == ("connect", {"profile": profile_to_dict(OFFICE)})


@pytest.mark.parametrize(("method", "params", "code", "field"), [
    ("disconnect", {"profile": "nowhere"}, ErrorCode.NOT_FOUND, None),
    ("frobnicate", None, ErrorCode.METHOD_NOT_FOUND, None),
    ("connect", {"profile": {**profile_to_dict(OFFICE), "ports": []}}, ErrorCode.INVALID_PARAMS,
     "profile.ports"),
    ("connect", {"profile": {**profile_to_dict(OFFICE), "mtu": 900}}, ErrorCode.INVALID_PARAMS,
     "profile.mtu"),
])
def test_helper_errors_arrive_with_code_and_field(
        qtbot: QtBot, helper: FakeHelper, connection: HelperConnection, method: str,
        params: dict | None, code: int, field: str | None) -> None:
    go_online(qtbot, connection)
    kind, error = outcome(qtbot, connection.call(method, params))
    assert kind == "error"
    assert isinstance(error, ControlError)
    assert error.code == code
    assert error.field == field


def test_a_result_that_does_not_fit_its_record_fails_the_call(
        qtbot: QtBot, helper: FakeHelper, connection: HelperConnection) -> None:
    helper.handlers["regenerate"] = lambda _params: {"state": "exploded"}
    go_online(qtbot, connection)
    kind, error = outcome(qtbot, connection.call("regenerate", {"profile": "office"}))
    assert kind == "error"
    assert isinstance(error, BadReply)
    assert "'regenerate'" in error.message
    assert connection.link is Link.ONLINE  # one bad answer does not break the link


def test_read_only_caller_gets_permission_denied(qtbot: QtBot, socket_path: Path,
                                                 connection: HelperConnection) -> None:
    with FakeHelper(socket_path, read_only=True):
        result, _ = go_online(qtbot, connection)
        assert result.access == "read-only"  # type: ignore[attr-defined]
        kind, error = outcome(qtbot, connection.call("connect",
                                                     {"profile": profile_to_dict(OFFICE)}))
    assert kind == "error"
    assert isinstance(error, PermissionDenied)
    assert "join group m6t" in error.message
    assert error.data.group == "m6t"  # what the app acts on, not the message


def test_events_arrive_as_typed_records(qtbot: QtBot, helper: FakeHelper,
                                        connection: HelperConnection) -> None:
    go_online(qtbot, connection)
    with qtbot.waitSignal(connection.eventReceived) as blocker:
        helper.emit(TRAFFIC)
    traffic = blocker.args[0]
    assert isinstance(traffic, TrafficEvent)
    assert (traffic.rx_rate, traffic.tx_rate, traffic.rtt_ms) == (1024.0, 512.0, 0.6)

    status = status_for(OFFICE, state="connected", cause="port_fallback")
    with qtbot.waitSignal(connection.eventReceived) as blocker:
        helper.emit({"type": "state", "tunnel": "m6t0", "profile": "office",
                     "state": "connected", "cause": "port_fallback", "status": status})
    state = blocker.args[0]
    assert isinstance(state, StateEvent)
    assert state.status.cause == "port_fallback"
    assert state.status.ports[1].port == 4500


def test_call_before_the_helper_answers_fails_later_not_inside_call(
        qtbot: QtBot, connection: HelperConnection) -> None:
    reply = connection.call("status")
    assert not reply.done  # failing inside call() would be lost: nobody is connected yet
    kind, error = outcome(qtbot, reply)
    assert kind == "error"
    assert isinstance(error, HelperNotRunning)
    assert error.code == ErrorCode.NOT_RUNNING


def test_call_times_out(qtbot: QtBot, helper: FakeHelper,
                        connection: HelperConnection) -> None:
    release = blocking_handler(helper, "probe_mtu")
    go_online(qtbot, connection)
    kind, error = outcome(qtbot, connection.call("probe_mtu", {"profile": "office"},
                                                 timeout=0.1))
    release.set()
    assert kind == "error"
    assert isinstance(error, TimedOut)
    assert error.code == ErrorCode.TIMED_OUT


def test_helper_api_version_mismatch_is_reported(qtbot: QtBot, helper: FakeHelper,
                                                 connection: HelperConnection) -> None:
    helper.handlers["version"] = lambda _params: {"version": "9.0", "api": 2}
    with qtbot.waitSignal(connection.apiMismatch) as blocker:
        connection.start()
    assert blocker.args == [2]


# --- the helper missing, refusing, going away, coming back ---


def test_helper_not_running_then_started(qtbot: QtBot, socket_path: Path,
                                         connection: HelperConnection) -> None:
    connection.start()
    assert connection.link is Link.NOT_RUNNING  # no socket: known at once
    with FakeHelper(socket_path) as helper, \
            qtbot.waitSignal(connection.subscribed, timeout=5000) as blocker:
        pass
    assert blocker.args[1] is False  # a first start, not a restart
    assert [m for m, _ in helper.calls] == ["version", "subscribe"]


def test_stale_socket_file_means_not_running(qtbot: QtBot, socket_path: Path,
                                             connection: HelperConnection) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # the file stays, nobody listens: what a crashed helper leaves
    with qtbot.waitSignal(connection.linkChanged) as blocker:
        connection.start()
    assert blocker.args == [Link.NOT_RUNNING]


def test_socket_access_error_means_denied(qtbot: QtBot, connection: HelperConnection) -> None:
    # As root (CI) the kernel never refuses a socket file, so drive the error Qt reports for
    # EACCES into the connection directly.
    from PySide6.QtNetwork import QLocalSocket

    connection._running = True
    connection._phase = "connecting"
    with qtbot.waitSignal(connection.linkChanged) as blocker:
        connection._on_error(QLocalSocket.LocalSocketError.SocketAccessError)
    assert blocker.args == [Link.DENIED]


def test_helper_going_away_and_coming_back(qtbot: QtBot, socket_path: Path,
                                           connection: HelperConnection) -> None:
    helper = FakeHelper(socket_path)
    helper.start()
    release = blocking_handler(helper, "probe_mtu")
    go_online(qtbot, connection)
    in_flight = connection.call("probe_mtu", {"profile": "office"})
    lost = []
    connection.linkChanged.connect(lost.append)
    helper.stop()
    kind, error = outcome(qtbot, in_flight)
    release.set()
    assert kind == "error"
    assert isinstance(error, ConnectionLost)
    assert error.code == ErrorCode.CONNECTION_LOST
    qtbot.waitUntil(lambda: Link.LOST in lost)

    with FakeHelper(socket_path) as again:
        again.tunnels["office"] = status_for(OFFICE)
        with qtbot.waitSignal(connection.subscribed, timeout=5000) as blocker:
            pass
        assert blocker.args[1] is True  # the same helper path answered again: a restart
        assert [t.profile for t in blocker.args[0].tunnels] == ["office"]
        assert connection.link is Link.ONLINE


def test_lost_helper_is_called_not_running_after_the_grace(
        qtbot: QtBot, socket_path: Path) -> None:
    conn = HelperConnection(str(socket_path), backoff=(0.02, 0.05), restart_grace=0.2)
    helper = FakeHelper(socket_path)
    helper.start()
    go_online(qtbot, conn)
    seen: list[Link] = []
    conn.linkChanged.connect(seen.append)
    helper.stop()
    qtbot.waitUntil(lambda: conn.link is Link.NOT_RUNNING, timeout=5000)
    conn.stop()
    conn.deleteLater()
    assert seen[0] is Link.LOST


def test_subscription_with_unreadable_state_is_retried(
        qtbot: QtBot, helper: FakeHelper, connection: HelperConnection) -> None:
    helper.handlers["subscribe"] = lambda _params: {"tunnels": "not a list", "access": 1}
    connection.start()
    qtbot.waitUntil(lambda: connection.malformed_counts["bad_result"] >= 2, timeout=5000)
    assert connection.link is not Link.ONLINE
    del helper.handlers["subscribe"]
    qtbot.waitUntil(lambda: connection.link is Link.ONLINE, timeout=5000)


# --- malformed messages ---

OVERSIZE = (b'{"jsonrpc": "2.0", "method": "event", "params": {"type": "removed", "pad": "'
            + b"x" * (schema.MAX_LINE_BYTES + 10) + b'"}}\n')

MALFORMED = [
    ("not JSON", b"this is not json\n", "not_json"),
    ("binary garbage", b"\x00\xff\xfe\x80\x9c garbage \x01\n", "not_json"),
    ("truncated JSON", b'{"jsonrpc": "2.0", "method": "ev\n', "not_json"),
    ("JSON array", b"[1, 2, 3]\n", "not_object"),
    ("JSON string", b'"hello"\n', "not_object"),
    ("wrong jsonrpc version", b'{"jsonrpc": "1.0", "method": "event", "params": '
                              b'{"type": "removed", "tunnel": "m6t0", "profile": "x"}}\n',
     "bad_version"),
    ("no jsonrpc member", b'{"method": "event", "params": {}}\n', "bad_version"),
    ("result for unknown id", b'{"jsonrpc": "2.0", "id": 999, "result": {}}\n', "unknown_id"),
    ("result for a string id", b'{"jsonrpc": "2.0", "id": "abc", "result": {}}\n',
     "unknown_id"),
    ("error without id", b'{"jsonrpc": "2.0", "id": null, "error": {"code": -32700, '
                         b'"message": "parse error"}}\n', "error_without_id"),
    ("event with missing fields", b'{"jsonrpc": "2.0", "method": "event", "params": '
                                  b'{"type": "address", "tunnel": "m6t0"}}\n', "bad_event"),
    ("event with wrong field type", b'{"jsonrpc": "2.0", "method": "event", "params": '
                                    b'{"type": "traffic", "tunnel": "m6t0", "profile": "o", '
                                    b'"rx_bytes": "many", "tx_bytes": 1, "rx_packets": 1, '
                                    b'"tx_packets": 1, "rx_rate": 1, "tx_rate": 1}}\n',
     "bad_event"),
    ("state event with a bad status", b'{"jsonrpc": "2.0", "method": "event", "params": '
                                      b'{"type": "state", "tunnel": "m6t0", "profile": "o", '
                                      b'"state": "exploded", "cause": "x", "status": {}}}\n',
     "bad_event"),
    ("event without params", b'{"jsonrpc": "2.0", "method": "event"}\n', "bad_event"),
    ("event params not an object", b'{"jsonrpc": "2.0", "method": "event", "params": [1]}\n',
     "bad_event"),
    ("notification of unknown method", b'{"jsonrpc": "2.0", "method": "reboot"}\n',
     "unexpected_message"),
    ("oversize line", OVERSIZE, "oversize_line"),
]


@pytest.mark.parametrize(("raw", "reason"), [(raw, reason) for _, raw, reason in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_line_is_dropped_by_name_and_the_link_lives_on(
        qtbot: QtBot, helper: FakeHelper, connection: HelperConnection, raw: bytes,
        reason: str) -> None:
    go_online(qtbot, connection)
    events: list[object] = []
    connection.eventReceived.connect(events.append)
    helper.send_raw(raw)
    helper.emit(TRAFFIC)  # sent after the bad line on the same stream
    qtbot.waitUntil(lambda: bool(events), timeout=5000)
    assert dict(connection.malformed_counts) == {reason: 1}
    assert isinstance(events[0], TrafficEvent)
    assert len(events) == 1
    assert connection.link is Link.ONLINE
    assert [m for m, _ in helper.calls].count("subscribe") == 1  # never reconnected


def test_unknown_event_type_is_ignored_not_malformed(
        qtbot: QtBot, helper: FakeHelper, connection: HelperConnection) -> None:
    go_online(qtbot, connection)
    events: list[object] = []
    connection.eventReceived.connect(events.append)
    helper.emit({"type": "weather", "tunnel": "m6t0", "profile": "office", "sunny": True})
    helper.emit(TRAFFIC)
    qtbot.waitUntil(lambda: bool(events))
    assert [type(e) for e in events] == [TrafficEvent]
    assert connection.malformed_counts == {"unknown_event": 1}


def test_lines_split_across_reads_and_joined_in_one_read(
        qtbot: QtBot, helper: FakeHelper, connection: HelperConnection) -> None:
    go_online(qtbot, connection)
    events: list[object] = []
    connection.eventReceived.connect(events.append)
    import json

    line = json.dumps({"jsonrpc": "2.0", "method": "event", "params": TRAFFIC}).encode() + b"\n"
    helper.send_raw(line[:10])
    helper.send_raw(line[10:] + line + line)
    qtbot.waitUntil(lambda: len(events) == 3)
    assert not connection.malformed_counts


def test_malformed_error_object_fails_the_waiting_call(
        qtbot: QtBot, helper: FakeHelper, connection: HelperConnection) -> None:
    release = blocking_handler(helper, "probe_mtu")
    go_online(qtbot, connection)
    request_id = connection._next_id
    reply = connection.call("probe_mtu", {"profile": "office"})
    helper.send_raw(b'{"jsonrpc": "2.0", "id": %d, "error": "boom"}\n' % request_id)
    kind, error = outcome(qtbot, reply)
    assert kind == "error"
    assert isinstance(error, BadReply)
    assert error.code == ErrorCode.BAD_REPLY
    assert connection.malformed_counts["bad_error"] == 1
    release.set()  # the real answer now arrives for an id nobody waits for
    qtbot.waitUntil(lambda: connection.malformed_counts["unknown_id"] == 1)
    assert connection.link is Link.ONLINE
