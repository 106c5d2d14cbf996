"""Test configuration shared by the unit and netns suites.

Network-namespace tests (marker `netns`) need root and the lab's tools. On a developer box
without them they skip; with M6T_REQUIRE_NETNS=1 (set by `make test`, hence CI) a missing
prerequisite is a failure, and the session fails unless netns tests actually passed: the suite
proves that it ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from m6t.lab.lab import Lab, missing_tools

REQUIRE_NETNS = os.environ.get("M6T_REQUIRE_NETNS") == "1"
_netns_passed: list[str] = []


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    missing = missing_tools(("ip", "nft", "conntrack", "ping", "iperf3", "ss"))
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is None:
        return
    reason = _netns_unavailable()
    if reason is None:
        return
    if REQUIRE_NETNS:
        pytest.fail(f"netns test cannot run ({reason}) and M6T_REQUIRE_NETNS=1")
    pytest.skip(reason)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "netns" in report.keywords:
        _netns_passed.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_NETNS and session.testscollected and not session.config.option.collectonly:
        selected_netns = any("netns" in item.keywords for item in session.items)
        if selected_netns and not _netns_passed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REQUIRE_NETNS:
        terminalreporter.write_line(
            f"netns: {len(_netns_passed)} network-namespace tests passed for real "
            f"(M6T_REQUIRE_NETNS=1: a skip would have failed the run)")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab per test: unique namespaces, deleted afterwards even on failure."""
    with Lab() as built:
        yield built
    leftover = built.namespaces_exist()
    assert not leftover, f"namespaces left behind: {leftover}"
