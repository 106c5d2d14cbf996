"""The control API's one error type: a code, a message for people, and typed `data` for programs.

The helper raises these; they travel as JSON-RPC error objects `{"code", "message", "data"?}`; the
clients get the same class back (`ControlError.from_wire`), picked by code. A client never reads
the message to decide anything: what it needs (the group to join, the field that was refused,
why the helper cannot do it now) is in `data`. Failures that never reached the helper (no
socket, a lost connection, no answer in time, a reply that is not the API) have positive codes of
our own, which JSON-RPC leaves free.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import msgspec

from m6t.protocol.session import Cause


class ErrorCode(enum.IntEnum):
    # JSON-RPC 2.0's own
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # the helper's (-32000 to -32099 are the server's to define)
    PERMISSION_DENIED = -32001
    NOT_FOUND = -32002
    CONFLICT = -32003
    UNAVAILABLE = -32004
    # the client's, for calls that never got an answer
    NOT_RUNNING = 1  # no helper behind the socket
    CONNECTION_LOST = 2  # it went away before answering
    TIMED_OUT = 3  # no answer in time
    BAD_REPLY = 4  # something that is not the control API came back


class ErrorData(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a program needs to act on an error; absent keys are omitted on the wire."""

    field: str | None = None  # INVALID_PARAMS: the refused field ("ports", "profile.mtu")
    group: str | None = None  # PERMISSION_DENIED: the group that may change things
    cause: Cause | None = None  # UNAVAILABLE: why not now (no_ipv4_network, resolve_failed...)
    tunnels: list[str] | None = None  # NOT_FOUND: the profiles that do have a tunnel
    socket: str | None = None  # client-side codes: the socket path that was tried


class ControlError(Exception):
    """An error of the control API. Subclasses exist per code so that callers can catch the
    ones they handle; `ControlError.from_wire` picks the subclass."""

    default_code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR
    _by_code: ClassVar[dict[int, type[ControlError]]] = {}

    def __init__(self, message: str, data: ErrorData | None = None, *,
                 code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(self.default_code if code is None else code)
        self.data = data if data is not None else ErrorData()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ControlError._by_code.setdefault(int(cls.default_code), cls)

    @property
    def field(self) -> str | None:
        return self.data.field

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        data = msgspec.to_builtins(self.data)
        if data:
            error["data"] = data
        return error

    @staticmethod
    def from_wire(error: Any) -> ControlError:
        """The exception for a JSON-RPC error object; an unreadable one is a BadReply."""
        if not isinstance(error, dict) or not isinstance(error.get("code"), int) \
                or isinstance(error.get("code"), bool):
            return BadReply("the helper sent an unreadable error")
        code = error["code"]
        message = str(error.get("message", "error"))
        raw = error.get("data")
        try:
            data = msgspec.convert(raw, ErrorData) if isinstance(raw, dict) else ErrorData()
        except msgspec.ValidationError:
            data = ErrorData()  # a newer helper's data: the code and message still stand
        cls = ControlError._by_code.get(code, ControlError)
        return cls(message, data, code=code)


class ParseError(ControlError):
    default_code = ErrorCode.PARSE_ERROR


class InvalidRequest(ControlError):
    default_code = ErrorCode.INVALID_REQUEST


class MethodNotFound(ControlError):
    default_code = ErrorCode.METHOD_NOT_FOUND


class InvalidParams(ControlError):
    default_code = ErrorCode.INVALID_PARAMS


class InternalError(ControlError):
    default_code = ErrorCode.INTERNAL_ERROR


class PermissionDenied(ControlError):
    default_code = ErrorCode.PERMISSION_DENIED


class NotFound(ControlError):
    default_code = ErrorCode.NOT_FOUND


class Conflict(ControlError):
    default_code = ErrorCode.CONFLICT


class Unavailable(ControlError):
    default_code = ErrorCode.UNAVAILABLE


class HelperNotRunning(ControlError):
    default_code = ErrorCode.NOT_RUNNING


class ConnectionLost(HelperNotRunning):
    default_code = ErrorCode.CONNECTION_LOST


class TimedOut(ControlError):
    default_code = ErrorCode.TIMED_OUT


class BadReply(ControlError):
    """The other end does not speak the control API (garbage, an oversize line, a reply that
    does not fit its method's record)."""

    default_code = ErrorCode.BAD_REPLY
