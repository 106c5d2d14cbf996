"""Named reasons for every packet that is not forwarded.

A malformed, spoofed or unwanted packet is never an exception: it is dropped with one of these
names, counted, exposed in metrics and asserted by tests.
"""

import enum


class DropReason(enum.StrEnum):
    # Any IPv6 packet, either direction.
    SHORT_PACKET = "short_packet"  # fewer than the 40 bytes of an IPv6 header
    BAD_VERSION = "bad_version"  # IP version field is not 6
    BAD_LENGTH = "bad_length"  # payload length disagrees with the datagram size

    # Gateway, packets from a client (UDP side).
    SRC_OUTSIDE_PREFIX = "src_outside_prefix"  # IPv6 source not in the configured client prefix
    DST_NOT_HOME_AGENT = "dst_not_home_agent"  # IPv6 destination is not a configured HA
    IPV4_MISMATCH = "ipv4_mismatch"  # known IPv6 source from another IPv4 address or port
    RATE_LIMITED = "rate_limited"  # new-state budget of this IPv4 source exhausted
    TABLE_FULL = "table_full"  # global state cap reached
    TOO_MANY_TEMPORARY = "too_many_temporary"  # cap on unconfirmed (temporary) states reached
    KEEPALIVE_NO_STATE = "keepalive_no_state"  # keepalive for an unknown or temporary state
    KEEPALIVE_IPV4_MISMATCH = "keepalive_ipv4_mismatch"  # keepalive from the wrong IPv4 peer
    BAD_KEEPALIVE = "bad_keepalive"  # fe80::1 destination but not an empty next-header-59 packet

    # Gateway, packets from the home side (TUN).
    NO_STATE = "no_state"  # destination is no known client address
    NOT_FROM_HOME_AGENT = "not_from_home_agent"  # only an HA may confirm a temporary state
    PACKET_TOO_BIG_RATE_LIMITED = "packet_too_big_rate_limited"  # PTB owed but over budget
    TOO_BIG = "too_big"  # larger than the client's path MTU (a Packet Too Big was sent)

    # Client helper.
    NOT_FOR_US = "not_for_us"  # IPv6 destination is not our tunnel address
    SRC_NOT_OURS = "src_not_ours"  # packet from the TUN with a source that is not our address
    UNEXPECTED_FROM_TUN = "unexpected_from_tun"  # kernel chatter (RS, MLD) the tunnel never carries
