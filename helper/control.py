"""The control API server: JSON-RPC 2.0, one object per line, on a Unix socket.

Small and suspicious: every connection is identified with SO_PEERCRED; root and members of the
helper's group may change things, others read (or nothing); every request is decoded into a
typed record and validated before anything touches netlink; every failure is a JSON-RPC error
or a closed connection, never a crash, and never reaches a running tunnel. Bounded: line size,
time to finish a line, connections, requests in flight, queued events per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from m6t.control import schema

log = logging.getLogger("m6t.helper")

MAX_CONNECTIONS = 64
MAX_IN_FLIGHT = 8  # requests per connection being served at once
PARTIAL_LINE_TIMEOUT = 10.0
MAX_QUEUED = 1000  # messages waiting for a slow reader before it is disconnected

_encoder = msgspec.json.Encoder()


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


@dataclass(eq=False)  # identity: connections live in a set
class Connection:
    peer: str
    uid: int
    can_write: bool
    writer: asyncio.StreamWriter
    outgoing: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUED))
    subscribed: bool = False
    closed: bool = False
    in_flight: int = 0

    def send(self, message: dict[str, Any]) -> None:
        self.send_line(_encoder.encode(message) + b"\n")

    def send_line(self, line: bytes) -> None:
        if self.closed:
            return
        try:
            self.outgoing.put_nowait(line)
        except asyncio.QueueFull:
            log.warning("control: %s does not read its messages; disconnecting", self.peer)
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


Handler = Callable[[Connection, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    handler: Handler
    params: type | None  # msgspec type the params decode into
    writes: bool


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end (SO_PEERCRED)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def in_group(uid: int, gid: int, group: str) -> bool:
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    if gid == entry.gr_gid:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return user.pw_name in entry.gr_mem or entry.gr_gid in os.getgrouplist(user.pw_name,
                                                                              user.pw_gid)


class ControlServer:
    def __init__(self, path: str, group: str, others: str,
                 methods: dict[str, Method]) -> None:
        self.path = path
        self.group = group
        self.others = others  # "read" or "none"
        self.methods = methods
        self.connections: set[Connection] = set()
        self.line_timeout = PARTIAL_LINE_TIMEOUT
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._claim_path()
        self._server = await asyncio.start_unix_server(self._serve, self.path,
                                                       limit=schema.MAX_LINE_BYTES * 2)
        self._set_permissions()

    def _claim_path(self) -> None:
        """Refuse to steal a live socket; replace a stale one left by a crash."""
        path = Path(self.path)
        if not path.parent.exists():
            path.parent.mkdir(mode=0o755, parents=True)
        if not path.exists() and not path.is_symlink():
            return
        if not path.is_socket():
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not touching it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("control: replacing stale socket %s", path)
            path.unlink(missing_ok=True)
            return
        except OSError:
            path.unlink(missing_ok=True)
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"another m6t-helper is running on {path}")

    def _set_permissions(self) -> None:
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            gid = None
        if self.others == "read":
            mode = 0o666  # anyone may connect; SO_PEERCRED decides what they may do
        else:
            mode = 0o660 if gid is not None else 0o600
        if gid is not None:
            os.chown(self.path, 0, gid)
        os.chmod(self.path, mode)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        Path(self.path).unlink(missing_ok=True)

    def broadcast(self, event: dict[str, Any]) -> None:
        subscribers = [c for c in self.connections if c.subscribed]
        if not subscribers:
            return
        line = _encoder.encode({"jsonrpc": "2.0", "method": "event", "params": event}) + b"\n"
        for connection in subscribers:
            connection.send_line(line)

    @property
    def has_subscribers(self) -> bool:
        return any(c.subscribed for c in self.connections)

    # --- a connection ---

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            writer.close()
            return
        can_write = uid == 0 or in_group(uid, gid, self.group)
        if (not can_write and self.others == "none") or len(self.connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        connection = Connection(f"pid {pid} uid {uid}", uid, can_write, writer)
        self.connections.add(connection)
        sender = asyncio.create_task(self._write_loop(connection))
        try:
            await self._read_loop(connection, reader)
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.discard(connection)
            connection.close()
            sender.cancel()

    async def _write_loop(self, connection: Connection) -> None:
        writer = connection.writer
        try:
            while True:
                line = await connection.outgoing.get()
                writer.write(line)
                await writer.drain()
        except (ConnectionError, OSError):
            connection.close()

    async def _read_loop(self, connection: Connection, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        partial_since: float | None = None
        while not connection.closed:
            timeout = None
            if partial_since is not None:
                timeout = max(0.0, partial_since + self.line_timeout - loop.time())
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                log.info("control: %s left a line unfinished; disconnecting", connection.peer)
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                end = buffer.find(b"\n")
                if end < 0:
                    break
                line = bytes(buffer[:end])
                del buffer[:end + 1]
                if len(line) > schema.MAX_LINE_BYTES:
                    self._too_long(connection)
                    return
                if line.strip():
                    self._dispatch(connection, line)
            if len(buffer) > schema.MAX_LINE_BYTES:
                self._too_long(connection)
                return
            partial_since = (partial_since or loop.time()) if buffer else None

    def _too_long(self, connection: Connection) -> None:
        # Written directly: the connection closes right after, and closing a transport still
        # flushes what it has buffered.
        connection.writer.write(_encoder.encode(_error(
            None, schema.INVALID_REQUEST,
            f"line longer than {schema.MAX_LINE_BYTES} bytes")) + b"\n")

    def _dispatch(self, connection: Connection, line: bytes) -> None:
        if connection.in_flight >= MAX_IN_FLIGHT:
            connection.send(_error(None, schema.INVALID_REQUEST,
                                   f"more than {MAX_IN_FLIGHT} requests in flight"))
            return
        connection.in_flight += 1
        task = asyncio.create_task(self._answer(connection, line))
        task.add_done_callback(lambda _: _finished(connection))

    async def _answer(self, connection: Connection, line: bytes) -> None:
        request_id: Any = None
        try:
            try:
                raw = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise RpcError(schema.PARSE_ERROR, f"not JSON: {exc}") from None
            if isinstance(raw, dict):
                candidate = raw.get("id")
                if isinstance(candidate, (int, str)) and not isinstance(candidate, bool):
                    request_id = candidate
            try:
                request = msgspec.convert(raw, schema.Request)
            except msgspec.ValidationError as exc:
                raise RpcError(schema.INVALID_REQUEST,
                               f"not a JSON-RPC 2.0 request: {exc}") from None
            method = self.methods.get(request.method)
            if method is None:
                raise RpcError(schema.METHOD_NOT_FOUND, f"unknown method {request.method!r} "
                               f"(known: {', '.join(sorted(self.methods))})")
            if method.writes and not connection.can_write:
                raise RpcError(schema.PERMISSION_DENIED,
                               f"permission denied: join group {self.group} ({request.method} "
                               "needs root or membership of that group)")
            params: Any = None
            if method.params is not None:
                params = _decode_params(request.params, method.params)
            result = await method.handler(connection, params)
        except RpcError as exc:
            if request_id is not None or exc.code in (schema.PARSE_ERROR,
                                                     schema.INVALID_REQUEST):
                connection.send(_error(request_id, exc.code, exc.message, exc.data))
            return
        except Exception as exc:
            log.exception("control: internal error")
            connection.send(_error(request_id, schema.INTERNAL_ERROR, f"internal error: {exc}"))
            return
        if request_id is not None:
            connection.send({"jsonrpc": "2.0", "id": request_id,
                             "result": msgspec.to_builtins(result)})


def _finished(connection: Connection) -> None:
    connection.in_flight -= 1


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _decode_params(params: Any, kind: type) -> Any:
    try:
        return msgspec.convert(params if params is not None else {}, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rpartition("`$.")[2].rstrip("`") if "`$." in text else None
        raise RpcError(schema.INVALID_PARAMS, f"invalid params: {text}",
                       {"field": path} if path else None) from None
