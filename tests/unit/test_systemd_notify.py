"""m6t.linux.systemd.notify against a real AF_UNIX datagram socket standing in for systemd's
(a path one, as systemd uses, and an abstract "@..." one, as some containers pass); outside
systemd it does nothing, and a manager that is gone costs a log line, not an exception."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from m6t.linux import systemd


@pytest.fixture
def manager() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    # What lets systemd check NotifyAccess=main: the sender's credentials on each datagram.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> tuple[str, int]:
    """One notification and the PID the kernel vouches for."""
    data, ancillary, _flags, _address = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    ((level, kind, credentials),) = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    return data.decode(), int.from_bytes(credentials[:4], sys.byteorder)


def test_path_socket_receives_the_state(manager: socket.socket, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    manager.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert systemd.notify("READY=1") is True
    assert receive(manager) == ("READY=1", os.getpid())


def test_abstract_socket_receives_the_state(manager: socket.socket,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"m6t-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    manager.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert systemd.notify("STOPPING=1") is True
    assert receive(manager) == ("STOPPING=1", os.getpid())


def test_reloading_carries_the_monotonic_time(manager: socket.socket, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    manager.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.notify(systemd.reloading()) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message, _pid = receive(manager)
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert match, message
    assert before <= int(match.group(1)) <= after


@pytest.mark.parametrize("value", [None, ""])
def test_without_notify_socket_nothing_is_sent(value: str | None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    sent: list[object] = []
    monkeypatch.setattr(socket.socket, "sendto", lambda *args: sent.append(args))
    assert systemd.notify("READY=1") is False
    assert sent == []


@pytest.mark.parametrize("address", ["/nonexistent/m6t-notify", "@m6t-test-nobody-listens",
                                     "vsock:2:1234"])
def test_an_unreachable_manager_is_logged_not_raised(address: str,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with caplog.at_level(logging.WARNING, logger="m6t.systemd"):
        assert systemd.notify("READY=1") is False
    assert "READY=1" in caplog.text and address in caplog.text
