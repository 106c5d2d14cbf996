"""A guard against a PySide6 bug met by this app, applied once at import, only when a probe shows
the bug is there (a fixed PySide6, or Python >= 3.12, is left alone).

PySide6 6.12.0 on Python 3.11: calls from Python return `None` (every void method:
`QWidget.update()`, `QLabel.setText()`, `QPainterPath.lineTo()`, `QTimer.start()`, ...) and
`True` (`SignalInstance.emit()`, `.disconnect()`) without taking a reference to them, so each
call drops one reference to a singleton. A window repainting a traffic graph drops thousands a
second; when the count reaches zero the process aborts with "Fatal Python error: none_dealloc:
deallocating None" (or bool_dealloc). PySide6 6.11.3 does not do this, and on Python 3.12+ these
singletons are immortal, so the bug cannot bite there.

The guard does what Python 3.12 does by design: it makes `None`, `True` and `False` effectively
immortal by adding 2**48 to their reference counts (these objects are never freed anyway:
freeing one is the fatal error). At the worst rate measured here that lasts for centuries.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

_PROBE_CALLS = 16
IMMORTAL_BOOST = 1 << 48
applied: list[str] = []


class _Probe(QObject):
    ping = Signal()


def drops_references(singleton: object) -> bool:
    """Whether PySide6 calls from Python lose references to `singleton` (None or True)."""
    probe = _Probe()
    before = sys.getrefcount(singleton)
    for _ in range(_PROBE_CALLS):
        if singleton is None:
            probe.setObjectName("probe")  # a void method: returns None
        else:
            probe.ping.emit()  # returns True
    return sys.getrefcount(singleton) <= before - _PROBE_CALLS // 2


def _immortalize(singleton: object) -> None:
    refcount = ctypes.c_ssize_t.from_address(id(singleton))  # ob_refcnt, first in PyObject
    refcount.value += IMMORTAL_BOOST


def _apply() -> None:
    if applied or sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return
    if drops_references(None) or drops_references(True):
        for singleton in (None, True, False):
            _immortalize(singleton)
        applied.append("immortal None, True, False (PySide6 returns them without a reference)")


_apply()
