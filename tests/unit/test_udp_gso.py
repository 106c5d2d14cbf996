"""UdpGso's choices, with a fake socket that fails the way Linux does (the real sends, through a
real NAT, are in tests/netns/test_udp_gso.py)."""

from __future__ import annotations

import errno
import sys

import pytest

from m6t.linux.udp import (
    EARLIER_DATAGRAM_ERRORS,
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_SEGMENT,
    UdpGso,
    gso_limit,
)


class FakeSocket:
    def __init__(self, gso_errno: int | None = None, send_errno: int | None = None) -> None:
        self.gso_errno = gso_errno
        self.send_errno = send_errno
        self.messages: list[tuple[bytes, int, tuple[str, int] | None]] = []  # data, segment, to
        self.datagrams: list[tuple[bytes, tuple[str, int] | None]] = []

    def sendmsg(self, buffers: list[bytes], control: list[tuple[int, int, bytes]],
                flags: int = 0, to: tuple[str, int] | None = None) -> int:
        if self.gso_errno is not None:
            raise OSError(self.gso_errno, "refused")
        ((level, kind, data),) = control
        assert level == SOL_UDP
        assert kind == UDP_SEGMENT
        self.messages.append((b"".join(buffers), int.from_bytes(data, sys.byteorder), to))
        return sum(map(len, buffers))

    def send(self, data: bytes) -> int:
        return self.sendto(data, None)

    def sendto(self, data: bytes, to: tuple[str, int] | None) -> int:
        if self.send_errno is not None:
            raise OSError(self.send_errno, "failed")
        self.datagrams.append((data, to))
        return len(data)


RUN = [bytes([i]) * 100 for i in range(5)]
TO = ("192.0.2.1", 3544)


def test_a_run_is_one_message_with_the_segment_size() -> None:
    sock = FakeSocket()
    assert UdpGso(sock).send_run(RUN, 100, TO) == 5  # type: ignore[arg-type]
    assert sock.messages == [(b"".join(RUN), 100, TO)] and sock.datagrams == []


def test_a_single_datagram_is_a_plain_send() -> None:
    sock = FakeSocket()
    assert UdpGso(sock).send_run(RUN[:1], 100, None) == 1  # type: ignore[arg-type]
    assert sock.messages == [] and sock.datagrams == [(RUN[0], None)]


@pytest.mark.parametrize("code", [errno.EMSGSIZE, errno.EINVAL])
def test_a_refused_segment_size_is_sent_one_by_one_from_then_on(code: int) -> None:
    sock = FakeSocket(gso_errno=code)
    gso = UdpGso(sock)  # type: ignore[arg-type]
    assert gso.send_run(RUN, 100, None) == 5
    assert [d for d, _ in sock.datagrams] == RUN
    assert gso.refused_size == 100 and gso.enabled
    sock.gso_errno = None
    gso.send_run(RUN, 100, None)  # no second try at that size
    assert sock.messages == []
    gso.send_run([b"a" * 50] * 3, 50, None)  # smaller ones still go as one message
    assert sock.messages == [(b"a" * 150, 50, None)]


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOPROTOOPT])
def test_no_gso_on_this_path_means_never_again(code: int) -> None:
    sock = FakeSocket(gso_errno=code)
    gso = UdpGso(sock)  # type: ignore[arg-type]
    assert gso.send_run(RUN, 100, TO) == 5
    assert not gso.enabled and [d for d, _ in sock.datagrams] == RUN
    sock.gso_errno = None
    gso.send_run(RUN, 100, TO)
    assert sock.messages == []


def test_other_errors_lose_the_run_and_say_so() -> None:
    sock = FakeSocket(gso_errno=errno.EAGAIN)
    lost: list[tuple[int | None, int]] = []
    gso = UdpGso(sock, lambda exc, n: lost.append((exc.errno, n)))  # type: ignore[arg-type]
    assert gso.send_run(RUN, 100, None) == 0
    assert lost == [(errno.EAGAIN, 5)] and gso.enabled
    sock = FakeSocket(send_errno=errno.ECONNREFUSED)
    gso = UdpGso(sock, lambda exc, n: lost.append((exc.errno, n)))  # type: ignore[arg-type]
    assert gso.send_run(RUN[:1], 100, None) == 0
    assert lost[-1] == (errno.ECONNREFUSED, 1)


