"""Fuzzing the control API's wire (m6t.control.wire): any bytes in, a record or a named error out.

The helper reads lines from any local user (the socket is 0666 by default), and the CLI and the
desktop app read lines from whatever answers on the socket. Both sides must turn every line into
a record or one of the API's own errors; anything else (a TypeError, a RecursionError) would be
an unanswered request in the helper or a crashed reader in a client. tests/unit/test_control_wire.py
has the hand-written cases; here Hypothesis starts from the seed lines in corpus/control/.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m6t.control import errors, schema, wire
from tests.fuzz.seeds import json_values, mutated, mutated_value, seeds
from tests.unit.helpers import bounded

LINES = seeds("control")
OBJECTS = [json.loads(line) for line in LINES if line.startswith(b"{") and line.endswith(b"}\n")]
# Each method's params as the corpus has them (and none at all), to start mutating from.
PARAMS: dict[str, list[Any]] = {name: [{}] for name in schema.METHODS}
for message in OBJECTS:
    if message.get("method") in PARAMS and "params" in message:
        PARAMS[message["method"]].append(message["params"])

lines = st.one_of(mutated(LINES), mutated(LINES, max_steps=12), st.binary(max_size=200),
                  st.builds(lambda value: json.dumps(value).encode(), json_values))


@st.composite
def structured_lines(draw: st.DrawFn) -> bytes:
    """A seed line decoded, changed in one place, encoded again: valid JSON, odd contents."""
    seed = draw(st.sampled_from(OBJECTS))
    return json.dumps(draw(mutated_value(seed, json_values))).encode()


any_line = st.one_of(lines, structured_lines(), structured_lines())


# --- framing ---------------------------------------------------------------------------------


def framed(limit: int, stream: bytes) -> list[bytes | str]:
    """What the framer should make of a whole stream: each complete line, unless blank; an
    over-limit line (complete or not) as one "oversize"."""
    *complete, rest = stream.split(b"\n")
    out: list[bytes | str] = []
    for line in complete:
        if len(line) > limit:
            out.append("oversize")
        elif line.strip():
            out.append(line)
    if len(rest) > limit:
        out.append("oversize")
    return out


@bounded(200)
@given(st.lists(st.one_of(mutated(LINES), st.binary(max_size=40),
                          st.sampled_from([b"\n", b"\n\n", b" \n", b"x" * 20])), max_size=8),
       st.integers(1, 64), st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_the_framer_cuts_any_stream_into_bounded_lines_however_it_is_read(
        parts: list[bytes], limit: int, cuts: list[int]) -> None:
    stream = b"".join(parts)
    framer = wire.LineFramer(limit=limit)
    out: list[bytes | str] = []
    offset, index = 0, 0
    while offset < len(stream):
        size = cuts[index % len(cuts)]
        for item in framer.feed(stream[offset:offset + size]):
            if isinstance(item, wire.Oversize):
                assert item.length > limit
                out.append("oversize")
            else:
                assert b"\n" not in item and 0 < len(item) <= limit and item.strip()
                out.append(item)
        offset += size
        index += 1
    assert out == framed(limit, stream)
    assert framer.partial == bool(stream.rsplit(b"\n", 1)[-1])


# --- the helper's side: requests and params --------------------------------------------------


@bounded(300)
@given(any_line)
def test_any_line_is_a_request_or_a_named_json_rpc_error(line: bytes) -> None:
    try:
        request = wire.decode_request(line)
    except wire.UnreadableRequest as unreadable:
        assert type(unreadable.error) in (errors.ParseError, errors.InvalidRequest)
        assert unreadable.request_id is None or (
            isinstance(unreadable.request_id, int | str)
            and not isinstance(unreadable.request_id, bool))
        json.loads(wire.encode_error(unreadable.request_id, unreadable.error))  # answerable
        return
    assert request.jsonrpc == "2.0" and isinstance(request.method, str)
    assert request.params is None or isinstance(request.params, dict | list)


@st.composite
def method_params(draw: st.DrawFn) -> tuple[str, Any]:
    method = draw(st.sampled_from(sorted(schema.METHODS)))
    seed = draw(st.sampled_from(PARAMS[method]))
    params = draw(st.one_of(mutated_value(seed, json_values), mutated_value(seed, json_values),
                            json_values, st.none()))
    return method, params


@bounded(400)
@given(method_params())
def test_every_methods_params_decode_to_its_record_or_invalid_params(
        case: tuple[str, Any]) -> None:
    method, params = case
    record_type = schema.METHODS[method].params
    try:
        record = wire.decode_params(method, params)
    except errors.InvalidParams as exc:
        assert exc.code == errors.ErrorCode.INVALID_PARAMS
        assert exc.field is None or isinstance(exc.field, str)
        json.loads(wire.encode_error(1, exc))
        return
    assert type(record) is record_type
    profile = getattr(record, "profile", None)
    if isinstance(profile, schema.Profile):
        # What the helper does next (daemon._valid): a good profile, or ProfileError by field.
        try:
            schema.validate_profile(profile)
        except schema.ProfileError as exc:
            assert exc.field in {f for f in schema.Profile.__struct_fields__}
    if method == "set_mtu":
        try:
            schema.check_mtu(record.mtu)  # type: ignore[attr-defined]
        except schema.ProfileError as exc:
            assert exc.field == "mtu"


def test_every_method_has_seed_params() -> None:
    """The corpus has a valid request for each method of the API, so that the fuzzer starts
    from each one's record."""
    missing = [name for name, params in PARAMS.items()
               if len(params) < 2 and schema.METHODS[name].params is not schema.NoParams]
    assert not missing


