"""m6t.linux.offload's choices, with fakes that fail the way Linux does: which features are
wanted, what TUNSETOFFLOAD negotiation ends with on old and new kernels, UDP GRO's control
message, and that every fallback is reported and logged once. (The real kernel is in
tests/netns/test_offload.py.)"""

from __future__ import annotations

import errno
import logging
import sys

import pytest

from m6t.linux import offload
from m6t.linux.offload import (
    DEFAULT_ON,
    FEATURES,
    NOT_WANTED,
    SOL_UDP,
    TUN_F_CSUM,
    TUN_F_TSO6,
    TUN_F_USO4,
    TUN_F_USO6,
    TUNSETOFFLOAD,
    UDP_GRO_OPTION,
    OffloadConfigError,
    OffloadReport,
    enable_udp_gro,
    gro_segment_size,
    negotiate_tun,
    split_gro,
    wanted_features,
)
from m6t.linux.udp import UdpGso

# --- what is wanted ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "wanted"), [
    ("", DEFAULT_ON),
    ("on", DEFAULT_ON),
    ("off", {"udp_gso"}),
    ("none", {"udp_gso"}),
    ("off,-udp_gso", set()),
    ("-udp_gro", DEFAULT_ON - {"udp_gro"}),
    ("+tun_tso", DEFAULT_ON | {"tun_tso"}),
    ("tun_tso, -tun_coalesce_udp", DEFAULT_ON - {"tun_coalesce_udp"} | {"tun_tso"}),
    ("off,+udp_gro", {"udp_gso", "udp_gro"}),
    ("all", set(FEATURES)),
])
def test_m6t_offloads_names_what_to_try(text: str, wanted: set[str]) -> None:
    assert wanted_features({"M6T_OFFLOADS": text}) == wanted


def test_the_defaults_leave_segmenting_in_python_off() -> None:
    # TSO/USO reads make the kernel leave every checksum to Python (docs/performance.md).
    assert wanted_features({}) == {"udp_gso", "udp_gro", "tun_coalesce_tcp", "tun_coalesce_udp"}


def test_an_unknown_offload_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(OffloadConfigError, match="tun_tos"):
        wanted_features({"M6T_OFFLOADS": "-tun_tos"})


# --- TUN negotiation -----------------------------------------------------------------------------

class FakeTun:
    """TUNSETOFFLOAD as a kernel of some age answers it."""

    def __init__(self, uso: bool = True, offloads: bool = True) -> None:
        self.uso = uso
        self.offloads = offloads
        self.flags: list[int] = []

    def __call__(self, fd: int, request: int, value: int) -> None:
        assert (fd, request) == (7, TUNSETOFFLOAD)
        if value & (TUN_F_USO4 | TUN_F_USO6) and not self.uso:
            raise OSError(errno.EINVAL, "Invalid argument")
        if value and not self.offloads:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.flags.append(value)


def negotiate(wanted: set[str], tun: FakeTun) -> tuple[offload.TunOffloads, OffloadReport]:
    report = OffloadReport()
    return negotiate_tun(7, frozenset(wanted), report, tun), report


def test_a_new_kernel_coalesces_both_and_reads_plain_packets_by_default() -> None:
    tun = FakeTun()
    offloads, report = negotiate(set(DEFAULT_ON), tun)
    assert offloads == offload.TunOffloads(vnet_header=True, coalesce_tcp=True,
                                           coalesce_udp=True, tso=False, uso=False)
    assert tun.flags[-1] == 0  # no TUN_F_CSUM: the kernel completes every checksum itself
    on, off = report.snapshot()
    assert on == ["tun_coalesce_tcp", "tun_coalesce_udp"]
    # Off unless asked for, and the reason says how to ask (not "turned off": nobody did).
    assert off == {"tun_tso": "off by default (M6T_OFFLOADS=+tun_tso turns it on)",
                   "tun_uso": "off by default (M6T_OFFLOADS=+tun_uso turns it on)"}


def test_tso_and_uso_when_asked_for() -> None:
    tun = FakeTun()
    offloads, _ = negotiate(set(FEATURES), tun)
    assert offloads.tso and offloads.uso and offloads.segments_reads
    assert tun.flags[-1] == TUN_F_CSUM | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6


