"""The app's link to m6t-helper: JSON-RPC 2.0 lines over a QLocalSocket, on Qt's event loop.

Nothing here blocks: the socket is read when Qt says it is readable, replies arrive as signals
of a `Reply`, events as typed records (`StateEvent`, `AddressEvent`, ...). On every connection
the client asks `version` and `subscribe` (full state first, then events). When the helper goes
away it retries with a back-off (and at once when the socket's directory changes), and says
so through `linkChanged`. A line that is not a well-formed message from the helper is logged at
debug level and counted by name in `malformed_counts`; it never breaks the link.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from enum import StrEnum
from typing import Any, Literal

import msgspec
from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer, Signal, SignalInstance
from PySide6.QtNetwork import QLocalSocket

from m6t.control import schema
from m6t.control.schema import TunnelState, TunnelStatus

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


# --- typed events (docs/control-api.md, "Events") ---


class TunnelEvent(msgspec.Struct, tag_field="type", kw_only=True):
    """What every event carries: its `type` (the tag) and the tunnel and profile it is about.
    Each subclass repeats kw_only=True: msgspec applies it to a class's own fields only."""

    tunnel: str
    profile: str


class StateEvent(TunnelEvent, tag="state", kw_only=True):
    state: TunnelState
    cause: str
    status: TunnelStatus
    message: str | None = None


class AddressEvent(TunnelEvent, tag="address", kw_only=True):
    address: str
    previous: str | None
    reason: str
    at: float


class MtuEvent(TunnelEvent, tag="mtu", kw_only=True):
    mtu: int
    previous: int | None = None
    reason: str


class TrafficEvent(TunnelEvent, tag="traffic", kw_only=True):
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_rate: float
    tx_rate: float
    rtt_ms: float | None = None


class RemovedEvent(TunnelEvent, tag="removed", kw_only=True):
    pass


Event = StateEvent | AddressEvent | MtuEvent | TrafficEvent | RemovedEvent
EVENT_TYPES = frozenset({"state", "address", "mtu", "traffic", "removed"})


class StatusResult(msgspec.Struct, kw_only=True):
    tunnels: list[TunnelStatus]
    access: Literal["read-write", "read-only"]


# --- errors ---

# Our own codes for failures that never reached the helper (JSON-RPC leaves positive codes free).
NOT_CONNECTED = 1  # the helper was not reachable when the call was made
CONNECTION_LOST = 2  # the helper went away before answering
TIMED_OUT = 3  # no answer in time
BAD_REPLY = 4  # an answer that does not follow the API