# --- the clients' side: replies and events ---------------------------------------------------


@bounded(300)
@given(any_line)
def test_any_line_from_the_helper_is_a_reply_an_event_or_dropped_by_name(line: bytes) -> None:
    incoming = wire.decode_incoming(line)
    if isinstance(incoming, wire.Dropped):
        assert isinstance(incoming.reason, wire.Malformed)
    elif isinstance(incoming, wire.Reply):
        assert incoming.id is not None
        assert incoming.error is None or isinstance(incoming.error, errors.ControlError)
    else:
        assert isinstance(incoming, schema.TunnelEvent)
        assert type(incoming) in schema.EVENT_TYPES.values()


@bounded(150)
@given(st.sampled_from(sorted(schema.METHODS)), json_values)
def test_any_result_is_its_methods_record_or_a_bad_reply(method: str, result: Any) -> None:
    with contextlib.suppress(errors.BadReply):
        wire.decode_result(method, result)


@bounded(100)
@given(json_values)
def test_any_error_object_becomes_a_control_error(error: Any) -> None:
    assert isinstance(errors.ControlError.from_wire(error), errors.ControlError)


# --- what the fuzzers found ------------------------------------------------------------------
# Each line below fits in one control line (MAX_LINE_BYTES), so a local user can send it to the
# helper, and anything answering on the socket can send it to a client.


@pytest.mark.parametrize("kind", [[1], {}, [], {"a": 1}],
                         ids=["list", "empty_object", "empty_list", "object"])
def test_an_event_whose_type_is_not_a_string_is_dropped_as_bad_event(kind: Any) -> None:
    line = json.dumps({"jsonrpc": "2.0", "method": "event",
                       "params": {"type": kind, "tunnel": "m6t0", "profile": "x"}}).encode()
    incoming = wire.decode_incoming(line)
    assert isinstance(incoming, wire.Dropped)
    assert incoming.reason is wire.Malformed.BAD_EVENT


DEEP = 2000  # nesting depth: 2 000 bytes of brackets, far below the 64 KiB line limit


@pytest.mark.parametrize("line", [b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP,
                                  b"[" * DEEP],
                         ids=["deep_array", "deep_object", "unclosed"])
def test_a_deeply_nested_line_is_a_parse_error_for_the_helper(line: bytes) -> None:
    assert len(line) <= schema.MAX_LINE_BYTES
    with pytest.raises(wire.UnreadableRequest) as raised:
        wire.decode_request(line)
    assert type(raised.value.error) in (errors.ParseError, errors.InvalidRequest)


@pytest.mark.parametrize("line", [b"[" * DEEP + b"]" * DEEP, b'{"jsonrpc":"2.0","id":1,"result":'
                                  + b"[" * DEEP + b"]" * DEEP + b"}"],
                         ids=["deep_array", "deep_result"])
def test_a_deeply_nested_line_is_dropped_by_a_client(line: bytes) -> None:
    incoming = wire.decode_incoming(line)
    assert isinstance(incoming, wire.Dropped | wire.Reply)

