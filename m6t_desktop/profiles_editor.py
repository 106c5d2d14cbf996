"""The profiles editor: every field of a profile, validated as you type with the reason shown
next to it (the same checks as the helper: m6t.control.schema.check_*), the /80 generated
following RFC 4193 or composed from /48 + subnet ID + MN ID, import and export of profile
files. It edits drafts and saves them through the ProfilesStore (atomic; a corrupt file is
reported and kept)."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QCloseEvent, QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from m6t.control.schema import (
    Profile,
    ProfileError,
    check_gateway,
    check_home_agent,
    check_keepalive,
    check_mtu,
    check_name,
    check_ports,
    check_prefix,
    check_routes,
    validate_profile,
)
from m6t.profiles import (
    ProfileBook,
    ProfilesError,
    dump_profiles,
    parse_profiles,
    write_atomically,
)
from m6t.protocol.addressing import (
    AddressingError,
    TunnelPrefix,
    rfc4193_global_id,
    ula_prefix,
)
from m6t.protocol.constants import DEFAULT_TUNNEL_MTU, KEEPALIVE_INTERVAL, SUGGESTED_PORTS
from m6t_desktop.icons import app_icon
from m6t_desktop.profiles_store import ProfilesStore
from m6t_desktop.status_window import Banner

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
FIELDS = ("name", "gateway", "ports", "prefix", "home_agent", "mtu", "keepalive", "routes")
ROUTE_MODES = (("home-agent", "The home agent only"),
               ("default", "Everything (::/0, native IPv6 stays preferred)"),
               ("list", "These prefixes:"))


# --- RFC 4193 ---


def ntp_timestamp(now: float) -> int:
    """64-bit NTP format: seconds since 1900 in the high 32 bits, the fraction in the low."""
    seconds = int(now) + NTP_EPOCH_OFFSET
    fraction = int((now % 1) * (1 << 32))
    return (seconds % (1 << 32)) << 32 | fraction


def local_eui64(net: Path = Path("/sys/class/net")) -> bytes:
    """An EUI-64 from a local MAC address (RFC 4193 section 3.2.2 step 2); random bytes when
    there is none (RFC 4193 allows any suitably unique identifier)."""
    try:
        names = sorted(os.listdir(net))
    except OSError:
        names = []
    for name in names:
        try:
            mac = bytes.fromhex((net / name / "address").read_text().strip().replace(":", ""))
        except (OSError, ValueError):
            continue
        if len(mac) == 6 and any(mac) and not mac[0] & 0x01:
            return bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:]
    return secrets.token_bytes(8)


def generate_prefix(subnet_id: int = 0, mn_id: int = 1, *, now: float | None = None,
                    eui64: bytes | None = None) -> TunnelPrefix:
    """A fresh /48 following RFC 4193 (SHA-1 of the NTP time and an EUI-64, 40 bits kept),
    plus subnet ID and MN ID: the client's /80."""
    global_id = rfc4193_global_id(ntp_timestamp(time.time() if now is None else now),
                                  eui64 if eui64 is not None else local_eui64())
    return TunnelPrefix.compose(ula_prefix(global_id), subnet_id, mn_id)


# --- drafts: what is being typed ---


