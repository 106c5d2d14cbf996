"""The profiles file as the app sees it: the same TOML file as the `m6t` CLI (m6t.profiles),
reloaded when someone else changes it, saved atomically. A corrupt file is reported through
`error` and kept untouched: m6t.profiles.save refuses to write over it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, Signal

from m6t import profiles
from m6t.profiles import ProfileBook, ProfilesError

log = logging.getLogger(__name__)


class ProfilesStore(QObject):
    changed = Signal()

    def __init__(self, path: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = path or profiles.default_path()
        self.book = ProfileBook()
        self.error: str | None = None
        self._stamp: tuple[int, int] | None = None
        self._watcher = QFileSystemWatcher(self)
        self._watcher.fileChanged.connect(self._maybe_reload)
        self._watcher.directoryChanged.connect(self._maybe_reload)
        self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def _watch(self) -> None:
        """Watch the directory (a save by the CLI renames a new file over the old one, which
        ends a watch on the file itself) and the file."""
        wanted = [str(p) for p in (self.path.parent, self.path) if p.exists()]
        watched = set(self._watcher.files()) | set(self._watcher.directories())
        missing = [p for p in wanted if p not in watched]
        if missing:
            self._watcher.addPaths(missing)

    def _maybe_reload(self, _path: str = "") -> None:
        if self._file_stamp() != self._stamp:
            self.reload()
        else:
            self._watch()

    def reload(self) -> None:
        self._stamp = self._file_stamp()
        try:
            self.book = profiles.load(self.path)
            self.error = None
        except ProfilesError as exc:
            log.debug("profiles: %s", exc)
            self.book = ProfileBook()
            self.error = str(exc)
        self._watch()
        self.changed.emit()

    def save(self, book: ProfileBook) -> None:
        """Write atomically; raises ProfilesError (a corrupt file is never written over)."""
        profiles.save(book, self.path)
        self.book = book
        self.error = None
        self._stamp = self._file_stamp()
        self._watch()
        self.changed.emit()
