"""The status window: the state and its cause, what to do when something is wrong (a captive
portal's login page to open, too), the address (its /80 and its random suffix told apart) and
how it changed, gateway, port, MTU, RTT, the traffic graph, the network report card with what
the helper remembers of each network, and the event log. It renders AppState and asks the
Controller for actions; with no system tray it is the app's main window."""

from __future__ import annotations

import html
import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QFont, QPalette, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QAbstractScrollArea,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QPushButton,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from m6t.control.schema import TunnelState
from m6t_desktop.app_state import AppState
from m6t_desktop.banner import Banner
from m6t_desktop.client import Link
from m6t_desktop.controller import Controller
from m6t_desktop.icons import app_icon, state_icon
from m6t_desktop.profiles_store import ProfilesStore
from m6t_desktop.traffic_graph import TrafficGraph
from m6t_desktop.wording import (
    NO_VALUE,
    PORTAL_TITLE,
    DisplayState,
    ago_text,
    bytes_text,
    clock_text,
    datapath_text,
    date_clock_text,
    join_group_hint,
    portal_advice,
    rtt_text,
    split_address,
)

SUFFIX_COLOUR = "#B3541E"


def _table(model: object) -> QTableView:
    view = QTableView()
    view.setModel(model)  # type: ignore[arg-type]
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.verticalHeader().setVisible(False)
    view.setAlternatingRowColors(True)
    view.setWordWrap(False)
    header = view.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setStretchLastSection(True)
    return view


def since_text(since: float, now: float) -> str:
    """When the state last changed, and how long ago ("14:03:10, 1 h 12 min ago")."""
    if not since:
        return NO_VALUE
    return f"{date_clock_text(since)}, {ago_text(now - since)}"


