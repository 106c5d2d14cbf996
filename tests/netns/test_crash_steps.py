"""Crash at every step: SIGKILL the helper and the gateway at each step of what they do, restart
them, and the host is as before and the next connect works.

No hooks in the daemons: each step is watched from outside, through the daemon's own view of its
network namespace (/proc/PID/net/{udp,dev,if_inet6,ipv6_route}, /proc/PID/fd), polled a few
thousand times a second, and the daemon is stopped (SIGSTOP) the moment its step shows, its state
recorded, then killed (SIGKILL): so each kill is known to have landed after that step. Timed
kills at several delays after a request cover the moments in between. After each kill the test
checks what the kernel leaves (the TUN device, its address and routes go with the process), then
restarts the daemon (which replaces a stale control socket and deletes leftover m6tN devices)
and connects again.

The helper's files: its control socket, in a directory it creates. Both are tried on a read-only
and on a full filesystem (a small tmpfs mounted in a mount namespace of the test's own, over a
directory the test created): the helper must refuse to start with a clear message and leave
nothing half-made. (The per-network state file being added under another issue is not covered
here.) The gateway writes no file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from m6t.control.client import HelperClient
from m6t.lab.lab import Lab, wait_for

pytestmark = pytest.mark.netns

HOME_AGENT_HEX = "fd484100000000000000000000000002"
CLIENT_PREFIX_HEX = "fd6d6d74000100000000000000000000"  # fd6d:6d74:1::/48, the gateway's route


# --- a daemon's network namespace, as it sees it (no subprocess: fast enough to poll) ---------


def _read(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/net/{name}").read_text()
    except OSError:
        return ""


def _ipv4_hex(address: str, port: int) -> str:
    return f"{struct.unpack('<I', socket.inet_aton(address))[0]:08X}:{port:04X}"


def udp_sockets(pid: int) -> list[tuple[str, str]]:
    """(local, remote) of every UDP socket in the process's namespace, as /proc writes them."""
    rows = [line.split() for line in _read(pid, "udp").splitlines()[1:]]
    return [(row[1], row[2]) for row in rows if len(row) > 2]


def links(pid: int) -> set[str]:
    return {line.split(":")[0].strip() for line in _read(pid, "dev").splitlines()[2:]}


def addresses(pid: int, ifname: str) -> set[str]:
    """Global IPv6 addresses (hex) on an interface."""
    rows = [line.split() for line in _read(pid, "if_inet6").splitlines()]
    return {row[0] for row in rows if len(row) == 6 and row[5] == ifname and row[3] == "00"}


def routes(pid: int, ifname: str) -> set[tuple[str, int]]:
    rows = [line.split() for line in _read(pid, "ipv6_route").splitlines()]
    return {(row[0], int(row[1], 16)) for row in rows if len(row) == 10 and row[9] == ifname}


def opened(pid: int, path: str) -> bool:
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == path:
                    return True
    return False


def helper_view(lab: Lab, pid: int) -> dict[str, Any]:
    """What the helper has set up, as its namespace shows it."""
    gateway = _ipv4_hex(lab.addr.gw_wan, 3544)
    return {
        "sockets": sum(remote == gateway for _, remote in udp_sockets(pid)),
        "tun_open": opened(pid, "/dev/net/tun"),
        "tun": "m6t0" in links(pid),
        "addresses": len(addresses(pid, "m6t0")),
        "route": (HOME_AGENT_HEX, 128) in routes(pid, "m6t0"),
    }


def kill_when(process: subprocess.Popen[bytes], condition: Callable[[], bool], what: str,
              observe: Callable[[], dict[str, Any]], timeout: float = 10) -> dict[str, Any]:
    """SIGSTOP the daemon the moment `condition` holds, record what it had set up, SIGKILL it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0002)
    os.kill(process.pid, signal.SIGSTOP)
    seen = observe()
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    return seen


def kill_after(process: subprocess.Popen[bytes], delay: float,
               observe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGSTOP)
    seen = observe()
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    return seen


# --- the helper ------------------------------------------------------------------------------


def send_line(path: str, method: str, params: dict[str, Any] | None = None) -> socket.socket:
    """A request written to the helper without waiting for its answer (the helper dies first).
    The socket is returned open: closing it early would be a disconnection, not a crash."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                             "params": params or {}}).encode() + b"\n")
    return sock


def host_state(lab: Lab) -> dict[str, str]:
    """What a user would look at: links, IPv6 addresses and routes of the mobile node."""
    return {"links": " ".join(sorted(line.split(":")[1].strip().split("@")[0]
                                     for line in lab.ip("mn", "-o", "link").stdout.splitlines())),
            "addresses": lab.ip("mn", "-6", "-o", "addr").stdout,
            "routes": lab.ip("mn", "-6", "route").stdout}


