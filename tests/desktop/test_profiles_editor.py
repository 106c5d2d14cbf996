"""The profiles editor: each field validated as you type with its reason, the /80 generated
(RFC 4193) or composed, saving to the file the CLI reads (atomically; a corrupt file kept),
import and export, and a file changed by someone else."""

from __future__ import annotations

import gc
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from PySide6.QtCore import QCoreApplication, QEvent
from pytestqt.qtbot import QtBot

from m6t import profiles
from m6t.control.schema import Liveness, Profile, ProfileError
from m6t.protocol.addressing import AddressingError, TunnelPrefix, ula_prefix
from m6t_desktop import prefix_generation
from m6t_desktop.prefix_generation import compose_prefix, generate_prefix
from m6t_desktop.profile_drafts import Draft, DraftSet
from m6t_desktop.profiles_editor import ProfilesEditor
from m6t_desktop.profiles_store import ProfilesStore
from tests.desktop.conftest import HOME, OFFICE


@pytest.fixture
def make_editor(qtbot: QtBot) -> Iterator[Callable[[Path], ProfilesEditor]]:
    """Editors closed by this fixture, not by qtbot: pytest-qt closes its widgets before
    fixtures end, and an editor with unsaved edits would then ask (modally) what to do."""
    made: list[ProfilesEditor] = []

    def make(path: Path) -> ProfilesEditor:
        made.append(ProfilesEditor(ProfilesStore(path)))
        return made[-1]

    yield make
    for dialog in made:
        dialog.dirty = False
        dialog.close()
        dialog.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


@pytest.fixture
def editor(make_editor: Callable[[Path], ProfilesEditor],
           profiles_path: Path) -> ProfilesEditor:
    return make_editor(profiles_path)


def names(editor: ProfilesEditor) -> list[str]:
    return [editor.list.item(row).text() for row in range(editor.list.count())]


# --- validation as you type ---


@pytest.mark.parametrize(("field", "text", "reason"), [
    ("name", "", "1-64 characters"),
    ("name", "-office", "starting with a letter or digit"),
    ("name", "home", "another profile is already named 'home'"),
    ("gateway", "", "empty: give an IPv4 address or a host name"),
    ("gateway", "300.1.2.3", "'300.1.2.3' is not a valid IPv4 address"),
    ("gateway", "2001:db8::1", "not an IPv6 address"),
    ("gateway", "127.0.0.1", "127.0.0.1 cannot be a gateway"),
    ("gateway", "bad_host!", "neither an IPv4 address nor a valid host name"),
    ("ports", "", "at least one UDP port"),
    ("ports", "3544, http", "'http' is not a port number"),
    ("ports", "3544, 70000", "70000 is not a UDP port (1-65535)"),
    ("ports", "4500 4500", "each port once"),
    ("prefix", "", "generate one"),
    ("prefix", "fd6d:6d74:1:1::/64", "must be a /80"),
    ("prefix", "fd6d:6d74:1:1:1::1/80", "has host bits set"),
    ("prefix", "ff02::/80", "not a routable unicast prefix"),
    ("home_agent", "10.0.0.1", "'10.0.0.1' is not an IPv6 address"),
    ("home_agent", "fe80::1", "is not a unicast address"),
    ("home_agent", "fd6d:6d74:1:1:1::2", "cannot be inside the tunnel prefix"),
    ("mtu", "big", "a number of bytes or \"auto\""),
    ("mtu", "1200", "1200 is outside 1280-65507 (IPv6 needs at least 1280)"),
    ("keepalive", "45", "45 s is outside 1-30 s"),
    ("keepalive", "soon", "a number of seconds (1-30)"),
])
def test_field_shows_its_reason_as_you_type(editor: ProfilesEditor, field: str, text: str,
                                            reason: str) -> None:
    editor.list.setCurrentRow(0)  # office
    editor.form.set_field(field, text)
    shown = editor.form.reason(field)
    assert shown is not None and reason in shown
    assert editor.form.edits[field].property("invalid") is True
    assert not editor.save_button.isEnabled()
    assert reason in editor.save_button.toolTip()
    others = {name for name, row in editor.form.rows.items() if not row.reason.isHidden()}
    assert others == {field}  # only the field typed into complains


