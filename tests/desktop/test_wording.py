"""The words for the control API's enums: every state, cause and reason the helper can send has
words of its own (a new member without words fails here, not on a user's screen)."""

from __future__ import annotations

import pytest

from m6t.control.schema import AddressReason, Cause, MtuReason, TunnelState
from m6t_desktop.wording import (
    ADDRESS_REASON_WORDS,
    CAUSE_WORDS,
    HELPER_STATE_LABELS,
    MTU_REASON_WORDS,
    address_reason_text,
    mtu_reason_text,
)


@pytest.mark.parametrize(("enum", "words"), [
    (TunnelState, HELPER_STATE_LABELS),
    (Cause, CAUSE_WORDS),
    (AddressReason, ADDRESS_REASON_WORDS),
    (MtuReason, MTU_REASON_WORDS),
], ids=["TunnelState", "Cause", "AddressReason", "MtuReason"])
def test_every_member_has_words(enum: type, words: dict) -> None:
    assert set(words) == set(enum)
    for member in enum:
        text = words[member]
        assert text.strip(), member
        assert "_" not in text, f"{member}: {text!r} reads like a wire name"


def test_reasons_read_as_words() -> None:
    assert address_reason_text(AddressReason.NAT_MAPPING_CHANGED) == "NAT mapping changed"
    assert mtu_reason_text(MtuReason.FRAGMENTATION_NEEDED) == \
        "a router on the path asked for smaller packets"
