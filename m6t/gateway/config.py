"""The gateway's TOML configuration: parsed into a typed record, every error names its key.

Example (docs and packaging/m6t-gateway.toml carry the commented version):

    listen = ["0.0.0.0:3544", "0.0.0.0:4500"]
    client_prefix = "fd6d:6d74:1::/48"
    home_agents = ["fd48:4100::2"]
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m6t.protocol.addressing import AddressingError, parse_network
from m6t.protocol.gateway import MAX_LISTENERS, GatewayPolicy

DEFAULT_TUN = "m6tgw0"
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration the gateway refuses; the message starts with the offending key."""


@dataclass(frozen=True)
class GatewayConfig:
    listen: tuple[tuple[str, int], ...]
    tun: str
    metrics_listen: tuple[str, int] | None
    log_level: str
    policy: GatewayPolicy


def _endpoint(key: str, value: Any) -> tuple[str, int]:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ConfigError(f"{key}: expected \"IPV4:PORT\", got {value!r}")
    host, _, port_text = value.partition(":")
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(f"{key}: {host!r} is not an IPv4 address") from None
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{key}: port {port_text!r} must be 1..65535")
    return str(address), int(port_text)


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


_TUNING: dict[str, type] = {
    "temporary_lifetime": float, "active_lifetime": float, "new_states_per_second": float,
    "new_states_burst": int, "max_states": int, "max_temporary_states": int, "mtu": int,
}
_KNOWN = {"listen", "client_prefix", "home_agents", "tun", "metrics_listen", "icmp_source",
          "log_level", *_TUNING}


def parse_config(data: dict[str, Any]) -> GatewayConfig:
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(_KNOWN))})")
    for required in ("listen", "client_prefix", "home_agents"):
        if required not in data:
            raise ConfigError(f"{required}: missing (required)")

    listen_raw = data["listen"]
    if not isinstance(listen_raw, list) or not listen_raw:
        raise ConfigError("listen: expected a non-empty list of \"IPV4:PORT\"")
    if len(listen_raw) > MAX_LISTENERS:
        raise ConfigError(f"listen: at most {MAX_LISTENERS} entries")
    listen = tuple(_endpoint(f"listen[{i}]", item) for i, item in enumerate(listen_raw))
    if len(set(listen)) != len(listen):
        raise ConfigError("listen: duplicate entries")

    try:
        prefix = parse_network(_typed(data, "client_prefix", str, None), "client_prefix")
    except AddressingError as exc:
        raise ConfigError(f"client_prefix: {exc}") from None
    if prefix.prefixlen > 80:
        raise ConfigError("client_prefix: must be /80 or shorter (clients own a /80 each)")

    agents_raw = data["home_agents"]
    if not isinstance(agents_raw, list) or not agents_raw:
        raise ConfigError("home_agents: expected a non-empty list of IPv6 addresses")
    agents = set()
    for i, item in enumerate(agents_raw):
        if not isinstance(item, str):
            raise ConfigError(f"home_agents[{i}]: expected a string, got {item!r}")
        try:
            agents.add(ipaddress.IPv6Address(item))
        except (ValueError, TypeError):
            raise ConfigError(f"home_agents[{i}]: {item!r} is not an IPv6 address") from None

    icmp_source = None
    if "icmp_source" in data:
        if not isinstance(data["icmp_source"], str):
            raise ConfigError(f"icmp_source: expected a string, got {data['icmp_source']!r}")
        try:
            icmp_source = ipaddress.IPv6Address(data["icmp_source"])
        except (ValueError, TypeError):
            raise ConfigError(f"icmp_source: {data['icmp_source']!r} is not an IPv6 address") \
                from None

    tun = _typed(data, "tun", str, DEFAULT_TUN)
    if not 1 <= len(tun) <= 15 or "/" in tun or " " in tun:
        raise ConfigError(f"tun: {tun!r} is not a valid interface name (1-15 characters)")
    metrics = data.get("metrics_listen")
    metrics_listen = None
    if metrics is not None:
        metrics_listen = _endpoint("metrics_listen", metrics)
    log_level = _typed(data, "log_level", str, "warning")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(LOG_LEVELS)}")

    # Tuning keys left out take GatewayPolicy's defaults (m6t.protocol.limits says why).
    tuning: dict[str, Any] = {}
    for key, kind in _TUNING.items():
        if key in data:
            accepted = (int, float) if kind is float else int
            value = _typed(data, key, accepted, None)
            try:
                tuning[key] = kind(value)
            except OverflowError:  # an integer too large for a float
                raise ConfigError(f"{key}: {value} is out of range") from None
    try:
        policy = GatewayPolicy(client_prefix=prefix, home_agents=frozenset(agents),
                               icmp_source=icmp_source, **tuning)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return GatewayConfig(listen, tun, metrics_listen, log_level, policy)


def load_config(path: Path) -> GatewayConfig:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config: {path} is not valid TOML: nested too deeply") from None
    return parse_config(data)
