"""One m6t-desktop per user and session: the first launch listens on a local socket (a
QLocalServer named after the uid, the runtime directory and the display); a later launch asks it
to show its status window, instead of adding a second tray icon, and exits.

The protocol is one line each way: the new launch sends ``show``, the running one answers ``ok``
and shows the window. A login autostart sends ``ping`` instead: ``ok``, and nothing is shown
(the app is already there; a window popping up at login would only be in the way). Anything
else on the socket is dropped with a named reason and counted; a peer gets a few bytes and a
couple of seconds at most, so it can neither crash nor hold up the running app."""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtNetwork import QAbstractSocket, QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

SHOW_REQUEST = b"show"
PING_REQUEST = b"ping"  # is one running? (shows nothing)
OK_ANSWER = b"ok"  # to either request
MAX_LINE = 64  # bytes: a request or an answer is one short line
MAX_PEERS = 4  # connections at once; more are turned away
REQUEST_TIMEOUT_MS = 2000  # a peer that sends no full line is dropped after this
CONNECT_TIMEOUT_MS = 1000
ANSWER_TIMEOUT_MS = 3000  # the running instance may still be starting up
SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less its terminating NUL


class HandOver(enum.Enum):
    """What a launch found when it asked for a running instance."""

    SHOWN = "shown"  # one answered and shows its window: this launch exits
    RUNNING = "running"  # one answered a ping (autostart): this launch exits, nothing shown
    NO_INSTANCE = "no_instance"  # nothing there: this launch is the first
    STALE = "stale"  # a socket left by an instance that died (SIGKILL, crash)
    NO_ANSWER = "no_answer"  # something listens but did not answer in time (stopped, hung)


def server_name(platform: str, environ: Mapping[str, str] = os.environ,
                uid: int | None = None) -> str:
    """Per user and session: an app on another display (another login, the screenshots' Xvfb,
    offscreen tests) is another instance. A path in XDG_RUNTIME_DIR (the user's own 0700
    directory) when there is one and the path fits a Unix socket address; else a bare name,
    which Qt puts in /tmp, where the uid keeps users apart."""
    uid = os.getuid() if uid is None else uid
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    session = "\n".join((runtime, platform, environ.get("DISPLAY", ""),
                         environ.get("WAYLAND_DISPLAY", "")))
    name = f"m6t-desktop-{uid}-{hashlib.sha256(session.encode()).hexdigest()[:12]}"
    if os.path.isabs(runtime):
        path = os.path.join(runtime, name)
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            return path
    return name


def ask_running_instance(name: str, *, show: bool = True,
                         connect_timeout_ms: int = CONNECT_TIMEOUT_MS,
                         answer_timeout_ms: int = ANSWER_TIMEOUT_MS) -> HandOver:
    """Blocking: it runs before the event loop does, and a second launch has nothing else to
    do. Only an ``ok`` counts as an answer; a listener that stays silent is not taken for dead.
    With `show` false it only asks whether one is running (``ping``)."""
    peer = QLocalSocket()
    peer.connectToServer(name)
    if not peer.waitForConnected(connect_timeout_ms):
        error = peer.error()
        if error == QLocalSocket.LocalSocketError.ConnectionRefusedError:
            return HandOver.STALE
        if error == QLocalSocket.LocalSocketError.SocketTimeoutError:
            return HandOver.NO_ANSWER
        return HandOver.NO_INSTANCE
    peer.write((SHOW_REQUEST if show else PING_REQUEST) + b"\n")
    peer.waitForBytesWritten(connect_timeout_ms)
    answer = b""
    deadline = time.monotonic() + answer_timeout_ms / 1000
    while b"\n" not in answer and len(answer) < MAX_LINE:
        left = int((deadline - time.monotonic()) * 1000)
        if left <= 0 or not peer.waitForReadyRead(left):
            break
        answer += peer.read(MAX_LINE).data()
    peer.abort()
    line, newline, _ = answer.partition(b"\n")
    if not (newline and line == OK_ANSWER):
        return HandOver.NO_ANSWER
    return HandOver.SHOWN if show else HandOver.RUNNING


