"""Fuzzing the two files people write by hand: the profiles file (m6t.profiles) and the gateway's
TOML configuration (m6t.gateway.config). Any text gives a value or the module's own error
(ProfilesError, ConfigError) with a message naming what is wrong; never another exception,
which would be a traceback instead of "profile office: mtu: ..." or "listen[0]: ...".

Seeds: corpus/profiles/ and corpus/gateway/. Text is mutated byte-wise (broken TOML) and
structure-wise (valid TOML whose values are swapped for odd ones: huge integers, NaN, dates,
non-ASCII digits, nested tables).
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from m6t.gateway.config import ConfigError, GatewayConfig, load_config, parse_config
from m6t.profiles import ProfileBook, ProfilesError, dump_profiles, load, parse_profiles
from tests.fuzz.seeds import CORPUS, mutated, mutated_value, seeds, toml_values
from tests.unit.helpers import bounded

PROFILE_FILES = seeds("profiles")
GATEWAY_FILES = seeds("gateway")
PROFILE_DATA = [tomllib.loads(text.decode()) for text in PROFILE_FILES]
GATEWAY_DATA = [tomllib.loads(text.decode()) for text in GATEWAY_FILES]


def toml_text(data: dict[str, Any]) -> str | None:
    """`data` as TOML, or None when TOML cannot say it (None values, NaN keys...)."""
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError):
        return None


@st.composite
def structured(draw: st.DrawFn, corpus: list[dict[str, Any]]) -> dict[str, Any]:
    changed = draw(mutated_value(draw(st.sampled_from(corpus)), toml_values))
    return changed if isinstance(changed, dict) else {"value": changed}


def decoded(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# --- the profiles file -------------------------------------------------------------------------


def check_book(book: ProfileBook) -> None:
    names = book.names()
    assert len(set(names)) == len(names)
    assert book.default is None or book.default in names
    # What was accepted can be written and read back the same.
    assert parse_profiles(dump_profiles(book)) == book


@bounded(200)
@given(st.one_of(mutated(PROFILE_FILES), mutated(PROFILE_FILES, max_steps=12),
                 st.binary(max_size=120)))
def test_any_profiles_text_is_a_book_or_a_profiles_error(data: bytes) -> None:
    try:
        book = parse_profiles(decoded(data), "profiles.toml")
    except ProfilesError as exc:
        assert str(exc).startswith("profiles.toml")
        return
    check_book(book)


@bounded(200)
@given(structured(PROFILE_DATA))
def test_any_profiles_structure_is_a_book_or_an_error_naming_the_profile(
        data: dict[str, Any]) -> None:
    text = toml_text(data)
    if text is None:
        return
    try:
        book = parse_profiles(text, "profiles.toml")
    except ProfilesError as exc:
        assert str(exc).startswith("profiles.toml")
        return
    check_book(book)


@bounded(100)
@given(st.binary(max_size=200))
def test_any_bytes_on_disk_load_or_say_the_file_is_left_untouched(tmp_path_factory:
                                                                  pytest.TempPathFactory,
                                                                  data: bytes) -> None:
    path = tmp_path_factory.mktemp("profiles") / "profiles.toml"
    path.write_bytes(data)
    try:
        load(path)
    except ProfilesError as exc:
        assert "left untouched" in str(exc)
    assert path.read_bytes() == data


# --- the gateway's configuration -----------------------------------------------------------------

KEYS = {"listen", "client_prefix", "home_agents", "tun", "metrics_listen", "icmp_source",
        "log_level", "temporary_lifetime", "active_lifetime", "new_states_per_second",
        "new_states_burst", "max_states", "max_temporary_states", "mtu", "config"}


def check_config(config: GatewayConfig) -> None:
    policy = config.policy
    assert config.listen and all(1 <= port <= 65535 for _, port in config.listen)
    assert policy.home_agents and policy.client_prefix.prefixlen <= 80
    assert 1280 <= policy.mtu <= 65507
    assert math.isfinite(policy.temporary_lifetime) and math.isfinite(policy.active_lifetime)
    assert 1 <= policy.max_temporary_states <= policy.max_states


@bounded(250)
@given(structured(GATEWAY_DATA))
def test_any_gateway_config_is_a_config_or_an_error_naming_its_key(
        data: dict[str, Any]) -> None:
    try:
        config = parse_config(data)
    except ConfigError as exc:
        # The message starts with the key it is about (a known one, or the unknown one given).
        assert any(str(exc).startswith(f"{key}") for key in KEYS | set(data)), str(exc)
        return
    check_config(config)


@bounded(150)
@given(st.one_of(mutated(GATEWAY_FILES), mutated(GATEWAY_FILES, max_steps=12),
                 st.binary(max_size=120)))
def test_any_gateway_config_file_is_a_config_or_a_config_error(
        tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("gateway") / "gateway.toml"
    path.write_bytes(data)
    try:
        config = load_config(path)
    except ConfigError:
        return
    check_config(config)


# --- what the fuzzers found --------------------------------------------------------------------

MINIMAL = tomllib.loads((CORPUS / "gateway" / "minimal.toml").read_text())


@pytest.mark.parametrize(("changes", "key"), [
    ({"listen": ["198.51.100.1:²"]}, "listen[0]"),  # str.isdigit() is True, int() refuses it
    ({"metrics_listen": "127.0.0.1:¹²³"}, "metrics_listen"),
    ({"active_lifetime": 10**400}, "active_lifetime"),  # TOML integers have no size limit here
    ({"new_states_per_second": -(10**400)}, "new_states_per_second"),
], ids=["superscript_port", "superscript_metrics_port", "huge_lifetime", "huge_rate"])
def test_odd_numbers_in_the_gateway_config_are_config_errors(changes: dict[str, Any],
                                                             key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}:"):
        parse_config({**MINIMAL, **changes})


def test_a_huge_integer_in_the_gateway_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps(MINIMAL) + "temporary_lifetime = " + "9" * 400 + "\n")
    with pytest.raises(ConfigError, match=r"^temporary_lifetime"):
        load_config(path)


def test_a_gateway_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(tomli_w.dumps(MINIMAL).encode() + b'tun = "m6t\xff"\n')
    with pytest.raises(ConfigError, match=r"^config:"):
        load_config(path)


DEEP = 600  # nesting depth of a TOML array: 1 200 bytes


def test_a_deeply_nested_gateway_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps(MINIMAL) + "extra = " + "[" * DEEP + "]" * DEEP + "\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_a_deeply_nested_profiles_file_is_a_profiles_error() -> None:
    with pytest.raises(ProfilesError):
        parse_profiles("default = " + "[" * DEEP + "]" * DEEP + "\n", "profiles.toml")
