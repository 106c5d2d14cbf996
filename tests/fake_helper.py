"""An in-process stand-in for m6t-helper that speaks the real control API over a real Unix
socket, for unit tests of the clients (CLI, desktop app). Its tunnel state is scripted by the
test; the protocol (framing, envelopes, errors, events) is the real one, from m6t.control.wire.

    with FakeHelper(tmp_path / "helper.sock") as helper:
        helper.tunnels["office"] = status_for(profile)   # TunnelStatus fields, as plain data
        helper.networks.append(known_network("5f0c2d9a61b7e3a4", "office"))  # its memory
        helper.handlers["probe"] = lambda params: ...     # a result, or raise a ControlError
        helper.emit(StateEvent(...))                      # or a dict, to every subscriber
        helper.send_raw(b"garbage\\n")                     # to every connection

Results and events may be records or plain data: plain data goes out as it is, so a test can
send what no real helper would (a wrong type, an unknown event).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from m6t.control import schema, wire
from m6t.control.errors import (
    ControlError,
    ErrorData,
    InvalidParams,
    MethodNotFound,
    NotFound,
    PermissionDenied,
)
from m6t.protocol.constants import DEFAULT_TUNNEL_MTU

Handler = Callable[[dict[str, Any]], Any]
GROUP = "m6t"


def RpcError(code: int, message: str, data: dict[str, Any] | None = None) -> ControlError:
    """The ControlError for a (code, message, data) triple; kept for tests/desktop/test_app.py,
    which raises errors by code. New tests raise the ControlError subclass itself."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return ControlError.from_wire(error)


def status_for(profile: schema.Profile, state: str = "connected", cause: str = "port_race_won",
               name: str = "m6t0") -> dict[str, Any]:
    address = profile.prefix.replace("::/80", ":8d2e:41f0:977c")
    return msgspec.to_builtins(schema.TunnelStatus(
        name=name, profile=profile.name, state=schema.TunnelState(state),
        cause=schema.Cause(cause), address=address, prefix=profile.prefix,
        suffix="8d2e:41f0:977c", gateway=profile.gateway, gateway_address=profile.gateway,
        port=profile.ports[0], home_agent=profile.home_agent,
        mtu=profile.mtu if isinstance(profile.mtu, int) else DEFAULT_TUNNEL_MTU, rtt_ms=0.6,
        since=0.0,
        history=[schema.AddressChange(address=address, previous=None,
                                      reason=schema.AddressReason.CONNECT, at=0.0)],
        ports=[schema.PortProbe(port=p, reachable=True, rtt_ms=0.6) for p in profile.ports],
        datapath=DATAPATH if state == "connected" else None))


# What a connected tunnel's data path says on a kernel with every default offload.
DATAPATH = schema.DatapathStatus(
    offloads=["tun_coalesce_tcp", "tun_coalesce_udp", "udp_gro", "udp_gso"],
    off={"tun_tso": "off by default (M6T_OFFLOADS=+tun_tso turns it on)",
         "tun_uso": "off by default (M6T_OFFLOADS=+tun_uso turns it on)"},
    coalesced_packets=30)


def known_network(network_id: str, profile: str, label: str = "router 192.168.1.1 "
                  "(02:fc:00:00:00:01), on wlan0", port: int = 3544, mtu: int = DEFAULT_TUNNEL_MTU,
                  fragments_pass: bool | None = None, last_seen: float = 0.0,
                  current: bool = False) -> dict[str, Any]:
    """A KnownNetwork, as plain data (what the helper remembers of a network for a profile)."""
    return msgspec.to_builtins(schema.KnownNetwork(
        id=network_id, label=label, profile=profile, port=port, mtu=mtu,
        fragments_pass=fragments_pass, last_seen=last_seen, current=current))


def _event_line(event: schema.Event | dict[str, Any]) -> bytes:
    if isinstance(event, dict):
        return msgspec.json.encode({"jsonrpc": "2.0", "method": "event", "params": event}) + b"\n"
    return wire.encode_event(event)


