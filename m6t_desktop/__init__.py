"""m6t desktop's tray app (PySide6): a thin client of m6t-helper's control API."""

from m6t_desktop import _pyside_fixes as _pyside_fixes  # before any signal is emitted