@pytest.mark.parametrize(("field", "text"), [
    ("gateway", "gw.example.net"), ("ports", "3544 4500, 53"), ("mtu", "auto"),
    ("mtu", "1280"), ("keepalive", "1"), ("keepalive", "12.5"),
    ("prefix", "2001:db8:1:2:3::/80"),  # any unicast /80, not only ULA
])
def test_valid_values_show_no_reason(editor: ProfilesEditor, field: str, text: str) -> None:
    editor.list.setCurrentRow(0)
    editor.form.set_field(field, text)
    assert editor.form.reason(field) is None
    assert editor.form.edits[field].property("invalid") is False
    assert editor.save_button.isEnabled()


def test_fixing_a_field_clears_its_reason(editor: ProfilesEditor) -> None:
    editor.list.setCurrentRow(0)
    editor.form.set_field("ports", "3544, 99999")
    assert editor.form.reason("ports") is not None
    editor.form.set_field("ports", "3544, 9999")
    assert editor.form.reason("ports") is None
    assert editor.save_button.isEnabled()


def test_changing_the_prefix_rechecks_the_home_agent(editor: ProfilesEditor) -> None:
    editor.list.setCurrentRow(0)
    editor.form.set_field("home_agent", "fd00:1:2:3:4::9")
    assert editor.form.reason("home_agent") is None
    editor.form.set_field("prefix", "fd00:1:2:3:4::/80")
    assert editor.form.reason("home_agent") == "cannot be inside the tunnel prefix"


def test_route_list_is_validated_only_when_chosen(editor: ProfilesEditor) -> None:
    editor.list.setCurrentRow(0)
    editor.form.set_field("routes", "not a prefix")
    assert editor.form.reason("routes") is None  # "the home agent only": the list is not used
    editor.form.routes_mode.setCurrentIndex(2)
    assert editor.form.reason("routes") is not None and "'not'" in editor.form.reason("routes")
    editor.form.set_field("routes", "fd48:4100::/48, 2001:db8::/32")
    assert editor.form.reason("routes") is None
    assert editor.drafts.book().get("office").routes == ["fd48:4100::/48", "2001:db8::/32"]


def test_a_new_profile_lists_what_is_missing(editor: ProfilesEditor) -> None:
    editor.add_profile()
    assert names(editor)[-1] == "profile 3"
    for field in ("gateway", "prefix", "home_agent"):
        assert editor.form.reason(field) is not None, field
    assert editor.form.reason("ports") is None  # 3544, 4500 by default
    assert not editor.save_button.isEnabled()


# --- the /80 ---


MAC = bytes.fromhex("001122334455")
EUI64 = bytes.fromhex("021122fffe334455")  # FFFE in the middle, the U/L bit flipped


@pytest.mark.parametrize(("now", "ntp"), [
    (0.0, 2_208_988_800 << 32),  # seconds since 1900 in the high 32 bits
    (1.5, (2_208_988_801 << 32) | (1 << 31)),  # the fraction in the low 32
    (1_796_000_000.25, ((1_796_000_000 + 2_208_988_800) << 32) | (1 << 30)),
])
def test_generated_prefix_follows_rfc_4193(now: float, ntp: int) -> None:
    prefix = generate_prefix(subnet_id=0x1234, mn_id=0x56, now=now, read_mac=lambda: MAC)
    digest = hashlib.sha1(ntp.to_bytes(8, "big") + EUI64).digest()
    global_id = int.from_bytes(digest[-5:], "big")  # "the least significant 40 bits"
    assert prefix == TunnelPrefix.compose(ula_prefix(global_id), 0x1234, 0x56)
    assert prefix.is_ula and str(prefix).startswith("fd")
    assert (prefix.subnet_id, prefix.mn_id) == (0x1234, 0x56)