class InstanceServer(QObject):
    """The first instance's end: answers ``show`` and ``ping`` from later launches."""

    showRequested = Signal()
    dropped = Signal(str)  # the reason a connection was dropped

    def __init__(self, server: QLocalServer, parent: QObject | None = None, *,
                 request_timeout_ms: int = REQUEST_TIMEOUT_MS) -> None:
        super().__init__(parent)
        self.server = server
        server.setParent(self)
        self.request_timeout_ms = request_timeout_ms
        self.dropped_counts: Counter[str] = Counter()
        self._pending: dict[QLocalSocket, bytes] = {}  # peers yet to send a full line
        server.newConnection.connect(self._accept)

    @property
    def name(self) -> str:
        return self.server.fullServerName()

    def close(self) -> None:
        """Stop listening and remove the socket file, so the next launch finds nothing."""
        for peer in list(self._pending):
            self._forget(peer)
            peer.abort()
        self.server.close()

    def _accept(self) -> None:
        while self.server.hasPendingConnections():
            peer = self.server.nextPendingConnection()
            if len(self._pending) >= MAX_PEERS:
                self._drop(peer, "too_many_peers")
                continue
            self._pending[peer] = b""
            peer.setReadBufferSize(MAX_LINE)  # Qt itself buffers no more than a line
            peer.readyRead.connect(lambda p=peer: self._read(p))
            peer.disconnected.connect(lambda p=peer: self._disconnected(p))
            QTimer.singleShot(self.request_timeout_ms, peer, lambda p=peer: self._timed_out(p))
            self._read(peer)  # it may have written before we accepted it

    def _read(self, peer: QLocalSocket) -> None:
        if peer not in self._pending:
            return
        data = self._pending[peer] + peer.read(MAX_LINE).data()
        line, newline, _ = data.partition(b"\n")
        if not newline:
            if len(data) >= MAX_LINE:
                self._drop(peer, "too_long")
            else:
                self._pending[peer] = data
            return
        if line not in (SHOW_REQUEST, PING_REQUEST):
            self._drop(peer, "unknown_request")
            return
        self._forget(peer)
        peer.write(OK_ANSWER + b"\n")
        peer.disconnectFromServer()  # once the answer is written
        if line == PING_REQUEST:
            log.info("another launch found this one running (nothing to show)")
            return
        log.info("another launch asked for the status window")
        self.showRequested.emit()

    def _timed_out(self, peer: QLocalSocket) -> None:
        if peer in self._pending:
            self._drop(peer, "timeout")

    def _disconnected(self, peer: QLocalSocket) -> None:
        if peer in self._pending:
            self._drop(peer, "no_request")
        peer.deleteLater()

    def _drop(self, peer: QLocalSocket, reason: str) -> None:
        self._forget(peer)
        self.dropped_counts[reason] += 1
        log.debug("dropped a connection on %s (%s)", self.name, reason)
        self.dropped.emit(reason)
        peer.abort()
        peer.deleteLater()

    def _forget(self, peer: QLocalSocket) -> None:
        self._pending.pop(peer, None)


@dataclass
class Claim:
    hand_over: HandOver  # what asking for a running instance found
    server: InstanceServer | None = None  # listening: this launch is the first


def claim(name: str, *, show: bool = True) -> Claim:
    """Hand over to a running instance (asking it to show its window, unless `show` is false),
    or become the one that later launches hand over to.
    A socket left by a killed instance refuses connections: it is removed and taken over. Of
    two launches at once, both may find nothing; the one that then cannot listen (the name is
    taken) asks again and hands over. If listening fails otherwise, the app runs unguarded."""
    found = HandOver.NO_INSTANCE
    server = QLocalServer()
    server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
    for _attempt in range(2):
        found = ask_running_instance(name, show=show)
        if found in (HandOver.SHOWN, HandOver.RUNNING, HandOver.NO_ANSWER):
            return Claim(found)
        if found is HandOver.STALE:
            log.info("removing %s, left by an instance that is gone", name)
            QLocalServer.removeServer(name)
        if server.listen(name):
            return Claim(found, InstanceServer(server))
        if server.serverError() != QAbstractSocket.SocketError.AddressInUseError:
            break
    log.warning("cannot listen on %s (%s): another launch would start a second app", name,
                server.errorString())
    return Claim(found)
