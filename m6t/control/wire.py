"""The control API on the wire (sans-I/O): JSON-RPC 2.0 envelopes, one JSON object per line.

`LineFramer` cuts a byte stream into lines and bounds them; the helper's server, the blocking
client and the desktop app's Qt client all feed it what they read. `decode_request` is the
server's reading of a line, `decode_incoming` the clients'; both name what is wrong with a line
instead of raising something unexpected. Nothing here reads a socket.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from m6t.control.errors import (
    BadReply,
    ControlError,
    ErrorData,
    InvalidParams,
    InvalidRequest,
    ParseError,
)
from m6t.control.schema import EVENT_TYPES, MAX_LINE_BYTES, METHODS, Event

_encoder = msgspec.json.Encoder()


# --- framing ---


@dataclass(frozen=True)
class Oversize:
    """A line longer than the limit: its bytes are discarded up to the next newline."""

    length: int


class LineFramer:
    """Bytes in, complete lines out. A line over `limit` comes out once as `Oversize`, and the
    rest of it is skipped; what each side then does (disconnect, count and go on) is its own
    policy."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._discarding = False  # inside a line that went over the limit

    @property
    def partial(self) -> bool:
        """True while a line has started and not ended (for a timeout on half-sent lines)."""
        return bool(self._buffer) or self._discarding

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | Oversize]:
        self._buffer += data
        out: list[bytes | Oversize] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.limit:
                    if not self._discarding:
                        out.append(Oversize(len(self._buffer)))
                    self._discarding = True
                    self._buffer.clear()
                return out
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if self._discarding:
                self._discarding = False  # the end of the oversize line
                continue
            if len(line) > self.limit:
                out.append(Oversize(len(line)))
            elif line.strip():
                out.append(line)

    def clear(self) -> None:
        self._buffer.clear()
        self._discarding = False


# --- encoding ---


def _line(message: dict[str, Any]) -> bytes:
    return _encoder.encode(message) + b"\n"


def encode_request(request_id: int | str | None, method: str, params: Any = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if request_id is None:
        del message["id"]
    if params is not None:
        message["params"] = msgspec.to_builtins(params)
    return _line(message)


def encode_result(request_id: int | str, result: Any) -> bytes:
    return _line({"jsonrpc": "2.0", "id": request_id, "result": msgspec.to_builtins(result)})


def encode_error(request_id: int | str | None, error: ControlError) -> bytes:
    return _line({"jsonrpc": "2.0", "id": request_id, "error": error.to_wire()})


def encode_event(event: Event) -> bytes:
    return _line({"jsonrpc": "2.0", "method": "event", "params": msgspec.to_builtins(event)})


# --- the server's side ---


class Request(msgspec.Struct, forbid_unknown_fields=True):
    jsonrpc: Literal["2.0"]
    method: str
    id: int | str | None = None
    params: dict[str, Any] | list[Any] | None = None


class UnreadableRequest(Exception):
    """A line that is not a request; `request_id` is the id to answer, when one could be read."""

    def __init__(self, error: ControlError, request_id: int | str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


def decode_request(line: bytes) -> Request:
    try:
        raw = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise UnreadableRequest(ParseError(f"not JSON: {exc}"), None) from None
    except RecursionError:  # msgspec's own limit on nesting, a RecursionError
        raise UnreadableRequest(ParseError("not JSON: nested too deeply"), None) from None
    request_id: int | str | None = None
    if isinstance(raw, dict):
        candidate = raw.get("id")
        if isinstance(candidate, int | str) and not isinstance(candidate, bool):
            request_id = candidate
    try:
        return msgspec.convert(raw, Request)
    except msgspec.ValidationError as exc:
        raise UnreadableRequest(InvalidRequest(f"not a JSON-RPC 2.0 request: {exc}"),
                                request_id) from None


def decode_params(method: str, params: Any) -> msgspec.Struct:
    """A method's params as its record (METHODS); InvalidParams names the field."""
    try:
        return msgspec.convert(params if params is not None else {}, METHODS[method].params)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rpartition("`$.")[2].rstrip("`") if "`$." in text else None
        raise InvalidParams(f"invalid params: {text}", ErrorData(field=path)) from None


# --- the clients' side ---


class Malformed(enum.StrEnum):
    """Why a client dropped a line from the helper (counted by name, never fatal)."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_VERSION = "bad_version"
    UNEXPECTED_MESSAGE = "unexpected_message"
    ERROR_WITHOUT_ID = "error_without_id"
    BAD_EVENT = "bad_event"
    UNKNOWN_EVENT = "unknown_event"  # a newer helper's event type: not an error, just unknown
    OVERSIZE_LINE = "oversize_line"


@dataclass(frozen=True)
class Reply:
    """An answer to request `id`: `result`, or `error` (already the exception to raise)."""

    id: Any
    result: Any = None
    error: ControlError | None = None


@dataclass(frozen=True)
class Dropped:
    reason: Malformed
    detail: str


Incoming = Reply | Event | Dropped


def decode_incoming(line: bytes) -> Incoming:
    """What a line from the helper is: a reply, an event record, or a named reason to drop it."""
    try:
        message = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):  # nesting beyond msgspec's limit is the latter
        return Dropped(Malformed.NOT_JSON, repr(line[:200]))
    if not isinstance(message, dict):
        return Dropped(Malformed.NOT_OBJECT, repr(line[:200]))
    if message.get("jsonrpc") != "2.0":
        return Dropped(Malformed.BAD_VERSION, repr(line[:200]))
    if "result" in message or "error" in message:
        request_id = message.get("id")
        if request_id is None:
            # The helper could not read one of our lines; nothing is waiting for it by id.
            return Dropped(Malformed.ERROR_WITHOUT_ID, repr(line[:200]))
        if "error" in message:
            return Reply(request_id, error=ControlError.from_wire(message["error"]))
        return Reply(request_id, result=message["result"])
    if message.get("method") == "event":
        return decode_event(message.get("params"), line)
    return Dropped(Malformed.UNEXPECTED_MESSAGE, repr(line[:200]))


def decode_event(params: Any, line: bytes = b"") -> Event | Dropped:
    kind = params.get("type") if isinstance(params, dict) else None
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        reason = Malformed.UNKNOWN_EVENT if isinstance(kind, str) else Malformed.BAD_EVENT
        return Dropped(reason, repr(line[:200]))
    try:
        event: Event = msgspec.convert(params, EVENT_TYPES[kind])  # type: ignore[assignment]
    except msgspec.ValidationError as exc:
        return Dropped(Malformed.BAD_EVENT, f"{exc}: {line[:200]!r}")
    return event


def decode_result(method: str, result: Any) -> Any:
    """A reply's result as its method's record; one that does not fit is a BadReply."""
    spec = METHODS.get(method)
    if spec is None:  # we asked for a method the API does not have, and got an answer
        raise BadReply(f"the helper answered {method!r}, which the API does not have")
    try:
        return msgspec.convert(result, spec.result)
    except msgspec.ValidationError as exc:
        raise BadReply(f"the helper's answer to {method!r} does not fit the API: {exc}") \
            from None