def test_generated_prefix_without_a_mac_is_still_a_fresh_ula() -> None:
    first = generate_prefix(now=1_796_000_000.0, read_mac=lambda: None)
    second = generate_prefix(now=1_796_000_000.0, read_mac=lambda: None)
    assert first.is_ula and (first.subnet_id, first.mn_id) == (0, 1)
    assert first != second  # random bits stand in for the EUI-64


def test_generated_prefix_uses_this_machines_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefix_generation, "machine_mac", lambda: MAC)
    assert generate_prefix(7, 8, now=1.5) == \
        generate_prefix(7, 8, now=1.5, read_mac=lambda: MAC)


@pytest.mark.parametrize(("site", "subnet", "mn", "words"), [
    ("fd12:3456:789a::/48", "g", "1", "subnet ID 'g' is not a hexadecimal number (0-ffff)"),
    ("fd12:3456:789a::/48", "1", "", "MN ID '' is not a hexadecimal number (0-ffff)"),
    ("fd12:3456:789a::/64", "1", "1", "site prefix fd12:3456:789a::/64 must be a /48"),
    ("fd12:3456:789a::1/48", "1", "1", "has host bits set"),
    ("fd12:3456:789a::/48", "1", "10000", "MN ID 65536 must be 0..65535"),
])
def test_compose_says_what_is_wrong(site: str, subnet: str, mn: str, words: str) -> None:
    with pytest.raises(AddressingError, match=re.escape(words)):
        compose_prefix(site, subnet, mn)


def test_generate_button_keeps_subnet_and_mn_ids(editor: ProfilesEditor) -> None:
    editor.list.setCurrentRow(0)
    editor.form.subnet_edit.setText("beef")
    editor.form.mn_edit.setText("7")
    before = editor.form.edits["prefix"].text()
    editor.form.generate_button.click()
    prefix = TunnelPrefix.parse(editor.form.edits["prefix"].text())
    assert str(prefix) != before
    assert editor.drafts[0].prefix == str(prefix)  # the draft follows the field
    assert prefix.is_ula
    assert (prefix.subnet_id, prefix.mn_id) == (0xBEEF, 7)
    assert editor.form.reason("prefix") is None


def test_compose_from_48_subnet_and_mn_id(editor: ProfilesEditor) -> None:
    editor.list.setCurrentRow(0)
    editor.form.site_edit.setText("fd12:3456:789a::/48")
    editor.form.subnet_edit.setText("2")
    editor.form.mn_edit.setText("0x1f")
    assert editor.form.edits["prefix"].text() == "fd12:3456:789a:2:1f::/80"
    editor.form.subnet_edit.setText("10000")
    assert "subnet ID 65536 must be 0..65535" in editor.form.compose_reason.text()
    assert editor.form.edits["prefix"].text() == "fd12:3456:789a:2:1f::/80"  # left as it was


def test_typing_a_prefix_fills_the_compose_fields(editor: ProfilesEditor) -> None:
    editor.list.setCurrentRow(0)
    editor.form.set_field("prefix", "fd6d:6d74:1:a:b::/80")
    form = editor.form
    assert (form.site_edit.text(), form.subnet_edit.text(), form.mn_edit.text()) == \
        ("fd6d:6d74:1::/48", "a", "b")


# --- saving ---


def test_save_writes_what_the_cli_reads(editor: ProfilesEditor, profiles_path: Path) -> None:
    editor.list.setCurrentRow(1)  # home
    editor.form.set_field("mtu", "auto")
    editor.form.set_field("keepalive", "15")
    editor.form.auto_connect.setChecked(True)
    editor.make_default()
    assert editor.save()
    book = profiles.load(profiles_path)  # what `m6t` reads
    assert book.default == "home"
    home = book.get("home")
    assert home is not None
    assert (home.mtu, home.keepalive, home.auto_connect) == ("auto", 15.0, True)
    assert book.get("office") == OFFICE
    assert not editor.save_button.isEnabled()  # nothing left to save
    assert not list(profiles_path.parent.glob(".profiles-*"))  # no temporary file left


