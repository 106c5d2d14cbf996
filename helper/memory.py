"""The helper's per-network memory: for each (network, profile), the port that won, the MTU that
worked, whether IPv4 fragments pass, and when it was last seen.

A root-owned JSON file (default /var/lib/m6t/networks.json), written atomically (a temporary
file in the same directory, fsync, rename, fsync of the directory), so a crash or a full disk
leaves the old file or the new one, never half of one. A file that cannot be read is set aside
(networks.json.corrupt-<time>) and reported, never a crash; a file that cannot be written is
reported once and the memory goes on in RAM. Bounded: the oldest networks are forgotten first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path

import msgspec

from m6t.control.schema import KnownNetwork
from m6t.files import write_atomically
from m6t.protocol.session import Remembered

log = logging.getLogger("m6t.helper")

MAX_NETWORKS = 256
FILE_NAME = "networks.json"


class Entry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    label: str
    gateway: str | None = None  # which of the profile's gateways won
    port: int
    mtu: int
    fragments_pass: bool | None = None
    last_seen: float


class StateFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: int = 1
    networks: dict[str, dict[str, Entry]] = {}  # network id -> profile name -> entry


class NetworkMemory:
    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = directory / FILE_NAME
        self.clock = clock
        self.saved = True  # False while the file cannot be written
        self.problem: str | None = None  # what went wrong with the file, for the log and status
        self._networks: dict[str, dict[str, Entry]] = {}
        self._load()

    # --- reading ---

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.problem = f"cannot read {self.path}: {exc.strerror}"
            log.error("network memory: %s; starting empty", self.problem)
            return
        try:
            state = msgspec.json.decode(data, type=StateFile)
            if state.version != 1:
                raise msgspec.ValidationError(f"version {state.version} is not 1")
        except msgspec.DecodeError as exc:  # ValidationError is one too
            aside = self.path.with_name(f"{FILE_NAME}.corrupt-{int(self.clock())}")
            self.problem = f"{self.path} was unreadable ({exc}); set aside as {aside.name}"
            log.error("network memory: %s; starting empty", self.problem)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return
        self._networks = state.networks

    def recall(self, network: str, profile: str) -> Remembered | None:
        entry = self._networks.get(network, {}).get(profile)
        return None if entry is None else Remembered(entry.port, entry.mtu, entry.gateway)

    def known(self, current: Collection[str] = ()) -> list[KnownNetwork]:
        rows = [KnownNetwork(id=network, label=entry.label, profile=profile,
                             gateway=entry.gateway, port=entry.port,
                             mtu=entry.mtu, fragments_pass=entry.fragments_pass,
                             last_seen=entry.last_seen, current=network in current)
                for network, profiles in self._networks.items()
                for profile, entry in profiles.items()]
        return sorted(rows, key=lambda row: (-row.last_seen, row.profile))

    # --- changing ---

    def remember(self, network: str, label: str, profile: str, port: int, mtu: int,
                 gateway: str | None = None) -> None:
        entry = self._networks.setdefault(network, {}).get(profile)
        if entry is not None and (entry.port, entry.mtu, entry.label, entry.gateway) == (
                port, mtu, label, gateway) and self.clock() - entry.last_seen < 60:
            return  # nothing new: spare the disk a write per reconnection
        fragments = entry.fragments_pass if entry is not None else None
        self._networks[network][profile] = Entry(label=label, gateway=gateway, port=port, mtu=mtu,
                                                 fragments_pass=fragments,
                                                 last_seen=self.clock())
        self._bound()
        self.save()

    def note_fragments(self, network: str, profile: str, passes: bool) -> None:
        entry = self._networks.get(network, {}).get(profile)
        if entry is not None and entry.fragments_pass != passes:
            entry.fragments_pass = passes
            self.save()

    def forget(self, network: str | None) -> bool:
        """Forget one network (all profiles), or every network; False if it was not known."""
        if network is None:
            found = bool(self._networks)
            self._networks.clear()
        else:
            found = self._networks.pop(network, None) is not None
        if found:
            self.save()
        return found

    def _bound(self) -> None:
        if len(self._networks) <= MAX_NETWORKS:
            return
        by_age = sorted(self._networks, key=lambda n: max(
            e.last_seen for e in self._networks[n].values()))
        for network in by_age[:len(self._networks) - MAX_NETWORKS]:
            del self._networks[network]

    # --- writing ---

    def save(self) -> None:
        data = msgspec.json.encode(StateFile(networks=self._networks))
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomically(self.path, data)
        except OSError as exc:
            if self.saved or self.problem is None:  # say it once, not on every change
                reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "read-only file system",
                          errno.EACCES: "permission denied"}.get(exc.errno or 0, exc.strerror)
                self.problem = f"cannot write {self.path}: {reason}; remembering in memory only"
                log.error("network memory: %s", self.problem)
            self.saved = False
            return
        if not self.saved:
            log.info("network memory: %s written again", self.path)
        self.saved, self.problem = True, None
