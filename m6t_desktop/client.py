"""The app's link to m6t-helper: JSON-RPC 2.0 lines over a QLocalSocket, on Qt's event loop.

Nothing here blocks: the socket is read when Qt says it is readable, replies arrive as signals
of a `Reply` (results as their method's record, failures as a `ControlError`), events as the
contract's records (`schema.StateEvent`, ...). Framing and decoding are `m6t.control.wire`'s,
shared with the helper and the CLI. On every connection
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

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer, Signal, SignalInstance
from PySide6.QtNetwork import QLocalSocket

from m6t.control import schema, wire
from m6t.control.errors import (
    BadReply,
    ConnectionLost,
    ControlError,
    HelperNotRunning,
    PermissionDenied,
    TimedOut,
)
from m6t.control.schema import StatusResult, VersionResult

log = logging.getLogger(__name__)


class Reply(QObject):
    """One call in flight. Exactly one of `succeeded(result)` / `failed(ControlError)` is emitted,
    always from the event loop (never inside `call()`), so connecting after `call()` is safe."""

    succeeded = Signal(object)
    failed = Signal(object)

    def __init__(self, method: str, params: dict[str, Any] | None, parent: QObject) -> None:
        super().__init__(parent)
        self.method = method
        self.params = params
        self.done = False
        self.result: Any = None
        self.error: ControlError | None = None
        self._timer: QTimer | None = None

    def _succeed(self, result: Any) -> None:
        if not self.done:
            self.result = result
            self._settle(self.succeeded, result)

    def _fail(self, error: ControlError) -> None:
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
        self._framer = wire.LineFramer()
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
        self._fail_pending(ConnectionLost("the app stopped talking to the helper"))

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
        self._framer.clear()

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

    def _check_version(self, result: VersionResult) -> None:
        if result.api != schema.API_VERSION:
            log.warning("helper speaks control API %s, this app %s", result.api,
                        schema.API_VERSION)
            self.apiMismatch.emit(result.api)

    def _on_subscribed(self, status: StatusResult) -> None:
        restarted = self._was_online
        self._was_online = True
        self._lost_at = None
        self._delay = self._min_delay
        self.access = status.access
        self._set_link(Link.ONLINE)
        self.subscribed.emit(status, restarted)

    def _on_subscribe_failed(self, error: ControlError) -> None:
        if self._phase != "open":
            return  # the connection went away: _on_disconnected takes care
        log.debug("subscribe failed: %s", error)
        if isinstance(error, BadReply):
            self._count_malformed("bad_result", f"subscribe: {error}")
            self._close_socket()
            self._schedule_retry()
            return
        self._set_link(Link.DENIED if isinstance(error, PermissionDenied) else Link.NOT_RUNNING)
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
        self._fail_pending(ConnectionLost("the helper went away before answering"))
        if was_subscribed:
            self._lost_at = time.monotonic()
            self._delay = self._min_delay
            self._set_link(Link.LOST)
        self._schedule_retry()

    def _fail_pending(self, error: ControlError) -> None:
        pending, self._pending = self._pending, {}
        for reply in pending.values():
            reply._fail(error)

    # --- calls ---

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float | None = None) -> Reply:
        """Call `method`; the Reply's result is the method's record (schema.METHODS)."""
        reply = Reply(method, params, self)
        if self._phase != "open" or self._socket is None:
            error = HelperNotRunning("the helper is not running" if self.link in
                                     (Link.NOT_RUNNING, Link.LOST)
                                     else "not connected to the helper")
            QTimer.singleShot(0, reply, lambda: reply._fail(error))
            return reply
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = reply
        timer = QTimer(reply)
        timer.setSingleShot(True)
        timer.timeout.connect(lambda: self._time_out(request_id))
        timer.start(int((timeout or self.call_timeout) * 1000))
        reply._timer = timer
        self._socket.write(wire.encode_request(request_id, method, params))
        return reply

    def _time_out(self, request_id: int) -> None:
        reply = self._pending.pop(request_id, None)
        if reply is not None:
            reply._fail(TimedOut(f"the helper did not answer {reply.method!r} in time"))

    # --- reading ---

    def _on_ready_read(self) -> None:
        sock = self._socket
        if sock is None:
            return
        for line in self._framer.feed(sock.readAll().data()):
            if self._socket is not sock:
                return  # a line closed the link (a bad subscribe answer)
            if isinstance(line, wire.Oversize):
                self._count_malformed(wire.Malformed.OVERSIZE_LINE, f"{line.length} bytes")
            else:
                self._handle(wire.decode_incoming(line), line)

    def _count_malformed(self, reason: str, detail: str) -> None:
        self.malformed_counts[reason] += 1
        log.debug("dropped a message from the helper (%s): %.200s", reason, detail)
        self.malformed.emit(reason)

    def _handle(self, incoming: wire.Incoming, line: bytes) -> None:
        if isinstance(incoming, wire.Dropped):
            if incoming.reason is wire.Malformed.UNKNOWN_EVENT:
                # A newer helper's event: not an error, just nothing this app knows to show.
                self.malformed_counts[incoming.reason] += 1
                log.debug("ignoring an unknown event: %.200s", incoming.detail)
            else:
                self._count_malformed(incoming.reason, incoming.detail)
        elif isinstance(incoming, wire.Reply):
            reply = (self._pending.pop(incoming.id, None)
                     if isinstance(incoming.id, int) else None)
            if reply is None:
                self._count_malformed("unknown_id", repr(line))
            elif incoming.error is not None:
                if isinstance(incoming.error, BadReply):
                    self._count_malformed("bad_error", repr(line))
                reply._fail(incoming.error)
            else:
                try:
                    reply._succeed(wire.decode_result(reply.method, incoming.result))
                except ControlError as exc:
                    reply._fail(exc)
        else:
            self.eventReceived.emit(incoming)
