"""m6t-gateway: the tunnel gateway daemon in front of the home agent(s)."""