def test_a_kernel_without_uso_keeps_tcp_and_says_why_not_udp() -> None:
    tun = FakeTun(uso=False)
    offloads, report = negotiate(set(FEATURES), tun)
    assert offloads.coalesce_tcp and offloads.tso
    assert not offloads.coalesce_udp and not offloads.uso
    assert tun.flags[-1] == TUN_F_CSUM | TUN_F_TSO6
    _, off = report.snapshot()
    assert off["tun_coalesce_udp"].startswith("kernel without USO (Linux < 6.2): EINVAL")
    assert off["tun_uso"] == off["tun_coalesce_udp"]


def test_a_device_refusing_offloads_still_takes_coalesced_tcp() -> None:
    tun = FakeTun(uso=False, offloads=False)
    offloads, report = negotiate(set(FEATURES), tun)
    assert offloads.coalesce_tcp and not offloads.tso
    assert report.snapshot()[1]["tun_tso"].startswith("TUNSETOFFLOAD refused: EINVAL")


# --- the report ----------------------------------------------------------------------------------

def test_a_fallback_is_logged_once_and_a_wish_not_at_all(caplog: pytest.LogCaptureFixture) -> None:
    report = OffloadReport()
    with caplog.at_level(logging.WARNING, logger="m6t.offload"):
        for _ in range(3):
            report.disabled("udp_gro", "setsockopt(UDP_GRO) refused: ENOPROTOOPT", "3544")
        report.disabled("tun_tso", NOT_WANTED)
    assert [r.getMessage() for r in caplog.records] == [
        "offload udp_gro off on 3544: setsockopt(UDP_GRO) refused: ENOPROTOOPT; "
        "using the plain path"]
    report.enabled("udp_gro")
    assert report.snapshot() == (["udp_gro"], {"tun_tso": NOT_WANTED})


# --- UDP GRO and GSO -----------------------------------------------------------------------------

class Sock:
    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if self.refuse:
            raise OSError(self.refuse, "Protocol not available")
        self.options.append((level, option, value))


def test_udp_gro_where_wanted_and_allowed() -> None:
    report = OffloadReport()
    sock = Sock()
    assert enable_udp_gro(sock, DEFAULT_ON, report) is True  # type: ignore[arg-type]
    assert sock.options == [(SOL_UDP, UDP_GRO_OPTION, 1)]
    refused = Sock(errno.ENOPROTOOPT)
    assert enable_udp_gro(refused, DEFAULT_ON, report) is False  # type: ignore[arg-type]
    assert report.snapshot()[1]["udp_gro"].startswith("setsockopt(UDP_GRO) refused: ENOPROTOOPT")
    assert enable_udp_gro(Sock(), frozenset(), report) is False  # type: ignore[arg-type]
    assert report.snapshot()[1]["udp_gro"] == NOT_WANTED


def test_a_gro_receive_is_cut_at_its_segment_size_and_never_past_its_end() -> None:
    control = [(SOL_UDP, UDP_GRO_OPTION, (1400).to_bytes(4, sys.byteorder))]
    assert gro_segment_size(control) == 1400
    assert gro_segment_size([]) == 0
    assert gro_segment_size([(0, 8, b"\0\0\0\0")]) == 0
    data = b"a" * 1400 + b"b" * 1400 + b"c" * 7
    assert split_gro(data, 1400) == [b"a" * 1400, b"b" * 1400, b"c" * 7]
    assert split_gro(b"x" * 100, 1400) == [b"x" * 100]
    assert split_gro(b"x" * 100, 0) == [b"x" * 100]


class GsoRefusingSocket:
    def sendmsg(self, *args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    def send(self, data: bytes) -> int:
        return len(data)


def test_udp_gso_says_once_why_it_stopped() -> None:
    reasons: list[str] = []
    gso = UdpGso(GsoRefusingSocket(), on_disabled=reasons.append)  # type: ignore[arg-type]
    for _ in range(3):
        assert gso.send([b"x" * 100] * 3, None) == (3, 300)
    assert reasons == ["sendmsg(UDP_SEGMENT) refused: EIO: Input/output error"]
    assert UdpGso(enabled=False).enabled is False
