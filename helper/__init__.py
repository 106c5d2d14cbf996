"""m6t-helper: the privileged client daemon (TUN, addresses, routes, UDP socket, keepalive,
liveness, network watch) and the control API server that the CLI and the desktop app use."""
