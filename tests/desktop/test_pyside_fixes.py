"""The guard against PySide6 6.12.0 dropping references to None and True on every call from
Python 3.11: without it the app aborts ("deallocating None") after some thousands of calls,
which a repainting traffic graph makes within a minute."""

from __future__ import annotations

import sys

import pytest
from PySide6.QtCore import QObject, QPointF, Signal
from PySide6.QtGui import QPainterPath

from m6t_desktop import _pyside_fixes


class Emitter(QObject):
    changed = Signal(object, bool)


@pytest.fixture
def buggy() -> bool:
    return bool(_pyside_fixes.applied)


def test_the_guard_is_applied_exactly_when_pyside_drops_references(buggy: bool) -> None:
    affected = _pyside_fixes.drops_references(None) or _pyside_fixes.drops_references(True)
    old_python = sys.version_info < (3, 12)
    assert buggy == (affected and old_python)


def test_calls_that_drop_references_can_no_longer_reach_zero(buggy: bool) -> None:
    emitter = Emitter()
    path = QPainterPath()
    none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(50_000):  # more references than None and True had at start-up
        emitter.changed.emit(1, True)
        path.lineTo(QPointF(1.0, 2.0))
    if buggy:  # the guard keeps them far from zero
        assert sys.getrefcount(None) > _pyside_fixes.IMMORTAL_BOOST - 1_000_000
        assert sys.getrefcount(True) > _pyside_fixes.IMMORTAL_BOOST - 1_000_000
    else:  # a sound PySide6 (or Python 3.12+): the calls leave the counts where they were
        assert abs(sys.getrefcount(None) - none_before) < 1_000
        assert abs(sys.getrefcount(True) - true_before) < 1_000


def test_signals_still_deliver() -> None:
    emitter = Emitter()
    received = []
    emitter.changed.connect(lambda value, flag: received.append((value, flag)))
    assert emitter.changed.emit("x", False) is True
    assert received == [("x", False)]
