"""The helper's control API, shared by the helper (server) and its clients (CLI, desktop app).

Versioned JSON-RPC 2.0, one JSON object per line, over a Unix stream socket. Documented with
examples in docs/control-api.md.
"""