def test_renaming_the_default_keeps_it_default(editor: ProfilesEditor,
                                               profiles_path: Path) -> None:
    editor.list.setCurrentRow(0)
    editor.form.set_field("name", "work")
    assert editor.save()
    assert profiles.load(profiles_path).default == "work"


def test_remove_and_duplicate(editor: ProfilesEditor, profiles_path: Path) -> None:
    editor.list.setCurrentRow(1)
    editor.duplicate_profile()
    assert names(editor) == ["office  (default)", "home", "home copy"]
    editor.list.setCurrentRow(0)
    editor.remove_profile()
    assert editor.save()
    book = profiles.load(profiles_path)
    assert book.names() == ["home", "home copy"]
    assert book.default is None


def test_corrupt_file_is_reported_and_kept(make_editor: Callable[[Path], ProfilesEditor],
                                           profiles_path: Path) -> None:
    garbage = b"default = \"office\"\n[[profile]\nname = \xff\n"
    profiles_path.write_bytes(garbage)
    editor = make_editor(profiles_path)
    assert not editor.banner.isHidden()
    assert "corrupt" in editor.banner.advice.text()
    assert "Nothing will be written over it" in editor.banner.advice.text()
    assert editor.list.count() == 0
    editor.add_profile()
    editor.form.set_field("gateway", "198.51.100.1")
    editor.form.set_field("prefix", "fd6d:6d74:1:1:1::/80")
    editor.form.set_field("home_agent", "fd48:4100::2")
    assert not editor.save_button.isEnabled()
    assert not editor.save()  # even when asked directly
    assert profiles_path.read_bytes() == garbage


# --- import and export ---


def test_export_then_import_round_trip(make_editor: Callable[[Path], ProfilesEditor],
                                       editor: ProfilesEditor, short_dir: Path) -> None:
    exported = short_dir / "office.toml"
    assert editor.export_file(exported, ["office"]) == ["office"]
    assert profiles.parse_profiles(exported.read_text()).profiles == [OFFICE]

    other = make_editor(short_dir / "empty.toml")
    assert other.import_file(exported) == ["office"]
    assert names(other) == ["office  (default)"]
    assert other.dirty and other.save_button.isEnabled()
    assert "Save to keep them" in other.message.text()
    assert other.save()
    assert profiles.load(short_dir / "empty.toml").get("office") == OFFICE


def test_import_replaces_same_name_and_adds_the_rest(editor: ProfilesEditor,
                                                     short_dir: Path) -> None:
    changed_home = Profile(**{**profiles.profile_to_dict(HOME), "gateway": "203.0.113.9"})
    lab = Profile(**{**profiles.profile_to_dict(OFFICE), "name": "lab"})
    source = short_dir / "import.toml"
    source.write_text(profiles.dump_profiles(profiles.ProfileBook([changed_home, lab])))
    assert editor.import_file(source) == ["home", "lab"]
    assert "1 replaced: home" in editor.message.text()
    book = editor.drafts.book()
    assert book.names() == ["office", "home", "lab"]
    assert book.get("home").gateway == "203.0.113.9"  # type: ignore[union-attr]


@pytest.mark.parametrize(("content", "words"), [
    (b"[[profile]]\nname = 'x'\n", "profile x"),  # fields missing
    (b"not = [toml", "not valid TOML"),
    (b"\xff\xfe\x00", "UnicodeDecodeError"),
])
def test_import_of_a_bad_file_is_refused(editor: ProfilesEditor, short_dir: Path,
                                         content: bytes, words: str) -> None:
    source = short_dir / "bad.toml"
    source.write_bytes(content)
    assert editor.import_file(source) == []
    assert not editor.banner.isHidden()
    assert "Cannot import bad.toml" in editor.banner.title.text()
    if words != "UnicodeDecodeError":
        assert words in editor.banner.advice.text()
    assert names(editor) == ["office  (default)", "home"]
    assert not editor.dirty


def test_export_refuses_an_invalid_profile(editor: ProfilesEditor, short_dir: Path) -> None:
    editor.list.setCurrentRow(0)
    editor.form.set_field("gateway", "")
    target = short_dir / "out.toml"
    assert editor.export_file(target, ["office"]) == []
    assert not target.exists()
    assert "gateway: empty" in editor.banner.advice.text()


