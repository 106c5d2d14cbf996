"""Every number the draft specifies, in one place (draft-ebalard-mext-m6t-02).

Implementation limits (table sizes, budgets, default lifetimes that the draft leaves to local
policy) live in `m6t.protocol.limits`, not here.
"""

from typing import Final

# "Maintaining NAT states": "If the MN has not sent and received traffic via the tunnel for 30
# seconds (default refresh interval borrowed from Teredo specification) ... send an empty IPv6
# packet (Next Header in IPv6 header set to 59) ... destination address is set to fe80::1."
KEEPALIVE_INTERVAL: Final = 30.0
NEXT_HEADER_NONE: Final = 59
KEEPALIVE_ADDRESS: Final = bytes.fromhex("fe800000000000000000000000000001")  # fe80::1

# "MTU considerations": "The MTU of the tunnel interface is initially set to a default value
# of 1472 bytes on both sides". IPv6 itself never goes below 1280 (RFC 8200, section 5).
DEFAULT_TUNNEL_MTU: Final = 1472
IPV6_MINIMUM_MTU: Final = 1280
# IPv4 header (20) + UDP header (8): what the encapsulation adds on the IPv4 path.
ENCAPSULATION_OVERHEAD: Final = 28
# The largest IPv6 packet one UDP/IPv4 datagram can carry.
MAXIMUM_TUNNEL_MTU: Final = 65535 - ENCAPSULATION_OVERHEAD

# "MN's CoA on the tunnel interface": /48 ULA prefix + 16-bit subnet ID + 16-bit MN ID, then
# 48 random bits chosen "each time it changes its point of attachment".
ULA_PREFIX_LENGTH: Final = 48
SUBNET_ID_BITS: Final = 16
MN_ID_BITS: Final = 16
TUNNEL_PREFIX_LENGTH: Final = ULA_PREFIX_LENGTH + SUBNET_ID_BITS + MN_ID_BITS  # 80
RANDOM_SUFFIX_BITS: Final = 48
# RFC 4193 section 3.1: fc00::/7 with L = 1, i.e. fd00::/8, followed by a 40-bit global ID.
ULA_FIRST_BYTE: Final = 0xFD
ULA_GLOBAL_ID_BITS: Final = 40

# RFC 5905: NTP counts seconds from 1900-01-01, Unix time from 1970-01-01 (RFC 4193 hashes
# an NTP timestamp).
NTP_UNIX_OFFSET: Final = 2_208_988_800

# "UDP port to use on the tunnel GW": no IANA port; STUN 3478, Teredo 3544, and ports usually
# let through filters (4500, 500, 53) are the draft's suggestions.
SUGGESTED_PORTS: Final = (3544, 4500, 3478, 500, 53)

# IPv6 (RFC 8200) and ICMPv6 (RFC 4443) wire constants.
IPV6_HEADER_LENGTH: Final = 40
IPV6_VERSION: Final = 6
NEXT_HEADER_ICMPV6: Final = 58
ICMPV6_PACKET_TOO_BIG: Final = 2
ICMPV6_ECHO_REQUEST: Final = 128
ICMPV6_ECHO_REPLY: Final = 129
