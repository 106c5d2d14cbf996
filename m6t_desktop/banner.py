"""A coloured box that says what is wrong and what to do (the status window's problems, the
profiles editor's file errors)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QPushButton, QVBoxLayout, QWidget

BANNER_COLOURS = {"error": ("#FDECEA", "#8C1D18"), "warning": ("#FFF4D6", "#6B4E00"),
                  "info": ("#E8F1FD", "#0F3E7A")}


class Banner(QFrame):
    """A coloured box with a bold title and advice that can be selected (commands to copy)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel()
        self.title.setWordWrap(True)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.advice = QLabel()
        self.advice.setWordWrap(True)
        self.advice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(10, 6, 10, 6)
        self._layout.addWidget(self.title)
        self._layout.addWidget(self.advice)
        self.hide()

    def add_button(self, button: QPushButton) -> None:
        """What to do about it, in one click, under the advice."""
        self._layout.addWidget(button, 0, Qt.AlignmentFlag.AlignLeft)

    def show_message(self, title: str, advice: str, level: str) -> None:
        background, foreground = BANNER_COLOURS[level]
        self.setStyleSheet(f"Banner {{ background: {background}; border: 1px solid "
                           f"{foreground}; border-radius: 4px; }} QLabel {{ color: {foreground};"
                           " background: transparent; border: none; }")
        self.title.setText(title)
        self.advice.setText(advice)
        self.advice.setVisible(bool(advice))
        self.show()
