import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Registered here so that --strict-markers accepts it without a pyproject change.
    config.addinivalue_line(
        "markers", "packaging: builds the .deb files and installs them in a fresh Debian root "
        "(slow, needs root, debootstrap and a Debian mirror; M6T_TEST_PACKAGING=1 runs it)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # test_deb.py's steps build on each other: its `ready` fixture reads this to skip the
    # steps after a failed one.
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
