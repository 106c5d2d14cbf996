"""The SVG icons of resources/ (installed as the package m6t_desktop.resources), rendered to
crisp pixmaps at the sizes trays and windows ask for."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QIcon, QImage, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

from m6t_desktop.wording import DisplayState

_REPOSITORY_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SIZES = (16, 22, 24, 32, 48, 64, 128)


def resource_bytes(name: str) -> bytes:
    try:
        return resources.files("m6t_desktop.resources").joinpath(name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        return (_REPOSITORY_RESOURCES / name).read_bytes()


def resource_path(name: str) -> Path | None:
    """A file path for the resource (for a desktop entry's Icon=), when there is one."""
    try:
        candidate = Path(str(resources.files("m6t_desktop.resources").joinpath(name)))
    except ModuleNotFoundError:
        candidate = _REPOSITORY_RESOURCES / name
    return candidate if candidate.is_file() else None


@functools.cache
def icon(name: str) -> QIcon:
    renderer = QSvgRenderer(QByteArray(resource_bytes(name)))
    result = QIcon()
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        result.addPixmap(QPixmap.fromImage(image))
    return result


def state_icon(state: DisplayState) -> QIcon:
    return icon(f"m6t-{state.value}.svg")


def app_icon() -> QIcon:
    return icon("m6t.svg")