def test_without_a_handler_errors_propagate() -> None:
    with pytest.raises(OSError):
        UdpGso(FakeSocket(gso_errno=errno.EBADF)).send_run(RUN, 100, None)  # type: ignore[arg-type]


def test_limit_keeps_a_message_under_64_kib_and_the_kernels_segment_cap() -> None:
    assert gso_limit(1472) == GSO_MAX_BYTES // 1472 == 44
    assert gso_limit(40) == GSO_MAX_SEGMENTS
    assert gso_limit(65_000) == 1 and gso_limit(0) == GSO_MAX_SEGMENTS


class RefusingOnce(FakeSocket):
    """Fails the next send with an error about an earlier datagram, as Linux does with
    IP_RECVERR after an ICMP error, then sends normally."""

    def __init__(self, code: int = errno.ECONNREFUSED, times: int = 1) -> None:
        super().__init__()
        self.pending = [code] * times

    def sendmsg(self, buffers: list[bytes], control: list[tuple[int, int, bytes]],
                flags: int = 0, to: tuple[str, int] | None = None) -> int:
        if self.pending:
            raise OSError(self.pending.pop(), "earlier datagram")
        return super().sendmsg(buffers, control, flags, to)

    def sendto(self, data: bytes, to: tuple[str, int] | None) -> int:
        if self.pending:
            raise OSError(self.pending.pop(), "earlier datagram")
        return super().sendto(data, to)


@pytest.mark.parametrize("code", sorted(EARLIER_DATAGRAM_ERRORS))
def test_an_error_about_an_earlier_datagram_costs_nothing(code: int) -> None:
    sock = RefusingOnce(code)
    assert UdpGso(sock).send_run(RUN, 100, TO) == 5  # type: ignore[arg-type]
    assert sock.messages == [(b"".join(RUN), 100, TO)]
    sock = RefusingOnce(code)
    assert UdpGso(sock).send_run(RUN[:1], 100, TO) == 1  # type: ignore[arg-type]
    assert sock.datagrams == [(RUN[0], TO)]


def test_the_same_error_twice_is_this_datagrams_own() -> None:
    lost: list[tuple[int | None, int]] = []
    sock = RefusingOnce(times=2)
    gso = UdpGso(sock, lambda exc, n: lost.append((exc.errno, n)))  # type: ignore[arg-type]
    assert gso.send_run(RUN[:1], 100, TO) == 0
    assert lost == [(errno.ECONNREFUSED, 1)]


def test_send_groups_runs_of_one_size_in_order() -> None:
    sock = FakeSocket()
    datagrams = [b"a" * 100] * 3 + [b"b" * 50] + [b"c" * 100] * 2
    assert UdpGso(sock).send(datagrams, TO) == (6, 550)  # type: ignore[arg-type]
    assert sock.messages == [(b"a" * 300, 100, TO), (b"c" * 200, 100, TO)]
    assert sock.datagrams == [(b"b" * 50, TO)]


def test_send_cuts_a_long_run_at_the_limit() -> None:
    sock = FakeSocket()
    assert UdpGso(sock).send([b"x" * 1472] * 50, None) == (50, 50 * 1472)  # type: ignore[arg-type]
    assert [(len(data), segment) for data, segment, _ in sock.messages] == [
        (44 * 1472, 1472), (6 * 1472, 1472)]


def test_send_counts_only_what_went_out() -> None:
    sock = FakeSocket(gso_errno=errno.EAGAIN)
    gso = UdpGso(sock, lambda exc, n: None)  # type: ignore[arg-type]
    assert gso.send([b"x" * 100] * 3 + [b"y" * 10], None) == (1, 10)
