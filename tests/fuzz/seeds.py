"""The committed seed corpora (tests/fuzz/corpus/) and the mutations the fuzz tests apply to them.

Each folder of the corpus holds small files a fuzzer starts from: whole valid inputs (a packet of
every kind the tunnel carries, a control line of every method, result and event, profiles files,
gateway configs) and a few known-bad ones. Hypothesis draws a seed and mutates it (bytes flipped,
cut, spliced, repeated; JSON and TOML values swapped for others), so that most examples are near
something valid, where the interesting branches are. tests/fuzz/atheris_fuzz.py feeds the same
folders to atheris (libFuzzer) as its seed corpora.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parent / "corpus"


def seeds(folder: str) -> list[bytes]:
    """The files of one corpus folder, in name order (deterministic examples)."""
    return [path.read_bytes() for path in sorted((CORPUS / folder).iterdir()) if path.is_file()]


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes], max_steps: int = 4) -> bytes:
    """A seed with a few byte-level mutations: what a coverage-blind fuzzer does first."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, max_steps))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice",
                                     "repeat"]))
        if kind in ("flip", "set", "delete") and not data:
            kind = "insert"
        if kind == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0x22, 0x5B, 0x7B])
                            | st.integers(0, 255))
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            at = draw(st.integers(0, len(data) - 1))
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "splice":
            other = draw(st.sampled_from(corpus))
            data[draw(st.integers(0, len(data))):] = other[draw(st.integers(0, len(other))):]
        else:
            at = draw(st.integers(0, len(data)))
            data[at:at] = bytes(data[at:at + draw(st.integers(1, 16))]) * draw(st.integers(1, 4))
    return bytes(data)


# --- values, for structure-aware mutation of JSON and TOML ---------------------------------------

# Strings that have broken parsers before, or look like what the field wants.
AWKWARD_TEXT = ["", " ", "0", "-1", "1e999", "nan", "²", "٣", "0x10", "1_000", "auto",
                "home-agent", "default", "198.51.100.1:3544", "1.2.3.4:²", "0.0.0.0:0",
                "fd6d:6d74:1:1:1::/80", "fd6d:6d74:1::/48", "::/0", "fe80::1", "ff02::1",
                "fd48:4100::2", "2001:db8::/32", "m6t0", "a" * 300, "\x00", "\ud7ff", "🙂"]
AWKWARD_NUMBERS: list[Any] = [0, 1, -1, 59, 1279, 1280, 1472, 65507, 65535, 65536, 2**31,
                              2**63 - 1, -(2**63), 10**400, 0.0, -0.0, 0.5, 1e-300, 1e300,
                              math.inf, -math.inf, math.nan]

json_scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(AWKWARD_NUMBERS[:14]),
                         st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.sampled_from(AWKWARD_TEXT), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.sampled_from(["type", "profile", "name", "mtu", "x"]) | st.text(max_size=8),
                    children, max_size=4)), max_leaves=12)

toml_scalars = st.one_of(
    st.booleans(), st.sampled_from(AWKWARD_NUMBERS), st.integers(),
    st.floats(), st.sampled_from(AWKWARD_TEXT), st.text(max_size=20),
    st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 1, 1)),
    st.dates(), st.times())
toml_values = st.recursive(toml_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=3)), max_leaves=10)


@st.composite
def mutated_value(draw: st.DrawFn, value: Any, values: st.SearchStrategy[Any],
                  depth: int = 0) -> Any:
    """`value` (decoded JSON or TOML) with one place changed: a value replaced, a key removed
    or added, an element dropped or appended. Most of the structure stays valid."""
    if isinstance(value, dict) and value and depth < 4 and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value)))
        changed = dict(value)
        action = draw(st.sampled_from(["descend", "descend", "remove", "add"]))
        if action == "descend":
            changed[key] = draw(mutated_value(value[key], values, depth + 1))
        elif action == "remove":
            del changed[key]
        else:
            changed[draw(st.sampled_from(["x", "extra", key + "_"]) | st.text(max_size=6))] = \
                draw(values)
        return changed
    if isinstance(value, list) and value and depth < 4 and draw(st.integers(0, 2)):
        changed_list = list(value)
        at = draw(st.integers(0, len(value) - 1))
        action = draw(st.sampled_from(["descend", "remove", "append"]))
        if action == "descend":
            changed_list[at] = draw(mutated_value(value[at], values, depth + 1))
        elif action == "remove":
            del changed_list[at]
        else:
            changed_list.append(draw(values))
        return changed_list
    return draw(values)
