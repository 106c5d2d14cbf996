"""The control API's wire (m6t.control.wire, m6t.control.errors): framing, envelopes, and the
one error type, as the helper and both clients use them. One table of malformed lines."""

from __future__ import annotations

import pytest

from m6t.control import errors, schema, wire


def test_the_framer_cuts_lines_across_reads_and_skips_blank_ones() -> None:
    framer = wire.LineFramer()
    assert framer.feed(b'{"a"') == []
    assert framer.partial
    assert framer.feed(b': 1}\n\n  \n{"b": 2}\n{"c"') == [b'{"a": 1}', b'{"b": 2}']
    assert framer.partial
    assert framer.feed(b": 3}\n") == [b'{"c": 3}']
    assert not framer.partial


def test_an_oversize_line_comes_out_once_and_the_next_line_is_whole() -> None:
    framer = wire.LineFramer(limit=16)
    out = framer.feed(b"x" * 40)
    assert out == [wire.Oversize(40)]
    assert framer.feed(b"y" * 40) == []  # still the same line: reported once
    assert framer.feed(b"zz\nok\n") == [b"ok"]
    assert framer.feed(b"x" * 17 + b"\nfine\n") == [wire.Oversize(17), b"fine"]


@pytest.mark.parametrize(("line", "reason"), [
    (b"not json", wire.Malformed.NOT_JSON),
    (b"[1, 2]", wire.Malformed.NOT_OBJECT),
    (b'{"jsonrpc": "1.0", "id": 1, "result": {}}', wire.Malformed.BAD_VERSION),
    (b'{"jsonrpc": "2.0", "method": "hello"}', wire.Malformed.UNEXPECTED_MESSAGE),
    (b'{"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "x"}}',
     wire.Malformed.ERROR_WITHOUT_ID),
    (b'{"jsonrpc": "2.0", "method": "event", "params": 5}', wire.Malformed.BAD_EVENT),
    (b'{"jsonrpc": "2.0", "method": "event", "params": {"type": "state"}}',
     wire.Malformed.BAD_EVENT),
    (b'{"jsonrpc": "2.0", "method": "event", "params": {"type": "weather"}}',
     wire.Malformed.UNKNOWN_EVENT),
])
def test_a_client_names_what_is_wrong_with_a_line(line: bytes, reason: wire.Malformed) -> None:
    dropped = wire.decode_incoming(line)
    assert isinstance(dropped, wire.Dropped)
    assert dropped.reason is reason


def test_an_event_round_trips_as_its_record() -> None:
    event = schema.MtuEvent(tunnel="m6t0", profile="office", mtu=1372, previous=1472,
                            reason=schema.MtuReason.FRAGMENTATION_NEEDED)
    line = wire.encode_event(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert wire.decode_incoming(line[:-1]) == event


@pytest.mark.parametrize("error", [
    errors.PermissionDenied("join group m6t", errors.ErrorData(group="m6t")),
    errors.InvalidParams("bad", errors.ErrorData(field="profile.mtu")),
    errors.NotFound("no tunnel", errors.ErrorData(tunnels=["home", "office"])),
    errors.Unavailable("no route", errors.ErrorData(cause=schema.Cause.NO_IPV4_NETWORK)),
    errors.MethodNotFound("unknown method"),
])
def test_an_error_comes_back_as_its_class_with_its_data(error: errors.ControlError) -> None:
    reply = wire.decode_incoming(wire.encode_error(7, error)[:-1])
    assert isinstance(reply, wire.Reply) and reply.id == 7
    assert type(reply.error) is type(error)
    assert reply.error is not None
    assert (reply.error.code, reply.error.message, reply.error.data) == (
        error.code, error.message, error.data)


@pytest.mark.parametrize("raw", [
    "no object", {"message": "no code"}, {"code": "-32001"}, {"code": True},
])
def test_an_unreadable_error_object_is_a_bad_reply(raw: object) -> None:
    assert isinstance(errors.ControlError.from_wire(raw), errors.BadReply)


def test_an_unknown_code_keeps_its_code_and_unknown_data_is_dropped() -> None:
    error = errors.ControlError.from_wire({"code": -32099, "message": "new",
                                           "data": {"field": 5}})
    assert type(error) is errors.ControlError
    assert error.code == -32099 and error.data == errors.ErrorData()


@pytest.mark.parametrize(("line", "code", "request_id"), [
    (b"{", errors.ErrorCode.PARSE_ERROR, None),
    (b'{"jsonrpc": "2.0", "id": 3}', errors.ErrorCode.INVALID_REQUEST, 3),
    (b'{"jsonrpc": "2.0", "id": true, "method": "status"}', errors.ErrorCode.INVALID_REQUEST,
     None),
    (b'{"jsonrpc": "2.0", "id": 4, "method": "status", "extra": 1}',
     errors.ErrorCode.INVALID_REQUEST, 4),
])
def test_the_server_answers_an_unreadable_request_by_id_when_it_can(
        line: bytes, code: errors.ErrorCode, request_id: object) -> None:
    with pytest.raises(wire.UnreadableRequest) as raised:
        wire.decode_request(line)
    assert raised.value.error.code == code
    assert raised.value.request_id == request_id


def test_params_are_checked_against_the_methods_record_and_name_the_field() -> None:
    with pytest.raises(errors.InvalidParams) as raised:
        wire.decode_params("set_mtu", {"profile": "office", "mtu": "big"})
    assert raised.value.field == "mtu"
    with pytest.raises(errors.InvalidParams):
        wire.decode_params("status", {"unexpected": 1})
    assert wire.decode_params("disconnect", None) == schema.OptionalNameParams()


def test_a_result_that_does_not_fit_or_a_method_that_does_not_exist_is_a_bad_reply() -> None:
    with pytest.raises(errors.BadReply):
        wire.decode_result("version", {"version": 1})
    with pytest.raises(errors.BadReply):
        wire.decode_result("frobnicate", {})
    assert wire.decode_result("version", {"version": "0.1.0", "api": 1}) == \
        schema.VersionResult(version="0.1.0", api=1)