def test_import_and_export_buttons_use_file_dialogs(
        editor: ProfilesEditor, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtWidgets import QFileDialog

    target = short_dir / "picked.toml"
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *args, **kwargs: (str(target), "")))
    editor.list.setCurrentRow(1)
    editor.export_button.click()
    assert profiles.parse_profiles(target.read_text()).names() == ["home"]
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *args, **kwargs: ("", "")))  # cancelled
    editor.import_button.click()
    assert not editor.dirty


# --- the file changed by someone else ---


def test_file_changed_by_the_cli_is_reloaded(qtbot: QtBot, editor: ProfilesEditor,
                                             profiles_path: Path) -> None:
    book = profiles.load(profiles_path)
    book.put(Profile(**{**profiles.profile_to_dict(OFFICE), "name": "lab"}))
    profiles.save(book, profiles_path)
    qtbot.waitUntil(lambda: names(editor)[-1:] == ["lab"], timeout=5000)
    assert editor.banner.isHidden()


def test_file_changed_while_editing_keeps_the_edits(qtbot: QtBot, editor: ProfilesEditor,
                                                    profiles_path: Path) -> None:
    editor.list.setCurrentRow(0)
    editor.form.set_field("gateway", "203.0.113.1")
    book = profiles.load(profiles_path)
    book.remove("home")
    profiles.save(book, profiles_path)
    qtbot.waitUntil(lambda: not editor.banner.isHidden(), timeout=5000)
    assert "changed on disk" in editor.banner.title.text()
    assert editor.form.edits["gateway"].text() == "203.0.113.1"
    assert len(editor.drafts) == 2


def test_draft_round_trip() -> None:
    unusual = msgspec.structs.replace(HOME, mtu="auto", routes=["fd48::/16"],
                                      liveness=Liveness(reply_timeout=5.0, probes=2))
    for profile in (OFFICE, HOME, unusual):
        assert Draft.from_profile(profile).to_profile() == profile


# --- the drafts on their own (no widgets) ---


def test_draft_set_renames_the_default_through_an_empty_name() -> None:
    drafts = DraftSet.from_book(profiles.ProfileBook([OFFICE, HOME], default="office"))
    office = drafts[0]
    drafts.set_field(office, "name", "")
    assert office.errors["name"].startswith("1-64 characters")
    drafts.set_field(office, "name", "work")
    assert drafts.default == "work"
    assert drafts.book().default == "work"


def test_draft_set_list_operations() -> None:
    drafts = DraftSet.from_book(profiles.ProfileBook([OFFICE, HOME], default="home"))
    assert drafts.duplicate(1) == 2
    assert [d.name for d in drafts] == ["office", "home", "home copy"]
    assert drafts.duplicate(1) == 2
    assert drafts[2].name == "home copy copy"
    assert drafts.add() == 4 and drafts[4].name == "profile 5"
    assert drafts.first_error() is not None  # the new one has no gateway yet
    drafts.remove(1)
    assert drafts.default is None  # the default went with it
    drafts.remove(3)
    assert drafts.valid and drafts.first_error() is None
    assert drafts.book(["office"]).names() == ["office"]


def test_draft_set_refuses_two_profiles_with_one_name() -> None:
    drafts = DraftSet.from_book(profiles.ProfileBook([OFFICE, HOME]))
    drafts.set_field(drafts[1], "name", "office")
    assert drafts[1].errors == {"name": "another profile is already named 'office'"}
    with pytest.raises(ProfileError, match="profile 'office': another profile"):
        drafts.book()


def test_draft_module_needs_no_widgets() -> None:
    """The drafts, prefixes and files are plain logic: importing them pulls in no Qt."""
    import subprocess
    import sys

    code = ("import sys, m6t_desktop.profile_drafts, m6t_desktop.prefix_generation, "
            "m6t_desktop.profile_files; "
            "print(sorted(m for m in sys.modules if m.startswith('PySide6.QtWidgets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
