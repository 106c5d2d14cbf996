"""The operator's files name only what the gateway exports: every m6t_ metric, and every label
value a selector asks for, in the Prometheus rules, the Grafana dashboard, docs/operating.md
and the README, exists in the collector's real output (a renamed metric or a misspelt drop
reason would otherwise make an alert that never fires)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from m6t.gateway.config import parse_config
from m6t.gateway.daemon import GatewayDaemon

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "docs" / "prometheus" / "m6t-alerts.yml"
DASHBOARD = REPO / "docs" / "grafana" / "m6t-gateway.json"
PROSE = (REPO / "docs" / "operating.md", REPO / "README.md")

NAME = re.compile(r"\bm6t_gateway_[a-z0-9_]*[a-z0-9]")
SELECTOR = re.compile(r"\b(m6t_[a-z0-9_]*[a-z0-9])\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
ANY_VALUE = {"instance", "job", "site"}  # target labels, set by the operator's scrape config


def exported() -> dict[str, dict[str, set[str]]]:
    """{sample name: {label: values}} of a gateway's metrics, nearly every labelled series
    present (the daemon's dicts hold every key from the start, so an idle one shows them; the
    families that have none yet, offload fallbacks, are known by their TYPE line)."""
    config = parse_config({"listen": ["198.51.100.1:3544"], "client_prefix": "fd6d:6d74:1::/48",
                           "home_agents": ["fd48:4100::2"]})
    registry = CollectorRegistry()
    registry.register(GatewayDaemon(config).collector)
    series: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE "):  # a family with no series yet still has its name
            _, _, name, kind = line.split()
            series[name + ("_total" if kind == "counter" else "")]
            continue
        if line.startswith("#"):
            continue
        name, _, labels = line.partition("{")
        name = name.split()[0]
        series[name]
        for label, _, value in MATCHER.findall(labels.rpartition("}")[0]):
            series[name][label].add(value)
    return series


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL expression) of every rule and every dashboard query."""
    found = [(f"{RULES.name}: {m.group(1)}", m.group(2).strip())
             for m in re.finditer(r"- alert: (\w+)\n\s+expr: (.+)", RULES.read_text())]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"{DASHBOARD.name}: {panel['title']}", target["expr"]))
    for annotation in dashboard["annotations"]["list"]:
        found.append((f"{DASHBOARD.name}: annotation {annotation['name']}", annotation["expr"]))
    found.append((f"{DASHBOARD.name}: variable instance",
                  dashboard["templating"]["list"][1]["definition"]))
    return found


def test_the_files_have_what_the_test_reads() -> None:
    rules = RULES.read_text()
    assert rules.count("- alert:") == len([w for w, _ in expressions() if w.startswith(RULES.name)])
    assert rules.count("- alert:") >= 8
    names = re.findall(r"- alert: (\w+)", rules)
    assert len(names) == len(set(names))
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert sum(1 for p in panels if p.get("targets")) >= 10


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=lambda v: str(v)[:60])
def test_every_query_uses_real_metrics_and_label_values(where: str, expr: str) -> None:
    series = exported()
    names = NAME.findall(expr)
    assert names or "up{" in expr, f"{where}: no m6t metric in {expr!r}"
    for name in names:
        assert name in series, f"{where}: {name} is not exported (known: {sorted(series)})"
    for name, matchers in SELECTOR.findall(expr):
        for label, op, value in MATCHER.findall(matchers):
            if label in ANY_VALUE or "$" in value:
                continue
            known = series[name].get(label)
            assert known is not None, f"{where}: {name} has no label {label}"
            wanted = value.split("|") if op in ("=~", "!~") else [value]
            for one in wanted:
                assert one in known, f"{where}: {name}{{{label}}} is never {one!r} ({known})"


def test_the_failover_alert_is_one_rule_on_the_start_time() -> None:
    rules = dict(expressions())
    assert rules[f"{RULES.name}: M6tGatewayRestarted"] == \
        "changes(m6t_gateway_start_time_seconds[15m]) > 0"


@pytest.mark.parametrize("path", PROSE, ids=lambda p: p.name)
def test_prose_names_real_metrics(path: Path) -> None:
    series = exported()
    families = {re.sub(r"_(total|created)$", "", name) for name in series} | set(series)
    for name in set(NAME.findall(path.read_text())):
        assert name in families, f"{path.name} names {name}, which the gateway does not export"
