"""UDP GSO (m6t.linux.udp.UdpGso) on a real path: mn -> nftables NAT -> gw.

A run of same-size datagrams leaves as one sendmsg(UDP_SEGMENT); the receiver must see the
same datagrams, one by one, in order, as if each had been sent alone. Where the kernel refuses
(a segment that needs fragmenting, no checksum offload), the run goes out one by one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from m6t.lab.lab import Lab

pytestmark = pytest.mark.netns

PORT = 7000

RECEIVER = """
import json, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
sock.settimeout(3)
got = []
try:
    while True:
        got.append(sock.recv(65535).hex())
except socket.timeout:
    pass
print(json.dumps(got), flush=True)
"""

SENDER = """
import json, sys
from m6t.linux.udp import UdpGso, open_tunnel_socket
target, port, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sock = open_tunnel_socket()
sock.connect((target, port))
errors = []
gso = UdpGso(sock, lambda exc, lost: errors.append([exc.errno, lost]))
run = [bytes([i]) * size for i in range(count)]
sent = gso.send_run(run, size, None)
sent += gso.send_run([b"x" * 70000], 70000, None)  # too big for any UDP datagram: reported
print(json.dumps({"sent": sent, "gso": gso.enabled, "refused": gso.refused_size,
                  "errors": errors}))
"""


def exchange(lab: Lab, size: int, count: int) -> tuple[dict[str, Any], list[bytes]]:
    receiver = subprocess.Popen(lab.argv("gw", [sys.executable, "-c", RECEIVER, str(PORT)]),
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        sender = json.loads(lab.run("mn", [sys.executable, "-c", SENDER, lab.addr.gw_wan,
                                           str(PORT), str(size), str(count)]).stdout)
        out, _ = receiver.communicate(timeout=10)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    return sender, [bytes.fromhex(d) for d in json.loads(out)]


def test_a_run_arrives_as_separate_datagrams_in_order(lab: Lab) -> None:
    sender, received = exchange(lab, 1400, 30)
    assert sender["gso"] is True and sender["refused"] == 1 << 16
    assert sender["sent"] == 30
    assert received == [bytes([i]) * 1400 for i in range(30)]
    assert sender["errors"] == [[90, 1]]  # EMSGSIZE, one datagram lost and reported


def test_segments_needing_fragmentation_fall_back_to_one_send_each(lab: Lab) -> None:
    # A 1200-byte link: 1400-byte datagrams must be fragmented (we never set DF), which UDP
    # GSO cannot do; the kernel refuses the run and it goes out one datagram at a time.
    lab.ip("mn", "link", "set", "dev", "eth0", "mtu", "1200")
    sender, received = exchange(lab, 1400, 10)
    assert sender["refused"] == 1400 and sender["gso"] is True
    assert received == [bytes([i]) * 1400 for i in range(10)]
    # Smaller segments still go as one message.
    sender, received = exchange(lab, 1000, 10)
    assert sender["refused"] == 1 << 16
    assert received == [bytes([i]) * 1000 for i in range(10)]


def test_a_device_without_checksum_offload_still_gets_every_datagram(lab: Lab) -> None:
    # Linux 6.11+ checksums a GSO run in software; older kernels say EIO and UdpGso stops
    # trying (tests/unit/test_udp_gso.py). Either way every datagram arrives, once.
    lab.run("mn", ["ethtool", "-K", "eth0", "tx", "off"])
    sender, received = exchange(lab, 1400, 10)
    assert sender["sent"] == 10
    assert received == [bytes([i]) * 1400 for i in range(10)]
