"""Which offloads the data path uses, found out at start and per device or socket.

Offloads cut the per-packet cost of a userspace tunnel (system calls, trips through the stack)
without changing the wire (docs/performance.md, "What made the throughput"):

| feature            | where                    | what                                     |
|--------------------|--------------------------|------------------------------------------|
| `udp_gso`          | UDP socket, send         | a run of same-size datagrams, one send   |
| `udp_gro`          | UDP socket, receive      | a run of datagrams, one receive          |
| `tun_coalesce_tcp` | TUN write (IFF_VNET_HDR) | a run of TCP segments, one GSO_TCPV6     |
| `tun_coalesce_udp` | TUN write (IFF_VNET_HDR) | a run of UDP datagrams, one GSO_UDP_L4   |
| `tun_tso`          | TUN read (TUNSETOFFLOAD) | TCP super-packets from the kernel, cut   |
| `tun_uso`          | TUN read (TUNSETOFFLOAD) | UDP super-packets from the kernel, cut   |

Each is tried where it applies; what the kernel refuses falls back to the plain path for that
socket or device, is logged once, and is reported (the helper's `status`, the gateway's
metrics). `M6T_OFFLOADS` in the environment turns features off or on by name: `off` (every
feature but `udp_gso`), `-udp_gro,-tun_tso`, `+tun_tso`. `tun_tso` and `tun_uso` are off unless
asked for: they make the kernel leave checksums to us, and a Python checksum of every segment
costs more than the read system calls it saves (docs/performance.md).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("m6t.offload")

UDP_GSO = "udp_gso"
UDP_GRO = "udp_gro"
TUN_COALESCE_TCP = "tun_coalesce_tcp"
TUN_COALESCE_UDP = "tun_coalesce_udp"
TUN_TSO = "tun_tso"
TUN_USO = "tun_uso"
FEATURES = (UDP_GSO, UDP_GRO, TUN_COALESCE_TCP, TUN_COALESCE_UDP, TUN_TSO, TUN_USO)
DEFAULT_ON = frozenset({UDP_GSO, UDP_GRO, TUN_COALESCE_TCP, TUN_COALESCE_UDP})
TUN_FEATURES = (TUN_COALESCE_TCP, TUN_COALESCE_UDP, TUN_TSO, TUN_USO)
ENVIRONMENT = "M6T_OFFLOADS"

# linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20  # Linux 6.2; the kernel takes USO4 and USO6 only together
TUN_F_USO6 = 0x40
# linux/udp.h
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_GRO_OPTION = 104  # UDP_GRO, Linux 5.0: setsockopt turns it on; a cmsg gives the size
GRO_CONTROL_SPACE = socket.CMSG_SPACE(4)
MAX_DATAGRAM = 65_535


class OffloadConfigError(ValueError):
    pass


def wanted_features(environment: Mapping[str, str] | None = None) -> frozenset[str]:
    """The features to try, from M6T_OFFLOADS (see the module docstring). An unknown name is
    an error: a typo must not silently leave a feature on."""
    text = (os.environ if environment is None else environment).get(ENVIRONMENT, "")
    wanted = set(DEFAULT_ON)
    for word in (w.strip() for w in text.split(",")):
        if not word or word in ("on", "default"):
            continue
        if word in ("off", "none"):
            wanted &= {UDP_GSO}
            continue
        if word == "all":
            wanted |= set(FEATURES)
            continue
        name = word.lstrip("+-")
        if name not in FEATURES:
            raise OffloadConfigError(f"{ENVIRONMENT}: unknown offload {name!r} "
                                     f"(known: {', '.join(FEATURES)})")
        if word.startswith("-"):
            wanted.discard(name)
        else:
            wanted.add(name)
    return frozenset(wanted)


@dataclass
class OffloadReport:
    """What a data path uses now, and why the rest is off (feature -> reason). Written by set-up
    and the packet thread, read by status and metrics: plain dict and set copies."""

    on: set[str] = field(default_factory=set)
    off: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enabled(self, feature: str) -> None:
        with self._lock:
            self.on.add(feature)
            self.off.pop(feature, None)

    def disabled(self, feature: str, reason: str, context: str = "") -> None:
        """`feature` is not used, for `reason` (logged the first time per feature and reason,
        unless it was a choice: turned off, or a device that offers none)."""
        with self._lock:
            self.on.discard(feature)
            first = self.off.get(feature) != reason
            self.off[feature] = reason
        if first and reason not in _CHOICES:
            log.warning("offload %s off%s: %s; using the plain path", feature,
                        f" on {context}" if context else "", reason)

    def merge(self, other: OffloadReport) -> None:
        for feature in sorted(other.on):
            self.enabled(feature)
        for feature, reason in sorted(other.off.items()):
            self.disabled(feature, reason)

    def snapshot(self) -> tuple[list[str], dict[str, str]]:
        with self._lock:
            return sorted(self.on), dict(sorted(self.off.items()))

    def fallbacks(self) -> dict[str, str]:
        """The features off because the kernel or the device refused them (not by choice):
        where the plain path stands in, what a user should be told."""
        with self._lock:
            return {feature: reason for feature, reason in sorted(self.off.items())
                    if reason not in _CHOICES}


NOT_WANTED = f"turned off ({ENVIRONMENT})"
NOT_OFFERED = "not offered by the device"


def not_wanted(feature: str) -> str:
    """Why `feature` is off when it was not asked for: turned off, or one that is off unless
    asked for (TSO/USO reads), with how to ask."""
    if feature in DEFAULT_ON:
        return NOT_WANTED
    return f"off by default ({ENVIRONMENT}=+{feature} turns it on)"


# Choices, not refusals: not logged, not fallbacks. Every reason a choice can give, so that
# telling them apart is a lookup, not a reading of the text.
_CHOICES = frozenset({NOT_WANTED, NOT_OFFERED, *(not_wanted(feature) for feature in FEATURES)})


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name}: {exc.strerror or exc}"


# --- TUN ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TunOffloads:
    """What a TUN device was opened with. `vnet_header`: every read and write carries a
    virtio-net header (m6t.protocol.gso). `coalesce_*`: writes may be super-packets. `tso`/
    `uso`: reads may be super-packets (and single packets may need their checksum completed)."""

    vnet_header: bool = False
    coalesce_tcp: bool = False
    coalesce_udp: bool = False
    tso: bool = False
    uso: bool = False

    @property
    def segments_reads(self) -> bool:
        return self.tso or self.uso


PLAIN_TUN = TunOffloads()


def negotiate_tun(fd: int, wanted: frozenset[str], report: OffloadReport,
                  set_offload: Callable[[int, int, int], object] | None = None) -> TunOffloads:
    """Set the device's offloads (TUNSETOFFLOAD) on a descriptor opened with IFF_VNET_HDR.

    Writing GSO_TCPV6 needs no device feature; GSO_UDP_L4 needs a kernel that knows USO (6.2),
    which is what accepting TUN_F_USO4|TUN_F_USO6 tells. Reads get super-packets only for the
    TUN_F_* flags set here, and TUN_F_CSUM (which TSO and USO need) makes the kernel leave the
    checksum of every TCP and UDP packet to us, so it is set only with them."""
    ioctl = set_offload or _ioctl
    try:
        ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6)
        no_uso = ""
    except OSError as exc:
        no_uso = f"kernel without USO (Linux < 6.2): {_reason(exc)}"
    tso = TUN_TSO in wanted
    uso = TUN_USO in wanted and not no_uso
    while True:
        flags = (TUN_F_CSUM | TUN_F_TSO6 if tso else 0) | \
            (TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6 if uso else 0)
        try:
            ioctl(fd, TUNSETOFFLOAD, flags)
            break
        except OSError as exc:
            if not flags:
                break  # no offloads is the kernel's default anyway
            refused = f"TUNSETOFFLOAD refused: {_reason(exc)}"
            if uso:
                uso, no_uso = False, refused
            else:
                tso = False
                report.disabled(TUN_TSO, refused)
    offloads = TunOffloads(vnet_header=True, coalesce_tcp=TUN_COALESCE_TCP in wanted,
                           coalesce_udp=TUN_COALESCE_UDP in wanted and not no_uso,
                           tso=tso, uso=uso)
    for feature, on in ((TUN_COALESCE_TCP, offloads.coalesce_tcp),
                        (TUN_COALESCE_UDP, offloads.coalesce_udp), (TUN_TSO, offloads.tso),
                        (TUN_USO, offloads.uso)):
        if on:
            report.enabled(feature)
        elif feature not in wanted:
            report.disabled(feature, not_wanted(feature))
        elif feature in (TUN_COALESCE_UDP, TUN_USO):
            report.disabled(feature, no_uso)
    return offloads


def report_tun(offloads: TunOffloads, device: OffloadReport, report: OffloadReport) -> None:
    """Into a data path's `report`: what its TUN device does (`offloads`), with the reasons
    the device gave for the rest (`device`); a device that gave none (a test's fake) offers
    no offloads."""
    report.merge(device)
    for feature, on in ((TUN_COALESCE_TCP, offloads.coalesce_tcp),
                        (TUN_COALESCE_UDP, offloads.coalesce_udp), (TUN_TSO, offloads.tso),
                        (TUN_USO, offloads.uso)):
        if on:
            report.enabled(feature)
        elif feature not in report.off:
            report.disabled(feature, NOT_OFFERED)


def _ioctl(fd: int, request: int, value: int) -> None:
    fcntl.ioctl(fd, request, value)


# --- UDP GRO --------------------------------------------------------------------------------------

def enable_udp_gro(sock: socket.socket, wanted: frozenset[str], report: OffloadReport,
                   context: str = "") -> bool:
    """Turn UDP GRO on for `sock` if wanted and the kernel (Linux 5.0) and socket allow it."""
    if UDP_GRO not in wanted:
        report.disabled(UDP_GRO, not_wanted(UDP_GRO))
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO_OPTION, 1)
    except OSError as exc:
        report.disabled(UDP_GRO, f"setsockopt(UDP_GRO) refused: {_reason(exc)}", context)
        return False
    report.enabled(UDP_GRO)
    return True


def gro_segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The segment size a GRO receive reports in its control message (an int in host order);
    0 if there is none (one datagram)."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO_OPTION and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return 0


def split_gro(data: bytes, segment_size: int) -> list[bytes]:
    """The datagrams of one GRO receive: every one `segment_size` long but the last, which may
    be shorter. Slices of the bytes received, so never longer than what was received."""
    if not segment_size or len(data) <= segment_size:
        return [data]
    return [data[i:i + segment_size] for i in range(0, len(data), segment_size)]
