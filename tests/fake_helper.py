"""An in-process stand-in for m6t-helper that speaks the real control API over a real Unix
socket, for unit tests of the clients (CLI, desktop app). Its tunnel state is scripted by the
test; the protocol (framing, JSON-RPC, errors, events) is the real one.

    with FakeHelper(tmp_path / "helper.sock") as helper:
        helper.tunnels["office"] = {...TunnelStatus fields...}
        helper.emit({"type": "state", ...})      # to every subscriber
        helper.send_raw(b"garbage\\n")            # to every connection, for malformed-input tests
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from m6t.control import schema

Handler = Callable[[dict[str, Any]], Any]


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def status_for(profile: schema.Profile, state: str = "connected", cause: str = "port_race_won",
               name: str = "m6t0") -> dict[str, Any]:
    address = profile.prefix.replace("::/80", ":8d2e:41f0:977c")
    return msgspec.to_builtins(schema.TunnelStatus(
        name=name, profile=profile.name, state=state, cause=cause,  # type: ignore[arg-type]
        address=address, prefix=profile.prefix, suffix="8d2e:41f0:977c",
        gateway=profile.gateway, gateway_address=profile.gateway, port=profile.ports[0],
        home_agent=profile.home_agent,
        mtu=profile.mtu if isinstance(profile.mtu, int) else 1472, rtt_ms=0.6, since=0.0,
        history=[schema.AddressChange(address=address, previous=None, reason="connect", at=0.0)],
        ports=[schema.PortProbe(port=p, reachable=True, rtt_ms=0.6) for p in profile.ports]))


class FakeHelper:
    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.tunnels: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.handlers: dict[str, Handler] = {}  # override or add methods
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connections: list[socket.socket] = []
        self._subscribers: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FakeHelper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._server.bind(str(self.path))
        self._server.listen(16)
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Like a helper going away: the socket disappears, connections are closed."""
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._connections.clear()
            self._subscribers.clear()
        self.path.unlink(missing_ok=True)

    # --- pushing things to clients ---

    def emit(self, event: dict[str, Any]) -> None:
        self._broadcast({"jsonrpc": "2.0", "method": "event", "params": event},
                        self._subscribers)

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            targets = list(self._connections)
        for conn in targets:
            with contextlib.suppress(OSError):
                conn.sendall(data)

    def _broadcast(self, message: dict[str, Any], targets: list[socket.socket]) -> None:
        line = json.dumps(message).encode() + b"\n"
        with self._lock:
            targets = list(targets)
        for conn in targets:
            with contextlib.suppress(OSError):
                conn.sendall(line)

    # --- serving ---

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            for line in reader:
                reply = self._answer(conn, line)
                if reply is not None:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self._subscribers:
                    self._subscribers.remove(conn)

    def _answer(self, conn: socket.socket, line: bytes) -> dict[str, Any] | None:
        try:
            request = msgspec.json.decode(line, type=schema.Request)
        except msgspec.DecodeError as exc:
            return {"jsonrpc": "2.0", "id": None,
                    "error": {"code": schema.PARSE_ERROR, "message": str(exc)}}
        params = request.params if isinstance(request.params, dict) else {}
        self.calls.append((request.method, params))
        try:
            result = self._dispatch(conn, request.method, params)
        except RpcError as exc:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                error["data"] = exc.data
            return {"jsonrpc": "2.0", "id": request.id, "error": error}
        if request.id is None:
            return None
        return {"jsonrpc": "2.0", "id": request.id, "result": result}

    def _dispatch(self, conn: socket.socket, method: str, params: dict[str, Any]) -> Any:
        if method in self.handlers:
            return self.handlers[method](params)
        access = "read-only" if self.read_only else "read-write"
        if method == "version":
            return {"version": "0.1.0", "api": schema.API_VERSION}
        if method in ("status", "subscribe"):
            if method == "subscribe":
                with self._lock:
                    self._subscribers.append(conn)
            return {"tunnels": list(self.tunnels.values()), "access": access}
        if method not in ("connect", "disconnect", "probe", "probe_mtu", "set_mtu", "regenerate"):
            raise RpcError(schema.METHOD_NOT_FOUND, f"unknown method {method!r}")
        if self.read_only:
            raise RpcError(schema.PERMISSION_DENIED, "permission denied: join group m6t")
        if method in ("connect", "probe"):
            try:
                profile = schema.profile_from_dict(params.get("profile"))
            except schema.ProfileError as exc:
                raise RpcError(schema.INVALID_PARAMS, str(exc),
                               {"field": f"profile.{exc.field}"}) from None
            if method == "probe":
                return {"gateway_address": profile.gateway,
                        "ports": [{"port": p, "reachable": True, "rtt_ms": 0.5, "error": None}
                                  for p in profile.ports]}
            self.tunnels[profile.name] = status_for(profile)
            return self.tunnels[profile.name]
        if method == "disconnect":
            name = params.get("profile")
            names = [name] if name else list(self.tunnels)
            for each in names:
                if each not in self.tunnels:
                    raise RpcError(schema.NOT_FOUND, f"no tunnel for profile {each!r}")
                del self.tunnels[each]
            return {"disconnected": names}
        name = params.get("profile")
        if name not in self.tunnels:
            raise RpcError(schema.NOT_FOUND, f"no tunnel for profile {name!r}")
        if method == "probe_mtu":
            return {"mtu": 1472, "fragments_pass": True, "ipv4_path_mtu": 1500,
                    "tried": [1280, 1472, 2000], "answered": [1280, 1472, 2000]}
        if method == "set_mtu":
            self.tunnels[name]["mtu"] = params.get("mtu")
        return self.tunnels[name]
