"""The m6t lab: a whole m6t world (mn behind NAT, gateway, home agent) in network namespaces."""

from m6t.lab.lab import Lab, LabError

__all__ = ["Lab", "LabError"]