def assert_clean(lab: Lab, before: dict[str, str]) -> None:
    """No m6t interface, address or route: the host is as it was before the first connect."""
    wait_for(lambda: host_state(lab) == before, 5, "the host to be as before the helper")


def connect(lab: Lab) -> dict[str, Any]:
    with HelperClient(lab.helper_socket) as client:
        result = client.call("connect", profile=lab.profile())
    return {"state": str(result.state), "address": result.address}


def ping(lab: Lab) -> bool:
    return lab.run("mn", ["ping", "-6", "-c", "1", "-W", "2", lab.addr.home_agent],
                   check=False).returncode == 0


CONNECT_STEPS: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
    ("race socket bound", lambda v: v["sockets"] > 0),
    ("TUN opened", lambda v: v["tun_open"]),
    ("m6t0 exists", lambda v: v["tun"]),
    ("address added", lambda v: v["addresses"] > 0),
    ("route added", lambda v: v["route"]),
]


def test_sigkill_at_each_step_of_connect_then_restart(lab: Lab) -> None:
    lab.start_gateway()
    before = host_state(lab)
    seen: dict[str, dict[str, Any]] = {}
    for step, reached in CONNECT_STEPS:
        helper = lab.start_helper()
        pid = helper.pid
        request = send_line(lab.helper_socket, "connect", {"profile": lab.profile()})
        seen[step] = kill_when(helper, lambda pid=pid, reached=reached: reached(
            helper_view(lab, pid)), step, lambda pid=pid: helper_view(lab, pid))
        request.close()
        assert reached(seen[step]), (step, seen[step])
        assert_clean(lab, before)  # the kernel took the TUN, its address and routes with it
    for delay in (0.0, 0.02, 0.2):
        helper = lab.start_helper()
        request = send_line(lab.helper_socket, "connect", {"profile": lab.profile()})
        seen[f"{delay * 1000:.0f} ms"] = kill_after(helper, delay,
                                                    lambda pid=helper.pid: helper_view(lab, pid))
        request.close()
        assert_clean(lab, before)
    # Each restart replaced the stale socket the kill left; the next connect works.
    lab.start_helper()
    assert lab.log("helper").count("replacing stale socket") == len(seen)
    assert connect(lab)["state"] == "connected"
    assert ping(lab)
    print("killed with:", seen)


def test_sigkill_at_each_step_of_a_network_change_then_restart(lab: Lab) -> None:
    lab.start_gateway()
    before_links = host_state(lab)["links"]
    steps: list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], bool]]] = [
        ("new socket bound", lambda v, old: v["sockets"] > old["sockets"]
         or v["addresses"] > 1),
        # Both addresses stand for a few milliseconds only: a poll that misses the window (a
        # loaded machine) stops the helper right after, with the old one gone.
        ("new address added", lambda v, old: v["addresses"] > 1 or v["extra_gone"]),
        ("old address removed", lambda v, old: v["extra_gone"]),
    ]
    timed = [0.0, 0.35]  # the helper acts 0.3 s after the last netlink event
    for index in range(len(steps) + len(timed)):
        helper = lab.start_helper()
        pid = helper.pid
        old = connect(lab)
        assert old["state"] == "connected", old
        start = helper_view(lab, pid)
        old_hex = next(iter(addresses(pid, "m6t0")))

        def view(pid: int = pid, old_hex: str = old_hex) -> dict[str, Any]:
            current = helper_view(lab, pid)
            found = addresses(pid, "m6t0")
            current["extra_gone"] = bool(found) and old_hex not in found
            return current

        lab.roam()
        if index < len(steps):
            name, reached = steps[index]
            seen = kill_when(helper, lambda reached=reached, start=start, view=view:
                             reached(view(), start), name, view)
            assert reached(seen, start), (name, seen)
        else:
            kill_after(helper, timed[index - len(steps)], view)
        # (The IPv4 side moved: compare the m6t footprint only.)
        wait_for(lambda: "m6t" not in host_state(lab)["links"], 5, "m6t0 to go")
        assert host_state(lab)["links"] == before_links
        assert "fd6d:" not in host_state(lab)["addresses"]
        assert lab.addr.home_agent not in host_state(lab)["routes"]
    lab.start_helper()
    assert connect(lab)["state"] == "connected"
    assert ping(lab)


