"""The m6t protocol core: pure, sans-I/O. Bytes and `now` in, decisions out.

Nothing in this package imports socket, time, asyncio, pytun, pyroute2 or Qt; a unit test
asserts it. Daemons feed it datagrams and timestamps and carry out what it decides.
"""
