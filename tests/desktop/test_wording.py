"""The words for the control API's enums: every state, cause and reason the helper can send has
words of its own (a new member without words fails here, not on a user's screen)."""

from __future__ import annotations

import pytest

from m6t.control.schema import AddressReason, Cause, DatapathStatus, MtuReason, TunnelState
from m6t.linux.offload import FEATURES
from m6t_desktop.wording import (
    ADDRESS_REASON_WORDS,
    CAUSE_WORDS,
    HELPER_STATE_LABELS,
    MTU_REASON_WORDS,
    NO_VALUE,
    OFFLOAD_WORDS,
    address_reason_text,
    datapath_text,
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


def test_every_offload_has_words_and_a_refusal_comes_first() -> None:
    assert set(OFFLOAD_WORDS) == set(FEATURES)
    fast = DatapathStatus(offloads=["udp_gro", "udp_gso"],
                          off={"tun_tso": "off by default (M6T_OFFLOADS=+tun_tso turns it on)"})
    assert datapath_text(fast) == (
        "fast: UDP GRO, UDP GSO",
        "In use: UDP GRO, UDP GSO\nTSO reads: off by default (M6T_OFFLOADS=+tun_tso turns it on)")
    refused = "EIO: no checksum offload before Linux 6.11, or IPsec on the IPv4 path"
    slower = DatapathStatus(offloads=["udp_gro"], off={"udp_gso": refused},
                            fallbacks={"udp_gso": refused})
    text, tooltip = datapath_text(slower)
    assert text == "slower: UDP GSO refused by this system"
    assert f"UDP GSO: {refused}" in tooltip.splitlines()
    assert datapath_text(DatapathStatus())[0] == "plain (no offloads)"
    assert datapath_text(None) == (NO_VALUE, "")
