"""The single-instance socket in this process: its name per user and session, a show request
answered, a ping (autostart) answered without showing anything, malformed or silent peers
dropped with a named reason (a table) while the server keeps answering, a stale socket taken
over, a listener that does not answer left alone."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from m6t_desktop.single_instance import (
    MAX_PEERS,
    HandOver,
    InstanceServer,
    ask_running_instance,
    claim,
    server_name,
)


class RawPeer:
    """A client that writes what it is told, byte for byte, and never blocks the event loop
    (the server answers in this very thread)."""

    def __init__(self, path: str, payload: bytes = b"") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(payload)
        self.sock.setblocking(False)
        self.received = b""
        self.closed = False

    def poll(self) -> bool:
        """Whether the server has closed the connection (what it wrote is in `received`)."""
        try:
            while data := self.sock.recv(4096):
                self.received += data
            self.closed = True
        except BlockingIOError:
            pass
        except ConnectionResetError:
            self.closed = True
        return self.closed

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def instance(qtbot: QtBot, short_dir: Path) -> Iterator[InstanceServer]:
    claimed = claim(str(short_dir / "instance"))
    assert claimed.hand_over is HandOver.NO_INSTANCE
    assert claimed.server is not None
    claimed.server.request_timeout_ms = 100  # the silent peer's test is quick
    yield claimed.server
    claimed.server.close()
    claimed.server.deleteLater()


def show(qtbot: QtBot, instance: InstanceServer) -> None:
    peer = RawPeer(instance.name, b"show\n")
    with qtbot.waitSignal(instance.showRequested, timeout=2000):
        pass
    qtbot.waitUntil(peer.poll, timeout=2000)
    assert peer.received == b"ok\n"
    peer.close()


# --- the name ---


def test_the_name_is_per_user_and_session(tmp_path: Path) -> None:
    session = {"XDG_RUNTIME_DIR": "/run/user/1000", "DISPLAY": ":0"}
    name = server_name("xcb", session, uid=1000)
    assert name.startswith("/run/user/1000/m6t-desktop-1000-")
    assert name == server_name("xcb", dict(session), uid=1000)
    others = [server_name("xcb", {**session, "DISPLAY": ":99"}, uid=1000),  # another X server
              server_name("offscreen", session, uid=1000),  # tests, benchmarks
              server_name("xcb", {**session, "XDG_RUNTIME_DIR": "/run/user/1001"}, uid=1001),
              server_name("wayland", {**session, "WAYLAND_DISPLAY": "wayland-1"}, uid=1000)]
    assert len({name, *others}) == 5


def test_without_a_runtime_directory_the_name_is_bare_with_the_uid() -> None:
    """Qt puts a bare name in /tmp; so does a runtime directory too deep for a socket path."""
    assert server_name("xcb", {"DISPLAY": ":0"}, uid=1000).startswith("m6t-desktop-1000-")
    deep = {"XDG_RUNTIME_DIR": "/" + "d" * 100, "DISPLAY": ":0"}
    assert server_name("xcb", deep, uid=1000).startswith("m6t-desktop-1000-")
    assert server_name("xcb", deep, uid=1000) != server_name("xcb", {"DISPLAY": ":0"}, uid=1000)


# --- the running instance's end ---


def test_show_is_answered_and_signalled(qtbot: QtBot, instance: InstanceServer) -> None:
    assert Path(instance.name).is_socket()
    show(qtbot, instance)
    assert sum(instance.dropped_counts.values()) == 0


def test_ping_is_answered_and_shows_nothing(qtbot: QtBot, instance: InstanceServer) -> None:
    with qtbot.assertNotEmitted(instance.showRequested):
        peer = RawPeer(instance.name, b"ping\n")
        qtbot.waitUntil(peer.poll, timeout=2000)
    assert peer.received == b"ok\n"
    peer.close()
    assert sum(instance.dropped_counts.values()) == 0
    show(qtbot, instance)  # and the next launch that asks is still shown the window


MALFORMED = [
    pytest.param(b"\xff\xfe\x00 garbage\n", "unknown_request", id="binary"),
    pytest.param(b"show me everything\n", "unknown_request", id="unknown"),
    pytest.param(b"SHOW\n", "unknown_request", id="case"),
    pytest.param(b"s" * 100_000, "too_long", id="no-newline-ever"),
    pytest.param(b"sho", "timeout", id="half-a-line"),
    pytest.param(b"", "timeout", id="silent"),
]


@pytest.mark.parametrize(("payload", "reason"), MALFORMED)
def test_malformed_peers_are_dropped_and_the_server_keeps_answering(
        qtbot: QtBot, instance: InstanceServer, payload: bytes, reason: str) -> None:
    with qtbot.waitSignal(instance.dropped, timeout=2000) as dropped:
        peer = RawPeer(instance.name, payload)
    assert dropped.args == [reason]
    qtbot.waitUntil(peer.poll, timeout=2000)
    assert peer.received == b""  # closed without an answer
    peer.close()
    show(qtbot, instance)
    assert instance.dropped_counts == {reason: 1}


def test_a_peer_that_leaves_without_a_request(qtbot: QtBot,
                                              instance: InstanceServer) -> None:
    with qtbot.waitSignal(instance.dropped, timeout=2000) as dropped:
        RawPeer(instance.name).close()
    assert dropped.args == ["no_request"]


def test_peers_beyond_the_limit_are_turned_away(qtbot: QtBot,
                                                instance: InstanceServer) -> None:
    instance.request_timeout_ms = 60_000
    waiting = [RawPeer(instance.name) for _ in range(MAX_PEERS)]
    with qtbot.waitSignal(instance.dropped, timeout=2000) as dropped:
        extra = RawPeer(instance.name)
    assert dropped.args == ["too_many_peers"]
    qtbot.waitUntil(extra.poll, timeout=2000)
    assert not any(peer.poll() for peer in waiting)
    for peer in [*waiting, extra]:
        peer.close()
    qtbot.waitUntil(lambda: instance.dropped_counts["no_request"] == MAX_PEERS, timeout=2000)
    show(qtbot, instance)


# --- a later launch's end ---


def test_a_stale_socket_is_taken_over(qtbot: QtBot, short_dir: Path) -> None:
    path = short_dir / "instance"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))  # what a killed instance leaves: a socket file nobody listens on
    left.close()
    assert ask_running_instance(str(path)) is HandOver.STALE
    claimed = claim(str(path))
    assert claimed.hand_over is HandOver.STALE
    assert claimed.server is not None
    show(qtbot, claimed.server)
    claimed.server.close()
    assert not path.exists()


def test_a_listener_that_does_not_answer_is_left_alone(short_dir: Path) -> None:
    path = short_dir / "instance"
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.bind(str(path))
    stuck.listen(4)  # a stopped or hung instance: the kernel accepts, nobody answers
    try:
        assert ask_running_instance(str(path), answer_timeout_ms=100) is HandOver.NO_ANSWER
        assert path.is_socket()
    finally:
        stuck.close()


def test_nothing_there(short_dir: Path) -> None:
    assert ask_running_instance(str(short_dir / "instance")) is HandOver.NO_INSTANCE
