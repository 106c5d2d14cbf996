"""The gateway's TOML configuration: defaults, and every refusal names its key first."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m6t.gateway.config import DEFAULT_TUN, ConfigError, load_config, parse_config
from m6t.protocol.constants import DEFAULT_TUNNEL_MTU
from m6t.protocol.limits import (
    DEFAULT_ACTIVE_LIFETIME,
    DEFAULT_MAX_STATES,
    DEFAULT_NEW_STATES_BURST,
    DEFAULT_NEW_STATES_PER_SECOND,
    DEFAULT_TEMPORARY_LIFETIME,
    TEMPORARY_SHARE_OF_STATES,
)

REPO = Path(__file__).resolve().parents[2]

MINIMAL_TOML = """\
listen = ["0.0.0.0:3544"]
client_prefix = "fd6d:6d74:1::/48"
home_agents = ["fd48:4100::2"]
"""
MINIMAL: dict[str, Any] = {
    "listen": ["0.0.0.0:3544"],
    "client_prefix": "fd6d:6d74:1::/48",
    "home_agents": ["fd48:4100::2"],
}


def config_with(**changes: Any) -> dict[str, Any]:
    """MINIMAL with keys changed; a value of `...` removes the key."""
    data = dict(MINIMAL, **changes)
    return {key: value for key, value in data.items() if value is not ...}


def test_minimal_config_and_its_defaults() -> None:
    config = parse_config(config_with())
    assert config.listen == (("0.0.0.0", 3544),)
    assert config.tun == DEFAULT_TUN == "m6tgw0"
    assert config.metrics_listen is None
    assert config.log_level == "warning"
    policy = config.policy
    assert policy.client_prefix == ipaddress.IPv6Network("fd6d:6d74:1::/48")
    assert policy.home_agents == frozenset({ipaddress.IPv6Address("fd48:4100::2")})
    assert policy.icmp_source == ipaddress.IPv6Address("fd6d:6d74:1::1")
    assert policy.temporary_lifetime == DEFAULT_TEMPORARY_LIFETIME
    assert policy.active_lifetime == DEFAULT_ACTIVE_LIFETIME
    assert policy.new_states_per_second == DEFAULT_NEW_STATES_PER_SECOND
    assert policy.new_states_burst == DEFAULT_NEW_STATES_BURST
    assert policy.max_states == DEFAULT_MAX_STATES
    assert policy.max_temporary_states == DEFAULT_MAX_STATES // TEMPORARY_SHARE_OF_STATES
    assert policy.mtu == DEFAULT_TUNNEL_MTU == 1472


def test_minimal_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(MINIMAL_TOML)
    assert load_config(path) == parse_config(MINIMAL)


def test_every_key_set(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("""\
listen = ["0.0.0.0:3544", "192.0.2.1:4500"]
client_prefix = "fd6d:6d74:1::/64"
home_agents = ["fd48:4100::2", "fd48:4100::3"]
tun = "m6t-test"
metrics_listen = "127.0.0.1:9100"
icmp_source = "fd48:4100::1"
log_level = "debug"
temporary_lifetime = 1  # an integer is fine for seconds
active_lifetime = 45.5
new_states_per_second = 2.5
new_states_burst = 5
max_states = 1000
max_temporary_states = 50
mtu = 1400
""")
    config = load_config(path)
    assert config.listen == (("0.0.0.0", 3544), ("192.0.2.1", 4500))
    assert (config.tun, config.metrics_listen, config.log_level) == (
        "m6t-test", ("127.0.0.1", 9100), "debug")
    policy = config.policy
    assert policy.client_prefix == ipaddress.IPv6Network("fd6d:6d74:1::/64")
    assert len(policy.home_agents) == 2
    assert policy.icmp_source == ipaddress.IPv6Address("fd48:4100::1")
    assert policy.temporary_lifetime == 1.0
    assert isinstance(policy.temporary_lifetime, float)
    assert (policy.active_lifetime, policy.new_states_per_second) == (45.5, 2.5)
    assert (policy.new_states_burst, policy.max_states, policy.max_temporary_states) == (
        5, 1000, 50)
    assert policy.mtu == 1400


def test_a_client_prefix_of_exactly_80_bits_is_accepted() -> None:
    config = parse_config(config_with(client_prefix="fd6d:6d74:1:0:7::/80"))
    assert config.policy.client_prefix.prefixlen == 80


BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    # (test id, changes to MINIMAL, key the message must start with)
    ("unknown_key", {"listne": ["0.0.0.0:3544"]}, "listne"),
    ("missing_listen", {"listen": ...}, "listen"),
    ("missing_client_prefix", {"client_prefix": ...}, "client_prefix"),
    ("missing_home_agents", {"home_agents": ...}, "home_agents"),
    ("listen_empty", {"listen": []}, "listen"),
    ("listen_not_a_list", {"listen": "0.0.0.0:3544"}, "listen"),
    ("listen_duplicate", {"listen": ["0.0.0.0:3544", "0.0.0.0:3544"]}, "listen"),
    ("listen_too_many", {"listen": [f"0.0.0.0:{port}" for port in range(1000, 1257)]}, "listen"),
    ("listen_no_port", {"listen": ["0.0.0.0"]}, "listen[0]"),
    ("listen_second_entry_bad", {"listen": ["0.0.0.0:3544", "gateway:4500"]}, "listen[1]"),
    ("listen_ipv6", {"listen": ["[::]:3544"]}, "listen[0]"),
    ("listen_not_a_string", {"listen": [3544]}, "listen[0]"),
    ("listen_port_0", {"listen": ["0.0.0.0:0"]}, "listen[0]"),
    ("listen_port_65536", {"listen": ["0.0.0.0:65536"]}, "listen[0]"),
    ("listen_port_negative", {"listen": ["0.0.0.0:-1"]}, "listen[0]"),
    ("listen_port_not_a_number", {"listen": ["0.0.0.0:http"]}, "listen[0]"),
    ("prefix_garbage", {"client_prefix": "not a prefix"}, "client_prefix"),
    ("prefix_host_bits", {"client_prefix": "fd6d:6d74:1::1/48"}, "client_prefix"),
    ("prefix_longer_than_80", {"client_prefix": "fd6d:6d74:1:0:7:8::/96"}, "client_prefix"),
    ("prefix_81", {"client_prefix": "fd6d:6d74:1:0:7:8000::/81"}, "client_prefix"),
    ("prefix_multicast", {"client_prefix": "ff0e::/48"}, "client_prefix"),
    ("prefix_link_local", {"client_prefix": "fe80::/64"}, "client_prefix"),
    ("prefix_ipv4", {"client_prefix": "10.0.0.0/8"}, "client_prefix"),
    ("prefix_not_a_string", {"client_prefix": 48}, "client_prefix"),
    ("home_agents_empty", {"home_agents": []}, "home_agents"),
    ("home_agents_not_a_list", {"home_agents": "fd48:4100::2"}, "home_agents"),
    ("home_agent_garbage", {"home_agents": ["fd48:4100::2", "home-agent"]}, "home_agents[1]"),
    ("home_agent_ipv4", {"home_agents": ["192.0.2.2"]}, "home_agents[0]"),
    ("home_agent_inside_client_prefix", {"home_agents": ["fd6d:6d74:1::2"]}, "home_agents"),
    ("icmp_source_garbage", {"icmp_source": "nope"}, "icmp_source"),
    ("tun_empty", {"tun": ""}, "tun"),
    ("tun_too_long", {"tun": "a" * 16}, "tun"),
    ("tun_slash", {"tun": "m6t/0"}, "tun"),
    ("tun_not_a_string", {"tun": 0}, "tun"),
    ("metrics_listen_hostname", {"metrics_listen": "localhost:9100"}, "metrics_listen"),
    ("metrics_listen_int", {"metrics_listen": 9100}, "metrics_listen"),
    ("log_level_unknown", {"log_level": "verbose"}, "log_level"),
    ("log_level_not_a_string", {"log_level": 10}, "log_level"),
    ("mtu_below_1280", {"mtu": 1279}, "mtu"),
    ("mtu_above_65507", {"mtu": 65508}, "mtu"),
    ("mtu_float", {"mtu": 1400.0}, "mtu"),
    ("mtu_string", {"mtu": "1400"}, "mtu"),
    ("mtu_bool", {"mtu": True}, "mtu"),
    ("temporary_lifetime_zero", {"temporary_lifetime": 0}, "temporary_lifetime"),
    ("temporary_lifetime_over_60", {"temporary_lifetime": 61}, "temporary_lifetime"),
    ("temporary_lifetime_nan", {"temporary_lifetime": float("nan")}, "temporary_lifetime"),
    ("temporary_lifetime_string", {"temporary_lifetime": "2"}, "temporary_lifetime"),
    ("temporary_lifetime_bool", {"temporary_lifetime": True}, "temporary_lifetime"),
    # The rule is on the pair; GatewayPolicy reports it under the longer one.
    ("temporary_not_below_active", {"temporary_lifetime": 30, "active_lifetime": 30},
     "active_lifetime"),
    ("temporary_above_active", {"temporary_lifetime": 40, "active_lifetime": 30},
     "active_lifetime"),
    ("active_lifetime_over_a_day", {"active_lifetime": 86401}, "active_lifetime"),
    ("active_lifetime_inf", {"active_lifetime": float("inf")}, "active_lifetime"),
    ("new_states_per_second_zero", {"new_states_per_second": 0}, "new_states_per_second"),
    ("new_states_per_second_negative", {"new_states_per_second": -1.5},
     "new_states_per_second"),
    ("new_states_per_second_bool", {"new_states_per_second": False}, "new_states_per_second"),
    ("new_states_burst_zero", {"new_states_burst": 0}, "new_states_burst"),
    ("new_states_burst_float", {"new_states_burst": 2.5}, "new_states_burst"),
    ("max_states_zero", {"max_states": 0}, "max_states"),
    ("max_states_string", {"max_states": "many"}, "max_states"),
    ("max_temporary_above_max", {"max_states": 10, "max_temporary_states": 11},
     "max_temporary_states"),
    ("max_temporary_negative", {"max_temporary_states": -1}, "max_temporary_states"),
]


@pytest.mark.parametrize(("changes", "key"), [entry[1:] for entry in BAD_CONFIGS],
                         ids=[entry[0] for entry in BAD_CONFIGS])
def test_bad_config_is_refused_naming_the_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(config_with(**changes))
    assert str(refused.value).startswith(f"{key}:"), str(refused.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(("changes", "key"), [
    ({"home_agents": [1]}, "home_agents[0]"),
    ({"home_agents": [True]}, "home_agents[0]"),
    ({"icmp_source": 1}, "icmp_source"),
], ids=["home_agent_int", "home_agent_bool", "icmp_source_int"])
def test_a_number_is_not_an_ipv6_address(changes: dict[str, Any], key: str) -> None:
    # TOML `home_agents = [1]` is surely a typo; today it configures ::1 as home agent.
    with pytest.raises(ConfigError, match="^" + re.escape(key)):
        parse_config(config_with(**changes))


def test_new_states_per_second_nan_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^new_states_per_second"):
        parse_config(config_with(new_states_per_second=float("nan")))


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(MINIMAL_TOML + "mtu = = 1400\n")
    with pytest.raises(ConfigError, match=r"^config: .*gateway\.toml is not valid TOML"):
        load_config(path)


def test_toml_errors_after_parsing_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(MINIMAL_TOML + "mtu = 1000\n")
    with pytest.raises(ConfigError, match=r"^mtu:"):
        load_config(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: cannot read .*absent\.toml"):
        load_config(tmp_path / "absent.toml")


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root (chmod 000 would not stop root).
    with pytest.raises(ConfigError, match=r"^config: cannot read"):
        load_config(tmp_path)


# --- the real command line --------------------------------------------------------------------


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m6t.gateway", "--config", str(path), "--check"],
        capture_output=True, text=True, timeout=60, cwd=REPO)


def test_cli_check_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(MINIMAL_TOML)
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: OK" in result.stdout
    assert "fd6d:6d74:1::/48" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(("extra", "key"), [
    ("mtu = 1000\n", "mtu:"),
    ("colour = \"blue\"\n", "colour:"),
    ("temporary_lifetime = true\n", "temporary_lifetime:"),
])
def test_cli_check_refuses_a_bad_file_naming_the_key(tmp_path: Path, extra: str,
                                                     key: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(MINIMAL_TOML + extra)
    result = run_check(path)
    assert result.returncode != 0
    assert key in result.stderr
    assert "OK" not in result.stdout


def test_cli_check_refuses_a_missing_file(tmp_path: Path) -> None:
    result = run_check(tmp_path / "absent.toml")
    assert result.returncode != 0
    assert "cannot read" in result.stderr
