"""A blocking client of the helper's control API, with errors mapped to typed exceptions.

Used by the `m6t` CLI and by tests; the desktop app speaks the same protocol through Qt's own
event loop instead (m6t_desktop/client.py).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
from collections.abc import Iterator
from typing import Any

import msgspec

from m6t.control import schema

_encoder = msgspec.json.Encoder()


class HelperError(Exception):
    """An error the helper returned; `code` is the JSON-RPC code."""

    code = 0

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


class HelperNotRunning(HelperError):
    pass


class ProtocolError(HelperError):
    """The other end does not speak the control API (garbage, oversize line)."""


class PermissionDenied(HelperError):
    code = schema.PERMISSION_DENIED


class InvalidParams(HelperError):
    code = schema.INVALID_PARAMS


class NotFound(HelperError):
    code = schema.NOT_FOUND


class Unavailable(HelperError):
    code = schema.UNAVAILABLE


class Conflict(HelperError):
    code = schema.CONFLICT


_BY_CODE: dict[int, type[HelperError]] = {
    cls.code: cls for cls in (PermissionDenied, InvalidParams, NotFound, Unavailable, Conflict)
}


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("M6T_SOCKET") or schema.DEFAULT_SOCKET


class HelperClient:
    def __init__(self, path: str | None = None, timeout: float = 30.0) -> None:
        self.path = socket_path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except FileNotFoundError:
            self._sock.close()
            raise HelperNotRunning(f"helper not running: start m6t-helper (no socket at "
                                   f"{self.path})") from None
        except ConnectionRefusedError:
            self._sock.close()
            raise HelperNotRunning(f"helper not running: start m6t-helper (stale socket "
                                   f"{self.path})") from None
        except PermissionError:
            self._sock.close()
            raise PermissionDenied(f"permission denied on {self.path}: join group m6t "
                                   "(sudo usermod -aG m6t $USER, then log in again)") from None
        except OSError as exc:
            self._sock.close()
            if exc.errno in (errno.ENOTSOCK, errno.ENOTDIR):
                raise HelperNotRunning(f"{self.path} is not a helper socket") from None
            raise
        self._reader = self._sock.makefile("rb")
        self._ids = itertools.count(1)
        self._pending_events: list[dict[str, Any]] = []

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> HelperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_message(self) -> dict[str, Any]:
        try:
            line = self._reader.readline(schema.MAX_LINE_BYTES + 1)
        except (ConnectionResetError, BrokenPipeError):
            line = b""
        if not line:
            raise HelperNotRunning("the helper closed the connection (was it stopped or "
                                   "restarted?)")
        if not line.endswith(b"\n"):
            raise ProtocolError(f"a line longer than {schema.MAX_LINE_BYTES} bytes",
                                {"socket": self.path})
        try:
            message = msgspec.json.decode(line)
        except msgspec.DecodeError:
            raise ProtocolError(f"not JSON: {line[:80]!r}", {"socket": self.path}) from None
        if not isinstance(message, dict):
            raise ProtocolError(f"not a JSON object: {line[:80]!r}", {"socket": self.path})
        return message

    def call(self, method: str, **params: Any) -> Any:
        request_id = next(self._ids)
        request = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params:
            request["params"] = params
        try:
            self._sock.sendall(_encoder.encode(request) + b"\n")
        except (ConnectionResetError, BrokenPipeError):
            raise HelperNotRunning("the helper closed the connection (was it stopped or "
                                   "restarted?)") from None
        while True:
            message = self._read_message()
            if message.get("id") != request_id:
                if message.get("method") == "event":
                    self._pending_events.append(message.get("params") or {})
                continue
            if "error" in message:
                error = message["error"]
                cls = _BY_CODE.get(error.get("code"), HelperError)
                exc = cls(error.get("message", "error"), error.get("data"))
                exc.code = error.get("code", 0)
                raise exc
            return message.get("result")

    def events(self) -> Iterator[dict[str, Any]]:
        """After `call("subscribe")`: every event as it arrives (blocks)."""
        while self._pending_events:
            yield self._pending_events.pop(0)
        self._sock.settimeout(None)
        while True:
            message = self._read_message()
            if message.get("method") == "event":
                yield message.get("params") or {}
