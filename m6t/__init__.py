"""m6t: MIPv6 from IPv4-only networks (draft-ebalard-mext-m6t-02)."""

__version__ = "0.1.0"