def test_sigkill_during_disconnect_then_restart(lab: Lab) -> None:
    lab.start_gateway()
    before = host_state(lab)
    for delay in (None, 0.0, 0.001, 0.003, 0.01):
        helper = lab.start_helper()
        pid = helper.pid
        assert connect(lab)["state"] == "connected"
        request = send_line(lab.helper_socket, "disconnect")
        if delay is None:
            # The observable step: the tunnel's UDP socket is closed, the TUN not yet gone.
            kill_when(helper, lambda pid=pid: helper_view(lab, pid)["sockets"] == 0
                      or not helper_view(lab, pid)["tun"], "the UDP socket to close",
                      lambda pid=pid: helper_view(lab, pid))
        else:
            kill_after(helper, delay, lambda pid=pid: helper_view(lab, pid))
        request.close()
        assert_clean(lab, before)
    lab.start_helper()
    assert connect(lab)["state"] == "connected"
    assert ping(lab)


def test_restart_removes_a_persistent_leftover_after_each_kind_of_kill(lab: Lab) -> None:
    """A kill cannot leave the helper's own (non-persistent) TUN behind, but another run or
    a tool can leave an m6tN device: the restart after a crash deletes it, routes included."""
    lab.start_gateway()
    before = host_state(lab)
    helper = lab.start_helper()
    assert connect(lab)["state"] == "connected"
    lab.ip("mn", "tuntap", "add", "m6t5", "mode", "tun")
    lab.ip("mn", "link", "set", "m6t5", "up")
    lab.ip("mn", "-6", "route", "add", "2001:db8:5::/48", "dev", "m6t5")
    os.kill(helper.pid, signal.SIGKILL)
    helper.wait(10)
    lab.start_helper()
    assert_clean(lab, before)
    assert "m6t5" in lab.log("helper") and "leftovers" in lab.log("helper")
    assert connect(lab)["state"] == "connected"


# --- the gateway -----------------------------------------------------------------------------


def gateway_view(pid: int) -> dict[str, Any]:
    listening = {local for local, _ in udp_sockets(pid)}
    return {
        "tun_open": opened(pid, "/dev/net/tun"),
        "tun": "m6tgw0" in links(pid),
        "route": (CLIENT_PREFIX_HEX, 48) in routes(pid, "m6tgw0"),
        "listening": _ipv4_hex("198.51.100.1", 3544) in listening,
    }


def forwarding(lab: Lab) -> str:
    return lab.run("gw", ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip()


def gateway_works(lab: Lab) -> bool:
    result = lab.python("mn", "m6t.lab.client", "--gateway", f"{lab.addr.gw_wan}:3544",
                        "--bind", "0.0.0.0:0", "echo", "--src", "fd6d:6d74:1:1:1:0:0:1",
                        "--dst", lab.addr.home_agent)
    return bool(json.loads(result.stdout)["received"] == 1)


def test_sigkill_the_gateway_at_each_step_then_restart(lab: Lab) -> None:
    forwarding_before = forwarding(lab)
    assert forwarding_before == "0"
    path = lab.write_toml("gateway.toml", lab.gateway_config())
    steps: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
        ("TUN opened", lambda v: v["tun_open"]),
        ("m6tgw0 exists", lambda v: v["tun"]),
        ("route added", lambda v: v["route"]),
        ("listeners bound", lambda v: v["listening"]),
    ]
    seen: dict[str, dict[str, Any]] = {}
    timed = (0.15, 0.6)
    for index in range(len(steps) + len(timed)):
        process = lab.spawn("gw", lab.gateway_command(path), log_name="gateway")
        pid = process.pid
        if index < len(steps):
            name, reached = steps[index]
            seen[name] = kill_when(process, lambda pid=pid, reached=reached: reached(
                gateway_view(pid)), name, lambda pid=pid: gateway_view(pid))
            assert reached(seen[name]), (name, seen[name])
        else:
            delay = timed[index - len(steps)]
            seen[f"{delay * 1000:.0f} ms"] = kill_after(process, delay,
                                                        lambda pid=pid: gateway_view(pid))
        # The kernel deletes the TUN device with its last descriptor, and its route with it.
        wait_for(lambda: "m6tgw0" not in lab.ip("gw", "link").stdout, 5, "m6tgw0 to go")
        assert "fd6d:6d74:1::/48" not in lab.ip("gw", "-6", "route").stdout
        assert lab.run("gw", ["ss", "-Hlun"]).stdout.strip() == ""
        # Restarted, the gateway sets everything up again and forwards.
        restarted = lab.start_gateway()
        assert "m6tgw0" in lab.ip("gw", "link").stdout
        assert "fd6d:6d74:1::/48" in lab.ip("gw", "-6", "route").stdout
        assert forwarding(lab) == "1"
        assert gateway_works(lab)
        assert lab.stop(restarted, signal.SIGTERM) == 0
        assert "m6tgw0" not in lab.ip("gw", "link").stdout
        # A SIGKILL cannot restore the forwarding sysctl; the restarted gateway restores the
        # value the killed one noted before setting it, not the 1 it left behind.
        assert forwarding(lab) == forwarding_before
        assert not list((lab.workdir / "run-gw").glob("forwarding.*"))
    print("killed with:", seen)


