"""docs/control-api.md against the code: its tables of methods, causes, reasons, events and
error codes, and its example records, must say what m6t/control says, so that they cannot
drift apart again."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec

from m6t.control import schema
from m6t.control.errors import ErrorCode

DOC = (Path(__file__).parents[2] / "docs" / "control-api.md").read_text()


def section(title: str) -> str:
    """The text under a heading, up to the next heading of any level."""
    found = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#|\Z)", DOC, re.M | re.S)
    assert found, f"docs/control-api.md has no section {title!r}"
    return found.group(1)


def table_rows(text: str, after: str) -> list[list[str]]:
    """The rows of the first Markdown table that follows `after`, as lists of cells."""
    start = text.index(after)
    rows = []
    for line in text[start:].splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    return rows[1:]  # without the header


def ticked(text: str) -> set[str]:
    return set(re.findall(r"`([a-z0-9_]+)`", text))


def first_cells(rows: list[list[str]]) -> set[str]:
    return {row[0].strip("`") for row in rows}


def test_the_methods_table_is_the_api() -> None:
    rows = table_rows(section("Methods"), "| method |")
    documented = {row[0].strip("`"): row[1] for row in rows}
    assert set(documented) == set(schema.METHODS)
    for name, access in documented.items():
        assert access == ("write" if schema.METHODS[name].writes else "read"), name


def test_the_access_table_names_every_read_method() -> None:
    rows = table_rows(section("Access"), "| caller | may |")
    assert ticked(rows[1][1]) == {name for name, spec in schema.METHODS.items()
                                  if not spec.writes}


def test_the_state_table_lists_every_state_and_every_cause() -> None:
    rows = table_rows(section("TunnelStatus"), "| state | causes |")
    assert {row[0] for row in rows} == {state.value for state in schema.TunnelState}
    causes = set().union(*(ticked(row[1]) for row in rows))
    assert causes == {cause.value for cause in schema.Cause}


def test_the_reason_tables_list_every_reason() -> None:
    addresses = table_rows(section("TunnelStatus"), "Address change `reason`s")
    assert first_cells(addresses) == {reason.value for reason in schema.AddressReason}
    mtus = table_rows(section("Events"), "MTU change `reason`s")
    assert first_cells(mtus) == {reason.value for reason in schema.MtuReason}


def test_the_events_are_the_event_records() -> None:
    events = section("Events")
    listed = re.search(r"Event types: (.*?)\.", events)
    assert listed is not None
    assert ticked(listed.group(1)) == set(schema.EVENT_TYPES)
    for line in re.findall(r"^\{.*\}$", events, re.M):
        params = json.loads(line.replace("{TunnelStatus}", "{}"))["params"]
        record = schema.EVENT_TYPES[params["type"]]
        assert set(params) - {"type"} == set(record.__struct_fields__), params["type"]


def test_the_error_table_is_the_helpers_codes() -> None:
    rows = table_rows(section("Requests and errors"), "| code | meaning |")
    assert {int(row[0]) for row in rows} == {code.value for code in ErrorCode if code < 0}


def test_the_example_records_have_exactly_the_records_fields() -> None:
    for title, record in (("Profile", schema.Profile), ("TunnelStatus", schema.TunnelStatus),
                          ("KnownNetwork", schema.KnownNetwork)):
        example = re.search(r"```json\n(.*?)```", section(title), re.S)
        assert example is not None
        data = json.loads(example.group(1))
        assert set(data) == set(record.__struct_fields__), title
        msgspec.convert(data, record)  # and it decodes
