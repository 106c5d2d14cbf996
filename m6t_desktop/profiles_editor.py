"""The profiles editor: the list of profiles beside the form of the one picked, import, export
and save. Every field is validated as you type (profile_drafts, with the helper's own checks)
and shown next to it (profile_form); Save writes the drafts through the ProfilesStore
(atomically; a corrupt file is reported and kept); import and export read and write other
profile files (profile_files)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QCloseEvent, QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from m6t.control.schema import ProfileError
from m6t.profiles import ProfilesError
from m6t_desktop.banner import Banner
from m6t_desktop.icons import app_icon
from m6t_desktop.profile_drafts import Draft, DraftSet
from m6t_desktop.profile_files import (
    ProfileFileError,
    home_relative,
    read_profile_file,
    write_profile_file,
)
from m6t_desktop.profile_form import ProfileForm
from m6t_desktop.profiles_store import ProfilesStore


class ProfilesEditor(QDialog):
    saved = Signal()

    def __init__(self, store: ProfilesStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.drafts = DraftSet()
        self.dirty = False
        self.setWindowTitle("Profiles")  # Qt appends " — m6t desktop"
        self.setWindowIcon(app_icon())
        self.resize(860, 640)

        layout = QVBoxLayout(self)
        self.banner = Banner()
        layout.addWidget(self.banner)
        splitter = QSplitter()
        layout.addWidget(splitter, 1)
        splitter.addWidget(self._build_list())
        self.form = ProfileForm()
        self.form.edited.connect(self._edited)
        splitter.addWidget(self.form)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([220, 640])

        buttons = QHBoxLayout()
        self.import_button = QPushButton("Import…")
        self.import_button.clicked.connect(self._import_clicked)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export_clicked)
        self.reload_button = QPushButton("Reload")
        self.reload_button.setToolTip(f"Read {store.path} again")
        self.reload_button.clicked.connect(self._reload_clicked)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.save_button = QPushButton("Save")
        self.save_button.setDefault(True)
        self.save_button.clicked.connect(self.save)
        close_button = QPushButton("Close")
        close_button.clicked.connect(self.close)
        for button in (self.import_button, self.export_button, self.reload_button):
            buttons.addWidget(button)
        buttons.addWidget(self.message, 1)
        buttons.addWidget(close_button)
        buttons.addWidget(self.save_button)
        layout.addLayout(buttons)

        store.changed.connect(self._store_changed)
        self.load_from_store()
        self.form.edits["name"].setFocus()

    def _build_list(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        self.list = QListWidget()
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list.setIconSize(QSize(16, 16))
        self.list.setSpacing(1)
        blank = QPixmap(16, 16)
        blank.fill(Qt.GlobalColor.transparent)
        self._blank_icon = QIcon(blank)  # keeps names aligned with the marked ones
        self.list.currentRowChanged.connect(self._show_draft)
        layout.addWidget(self.list, 1)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add")
        self.add_button.clicked.connect(self.add_profile)
        self.duplicate_button = QPushButton("Duplicate")
        self.duplicate_button.clicked.connect(self.duplicate_profile)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_profile)
        for button in (self.add_button, self.duplicate_button, self.remove_button):
            row.addWidget(button)
        layout.addLayout(row)
        self.default_button = QPushButton("Make default")
        self.default_button.setToolTip("The profile connected at login and by Connect")
        self.default_button.clicked.connect(self.make_default)
        layout.addWidget(self.default_button)
        return box

    # --- loading ---

    def _reload_clicked(self) -> None:
        self.dirty = False
        self.store.reload()  # emits changed: load_from_store

    def load_from_store(self) -> None:
        self.drafts = DraftSet.from_book(self.store.book)
        self.dirty = False
        if self.store.error:
            self.banner.show_message(
                "The profiles file cannot be read", f"{self.store.error}\nNothing will be "
                "written over it. You can still import and export profiles.", "error")
        else:
            self.banner.hide()
        self.message.setText(home_relative(self.store.path))
        self._fill_list(0)

    def _store_changed(self) -> None:
        if not self.dirty:
            self.load_from_store()
        else:
            self.banner.show_message(
                "The profiles file changed on disk", "Someone else (the m6t command?) saved "
                "it. Reload to see their version (your unsaved edits will be lost), or "
                "Save to keep yours.", "warning")

    # --- rendering ---

    def _fill_list(self, select: int) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for _ in self.drafts:
            self.list.addItem(QListWidgetItem())
        self.list.blockSignals(False)
        self._label_items()
        if len(self.drafts):
            self.list.setCurrentRow(max(0, min(select, len(self.drafts) - 1)))
        self._show_draft(self.list.currentRow())

    def _label_items(self) -> None:
        for row, draft in enumerate(self.drafts):
            item = self.list.item(row)
            if item is None:
                continue
            text = draft.name or "(no name)"
            if self.drafts.is_default(draft):
                text += "  (default)"
            item.setText(text)
            if draft.errors:  # only the profiles that need attention are marked
                item.setIcon(self.style().standardIcon(
                    QStyle.StandardPixmap.SP_MessageBoxWarning))
            else:
                item.setIcon(self._blank_icon)
            item.setToolTip("; ".join(f"{k}: {v}" for k, v in draft.errors.items())
                            or "valid")
        self._update_buttons()

    @property
    def draft(self) -> Draft | None:
        row = self.list.currentRow()
        return self.drafts[row] if 0 <= row < len(self.drafts) else None

    def _show_draft(self, row: int) -> None:
        draft = self.drafts[row] if 0 <= row < len(self.drafts) else None
        self.form.show_draft(draft, self.drafts.is_default(draft))
        self._update_buttons()

    def _show_errors(self) -> None:
        draft = self.draft
        self.form.show_errors(draft.errors if draft else {}, self.drafts.is_default(draft))

    def _update_buttons(self) -> None:
        draft = self.draft
        first_error = self.drafts.first_error()
        self.save_button.setEnabled(self.dirty and first_error is None and not self.store.error)
        if self.store.error:
            self.save_button.setToolTip("The profiles file is corrupt: nothing is written over it")
        elif first_error is not None:
            bad, field_name, reason = first_error
            self.save_button.setToolTip(f"{bad.name or '(no name)'}: {field_name}: {reason}")
        else:
            self.save_button.setToolTip(f"Write {self.store.path} (atomically)")
        self.duplicate_button.setEnabled(draft is not None)
        self.remove_button.setEnabled(draft is not None)
        self.default_button.setEnabled(draft is not None and draft.name != self.drafts.default)
        self.export_button.setEnabled(any(not d.errors for d in self._selected_drafts()))

    # --- editing ---

    def _edited(self, name: str, value: str | bool) -> None:
        draft = self.draft
        if draft is None:
            return
        self.drafts.set_field(draft, name, value)
        self._changed()

    def _changed(self) -> None:
        self.dirty = True
        self._label_items()
        self._show_errors()

    def add_profile(self) -> None:
        index = self.drafts.add()
        self.dirty = True
        self._fill_list(index)

    def duplicate_profile(self) -> None:
        row = self.list.currentRow()
        if not 0 <= row < len(self.drafts):
            return
        index = self.drafts.duplicate(row)
        self.dirty = True
        self._fill_list(index)

    def remove_profile(self) -> None:
        row = self.list.currentRow()
        if not 0 <= row < len(self.drafts):
            return
        self.drafts.remove(row)
        self.dirty = True
        self._fill_list(row)

    def make_default(self) -> None:
        draft = self.draft
        if draft is not None:
            self.drafts.make_default(draft)
            self._changed()

    def _selected_drafts(self) -> list[Draft]:
        rows = sorted({index.row() for index in self.list.selectedIndexes()})
        return [self.drafts[r] for r in rows if r < len(self.drafts)] or \
            ([self.draft] if self.draft else [])

    # --- saving, import, export ---

    def save(self) -> bool:
        try:
            book = self.drafts.book()
        except ProfileError as exc:
            self.message.setText(f"Not saved: {exc}")
            return False
        try:
            self.store.save(book)
        except (ProfilesError, OSError) as exc:
            self.banner.show_message("Not saved", str(exc), "error")
            return False
        self.dirty = False
        self.message.setText(f"Saved to {home_relative(self.store.path)}")
        self._update_buttons()
        self.saved.emit()
        return True

    def import_file(self, path: Path) -> list[str]:
        """Add the profiles of a file (same-named ones are replaced); returns their names.
        The profiles file changes only on Save."""
        try:
            book = read_profile_file(path)
        except ProfileFileError as exc:
            self.banner.show_message(f"Cannot import {path.name}", str(exc), "error")
            return []
        replaced = self.drafts.merge(book)
        names = book.names()
        self.dirty = bool(names) or self.dirty
        note = f" ({len(replaced)} replaced: {', '.join(replaced)})" if replaced else ""
        self.message.setText(f"Imported {len(names)} profile(s) from {path.name}{note}; "
                             "Save to keep them")
        self._fill_list(next((i for i, d in enumerate(self.drafts) if d.name in names), 0))
        return names

    def export_file(self, path: Path, names: list[str] | None = None) -> list[str]:
        """Write the named profiles (the selected ones when None) to a profiles file."""
        wanted = names if names is not None else [d.name for d in self._selected_drafts()]
        for draft in self.drafts:
            if draft.name in wanted and draft.errors:
                self.banner.show_message(f"Cannot export {draft.name}", "; ".join(
                    f"{k}: {v}" for k, v in draft.errors.items()), "error")
                return []
        book = self.drafts.book(wanted)
        try:
            write_profile_file(path, book)
        except ProfileFileError as exc:
            self.banner.show_message(f"Cannot export to {path}", str(exc), "error")
            return []
        self.message.setText(f"Exported {len(book.profiles)} profile(s) to {path}")
        return book.names()

    def _import_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import profiles", str(Path.home()),
                                              "m6t profiles (*.toml);;All files (*)")
        if path:
            self.import_file(Path(path))

    def _export_clicked(self) -> None:
        selected = [d.name for d in self._selected_drafts()]
        suggested = Path.home() / (f"{selected[0]}.toml" if len(selected) == 1
                                   else "m6t-profiles.toml")
        path, _ = QFileDialog.getSaveFileName(self, "Export profiles", str(suggested),
                                              "m6t profiles (*.toml)")
        if path:
            self.export_file(Path(path), selected)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.dirty:
            answer = QMessageBox.question(
                self, "Unsaved profiles", "Save your changes to the profiles?",
                QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save)
            if answer == QMessageBox.StandardButton.Cancel or \
                    (answer == QMessageBox.StandardButton.Save and not self.save()):
                event.ignore()
                return
            if answer == QMessageBox.StandardButton.Discard:
                self.load_from_store()
        event.accept()

    def reject(self) -> None:
        """Escape and Close go through closeEvent, which asks about unsaved changes."""
        self.close()