@dataclass
class Draft:
    """One profile as typed, field by field (text), and what is wrong with it."""

    name: str = ""
    gateway: str = ""
    ports: str = ", ".join(str(p) for p in SUGGESTED_PORTS[:2])
    prefix: str = ""
    home_agent: str = ""
    mtu: str = str(DEFAULT_TUNNEL_MTU)
    keepalive: str = f"{KEEPALIVE_INTERVAL:g}"
    routes_mode: str = "home-agent"
    routes: str = ""
    auto_connect: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, profile: Profile) -> Draft:
        if isinstance(profile.routes, list):
            mode, routes = "list", ", ".join(profile.routes)
        else:
            mode, routes = profile.routes, ""
        return cls(name=profile.name, gateway=profile.gateway,
                   ports=", ".join(str(p) for p in profile.ports), prefix=profile.prefix,
                   home_agent=profile.home_agent, mtu=str(profile.mtu),
                   keepalive=f"{profile.keepalive:g}", routes_mode=mode, routes=routes,
                   auto_connect=profile.auto_connect)

    # field parsers: text -> value, ProfileError when the text cannot be one

    def parsed_ports(self) -> list[int]:
        ports = []
        for token in re.split(r"[\s,]+", self.ports.strip()):
            if not token:
                continue
            if not token.isdigit():
                raise ProfileError("ports", f"{token!r} is not a port number")
            ports.append(int(token))
        return ports

    def parsed_mtu(self) -> int | str:
        text = self.mtu.strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit():
            raise ProfileError("mtu", "a number of bytes or \"auto\"")
        return int(text)

    def parsed_keepalive(self) -> float:
        try:
            return float(self.keepalive.strip())
        except ValueError:
            raise ProfileError("keepalive", "a number of seconds (1-30)") from None

    def parsed_routes(self) -> str | list[str]:
        if self.routes_mode != "list":
            return self.routes_mode
        return [token for token in re.split(r"[\s,]+", self.routes.strip()) if token]

    def validate(self, other_names: set[str]) -> dict[str, str]:
        """Check every field on its own (so each shows its own reason); return the errors."""
        errors: dict[str, str] = {}

        def check(name: str, action: object) -> object:
            try:
                return action()  # type: ignore[operator]
            except ProfileError as exc:
                errors[name] = exc.reason
                return None

        check("name", lambda: check_name(self.name))
        if "name" not in errors and self.name in other_names:
            errors["name"] = f"another profile is already named {self.name!r}"
        check("gateway", lambda: check_gateway(self.gateway.strip()))
        check("ports", lambda: check_ports(self.parsed_ports()))
        prefix = check("prefix", lambda: check_prefix(self.prefix.strip()))
        if not self.prefix.strip():
            errors["prefix"] = "the client's /80: generate one, or ask the gateway's operator"
        check("home_agent", lambda: check_home_agent(
            self.home_agent.strip(), prefix if isinstance(prefix, TunnelPrefix) else None))
        check("mtu", lambda: check_mtu(self.parsed_mtu()))
        check("keepalive", lambda: check_keepalive(self.parsed_keepalive()))
        check("routes", lambda: check_routes(self.parsed_routes()))  # type: ignore[arg-type]
        self.errors = errors
        return errors

    def to_profile(self) -> Profile:
        profile = Profile(name=self.name, gateway=self.gateway.strip(),
                          ports=self.parsed_ports(), prefix=self.prefix.strip(),
                          home_agent=self.home_agent.strip(),
                          mtu=self.parsed_mtu(),  # type: ignore[arg-type]
                          keepalive=self.parsed_keepalive(),
                          routes=self.parsed_routes(),  # type: ignore[arg-type]
                          auto_connect=self.auto_connect)
        return validate_profile(profile)


