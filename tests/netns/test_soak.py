"""The gateway soak (bench/soak.py) in its quick form: a thousand clients behind the NAT for a
minute, with churn, spoofers and floods; the invariants hold at the end.

The soak builds its own lab (unique namespaces, deleted at the end even on failure) and prints
its figures; here it runs as a child process, as an operator would run it, and its JSON report
is checked. bench/soak.py's docstring defines a spoof success and the RSS bound.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.netns

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("m6t_bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up by name
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("soak") / "report.json"
    done = subprocess.run([sys.executable, str(SOAK), "--quick", "--quiet", "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert out.exists(), f"the soak did not finish ({done.returncode}):\n{done.stdout}\n" \
                         f"{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    result["printed"] = done.stdout
    result["exit_status"] = done.returncode
    return result


def test_quick_soak_lets_no_spoofer_in(report: dict[str, Any]) -> None:
    clients, home, attacker = report["clients"], report["home"], report["attacker"]
    spoofed = clients["counts"]["spoofs_sent"] + attacker["counts"]["spoofs_sent"]
    assert spoofed >= 100, "the soak must actually spoof"
    # A spoof success: a spoofed datagram reached the home agent, the answer to one reached its
    # victim, or anything reached a spoofer's socket (the victim's state re-bound).
    assert home["counts"]["spoofs_received"] == 0
    assert clients["counts"]["spoof_answers_to_victims"] == 0
    assert clients["counts"]["spoofer_receipts"] == 0
    assert attacker["counts"]["spoofer_receipts"] == 0
    if report["kernel_udp_drops"]["gw"] == 0:
        assert report["drops"]["ipv4_mismatch"] == spoofed
        assert report["drops"]["keepalive_ipv4_mismatch"] == (
            clients["counts"]["spoofed_keepalives_sent"]
            + attacker["counts"]["spoofed_keepalives_sent"])


def test_quick_soak_ends_with_one_active_state_per_live_client(report: dict[str, Any]) -> None:
    clients = report["clients"]
    assert clients["live_clients"] == 1000
    assert clients["counts"]["vanished"] > 0 and clients["counts"]["reattached"] > 0
    assert report["states"] == {"active": clients["live_clients"], "temporary": 0}
    assert clients["live_answered"] == clients["live_clients"]


def test_quick_soak_keeps_the_gateway_rss_flat(report: dict[str, Any]) -> None:
    soak = load_soak()
    rss = report["rss"]
    assert rss["end"] - rss["ramp"] <= soak.RSS_GROWTH_BOUND, rss


def test_quick_soak_holds_the_flood_and_serves_everyone(report: dict[str, Any]) -> None:
    soak = load_soak()
    verdicts = soak.verdicts(report)
    failed = {name: seen for name, (holds, seen) in verdicts.items() if not holds}
    assert not failed, report["printed"]
    assert report["drops"]["rate_limited"] > 0
    assert report["exit_status"] == 0
    assert report["gateway_alive"] and not report["gateway_traceback"]