class StatusWindow(QMainWindow):
    trayIconToggled = Signal(bool)
    autostartToggled = Signal(bool)
    profilesRequested = Signal()

    def __init__(self, state: AppState, controller: Controller, profiles: ProfilesStore,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.controller = controller
        self.profiles = profiles
        self.quit_on_close = False  # the main window when there is no tray icon
        self._shown_profile: str | None = None
        self.setWindowTitle("m6t desktop")
        self.setWindowIcon(app_icon())
        self.resize(720, 700)
        self._build_menu()

        central = QWidget()
        self.setCentralWidget(central)
        layout = QVBoxLayout(central)

        header = QHBoxLayout()
        self.state_icon = QLabel()
        self.state_icon.setFixedSize(48, 48)
        header.addWidget(self.state_icon, 0, Qt.AlignmentFlag.AlignTop)
        titles = QVBoxLayout()
        self.headline = QLabel()
        headline_font = QFont(self.headline.font())
        headline_font.setPointSizeF(headline_font.pointSizeF() * 1.4)
        headline_font.setBold(True)
        self.headline.setFont(headline_font)
        self.cause = QLabel()
        self.cause.setWordWrap(True)
        titles.addWidget(self.headline)
        titles.addWidget(self.cause)
        header.addLayout(titles, 1)
        layout.addLayout(header)

        self.problem_banner = Banner()
        layout.addWidget(self.problem_banner)
        self.failure_banner = Banner()
        layout.addWidget(self.failure_banner)
        self.portal_banner = Banner()
        self.portal_button = QPushButton("Open the lo&gin page")
        self.portal_button.clicked.connect(lambda: self.controller.open_login_page())
        self.portal_banner.add_button(self.portal_button)
        layout.addWidget(self.portal_banner)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Profile:"))
        self.profile_combo = QComboBox()
        self.profile_combo.setMinimumContentsLength(14)
        # Choosing a profile with a tunnel up shows that tunnel (several can run at once).
        self.profile_combo.currentTextChanged.connect(self.state.select)
        controls.addWidget(self.profile_combo)
        self.connect_button = QPushButton("&Connect")
        self.connect_button.clicked.connect(self._connect_clicked)
        self.disconnect_button = QPushButton("D&isconnect")
        self.disconnect_button.clicked.connect(lambda: self.controller.disconnect_tunnel())
        self.regenerate_button = QPushButton("New &address now")
        self.regenerate_button.setToolTip("A fresh random 48-bit suffix on the same /80")
        self.regenerate_button.clicked.connect(lambda: self.controller.regenerate())
        profiles_button = QPushButton("&Profiles…")
        profiles_button.clicked.connect(self.profilesRequested)
        for button in (self.connect_button, self.disconnect_button, self.regenerate_button):
            controls.addWidget(button)
        controls.addStretch(1)
        controls.addWidget(profiles_button)
        layout.addLayout(controls)

        self.tabs = QTabWidget()
        layout.addWidget(self.tabs, 1)
        self.tabs.addTab(self._build_overview(), "&Overview")
        self.address_table = _table(state.addresses)
        self.tabs.addTab(self.address_table, "A&ddresses")
        self.report_page = self._build_report()
        self.tabs.addTab(self.report_page, "Network &test")
        self.event_table = _table(state.events)
        self.tabs.addTab(self.event_table, "&Events")
        state.events.rowsInserted.connect(lambda *_: self.event_table.scrollToBottom())

        state.changed.connect(self.refresh)
        state.trafficAdded.connect(self.refresh_traffic)
        state.report.cardChanged.connect(self.refresh_report)
        state.networks.networksChanged.connect(self.refresh_networks)
        state.networks.modelReset.connect(self._networks_selection_changed)
        self.tabs.currentChanged.connect(self._tab_changed)
        profiles.changed.connect(self.refresh)
        self.refresh()
        self.refresh_report()
        self.refresh_networks()

    # --- building ---

    def _build_menu(self) -> None:
        menu = self.menuBar().addMenu("&m6t")
        profiles = QAction("&Profiles…", self)
        profiles.triggered.connect(self.profilesRequested)
        menu.addAction(profiles)
        menu.addSeparator()
        self.tray_action = QAction("Show icon in the system &tray", self)
        self.tray_action.setCheckable(True)
        self.tray_action.toggled.connect(self.trayIconToggled)
        menu.addAction(self.tray_action)
        self.autostart_action = QAction("Start at &login (connects the default profile)", self)
        self.autostart_action.setCheckable(True)
        self.autostart_action.toggled.connect(self.autostartToggled)
        menu.addAction(self.autostart_action)
        menu.addSeparator()
        quit_action = QAction("&Quit (tunnels keep running)", self)
        quit_action.triggered.connect(lambda: self.controller.quit(disconnect=False))
        menu.addAction(quit_action)
        self.quit_disconnect_action = QAction("&Disconnect and quit", self)
        self.quit_disconnect_action.triggered.connect(lambda: self.controller.quit(True))
        menu.addAction(self.quit_disconnect_action)

    def _value_label(self) -> QLabel:
        label = QLabel(NO_VALUE)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    def _build_overview(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.address_label = self._value_label()
        self.address_label.setTextFormat(Qt.TextFormat.RichText)
        self.address_note = QLabel()
        note_palette = self.address_note.palette()
        note_palette.setColor(QPalette.ColorRole.WindowText,
                              note_palette.color(QPalette.ColorRole.PlaceholderText))
        self.address_note.setPalette(note_palette)
        self.address_note.setTextFormat(Qt.TextFormat.RichText)
        address_box = QVBoxLayout()
        address_box.setSpacing(0)
        address_box.addWidget(self.address_label)
        address_box.addWidget(self.address_note)
        form.addRow("Address:", address_box)
        self.gateway_label = self._value_label()
        form.addRow("Gateway:", self.gateway_label)
        self.network_label = self._value_label()
        self.network_label.setWordWrap(True)
        form.addRow("Network:", self.network_label)
        self.home_agent_label = self._value_label()
        form.addRow("Home agent:", self.home_agent_label)
        self.mtu_label = self._value_label()
        form.addRow("MTU:", self.mtu_label)
        self.rtt_label = self._value_label()
        form.addRow("RTT:", self.rtt_label)
        self.counters_label = self._value_label()
        form.addRow("Traffic:", self.counters_label)
        self.datapath_label = self._value_label()
        form.addRow("Data path:", self.datapath_label)
        self.since_label = self._value_label()
        form.addRow("Since:", self.since_label)
        layout.addLayout(form)
        self.graph = TrafficGraph()
        graph_box = QGroupBox("Traffic, last 5 minutes")
        graph_layout = QVBoxLayout(graph_box)
        graph_layout.addWidget(self.graph)
        layout.addWidget(graph_box, 1)
        return page

    def _build_report(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        top = QHBoxLayout()
        self.report_title = QLabel()
        self.report_title.setWordWrap(True)
        top.addWidget(self.report_title, 1)
        self.test_button = QPushButton("Test &now")
        self.test_button.setToolTip("Try every port of the profile and measure the usable MTU "
                                    "(does not touch the running tunnel)")
        self.test_button.clicked.connect(lambda: self.controller.test_now())
        top.addWidget(self.test_button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(top)

        ports_box = QGroupBox("UDP ports of the profile")
        ports_layout = QVBoxLayout(ports_box)
        self.report_table = _table(self.state.report)
        self.report_table.setSizeAdjustPolicy(
            QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.report_table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        ports_layout.addWidget(self.report_table)
        ports_note = QLabel("Each port is tried at once with its own fresh address; the tunnel "
                            "uses the first that answers, in the profile's order.")
        ports_note.setWordWrap(True)
        ports_note.setStyleSheet("color: palette(placeholder-text);")
        ports_layout.addWidget(ports_note)
        layout.addWidget(ports_box)

        size_box = QGroupBox("Packet size through the tunnel")
        facts = QFormLayout(size_box)
        self.report_mtu = self._value_label()
        self.report_fragments = self._value_label()
        self.report_fragments.setWordWrap(True)
        self.report_path_mtu = self._value_label()
        facts.addRow("Usable MTU:", self.report_mtu)
        facts.addRow("IPv4 fragments:", self.report_fragments)
        facts.addRow("IPv4 path MTU:", self.report_path_mtu)
        layout.addWidget(size_box)
        layout.addWidget(self._build_networks(), 1)
        return page

    def _build_networks(self) -> QGroupBox:
        box = QGroupBox("Networks the helper remembers")
        box.setToolTip("Back on one of these networks, the helper tries the port that won "
                       "there first and uses the MTU that worked at once")
        layout = QVBoxLayout(box)
        self.networks_table = _table(self.state.networks)
        rows = self.networks_table.verticalHeader().defaultSectionSize()
        self.networks_table.setMinimumHeight(
            self.networks_table.horizontalHeader().sizeHint().height() + 3 * rows + 4)
        self.networks_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.networks_table.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.Stretch)
        self.networks_table.horizontalHeader().setStretchLastSection(False)
        self.networks_table.selectionModel().selectionChanged.connect(
            self._networks_selection_changed)
        layout.addWidget(self.networks_table, 1)
        self.networks_note = QLabel()
        self.networks_note.setWordWrap(True)
        self.networks_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.networks_note)
        buttons = QHBoxLayout()
        self.forget_button = QPushButton("&Forget")
        self.forget_button.setToolTip("Forget the selected network (for every profile): its "
                                      "port and MTU are learnt again next time")
        self.forget_button.clicked.connect(self._forget_clicked)
        self.forget_all_button = QPushButton("Forget a&ll")
        self.forget_all_button.setToolTip("Forget every network the helper remembers")
        self.forget_all_button.clicked.connect(lambda: self.controller.forget_network(None))
        buttons.addWidget(self.forget_button)
        buttons.addWidget(self.forget_all_button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        return box

    # --- rendering ---

    def refresh(self) -> None:
        state = self.state
        display = state.display_state()
        self.state_icon.setPixmap(state_icon(display).pixmap(48, 48))
        self.headline.setText(state.headline())
        cause = state.cause() if state.link is Link.ONLINE else ""
        if state.busy and state.status is not None:
            cause = f"{state.busy} {cause}".strip()
        self.cause.setText(cause)
        self.cause.setVisible(bool(cause))

        problem = state.problem()
        if problem is None:
            self.problem_banner.hide()
        else:
            level = "error" if display is DisplayState.ERROR else "warning"
            self.problem_banner.show_message(problem.title, problem.advice, level)
        if state.last_failure:
            self.failure_banner.show_message("That did not work", state.last_failure, "error")
        else:
            self.failure_banner.hide()
        portal = state.portal() if state.link is Link.ONLINE else None
        if portal is not None and portal.portal_url:
            self.portal_banner.show_message(PORTAL_TITLE, portal_advice(portal.portal_url),
                                            "info")
            self.portal_button.setToolTip(portal.portal_url)
        else:
            self.portal_banner.hide()

        self._refresh_profiles()
        status = state.status
        online = state.link is Link.ONLINE
        can_write = online and not state.read_only and not state.busy
        up_profile = status.profile if status and status.state != TunnelState.DISCONNECTED else None
        chosen = self.profile_combo.currentText()
        self.connect_button.setText("&Switch" if up_profile and chosen and chosen != up_profile
                                    else "&Connect")
        self.connect_button.setEnabled(can_write and bool(chosen) and chosen != up_profile)
        self.disconnect_button.setEnabled(can_write and up_profile is not None)
        self.regenerate_button.setEnabled(can_write and status is not None
                                          and status.state == TunnelState.CONNECTED)
        self.test_button.setEnabled(can_write and not state.report.testing
                                    and bool(chosen or status))
        self.quit_disconnect_action.setEnabled(online and bool(state.tunnels))

        if status is None or status.state == TunnelState.DISCONNECTED:
            for label in (self.address_label, self.gateway_label, self.network_label,
                          self.home_agent_label, self.mtu_label, self.rtt_label,
                          self.counters_label, self.since_label, self.datapath_label):
                label.setText(NO_VALUE)
            self.datapath_label.setToolTip("")
            self.address_note.setText("")
        else:
            self._render_address(status.address, status.prefix)
            port = f":{status.port}" if status.port is not None else ""
            gateway = status.gateway_address or status.gateway
            named = f" ({status.gateway})" if status.gateway != gateway else ""
            self.gateway_label.setText(f"{gateway}{port}{named}")
            self.network_label.setText(status.network_label or NO_VALUE)
            self.home_agent_label.setText(status.home_agent)
            self.since_label.setText(since_text(status.since, time.time()))
            text, tooltip = datapath_text(status.datapath)
            self.datapath_label.setText(text)
            self.datapath_label.setToolTip(tooltip)
        self.address_note.setVisible(bool(self.address_note.text()))  # no empty line
        self.graph.set_history(state.history() if status is not None else None)
        self.refresh_traffic()
        self.setWindowTitle(state.headline())  # Qt appends " — m6t desktop"
        self.refresh_networks()

    def _refresh_profiles(self) -> None:
        """The combo lists the profiles (and tunnels started elsewhere). It follows the tunnel
        shown when that changes, and otherwise keeps what the user picked (to switch to)."""
        names = self.profiles.book.names()
        names += [name for name in self.state.tunnels if name not in names]
        combo = self.profile_combo
        if [combo.itemText(i) for i in range(combo.count())] != names:
            picked = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if picked in names:
                combo.setCurrentText(picked)
            combo.blockSignals(False)
        current = self.state.current
        if current != self._shown_profile:
            self._shown_profile = current
            if current in names:
                combo.setCurrentText(current)
        if not combo.currentText() and names:
            default = self.profiles.book.default
            combo.setCurrentText(default if default in names else names[0])
        combo.setPlaceholderText("no profile yet" if not names else "")

    def _render_address(self, address: str | None, prefix: str) -> None:
        if not address:
            self.address_label.setText(NO_VALUE)
            self.address_note.setText("")
            return
        head, suffix = split_address(address, prefix)
        if suffix:
            self.address_label.setText(
                f"<span style='font-family: monospace'>{html.escape(head)}</span>"
                f"<span style='font-family: monospace; font-weight: bold; color: "
                f"{SUFFIX_COLOUR}'>{html.escape(suffix)}</span>")
            self.address_note.setText(
                f"<small>{html.escape(prefix)} from the profile · "
                f"<span style='color: {SUFFIX_COLOUR}'>48 random bits</span>, new on every "
                "network</small>")
        else:
            self.address_label.setText(f"<span style='font-family: monospace'>"
                                       f"{html.escape(address)}</span>")
            self.address_note.setText(f"<small>prefix {html.escape(prefix)}</small>")

    def refresh_traffic(self) -> None:
        status = self.state.status
        if status is None or status.state == TunnelState.DISCONNECTED:
            return
        self.mtu_label.setText(f"{status.mtu} bytes")
        self.rtt_label.setText(rtt_text(status.rtt_ms))
        self.counters_label.setText(
            f"in {bytes_text(status.rx_bytes)} ({status.rx_packets} packets) · "
            f"out {bytes_text(status.tx_bytes)} ({status.tx_packets} packets)")
        self.graph.sample_added()

    def refresh_report(self) -> None:
        report = self.state.report
        card = report.card
        network = self.state.network_identity()
        if report.testing:
            self.report_title.setText(f"Testing {html.escape(self._network_words(network))}…")
        elif card is None:
            self.report_title.setText(f"Network <b>{html.escape(self._network_words(network))}"
                                      "</b>: not tested yet.")
        else:
            source = "tested" if card.source == "test" else "seen when connecting"
            text = (f"Network <b>{html.escape(self._network_words(card.network))}</b> · profile "
                    f"<b>{html.escape(card.profile)}</b> · {source} at {clock_text(card.at)}")
            if card.error:
                text += f"<br><span style='color: #8C1D18'>{html.escape(card.error)}</span>"
            self.report_title.setText(text)
        mtu = card.mtu if card else None
        if mtu is not None:
            self.report_mtu.setText(f"{mtu.mtu} bytes")
            self.report_fragments.setText("pass" if mtu.fragments_pass else
                                          "blocked: keep packets under the IPv4 path MTU")
            self.report_path_mtu.setText(str(mtu.ipv4_path_mtu) if mtu.ipv4_path_mtu else NO_VALUE)
        else:
            note = card.mtu_note if card and card.mtu_note else "Test now to measure"
            for label in (self.report_mtu, self.report_fragments, self.report_path_mtu):
                label.setText(note if label is self.report_mtu else NO_VALUE)
        self.test_button.setEnabled(self.state.link is Link.ONLINE and not report.testing
                                    and not self.state.read_only)
        self.test_button.setText("Testing…" if report.testing else "Test &now")

    def _network_words(self, network: str) -> str:
        """The network the laptop is on, as the helper names it when it does (its router and
        Wi-Fi, the same words as the list below); else as this app sees the default route."""
        status = self.state.status
        if network == self.state.network_identity() and status is not None \
                and status.network_label:
            return status.network_label
        return network

    def refresh_networks(self) -> None:
        """The networks box: its note (why the list is empty or old, who may forget) and its
        buttons (a read-only user sees them, disabled, with how to get the right)."""
        state, model = self.state, self.state.networks
        notes = []
        if model.problem:
            notes.append(f"<span style='color: #8C1D18'>{html.escape(model.problem)}</span>")
        elif not model.loaded:
            notes.append("Not asked yet.")
        elif not model.networks:
            notes.append("None yet: the helper learns a network when a tunnel connects over it.")
        if model.loaded and not model.saved:
            notes.append("The helper cannot write its memory file: it forgets these when it "
                         "stops (see its log).")
        if state.read_only:
            notes.append(f"To forget networks, join the {html.escape(state.group)} group: "
                         f"{html.escape(join_group_hint(state.group))}.")
        self.networks_note.setText("<br>".join(notes))
        self.networks_note.setVisible(bool(notes))
        self._networks_selection_changed()

    def _networks_selection_changed(self) -> None:
        state = self.state
        can_write = state.link is Link.ONLINE and not state.read_only
        self.forget_button.setEnabled(can_write and self._selected_network() is not None)
        self.forget_all_button.setEnabled(can_write and bool(state.networks.networks))

    def _selected_network(self) -> str | None:
        rows = self.networks_table.selectionModel().selectedRows()
        network = self.state.networks.network_at(rows[0].row()) if rows else None
        return network.id if network is not None else None

    def _tab_changed(self, index: int) -> None:
        if self.tabs.widget(index) is self.report_page:
            self.controller.refresh_networks()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self.tabs.currentWidget() is self.report_page:
            self.controller.refresh_networks()

    # --- actions ---

    def _forget_clicked(self) -> None:
        network = self._selected_network()
        if network is not None:
            self.controller.forget_network(network)

    def _connect_clicked(self) -> None:
        name = self.profile_combo.currentText()
        if name:
            self.controller.connect_profile(name)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.quit_on_close:
            self.controller.quit(disconnect=False)
        event.accept()
