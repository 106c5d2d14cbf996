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

from m6t.control import wire
from m6t.control.errors import (
    ControlError,
    ErrorData,
    InternalError,
    InvalidRequest,
    MethodNotFound,
    PermissionDenied,
)
from m6t.control.schema import MAX_LINE_BYTES, METHODS, Event

log = logging.getLogger("m6t.helper")

MAX_CONNECTIONS = 64
MAX_IN_FLIGHT = 8  # requests per connection being served at once
PARTIAL_LINE_TIMEOUT = 10.0
MAX_QUEUED = 1000  # messages waiting for a slow reader before it is disconnected

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
                 handlers: dict[str, Handler]) -> None:
        if set(handlers) != set(METHODS):
            raise ValueError(f"handlers {sorted(handlers)} do not match the API's methods "
                             f"{sorted(METHODS)}")
        self.path = path
        self.group = group
        self.others = others  # "read" or "none"
        self.handlers = handlers
        self.connections: set[Connection] = set()
        self.line_timeout = PARTIAL_LINE_TIMEOUT
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._claim_path()
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path,
                                                           limit=MAX_LINE_BYTES * 2)
        except OSError as exc:  # a read-only or full file system: say where
            raise OSError(exc.errno, f"cannot create the control socket {self.path}: "
                                     f"{exc.strerror}") from None
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

    def broadcast(self, event: Event) -> None:
        subscribers = [c for c in self.connections if c.subscribed]
        if not subscribers:
            return
        line = wire.encode_event(event)
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
        framer = wire.LineFramer()
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
            for line in framer.feed(chunk):
                if isinstance(line, wire.Oversize):
                    # Written directly: the connection closes right after, and closing a
                    # transport still flushes what it has buffered.
                    connection.writer.write(wire.encode_error(None, InvalidRequest(
                        f"line longer than {MAX_LINE_BYTES} bytes")))
                    return
                self._dispatch(connection, line)
            partial_since = (partial_since or loop.time()) if framer.partial else None

    def _dispatch(self, connection: Connection, line: bytes) -> None:
        if connection.in_flight >= MAX_IN_FLIGHT:
            connection.send_line(wire.encode_error(None, InvalidRequest(
                f"more than {MAX_IN_FLIGHT} requests in flight")))
            return
        connection.in_flight += 1
        task = asyncio.create_task(self._answer(connection, line))
        task.add_done_callback(lambda _: _finished(connection))

    async def _answer(self, connection: Connection, line: bytes) -> None:
        try:
            request = wire.decode_request(line)
        except wire.UnreadableRequest as exc:
            # Parse errors and invalid requests are answered even without an id (JSON-RPC 2.0).
            connection.send_line(wire.encode_error(exc.request_id, exc.error))
            return
        try:
            spec = METHODS.get(request.method)
            if spec is None:
                raise MethodNotFound(f"unknown method {request.method!r} "
                                     f"(known: {', '.join(sorted(METHODS))})")
            if spec.writes and not connection.can_write:
                raise PermissionDenied(
                    f"permission denied: join group {self.group} ({request.method} needs root "
                    "or membership of that group)", ErrorData(group=self.group))
            params = wire.decode_params(request.method, request.params)
            result = await self.handlers[request.method](connection, params)
        except ControlError as exc:
            if request.id is not None:
                connection.send_line(wire.encode_error(request.id, exc))
            return
        except Exception as exc:
            log.exception("control: internal error")
            connection.send_line(wire.encode_error(request.id, InternalError(
                f"internal error: {exc}")))
            return
        if request.id is not None:
            connection.send_line(wire.encode_result(request.id, result))


def _finished(connection: Connection) -> None:
    connection.in_flight -= 1