def home_relative(path: Path) -> str:
    """~/.config/m6t/profiles.toml rather than /home/someone/.config/m6t/profiles.toml."""
    try:
        return "~/" + str(path.resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return str(path)


# --- the dialog ---


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


class ProfilesEditor(QDialog):
    saved = Signal()

    def __init__(self, store: ProfilesStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.drafts: list[Draft] = []
        self.default: str | None = None
        self.dirty = False
        self._loading = False
        self._composing = False
        self.setWindowTitle("Profiles")  # Qt appends " — m6t desktop"
        self.setWindowIcon(app_icon())
        self.setStyleSheet("QLineEdit[invalid=\"true\"] { border: 2px solid #B3261E; "
                           "border-radius: 3px; padding: 1px; }")
        self.resize(860, 640)

        layout = QVBoxLayout(self)
        self.banner = Banner()
        layout.addWidget(self.banner)
        splitter = QSplitter()
        layout.addWidget(splitter, 1)
        splitter.addWidget(self._build_list())
        splitter.addWidget(self._build_form())
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
        self.edits["name"].setFocus()

    # --- building ---

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

    def _line(self, name: str, placeholder: str) -> QLineEdit:
        edit = QLineEdit()
        edit.setObjectName(name)
        edit.setPlaceholderText(placeholder)
        edit.textChanged.connect(lambda text, n=name: self._field_edited(n, text))
        return edit

    def _build_form(self) -> QWidget:
        self.form_box = QWidget()
        form = QFormLayout(self.form_box)
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
        return self.form_box

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

    # --- loading ---

    def _reload_clicked(self) -> None:
        self.dirty = False
        self.store.reload()  # emits changed: load_from_store

    def load_from_store(self) -> None:
        self.drafts = [Draft.from_profile(p) for p in self.store.book.profiles]
        self.default = self.store.book.default
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

    def _fill_list(self, select: int) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for _ in self.drafts:
            self.list.addItem(QListWidgetItem())
        self.list.blockSignals(False)
        self._revalidate_all()
        if self.drafts:
            self.list.setCurrentRow(max(0, min(select, len(self.drafts) - 1)))
        self._show_draft(self.list.currentRow())

    def _other_names(self, draft: Draft) -> set[str]:
        return {d.name for d in self.drafts if d is not draft}

    def _revalidate_all(self) -> None:
        for row, draft in enumerate(self.drafts):
            draft.validate(self._other_names(draft))
            self._label_item(row)
        self._update_buttons()

    def _label_item(self, row: int) -> None:
        draft = self.drafts[row]
        item = self.list.item(row)
        if item is None:
            return
        text = draft.name or "(no name)"
        if draft.name and draft.name == self.default:
            text += "  (default)"
        item.setText(text)
        if draft.errors:  # only the profiles that need attention are marked
            item.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning))
        else:
            item.setIcon(self._blank_icon)
        item.setToolTip("; ".join(f"{k}: {v}" for k, v in draft.errors.items()) or "valid")

    @property
    def draft(self) -> Draft | None:
        row = self.list.currentRow()
        return self.drafts[row] if 0 <= row < len(self.drafts) else None

    def _show_draft(self, row: int) -> None:
        draft = self.drafts[row] if 0 <= row < len(self.drafts) else None
        self.form_box.setEnabled(draft is not None)
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
        self._show_errors()
        self._update_buttons()

    def _show_errors(self) -> None:
        draft = self.draft
        errors = draft.errors if draft else {}
        for name, row in self.rows.items():
            row.show_error(errors.get(name))
        self.rows["routes"].setVisible(self.routes_mode.currentData() == "list")
        if draft is not None and draft.name and draft.name == self.default:
            self.default_label.setText("This is the default profile.")
        else:
            self.default_label.setText("")

    def _update_buttons(self) -> None:
        has = self.draft is not None
        valid = all(not d.errors for d in self.drafts)
        self.save_button.setEnabled(self.dirty and valid and not self.store.error)
        if self.store.error:
            self.save_button.setToolTip("The profiles file is corrupt: nothing is written over it")
        elif not valid:
            bad = next(d for d in self.drafts if d.errors)
            field_name, reason = next(iter(bad.errors.items()))
            self.save_button.setToolTip(f"{bad.name or '(no name)'}: {field_name}: {reason}")
        else:
            self.save_button.setToolTip(f"Write {self.store.path} (atomically)")
        self.duplicate_button.setEnabled(has)
        self.remove_button.setEnabled(has)
        self.default_button.setEnabled(has and self.draft is not None
                                       and self.draft.name != self.default)
        self.export_button.setEnabled(any(not d.errors for d in self._selected_drafts()))

    # --- editing ---

    def _field_edited(self, name: str, text: str) -> None:
        draft = self.draft
        if self._loading or draft is None:
            return
        if name == "name" and draft.name == self.default:
            self.default = text  # renaming the default keeps it the default
        setattr(draft, name, text)
        self._changed()
        if name == "prefix":
            self._sync_compose_from_prefix()

    def _routes_mode_changed(self, _index: int) -> None:
        draft = self.draft
        if not self._loading and draft is not None:
            draft.routes_mode = self.routes_mode.currentData()
            self._changed()
        else:
            self._show_errors()

    def _auto_connect_toggled(self, checked: bool) -> None:
        draft = self.draft
        if not self._loading and draft is not None:
            draft.auto_connect = checked
            self._changed()

    def _changed(self) -> None:
        self.dirty = True
        self._revalidate_all()
        self._show_errors()

    def set_field(self, name: str, text: str) -> None:
        """Type into a field (as a user would; used by tests and the screenshot script)."""
        self.edits[name].setText(text)

    def reason(self, name: str) -> str | None:
        row = self.rows[name]
        return row.reason.text() if not row.reason.isHidden() else None

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

    def _compose_ids(self) -> tuple[int, int]:
        values = []
        for label, edit in (("subnet ID", self.subnet_edit), ("MN ID", self.mn_edit)):
            text = edit.text().strip().lower().removeprefix("0x")
            try:
                value = int(text, 16)
            except ValueError:
                raise AddressingError(f"{label} {edit.text()!r} is not a hexadecimal "
                                      "number (0-ffff)") from None
            values.append(value)
        return values[0], values[1]

    def _compose_edited(self) -> None:
        if self._composing or self._loading:
            return
        try:
            subnet_id, mn_id = self._compose_ids()
            site = ipaddress.IPv6Network(self.site_edit.text().strip(), strict=True)
            prefix = TunnelPrefix.compose(site, subnet_id, mn_id)
        except (AddressingError, ValueError) as exc:
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
        try:
            subnet_id, mn_id = self._compose_ids()
            prefix = generate_prefix(subnet_id, mn_id)
        except AddressingError:
            prefix = generate_prefix()
        self.edits["prefix"].setText(str(prefix))

    # --- the list ---

    def add_profile(self) -> None:
        names = {d.name for d in self.drafts}
        number = len(self.drafts) + 1
        while f"profile {number}" in names:
            number += 1
        self.drafts.append(Draft(name=f"profile {number}"))
        self.dirty = True
        self._fill_list(len(self.drafts) - 1)

    def duplicate_profile(self) -> None:
        draft = self.draft
        if draft is None:
            return
        names = {d.name for d in self.drafts}
        name = f"{draft.name} copy"
        while name in names:
            name += " copy"
        self.drafts.insert(self.list.currentRow() + 1, replace(draft, name=name, errors={}))
        self.dirty = True
        self._fill_list(self.list.currentRow() + 1)

    def remove_profile(self) -> None:
        row = self.list.currentRow()
        if not 0 <= row < len(self.drafts):
            return
        removed = self.drafts.pop(row)
        if removed.name == self.default:
            self.default = None
        self.dirty = True
        self._fill_list(row)

    def make_default(self) -> None:
        draft = self.draft
        if draft is not None:
            self.default = draft.name
            self.dirty = True
            self._revalidate_all()
            self._show_errors()

    def _selected_drafts(self) -> list[Draft]:
        rows = sorted({index.row() for index in self.list.selectedIndexes()})
        return [self.drafts[r] for r in rows if r < len(self.drafts)] or \
            ([self.draft] if self.draft else [])

    # --- saving, import, export ---

    def book(self) -> ProfileBook:
        """The drafts as a book; raises ProfileError naming the first bad field."""
        profiles = []
        for draft in self.drafts:
            errors = draft.validate(self._other_names(draft))
            if errors:
                field_name, reason = next(iter(errors.items()))
                raise ProfileError(field_name, f"profile {draft.name!r}: {reason}")
            profiles.append(draft.to_profile())
        default = self.default if any(p.name == self.default for p in profiles) else None
        return ProfileBook(profiles=profiles, default=default)

    def save(self) -> bool:
        try:
            book = self.book()
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
            text = path.read_text(encoding="utf-8")
            book = parse_profiles(text, str(path))
        except (OSError, UnicodeDecodeError, ProfilesError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.banner.show_message(f"Cannot import {path.name}", str(reason), "error")
            return []
        replaced = []
        for profile in book.profiles:
            draft = Draft.from_profile(profile)
            for index, existing in enumerate(self.drafts):
                if existing.name == profile.name:
                    self.drafts[index] = draft
                    replaced.append(profile.name)
                    break
            else:
                self.drafts.append(draft)
        if book.default and not self.default:
            self.default = book.default
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
        profiles = []
        for draft in self.drafts:
            if draft.name in wanted:
                if draft.validate(self._other_names(draft)):
                    self.banner.show_message(f"Cannot export {draft.name}", "; ".join(
                        f"{k}: {v}" for k, v in draft.errors.items()), "error")
                    return []
                profiles.append(draft.to_profile())
        default = self.default if any(p.name == self.default for p in profiles) else None
        try:
            write_atomically(path, dump_profiles(ProfileBook(profiles, default)))
        except OSError as exc:
            self.banner.show_message(f"Cannot export to {path}", str(exc.strerror), "error")
            return []
        self.message.setText(f"Exported {len(profiles)} profile(s) to {path}")
        return [p.name for p in profiles]

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