class CallError(Exception):
    """A call that failed: an error the helper returned (JSON-RPC code), or one of ours."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    @property
    def field(self) -> str | None:
        """For invalid params: which field (`profile.mtu`, `ports`, ...)."""
        return self.data.get("field") if isinstance(self.data, dict) else None

    @property
    def permission_denied(self) -> bool:
        return self.code == schema.PERMISSION_DENIED


class Reply(QObject):
    """One call in flight. Exactly one of `succeeded(result)` / `failed(CallError)` is emitted,
    always from the event loop (never inside `call()`), so connecting after `call()` is safe."""

    succeeded = Signal(object)
    failed = Signal(object)

    def __init__(self, method: str, params: dict[str, Any] | None, parent: QObject) -> None:
        super().__init__(parent)
        self.method = method
        self.params = params
        self.done = False
        self.result: Any = None
        self.error: CallError | None = None
        self._timer: QTimer | None = None

    def _succeed(self, result: Any) -> None:
        if not self.done:
            self.result = result
            self._settle(self.succeeded, result)

    def _fail(self, error: CallError) -> None:
        if not self.done:
            self.error = error
            self._settle(self.failed, error)

    def _settle(self, outcome: SignalInstance, value: object) -> None:
        """The one way a call ends, whichever comes first (answer, error, timeout, lost link):
        later outcomes find it done and are ignored."""
        self.done = True
        if self._timer is not None:
            self._timer.stop()
        outcome.emit(value)
        self.deleteLater()


# --- the link ---


class Link(StrEnum):
    """How the app stands with the helper."""

    CONNECTING = "connecting"  # first attempt in progress
    ONLINE = "online"  # subscribed: the state shown is the helper's
    NOT_RUNNING = "not_running"  # no socket, or nobody behind it
    DENIED = "denied"  # the socket refuses us (not in the helper's group)
    LOST = "lost"  # it was online and went away (stopped or restarting): retrying


class HelperConnection(QObject):
    linkChanged = Signal(object)  # Link
    # the full state, on every (re)subscription; `restarted` tells the helper came back
    subscribed = Signal(object, bool)  # StatusResult, restarted
    eventReceived = Signal(object)  # one of the Event records
    malformed = Signal(str)  # the reason a line was dropped
    apiMismatch = Signal(int)  # the helper's API version when it is not ours

    def __init__(self, path: str, parent: QObject | None = None, *,
                 backoff: tuple[float, float] = (0.25, 8.0), call_timeout: float = 30.0,
                 restart_grace: float = 10.0) -> None:
        super().__init__(parent)
        self.path = path
        self.call_timeout = call_timeout
        self.malformed_counts: Counter[str] = Counter()
        self.link = Link.CONNECTING
        self.access: str | None = None
        self._min_delay, self._max_delay = backoff
        self._delay = self._min_delay
        self._restart_grace = restart_grace
        self._lost_at: float | None = None
        self._was_online = False
        self._running = False
        self._phase: Literal["idle", "connecting", "open"] = "idle"
        self._buffer = bytearray()
        self._discarding = False  # inside a line that went over MAX_LINE_BYTES
        self._next_id = 1
        self._pending: dict[int, Reply] = {}

        self._retry = QTimer(self)
        self._retry.setSingleShot(True)
        self._retry.timeout.connect(self._attempt)
        self._socket: QLocalSocket | None = None
        self._watcher: QFileSystemWatcher | None = None

    # --- lifecycle ---

    def start(self) -> None:
        self._running = True
        self._watch_directory()
        self._attempt()

    def stop(self) -> None:
        self._running = False
        self._retry.stop()
        self._close_socket()
        self._fail_pending(CallError(CONNECTION_LOST, "the app stopped talking to the helper"))

    @property
    def online(self) -> bool:
        return self.link is Link.ONLINE

    def _watch_directory(self) -> None:
        """Reconnect as soon as the helper creates its socket, instead of waiting for the next
        back-off step (inotify through Qt; no polling)."""
        directory = os.path.dirname(self.path) or "."
        if self._watcher is None and os.path.isdir(directory):
            self._watcher = QFileSystemWatcher([directory], self)
            self._watcher.directoryChanged.connect(self._directory_changed)

    def _directory_changed(self, _path: str) -> None:
        if self._running and self._phase == "idle" and os.path.exists(self.path):
            self._retry.stop()
            self._attempt()

    def _attempt(self) -> None:
        if not self._running or self._phase != "idle":
            return
        self._close_socket()
        sock = QLocalSocket(self)
        self._socket = sock
        self._phase = "connecting"
        sock.connected.connect(self._on_connected)
        sock.disconnected.connect(self._on_disconnected)
        sock.errorOccurred.connect(self._on_error)
        sock.readyRead.connect(self._on_ready_read)
        sock.connectToServer(self.path)  # may report an error before it returns

    def _close_socket(self) -> None:
        """Detach the socket and let Qt delete it (its destructor closes the connection).
        Never abort() here: this runs inside the socket's own signals, even inside
        connectToServer() when it reports an error at once, and Qt goes on using the socket
        after the signal returns."""
        sock, self._socket = self._socket, None
        self._phase = "idle"
        if sock is not None:
            sock.connected.disconnect(self._on_connected)
            sock.disconnected.disconnect(self._on_disconnected)
            sock.errorOccurred.disconnect(self._on_error)
            sock.readyRead.disconnect(self._on_ready_read)
            sock.deleteLater()
        self._buffer.clear()
        self._discarding = False

    def _set_link(self, link: Link) -> None:
        if link is not self.link:
            self.link = link
            self.linkChanged.emit(link)

    def _schedule_retry(self) -> None:
        if not self._running:
            return
        self._retry.start(int(self._delay * 1000))
        self._delay = min(self._delay * 2, self._max_delay)

    def _on_connected(self) -> None:
        self._phase = "open"
        version = self.call("version")
        version.succeeded.connect(self._check_version)
        reply = self.call("subscribe")
        reply.succeeded.connect(self._on_subscribed)
        reply.failed.connect(self._on_subscribe_failed)

    def _check_version(self, result: Any) -> None:
        api = result.get("api") if isinstance(result, dict) else None
        if isinstance(api, int) and api != schema.API_VERSION:
            log.warning("helper speaks control API %s, this app %s", api, schema.API_VERSION)
            self.apiMismatch.emit(api)

    def _on_subscribed(self, result: Any) -> None:
        try:
            status = msgspec.convert(result, StatusResult)
        except msgspec.ValidationError as exc:
            self._count_malformed("bad_result", f"subscribe: {exc}")
            self._close_socket()
            self._schedule_retry()
            return
        restarted = self._was_online
        self._was_online = True
        self._lost_at = None
        self._delay = self._min_delay
        self.access = status.access
        self._set_link(Link.ONLINE)
        self.subscribed.emit(status, restarted)

    def _on_subscribe_failed(self, error: CallError) -> None:
        if self._phase != "open":
            return  # the connection went away: _on_disconnected takes care
        log.debug("subscribe failed: %s", error)
        self._set_link(Link.DENIED if error.permission_denied else Link.NOT_RUNNING)
        self._close_socket()
        self._schedule_retry()

    def _on_error(self, error: QLocalSocket.LocalSocketError) -> None:
        if self._phase != "connecting":
            return  # errors on an open link end in `disconnected`
        log.debug("connecting to %s: %s", self.path, error)
        self._close_socket()
        if error == QLocalSocket.LocalSocketError.SocketAccessError:
            link = Link.DENIED
        elif self._lost_at is not None and time.monotonic() - self._lost_at < self._restart_grace:
            link = Link.LOST  # give a restarting helper a moment before calling it not running
        else:
            link = Link.NOT_RUNNING
        self._set_link(link)
        self._watch_directory()
        self._schedule_retry()

    def _on_disconnected(self) -> None:
        if self._phase == "idle":
            return
        was_subscribed = self.link is Link.ONLINE
        self._close_socket()
        self._fail_pending(CallError(CONNECTION_LOST, "the helper went away before answering"))
        if was_subscribed:
            self._lost_at = time.monotonic()
            self._delay = self._min_delay
            self._set_link(Link.LOST)
        self._schedule_retry()

    def _fail_pending(self, error: CallError) -> None:
        pending, self._pending = self._pending, {}
        for reply in pending.values():
            reply._fail(error)

    # --- calls ---

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float | None = None) -> Reply:
        reply = Reply(method, params, self)
        if self._phase != "open" or self._socket is None:
            error = CallError(NOT_CONNECTED, "the helper is not running" if self.link in
                              (Link.NOT_RUNNING, Link.LOST) else "not connected to the helper")
            QTimer.singleShot(0, reply, lambda: reply._fail(error))
            return reply
        request_id = self._next_id
        self._next_id += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = params
        self._pending[request_id] = reply
        timer = QTimer(reply)
        timer.setSingleShot(True)
        timer.timeout.connect(lambda: self._time_out(request_id))
        timer.start(int((timeout or self.call_timeout) * 1000))
        reply._timer = timer
        self._socket.write(_encoder.encode(request) + b"\n")
        return reply

    def _time_out(self, request_id: int) -> None:
        reply = self._pending.pop(request_id, None)
        if reply is not None:
            reply._fail(CallError(TIMED_OUT, f"the helper did not answer {reply.method!r} in time"))

    # --- reading ---

    def _on_ready_read(self) -> None:
        sock = self._socket
        if sock is None:
            return
        self._buffer += sock.readAll().data()
        while self._socket is sock:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > schema.MAX_LINE_BYTES:
                    if not self._discarding:
                        self._count_malformed("oversize_line", f"{len(self._buffer)} bytes")
                    self._discarding = True
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if self._discarding:
                self._discarding = False  # the end of the oversize line
                continue
            if len(line) > schema.MAX_LINE_BYTES:
                self._count_malformed("oversize_line", f"{len(line)} bytes")
                continue
            if line.strip():
                self._handle_line(line)

    def _count_malformed(self, reason: str, detail: str) -> None:
        self.malformed_counts[reason] += 1
        log.debug("dropped a message from the helper (%s): %.200s", reason, detail)
        self.malformed.emit(reason)

    def _handle_line(self, line: bytes) -> None:
        try:
            message = msgspec.json.decode(line)
        except msgspec.DecodeError:
            self._count_malformed("not_json", repr(line))
            return
        if not isinstance(message, dict):
            self._count_malformed("not_object", repr(line))
            return
        if message.get("jsonrpc") != "2.0":
            self._count_malformed("bad_version", repr(line))
            return
        if "result" in message or "error" in message:
            self._handle_reply(message, line)
        elif message.get("method") == "event":
            self._handle_event(message.get("params"), line)
        else:
            self._count_malformed("unexpected_message", repr(line))

    def _handle_reply(self, message: dict[str, Any], line: bytes) -> None:
        request_id = message.get("id")
        if request_id is None:
            # The helper could not read one of our lines; nothing is waiting for it by id.
            self._count_malformed("error_without_id", repr(line))
            return
        reply = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if reply is None:
            self._count_malformed("unknown_id", repr(line))
            return
        if "error" in message:
            error = message["error"]
            if not (isinstance(error, dict) and isinstance(error.get("code"), int)):
                self._count_malformed("bad_error", repr(line))
                reply._fail(CallError(BAD_REPLY, "the helper sent an unreadable error"))
                return
            reply._fail(CallError(error["code"], str(error.get("message", "error")),
                                  error.get("data")))
        else:
            reply._succeed(message["result"])

    def _handle_event(self, params: Any, line: bytes) -> None:
        kind = params.get("type") if isinstance(params, dict) else None
        if kind not in EVENT_TYPES:
            if isinstance(kind, str):
                # A newer helper's event: not an error, just nothing this app knows to show.
                self.malformed_counts["unknown_event"] += 1
                log.debug("ignoring unknown event type %r", kind)
            else:
                self._count_malformed("bad_event", repr(line))
            return
        try:
            event = msgspec.convert(params, Event)
        except msgspec.ValidationError as exc:
            self._count_malformed("bad_event", f"{exc}: {line!r}")
            return
        self.eventReceived.emit(event)
