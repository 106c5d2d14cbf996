"""m6t-gateway under a stand-in for systemd: the real daemon in the lab, with NOTIFY_SOCKET set
to a datagram socket this test owns, as systemd does for a Type=notify unit.

READY=1 must mean "serving": the test freezes the gateway the moment READY=1 arrives and finds
every listen port bound, the metrics endpoint listening and the TUN device up. A reload is
bracketed by RELOADING=1 (with MONOTONIC_USEC) and READY=1, and SIGTERM announces STOPPING=1.
The helper's READY=1 means its control socket accepts connections.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from m6t.lab.lab import Lab, frozen, wait_for

pytestmark = pytest.mark.netns


@pytest.fixture
def manager(lab: Lab) -> Iterator[socket.socket]:
    """The service manager's end: a path socket (path sockets reach across network namespaces,
    abstract ones do not), with the sender's credentials on each datagram as systemd gets them."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(lab.workdir / "notify"))
    yield sock
    sock.close()


def receive(sock: socket.socket, lab: Lab, timeout: float = 10) -> tuple[str, int]:
    """The next notification and the PID of its sender."""
    sock.settimeout(timeout)
    try:
        data, ancillary, _flags, _address = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    except TimeoutError:
        raise AssertionError(f"no notification within {timeout} s; gateway log:\n"
                             f"{lab.log('gateway')}") from None
    ((level, kind, credentials),) = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    return data.decode(), int.from_bytes(credentials[:4], sys.byteorder)


def start_gateway(lab: Lab, manager: socket.socket) -> subprocess.Popen[bytes]:
    """The lab's gateway, started as systemd would start it (Lab.start_gateway waits on the
    metrics endpoint instead, and sets no NOTIFY_SOCKET)."""
    config = lab.write_toml("gateway.toml", lab.gateway_config())
    return lab.spawn("gw", lab.gateway_command(config),
                     log_name="gateway", env={"NOTIFY_SOCKET": manager.getsockname()})


def nothing_more(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


def udp_ports(lab: Lab) -> set[int]:
    return {int(line.split()[3].rpartition(":")[2])
            for line in lab.run("gw", ["ss", "-Hlun"]).stdout.splitlines()}


def test_ready_only_when_serving_reloading_then_ready_stopping_at_sigterm(
        lab: Lab, manager: socket.socket) -> None:
    gateway = start_gateway(lab, manager)

    # The first word is READY=1, from the main process (what NotifyAccess=main accepts;
    # `ip netns exec` replaced itself with the daemon).
    message, sender = receive(manager, lab)
    with frozen(gateway):
        assert (message, sender) == ("READY=1", gateway.pid)
        assert udp_ports(lab) == {3544, 4500}
        assert "127.0.0.1:9464 " in lab.run("gw", ["ss", "-Hltn"]).stdout
        flags = re.search(r"<([^>]*)>", lab.ip("gw", "link", "show", "m6tgw0").stdout)
        assert flags and "UP" in flags.group(1).split(","), flags

    # SIGHUP: RELOADING=1 with the time the reload began, then READY=1 once the new set listens.
    lab.write_toml("gateway.toml", lab.gateway_config(
        listen=[f"{lab.addr.gw_wan}:3544", f"{lab.addr.gw_wan}:53"]))
    gateway.send_signal(signal.SIGHUP)
    message, sender = receive(manager, lab)
    assert sender == gateway.pid
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert match, message
    assert 0 < int(match.group(1)) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message, sender = receive(manager, lab)
    with frozen(gateway):
        assert (message, sender) == ("READY=1", gateway.pid)
        assert udp_ports(lab) == {3544, 53}

    # SIGTERM: STOPPING=1 (systemd shows "deactivating"), then a clean exit.
    assert lab.stop(gateway, signal.SIGTERM) == 0
    assert receive(manager, lab, timeout=1) == ("STOPPING=1", gateway.pid)
    assert nothing_more(manager)


def test_gateway_that_cannot_bind_never_says_ready(lab: Lab, manager: socket.socket) -> None:
    """A port already taken fails the start: systemd must see an exit, not READY=1."""
    blocker = lab.spawn("gw", [sys.executable, "-c",
                               "import socket, time; s = socket.socket(socket.AF_INET, "
                               f"socket.SOCK_DGRAM); s.bind(('{lab.addr.gw_wan}', 4500)); "
                               "time.sleep(60)"], log_name="blocker")
    wait_for(lambda: 4500 in udp_ports(lab), 5, "the blocker to bind port 4500")
    gateway = start_gateway(lab, manager)
    assert gateway.wait(10) == 1
    assert "cannot listen on" in lab.log("gateway")
    assert nothing_more(manager)
    lab.stop(blocker)


def test_helper_is_ready_once_its_socket_listens_and_says_when_it_stops(
        lab: Lab, manager: socket.socket) -> None:
    """The helper's unit is Type=notify too: READY=1 means a client can connect now."""
    path = lab.workdir / "helper.sock"
    helper = lab.spawn("mn", [sys.executable, "-m", "m6t_helper", "--socket", str(path)],
                       log_name="helper", env={"NOTIFY_SOCKET": manager.getsockname()})
    assert receive(manager, lab) == ("READY=1", helper.pid)
    with frozen(helper):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))  # accepted by the kernel while the helper is stopped
        finally:
            probe.close()
    helper.send_signal(signal.SIGTERM)
    assert receive(manager, lab)[0] == "STOPPING=1"
    assert helper.wait(10) == 0
    assert nothing_more(manager)
