"""The helper's per-network memory (m6t_helper.memory), the network identity and the captive
portal verdict (m6t.linux.netident, m6t.linux.portal): pure parts and the state file."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
from m6t_helper import memory as memory_module
from m6t_helper.memory import NetworkMemory

from m6t.linux import portal
from m6t.linux.netident import network_identity
from m6t.protocol.session import Ipv4Path, Remembered

WIFI = Ipv4Path("wlan0", "192.168.1.1", "192.168.1.20", 1500)
NET = "5f0c2d9a61b7e3a4"


class Clock:
    def __init__(self) -> None:
        self.now = 1_796_000_000.0

    def __call__(self) -> float:
        return self.now


def test_what_is_remembered_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    clock = Clock()
    memory = NetworkMemory(tmp_path, clock)
    assert memory.recall(NET, "office") is None
    memory.remember(NET, "router 192.168.1.1", "office", 4500, 1372)
    memory.note_fragments(NET, "office", False)
    again = NetworkMemory(tmp_path, clock)
    assert again.recall(NET, "office") == Remembered(4500, 1372)
    assert again.recall(NET, "home") is None
    [known] = again.known(current={NET})
    assert (known.port, known.mtu, known.fragments_pass, known.current) == (4500, 1372, False,
                                                                              True)
    assert stat.S_IMODE((tmp_path / "networks.json").stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["networks.json"]  # no temporary left behind


def test_forget_one_network_or_all(tmp_path: Path) -> None:
    memory = NetworkMemory(tmp_path, Clock())
    memory.remember(NET, "a", "office", 4500, 1472)
    memory.remember("another", "b", "office", 3544, 1472)
    assert memory.forget(NET) is True
    assert memory.forget(NET) is False
    assert [n.id for n in NetworkMemory(tmp_path).known()] == ["another"]
    assert memory.forget(None) is True
    assert NetworkMemory(tmp_path).known() == []


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 9, "networks": {}}',
                                     b'{"networks": {"x": {"office": {"port": "high"}}}}',
                                     b"\xff\xfe garbage"])
def test_a_corrupt_file_is_set_aside_and_reported_never_a_crash(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "networks.json").write_bytes(content)
    memory = NetworkMemory(tmp_path, Clock())
    assert memory.known() == []
    assert memory.problem is not None and "set aside" in memory.problem
    assert "unreadable" in caplog.text
    aside = [name for name in os.listdir(tmp_path) if ".corrupt-" in name]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes() == content  # kept, not lost
    memory.remember(NET, "a", "office", 4500, 1472)  # and it goes on, with a fresh file
    assert json.loads((tmp_path / "networks.json").read_bytes())["version"] == 1


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "the disk is full"),
                                             (errno.EROFS, "read-only file system")])
def test_a_file_that_cannot_be_written_is_reported_once_and_nothing_half_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        code: int, words: str) -> None:
    memory = NetworkMemory(tmp_path, Clock())
    memory.remember(NET, "a", "office", 3544, 1472)
    before = (tmp_path / "networks.json").read_bytes()

    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(memory_module.os, "fsync", fail)
    memory.remember(NET, "a", "office", 4500, 1400)
    memory.remember("other", "b", "office", 53, 1472)
    assert memory.saved is False and memory.problem is not None and words in memory.problem
    assert caplog.text.count("cannot write") == 1  # said once
    assert (tmp_path / "networks.json").read_bytes() == before  # the old file, whole
    assert sorted(os.listdir(tmp_path)) == ["networks.json"]  # no temporary left behind
    assert memory.recall(NET, "office") == Remembered(4500, 1400)  # remembered in RAM
    monkeypatch.undo()
    memory.remember("third", "c", "office", 53, 1472)
    assert memory.saved is True
    assert NetworkMemory(tmp_path).recall(NET, "office") == Remembered(4500, 1400)


def test_a_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores directory permissions; the errno path is the same as above
        target = Path("/proc/m6t-cannot-exist")
    else:
        target = tmp_path / "locked"
        target.mkdir(mode=0o500)
    memory = NetworkMemory(target, Clock())
    memory.remember(NET, "a", "office", 4500, 1472)
    assert memory.saved is False and memory.problem is not None
    assert memory.recall(NET, "office") == Remembered(4500, 1472)


def test_the_memory_is_bounded_oldest_first(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_module, "MAX_NETWORKS", 3)
    clock = Clock()
    memory = NetworkMemory(tmp_path, clock)
    for index in range(5):
        clock.now += 10
        memory.remember(f"net{index}", "x", "office", 3544, 1472)
    assert sorted(n.id for n in memory.known()) == ["net2", "net3", "net4"]


def test_a_network_is_its_router_and_its_ssid() -> None:
    home = network_identity(WIFI, "02:fc:00:00:00:01", "CoffeeShop")
    assert home == network_identity(WIFI, "02:fc:00:00:00:01", "CoffeeShop")
    assert len(home.id) == 16
    assert home.label == "Wi-Fi CoffeeShop, router 192.168.1.1 (02:fc:00:00:00:01), on wlan0"
    others = {network_identity(WIFI, "02:fc:00:00:00:02", "CoffeeShop").id,
              network_identity(WIFI, "02:fc:00:00:00:01", "Other").id,
              network_identity(Ipv4Path("wlan0", "192.168.2.1", "192.168.2.5"),
                               "02:fc:00:00:00:01", "CoffeeShop").id,
              network_identity(WIFI, None, "CoffeeShop").id}
    assert home.id not in others and len(others) == 4


PROBE_204 = portal.PortalProbe("http://192.168.1.1/check", None)
PROBE_TEXT = portal.PortalProbe("http://192.168.1.1/check", "online")


@pytest.mark.parametrize(("probe", "status", "location", "body", "verdict"), [
    (PROBE_204, 204, None, b"", None),
    (PROBE_TEXT, 200, None, b"online\n", None),
    (PROBE_TEXT, 302, "/login?next=x", b"", "http://192.168.1.1/login?next=x"),
    (PROBE_204, 307, "http://portal.example/auth", b"", "http://portal.example/auth"),
    (PROBE_204, 200, None, b"<html>Welcome, please log in</html>", PROBE_204.url),
    (PROBE_TEXT, 200, None, b"<html>Hotel Wi-Fi</html>", PROBE_TEXT.url),
    (PROBE_TEXT, 511, None, b"Network Authentication Required", PROBE_TEXT.url),
])
def test_a_portal_is_told_by_its_answer(probe: portal.PortalProbe, status: int,
                                        location: str | None, body: bytes,
                                        verdict: str | None) -> None:
    assert portal.judge(probe, status, location, body) == verdict


@pytest.mark.parametrize("url", ["https://example.net/check", "ftp://x/", "not a url"])
def test_the_portal_probe_must_be_plain_http(url: str) -> None:
    with pytest.raises(ValueError, match="http://"):
        portal.PortalProbe(url)