class FakeHelper:
    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.tunnels: dict[str, dict[str, Any]] = {}
        self.networks: list[dict[str, Any]] = []  # KnownNetwork records, as plain data
        self.networks_saved = True  # NetworksResult.saved
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

    def emit(self, event: schema.Event | dict[str, Any]) -> None:
        """An event record (or plain data, sent as it is) to every subscriber."""
        self._send(_event_line(event), self._subscribers)

    def send_raw(self, data: bytes) -> None:
        self._send(data, self._connections)

    def _send(self, data: bytes, targets: list[socket.socket]) -> None:
        with self._lock:
            targets = list(targets)
        for conn in targets:
            with contextlib.suppress(OSError):
                conn.sendall(data)

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
        framer = wire.LineFramer()
        try:
            while chunk := conn.recv(65536):
                for line in framer.feed(chunk):
                    if isinstance(line, wire.Oversize):
                        return  # what the real helper does: it hangs up
                    reply = self._answer(conn, line)
                    if reply is not None:
                        conn.sendall(reply)
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self._subscribers:
                    self._subscribers.remove(conn)

    def _answer(self, conn: socket.socket, line: bytes) -> bytes | None:
        try:
            request = wire.decode_request(line)
        except wire.UnreadableRequest as exc:
            return wire.encode_error(exc.request_id, exc.error)
        params = request.params if isinstance(request.params, dict) else {}
        self.calls.append((request.method, params))
        try:
            result = self._dispatch(conn, request.method, params)
        except ControlError as exc:
            return wire.encode_error(request.id, exc)
        if request.id is None:
            return None
        return wire.encode_result(request.id, result)

    def _not_found(self, name: Any) -> NotFound:
        return NotFound(f"no tunnel for profile {name!r}", ErrorData(tunnels=sorted(self.tunnels)))

    def _forget_network(self, network: Any) -> dict[str, Any]:
        """Like the real helper: one network (for every profile), or all of them; an id it
        does not know is NotFound."""
        known = sorted({entry["id"] for entry in self.networks})
        if network is not None and network not in known:
            raise NotFound(f"no known network {network!r} (known: {', '.join(known) or 'none'})")
        self.networks[:] = [entry for entry in self.networks
                            if network is not None and entry["id"] != network]
        return {"networks": list(self.networks), "saved": self.networks_saved}

    def _dispatch(self, conn: socket.socket, method: str, params: dict[str, Any]) -> Any:
        if method in self.handlers:
            return self.handlers[method](params)
        access = schema.Access.READ_ONLY if self.read_only else schema.Access.READ_WRITE
        if method == "version":
            return schema.VersionResult(version="0.1.0", api=schema.API_VERSION)
        if method in ("status", "subscribe"):
            if method == "subscribe":
                with self._lock:
                    self._subscribers.append(conn)
            return {"tunnels": list(self.tunnels.values()), "access": access,
                    "group": "m6t"}
        if method == "networks":
            return {"networks": list(self.networks), "saved": self.networks_saved}
        if method not in schema.METHODS:
            raise MethodNotFound(f"unknown method {method!r}")
        if self.read_only:
            raise PermissionDenied(f"permission denied: join group {GROUP}",
                                   ErrorData(group=GROUP))
        if method in ("connect", "probe"):
            try:
                profile = schema.profile_from_dict(params.get("profile"))
            except schema.ProfileError as exc:
                raise InvalidParams(str(exc), ErrorData(field=f"profile.{exc.field}")) from None
            if method == "probe":
                return schema.ProbeResult(
                    gateway_address=profile.gateway,
                    ports=[schema.PortProbe(port=p, reachable=True, rtt_ms=0.5,
                                            gateway=profile.gateway)
                           for p in profile.ports])
            self.tunnels[profile.name] = status_for(profile)
            return self.tunnels[profile.name]
        if method == "forget_network":
            return self._forget_network(params.get("network"))
        if method == "disconnect":
            name = params.get("profile")
            names = [name] if name else list(self.tunnels)
            for each in names:
                if each not in self.tunnels:
                    raise self._not_found(each)
                del self.tunnels[each]
            return schema.DisconnectResult(disconnected=names)
        name = params.get("profile")
        if name not in self.tunnels:
            raise self._not_found(name)
        if method == "probe_mtu":
            return schema.MtuReport(mtu=1472, fragments_pass=True, ipv4_path_mtu=1500,
                                    tried=[1280, 1472, 2000], answered=[1280, 1472, 2000])
        if method == "set_mtu":
            # Like the real helper, "auto" comes back as the MTU it chose.
            mtu = params.get("mtu")
            self.tunnels[name]["mtu"] = DEFAULT_TUNNEL_MTU if mtu == "auto" else mtu
        return self.tunnels[name]
