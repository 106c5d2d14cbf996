"""Implementation limits and local-policy defaults: what the draft leaves to implementations.

Each default says why it was chosen; the gateway's TOML config overrides most of them.
"""

from typing import Final

# "Against the GW": a temporary state "should be associated a very low (few ms) garbage
# collection timer ... match the expected processing time of a packet on the HA (first IKE
# packet, BU, ...) and the RTT between the gateway and the HA". Two seconds covers an IKE
# responder doing a Diffie-Hellman on a slow HA and a client racing ports over lossy Wi-Fi.
DEFAULT_TEMPORARY_LIFETIME: Final = 2.0
# An active state must outlive the client's keepalive period (30 s) with room for two lost
# keepalives, and be gone soon after a NAT would have forgotten the mapping anyway.
DEFAULT_ACTIVE_LIFETIME: Final = 90.0
# Per IPv4 source address (port not considered): a client racing 5 ports creates 5 states at
# once, and several laptops may share one NAT; more than that per second is a flood.
DEFAULT_NEW_STATES_PER_SECOND: Final = 10.0
DEFAULT_NEW_STATES_BURST: Final = 20
# About 25 MB of state table at ~210 bytes each: plenty for one gateway, bounded for a flood.
DEFAULT_MAX_STATES: Final = 100_000
# Unconfirmed peers get less than confirmed ones: at most a tenth of the table is temporary.
TEMPORARY_SHARE_OF_STATES: Final = 10
# Rate-limiter buckets are dropped once refilled; this bounds them under a spoofed-source flood.
MAX_RATE_LIMITER_SOURCES: Final = 65_536
RATE_LIMITER_TRIM_INTERVAL: Final = 10.0
# Per-client path MTUs learnt from ICMPv4 errors (forgeable, so bounded; oldest goes first).
MAX_CLIENT_MTU_ENTRIES: Final = 4096
# ICMPv6 Packet Too Big sent by the gateway itself: RFC 4443 section 2.4 (f) asks for a limit.
PACKET_TOO_BIG_PER_SECOND: Final = 50.0
PACKET_TOO_BIG_BURST: Final = 50
# Largest datagram we read: an IPv6 packet can be 65535 + 40 bytes; UDP carries at most 65507.
MAX_DATAGRAM: Final = 65_535