# --- the helper's files on a read-only or full filesystem ---------------------------------------


def helper_on_small_filesystem(lab: Lab, prepare: str, options: str,
                               after_start: str = "") -> tuple[int, str, list[str]]:
    """Run the helper with its socket under a 1 MiB tmpfs mounted (in a mount namespace of
    this test's own) over a directory of the lab's; `prepare` runs on the writable tmpfs, then
    it is remounted with `options`. Returns the helper's exit status, its stderr and what the
    tmpfs holds afterwards."""
    mount = lab.workdir / "fs"
    mount.mkdir(exist_ok=True)
    socket_path = mount / "run" / "m6t" / "helper.sock"
    helper = " ".join(lab.argv("mn", [sys.executable, "-m", "m6t_helper", "--socket",
                                      str(socket_path)]))
    client = lab.workdir / "client.sh"
    client.write_text(after_start)
    script = f"""
set -e
mount -t tmpfs -o size=1m,nr_inodes=64 m6t-test {mount}
cd {mount}
{prepare}
cd /
mount -o remount,{options} {mount}
set +e
if [ -s {client} ]; then
    {helper} 2>{lab.workdir}/helper-fs.err &
    pid=$!
    for i in $(seq 100); do [ -S {socket_path} ] && break; sleep 0.05; done
    sh {client}
    kill -TERM $pid; wait $pid; status=$?
else
    timeout 20 {helper} 2>{lab.workdir}/helper-fs.err; status=$?
fi
echo "status=$status"
find {mount} -mindepth 1 | sort
"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    status_line = next(line for line in lines if line.startswith("status="))
    after = [line.removeprefix(str(mount) + "/") for line in lines[lines.index(status_line) + 1:]]
    stderr = (lab.workdir / "helper-fs.err").read_text()
    return int(status_line.removeprefix("status=")), stderr + done.stderr, after


FILL_INODES = "i=0; while touch f$i 2>/dev/null; do i=$((i+1)); done"
STALE_SOCKET = ("mkdir -p run/m6t && python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); "
                "s.bind('run/m6t/helper.sock')\"")


@pytest.mark.parametrize(("prepare", "options", "error", "left"), [
    ("", "ro", "Read-only file system", []),
    ("mkdir -p run/m6t", "ro", "Read-only file system", ["run", "run/m6t"]),
    (STALE_SOCKET, "ro", "Read-only file system", ["run", "run/m6t", "run/m6t/helper.sock"]),
    (FILL_INODES, "rw", "No space left on device", None),
    (f"mkdir -p run/m6t && {FILL_INODES}", "rw", "No space left on device", None),
], ids=["read_only", "read_only_directory_exists", "read_only_stale_socket", "no_inodes_left",
        "no_inodes_left_directory_exists"])
def test_the_helper_refuses_a_socket_directory_it_cannot_write(
        lab: Lab, prepare: str, options: str, error: str, left: list[str] | None) -> None:
    status, stderr, after = helper_on_small_filesystem(lab, prepare, options)
    assert status == 1, stderr
    assert error in stderr and f"{lab.workdir}/fs/run" in stderr, stderr  # why, and where
    assert "Traceback" not in stderr, stderr
    created = [path for path in after if not path.startswith("f") or "/" in path]
    if left is not None:
        assert created == left  # nothing half-made: no directory, no socket file
    else:
        assert not [path for path in created if path.startswith("run/m6t/")]
    assert "m6t0" not in lab.ip("mn", "link").stdout


def test_a_full_filesystem_with_inodes_left_still_takes_the_socket(lab: Lab) -> None:
    """A socket needs an inode, not data blocks: with the tmpfs's blocks full the helper still
    serves, and removes its socket on SIGTERM."""
    fill = "dd if=/dev/zero of=filler bs=64k 2>/dev/null || true"
    client = (f"{sys.executable} -c \"from m6t.control.client import HelperClient; "
              f"c = HelperClient('{lab.workdir}/fs/run/m6t/helper.sock'); "
              "print('api', c.call('version').api)\" > "
              f"{lab.workdir}/client.out 2>&1")
    status, stderr, after = helper_on_small_filesystem(lab, fill, "rw", after_start=client)
    assert status == 0, stderr
    assert (lab.workdir / "client.out").read_text().strip() == "api 1"
    assert "run/m6t/helper.sock" not in after and "filler" in after
