"""Coverage-guided fuzzing with atheris (libFuzzer for Python) of what tests/fuzz/test_fuzz_*.py
check with Hypothesis: the same targets, the same rule (a value or the module's own error, never
another exception), the same seed corpora. Not part of `make test` (atheris is not a project
dependency); a bounded run by hand:

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/atheris_fuzz.py packets -runs=200000
    .venv/bin/python tests/fuzz/atheris_fuzz.py control -runs=100000 -max_len=4096
    .venv/bin/python tests/fuzz/atheris_fuzz.py profiles -runs=50000
    .venv/bin/python tests/fuzz/atheris_fuzz.py gateway -runs=50000

Targets: packets (both gateway receive paths on a populated table, the helper's checks),
control (framer, decode_request, decode_params of the named method, decode_incoming), profiles
(parse_profiles), gateway (load_config). New inputs go to a temporary folder, never into the
committed corpus, and crash reproducers into it too (printed, then removed with it).
`--tolerate RecursionError,TypeError` lets a run go past bugs already reported, to look for
others; a crash prints the input and exits non-zero, as libFuzzer does.
"""

from __future__ import annotations

import builtins
import contextlib
import ipaddress
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from m6t.control import errors, schema, wire
    from m6t.gateway.config import ConfigError, load_config
    from m6t.profiles import ProfilesError, parse_profiles
    from m6t.protocol.addressing import TunnelPrefix
    from m6t.protocol.client import check_from_tun, classify_from_gateway
    from m6t.protocol.gateway import FORWARD, Gateway, GatewayPolicy, pack_peer
    from m6t.protocol.packets import build_ipv6

CORPUS = Path(__file__).resolve().parent / "corpus"
PREFIX = ipaddress.IPv6Network("fd6d:6d74:1::/48")
HOME_AGENT = ipaddress.IPv6Address("fd48:4100::2")
CLIENT = TunnelPrefix.compose(PREFIX, 1, 1).address(0xA1B2_C3D4_E5F6).packed
PEERS = [pack_peer(bytes([198, 51, 100, 2]), 40001), pack_peer(bytes([198, 51, 100, 2]), 40002)]
METHODS = sorted(schema.METHODS)
TOLERATED: tuple[type[BaseException], ...] = ()


def gateway() -> Gateway:
    table = Gateway(GatewayPolicy(client_prefix=PREFIX, home_agents=frozenset({HOME_AGENT}),
                                  max_states=4, max_temporary_states=2, mtu=1400))
    assert table.receive_from_client(build_ipv6(CLIENT, HOME_AGENT.packed, 17, bytes(8)),
                                     PEERS[0], 10.0) is FORWARD
    assert table.receive_from_home(build_ipv6(HOME_AGENT.packed, CLIENT, 17, bytes(8)),
                                   10.0) == PEERS[0]
    return table


def packets(data: bytes) -> None:
    table = gateway()
    peer = PEERS[data[0] & 1] if data else PEERS[0]
    table.receive_from_client(data, peer, 11.0)
    table.receive_from_home(data, 11.0)
    table.expire(200.0)
    assert sum(table.counts().values()) <= 4
    classify_from_gateway(data, CLIENT)
    check_from_tun(data, CLIENT)


def control(data: bytes) -> None:
    framer = wire.LineFramer(limit=256)
    lines = framer.feed(data)
    for line in lines:
        if isinstance(line, wire.Oversize):
            continue
        assert b"\n" not in line and len(line) <= 256
    line = data.split(b"\n", 1)[0]
    try:
        request = wire.decode_request(line)
    except wire.UnreadableRequest:
        pass
    else:
        method = request.method if request.method in schema.METHODS else \
            METHODS[len(line) % len(METHODS)]
        with contextlib.suppress(errors.InvalidParams):
            wire.decode_params(method, request.params)
    wire.decode_incoming(line)


def profiles(data: bytes) -> None:
    with contextlib.suppress(ProfilesError):
        parse_profiles(data.decode("utf-8", errors="replace"))


def gateway_config(data: bytes) -> None:
    path = Path(WORK, "gateway.toml")
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path)


WORK = ""  # the child's scratch folder (set in main)
TARGETS: dict[str, tuple[Callable[[bytes], None], str]] = {
    "packets": (packets, "packets"), "control": (control, "control"),
    "profiles": (profiles, "profiles"), "gateway": (gateway_config, "gateway"),
}


def child(name: str, work: str, tolerate: str, libfuzzer: list[str]) -> None:
    """The fuzzing process: atheris.Fuzz() never returns (libFuzzer exits), so the parent
    cleans up after it."""
    global TOLERATED, WORK
    WORK = work
    TOLERATED = tuple(getattr(builtins, n) for n in tolerate.split(",") if n)
    target, folder = TARGETS[name]

    def one_input(data: bytes) -> None:
        with contextlib.suppress(*TOLERATED):
            target(data)

    # libFuzzer adds what it finds to the first corpus folder: a scratch one, not the seeds.
    corpus = Path(work, "corpus")
    corpus.mkdir()
    atheris.Setup([sys.argv[0], f"-artifact_prefix={work}/", *libfuzzer, str(corpus),
                   str(CORPUS / folder)], one_input)
    atheris.Fuzz()


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--child"]:
        child(args[1], args[2], args[3], args[4:])
        return 0
    if not args or args[0] not in TARGETS:
        print(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [--tolerate A,B] "
              "[libFuzzer options]", file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    tolerate = ""
    if rest[:1] == ["--tolerate"]:
        tolerate, rest = rest[1], rest[2:]
    work = tempfile.mkdtemp(prefix=f"m6t-atheris-{name}-")
    try:
        status = subprocess.run([sys.executable, __file__, "--child", name, work, tolerate,
                                 *rest]).returncode
        for crash in sorted(Path(work).glob("crash-*")):  # libFuzzer's reproducers
            print(f"{crash.name}: {crash.read_bytes()[:2000]!r}", file=sys.stderr)
        return status
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
