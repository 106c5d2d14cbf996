"""A blocking client of the helper's control API: typed records in, typed records out.

Used by the `m6t` CLI, the lab and tests; the desktop app speaks the same protocol through Qt's
event loop instead (m6t_desktop/client.py). Both frame and decode with `m6t.control.wire`.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

from m6t.control import wire
from m6t.control.errors import (
    BadReply,
    ConnectionLost,
    ControlError,
    ErrorData,
    HelperNotRunning,
    PermissionDenied,
    TimedOut,
)
from m6t.control.schema import DEFAULT_SOCKET, Event

DEFAULT_GROUP = "m6t"


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("M6T_SOCKET") or DEFAULT_SOCKET


class HelperClient:
    def __init__(self, path: str | None = None, timeout: float = 30.0) -> None:
        self.path = socket_path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        where = ErrorData(socket=self.path)
        try:
            self._sock.connect(self.path)
        except FileNotFoundError:
            self._sock.close()
            raise HelperNotRunning(f"no socket at {self.path}", where) from None
        except ConnectionRefusedError:
            self._sock.close()
            raise HelperNotRunning(f"stale socket {self.path}", where) from None
        except PermissionError:
            self._sock.close()
            raise PermissionDenied(f"permission denied on {self.path}",
                                   ErrorData(socket=self.path, group=DEFAULT_GROUP)) from None
        except OSError as exc:
            self._sock.close()
            if exc.errno in (errno.ENOTSOCK, errno.ENOTDIR, errno.ECONNREFUSED):
                raise BadReply(f"{self.path} is not a helper socket", where) from None
            raise
        self._framer = wire.LineFramer()
        self._lines: deque[bytes | wire.Oversize] = deque()
        self._ids = itertools.count(1)
        self._pending_events: deque[Event] = deque()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> HelperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lost(self) -> ConnectionLost:
        return ConnectionLost("the helper closed the connection (was it stopped or restarted?)",
                              ErrorData(socket=self.path))

    def _next(self) -> wire.Incoming:
        while not self._lines:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise TimedOut("the helper did not answer in time",
                               ErrorData(socket=self.path)) from None
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                raise self._lost()
            self._lines.extend(self._framer.feed(chunk))
        line = self._lines.popleft()
        if isinstance(line, wire.Oversize):
            raise BadReply(f"a line longer than {self._framer.limit} bytes",
                           ErrorData(socket=self.path))
        return wire.decode_incoming(line)

    def call(self, method: str, **params: Any) -> Any:
        """Call `method` and return its result record (schema.METHODS); a helper error raises
        its ControlError subclass."""
        request_id = next(self._ids)
        try:
            self._sock.sendall(wire.encode_request(request_id, method, params or None))
        except (ConnectionResetError, BrokenPipeError):
            raise self._lost() from None
        while True:
            incoming = self._next()
            if isinstance(incoming, wire.Dropped):
                self._check(incoming)
                continue
            if isinstance(incoming, wire.Reply):
                if incoming.id != request_id:
                    continue
                if incoming.error is not None:
                    raise incoming.error
                return wire.decode_result(method, incoming.result)
            self._pending_events.append(incoming)

    def events(self) -> Iterator[Event]:
        """After `call("subscribe")`: every event as it arrives (blocks). A line that is not the
        API raises BadReply, so that a reader learns something is wrong; an event of a type
        this client does not know (a newer helper's) is skipped."""
        while self._pending_events:
            yield self._pending_events.popleft()
        self._sock.settimeout(None)
        while True:
            incoming = self._next()
            if isinstance(incoming, wire.Dropped):
                self._check(incoming)
            elif not isinstance(incoming, wire.Reply):  # nothing is waiting for a reply
                yield incoming

    def _check(self, dropped: wire.Dropped) -> None:
        if dropped.reason is not wire.Malformed.UNKNOWN_EVENT:
            raise BadReply(f"{dropped.reason}: {dropped.detail}", ErrorData(socket=self.path))


__all__ = ["ControlError", "HelperClient", "HelperNotRunning", "socket_path"]
