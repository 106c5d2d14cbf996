"""The form of one profile: a line per field with its reason underneath while the value is
wrong, the route choice, connect at login, and the /80 generated or composed from /48 +
subnet ID + MN ID. It shows a Draft and says what the user typed; the editor owns the drafts."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from m6t.protocol.addressing import AddressingError, TunnelPrefix
from m6t_desktop.prefix_generation import compose_prefix, generate_prefix, parse_ids
from m6t_desktop.profile_drafts import FIELDS, ROUTE_MODES, Draft

INVALID_STYLE = ("QLineEdit[invalid=\"true\"] { border: 2px solid #B3261E; border-radius: 3px; "
                 "padding: 1px; }")


class FieldRow(QWidget):
    """An editor with its reason underneath, shown while the value is wrong."""

    def __init__(self, editor: QWidget, hint: str = "", extra: QWidget | None = None) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        line = QHBoxLayout()
        line.addWidget(editor, 1)
        if extra is not None:
            line.addWidget(extra)
        layout.addLayout(line)
        self.editor = editor
        self.reason = QLabel()
        self.reason.setWordWrap(True)
        self.reason.setStyleSheet("color: #B3261E;")
        self.reason.hide()
        layout.addWidget(self.reason)
        self.hint = QLabel(hint)
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: palette(placeholder-text); font-size: small;")
        self.hint.setVisible(bool(hint))
        layout.addWidget(self.hint)

    def show_error(self, reason: str | None) -> None:
        self.reason.setText(reason or "")
        self.reason.setVisible(bool(reason))
        self.hint.setVisible(not reason and bool(self.hint.text()))
        self.editor.setProperty("invalid", bool(reason))
        self.editor.style().unpolish(self.editor)
        self.editor.style().polish(self.editor)


class ProfileForm(QWidget):
    """Every field of one profile. Showing a draft emits nothing; what the user changes comes
    out as `edited(field, value)` (the text, the route mode, or the auto-connect flag)."""

    edited = Signal(str, object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._loading = False  # filling the fields from a draft: not the user typing
        self._composing = False  # the /80 and its parts updating each other
        self.setStyleSheet(INVALID_STYLE)
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        self.edits = {
            "name": self._line("name", "office"),
            "gateway": self._line("gateway", "gw.example.net or 198.51.100.1"),
            "ports": self._line("ports", "3544, 4500"),
            "prefix": self._line("prefix", "fd6d:6d74:1:1:1::/80"),
            "home_agent": self._line("home_agent", "fd48:4100::2"),
            "mtu": self._line("mtu", "1472 or auto"),
            "keepalive": self._line("keepalive", "30"),
            "routes": self._line("routes", "fd48:4100::/48, 2001:db8:1::/48"),
        }
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("A new /48 following RFC 4193 (SHA-1 of the time and "
                                        "this machine's EUI-64), with the subnet ID and MN ID "
                                        "below")
        self.generate_button.clicked.connect(self.generate)
        self.rows = {
            "name": FieldRow(self.edits["name"]),
            "gateway": FieldRow(self.edits["gateway"], "IPv4 address or host name"),
            "ports": FieldRow(self.edits["ports"], "UDP ports in order of preference, all "
                              "tried at once; the first to answer wins"),
            "prefix": FieldRow(self.edits["prefix"], "/48 + 16-bit subnet ID + 16-bit MN ID; "
                               "48 random bits are added on every network",
                               self.generate_button),
            "home_agent": FieldRow(self.edits["home_agent"]),
            "mtu": FieldRow(self.edits["mtu"], "1280-65507, or auto (path MTU to the gateway "
                            "minus 28)"),
            "keepalive": FieldRow(self.edits["keepalive"], "seconds of silence before a "
                                  "keepalive, 1-30"),
        }
        form.addRow("Name:", self.rows["name"])
        form.addRow("Gateway:", self.rows["gateway"])
        form.addRow("Ports:", self.rows["ports"])
        form.addRow("Prefix (/80):", self.rows["prefix"])
        form.addRow("", self._build_compose())
        form.addRow("Home agent:", self.rows["home_agent"])
        form.addRow("MTU:", self.rows["mtu"])
        form.addRow("Keepalive:", self.rows["keepalive"])
        routes_box = QWidget()
        routes_layout = QVBoxLayout(routes_box)
        routes_layout.setContentsMargins(0, 0, 0, 0)
        self.routes_mode = QComboBox()
        for value, label in ROUTE_MODES:
            self.routes_mode.addItem(label, value)
        self.routes_mode.currentIndexChanged.connect(self._routes_mode_changed)
        routes_layout.addWidget(self.routes_mode)
        self.rows["routes"] = FieldRow(self.edits["routes"], "IPv6 prefixes, comma separated")
        routes_layout.addWidget(self.rows["routes"])
        form.addRow("Routes:", routes_box)
        self.auto_connect = QCheckBox("Connect at login (when this is the default profile)")
        self.auto_connect.toggled.connect(self._auto_connect_toggled)
        form.addRow("", self.auto_connect)
        self.default_label = QLabel()
        form.addRow("", self.default_label)

    def _line(self, name: str, placeholder: str) -> QLineEdit:
        edit = QLineEdit()
        edit.setObjectName(name)
        edit.setPlaceholderText(placeholder)
        edit.textChanged.connect(lambda text, n=name: self._field_edited(n, text))
        return edit

    def _build_compose(self) -> QWidget:
        box = QGroupBox("Compose the /80")
        layout = QFormLayout(box)
        self.site_edit = QLineEdit()
        self.site_edit.setPlaceholderText("fd6d:6d74:1::/48")
        self.subnet_edit = QLineEdit("0")
        self.subnet_edit.setPlaceholderText("0-ffff")
        self.mn_edit = QLineEdit("1")
        self.mn_edit.setPlaceholderText("0-ffff")
        for edit in (self.site_edit, self.subnet_edit, self.mn_edit):
            edit.textChanged.connect(self._compose_edited)
        ids = QHBoxLayout()
        ids.addWidget(QLabel("Subnet ID (hex):"))
        ids.addWidget(self.subnet_edit)
        ids.addWidget(QLabel("MN ID (hex):"))
        ids.addWidget(self.mn_edit)
        layout.addRow("/48 site prefix:", self.site_edit)
        layout.addRow(ids)
        self.compose_reason = QLabel()
        self.compose_reason.setStyleSheet("color: #B3261E;")
        self.compose_reason.setWordWrap(True)
        self.compose_reason.hide()
        layout.addRow(self.compose_reason)
        return box

    # --- showing a draft ---

    def show_draft(self, draft: Draft | None, is_default: bool) -> None:
        self.setEnabled(draft is not None)
        self._loading = True
        try:
            shown = draft or Draft(ports="", mtu="", keepalive="")
            for name in FIELDS:
                self.edits[name].setText(getattr(shown, name))
            self.routes_mode.setCurrentIndex(
                [m for m, _ in ROUTE_MODES].index(shown.routes_mode))
            self.auto_connect.setChecked(shown.auto_connect)
        finally:
            self._loading = False
        self._sync_compose_from_prefix()
        self.show_errors(draft.errors if draft else {}, is_default)

    def show_errors(self, errors: dict[str, str], is_default: bool) -> None:
        for name, row in self.rows.items():
            row.show_error(errors.get(name))
        self.rows["routes"].setVisible(self.routes_mode.currentData() == "list")
        self.default_label.setText("This is the default profile." if is_default else "")

    def set_field(self, name: str, text: str) -> None:
        """Type into a field (as a user would; used by tests and the screenshot script)."""
        self.edits[name].setText(text)

    def reason(self, name: str) -> str | None:
        row = self.rows[name]
        return row.reason.text() if not row.reason.isHidden() else None

    # --- what the user does ---

    def _field_edited(self, name: str, text: str) -> None:
        if self._loading:
            return
        self.edited.emit(name, text)
        if name == "prefix":
            self._sync_compose_from_prefix()

    def _routes_mode_changed(self, _index: int) -> None:
        if self._loading:
            self.rows["routes"].setVisible(self.routes_mode.currentData() == "list")
        else:
            self.edited.emit("routes_mode", self.routes_mode.currentData())

    def _auto_connect_toggled(self, checked: bool) -> None:
        if not self._loading:
            self.edited.emit("auto_connect", checked)

    # --- the /80: generate, compose ---

    def _sync_compose_from_prefix(self) -> None:
        try:
            prefix = TunnelPrefix.parse(self.edits["prefix"].text().strip())
        except AddressingError:
            return
        self._composing = True
        try:
            self.site_edit.setText(str(prefix.site))
            self.subnet_edit.setText(f"{prefix.subnet_id:x}")
            self.mn_edit.setText(f"{prefix.mn_id:x}")
        finally:
            self._composing = False
        self.compose_reason.hide()

    def _compose_edited(self) -> None:
        if self._composing or self._loading:
            return
        try:
            prefix = compose_prefix(self.site_edit.text(), self.subnet_edit.text(),
                                    self.mn_edit.text())
        except AddressingError as exc:
            self.compose_reason.setText(str(exc))
            self.compose_reason.show()
            return
        self.compose_reason.hide()
        self._composing = True
        try:
            self.edits["prefix"].setText(str(prefix))
        finally:
            self._composing = False

    def generate(self) -> None:
        """A fresh /80 with the subnet ID and MN ID typed below (0 and 1 when they are not
        usable)."""
        try:
            prefix = generate_prefix(*parse_ids(self.subnet_edit.text(), self.mn_edit.text()))
        except AddressingError:
            prefix = generate_prefix()
        self.edits["prefix"].setText(str(prefix))
