"""Thin Linux adapters: TUN devices, UDP sockets, netlink. Real implementations, small
interfaces; the daemons own the loops and the protocol core owns the decisions."""
