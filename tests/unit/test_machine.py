"""What RFC 4193 prefix generation takes from this machine (m6t.linux.machine.machine_mac), and
the /48 that `m6t prefix new` and the desktop app then get from generate_site_prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from m6t.linux.machine import machine_mac
from m6t.protocol.addressing import (
    generate_site_prefix,
    ntp_timestamp,
    rfc4193_global_id,
    ula_prefix,
)


def interfaces(net_dir: Path, **addresses: str) -> Path:
    """A stand-in for /sys/class/net: one directory per interface with its `address` file."""
    for name, address in addresses.items():
        (net_dir / name).mkdir()
        (net_dir / name / "address").write_text(address + "\n")
    return net_dir


def test_the_first_unicast_mac_by_interface_name_is_chosen(tmp_path: Path) -> None:
    interfaces(tmp_path, wlan0="9a:9b:9c:ea:e4:2b", lo="00:00:00:00:00:00",
               eth0="02:fc:00:00:00:01")
    assert machine_mac(tmp_path) == bytes.fromhex("02fc00000001")


@pytest.mark.parametrize(
    "address",
    ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "not a mac",
     "00:11:22:33:44:55:66:77", ""],
    ids=["zero", "broadcast", "multicast", "garbage", "not_48_bits", "empty"],
)
def test_macs_that_do_not_name_this_machine_are_skipped(tmp_path: Path, address: str) -> None:
    interfaces(tmp_path, a0=address, b0="9a:9b:9c:ea:e4:2b")
    assert machine_mac(tmp_path) == bytes.fromhex("9a9b9ceae42b")


def test_no_mac_at_all_is_none(tmp_path: Path) -> None:
    interfaces(tmp_path, lo="00:00:00:00:00:00")
    (tmp_path / "tun0").mkdir()  # a TUN device has no address file
    assert machine_mac(tmp_path) is None
    assert machine_mac(tmp_path / "missing") is None


def test_site_prefix_follows_rfc4193_from_the_time_and_the_machines_mac(tmp_path: Path) -> None:
    interfaces(tmp_path, lo="00:00:00:00:00:00", eth0="02:fc:00:00:00:01",
               wlan0="9a:9b:9c:ea:e4:2b")
    # 2024-01-01T00:00:00.5Z; NTP seconds since 1900 in the high 32 bits, fraction below.
    now = 1704067200.5
    ntp = (1704067200 + 2208988800) << 32 | 1 << 31
    assert ntp_timestamp(now) == ntp
    eui64 = bytes.fromhex("00fc00fffe000001")  # RFC 4291 appendix A: U/L flipped, FFFE inserted
    site = generate_site_prefix(now, machine_mac(tmp_path))
    assert site == ula_prefix(rfc4193_global_id(ntp, eui64))


def test_site_prefix_without_a_mac_uses_random_bytes(tmp_path: Path) -> None:
    interfaces(tmp_path, lo="00:00:00:00:00:00")
    sites = {generate_site_prefix(1704067200.5, machine_mac(tmp_path)) for _ in range(4)}
    assert len(sites) == 4  # same time, no MAC: only the random EUI-64 differs


def test_ntp_timestamp_wraps_into_era_1_after_2036() -> None:
    assert ntp_timestamp(2085978496.0) == 0  # 2036-02-07T06:28:16Z: NTP era 1 begins
