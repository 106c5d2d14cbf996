"""The profiles file (m6t/profiles.py): atomic, private writes; a file that does not parse is
reported with the profile and field at fault, and never written over; default handling."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from m6t import profiles
from m6t.control.schema import Profile
from m6t.profiles import ProfileBook, ProfilesError

OFFICE = Profile(name="office", gateway="gw.example.net", ports=[3544, 4500],
                 prefix="fd6d:6d74:1:1:1::/80", home_agent="fd48:4100::2")
LAB = Profile(name="lab", gateway="198.51.100.7", ports=[53], prefix="fd6d:6d74:1:2:1::/80",
              home_agent="fd48:4100::2", mtu="auto", keepalive=12.5,
              routes=["2001:db8::/32", "fd48::/16"], auto_connect=True)
VALID_TABLE = ('[[profile]]\nname = "office"\ngateway = "gw.example.net"\nports = [3544]\n'
               'prefix = "fd6d:6d74:1:1:1::/80"\nhome_agent = "fd48:4100::2"\n')


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "m6t" / "profiles.toml"


def test_a_missing_file_is_an_empty_book(path: Path) -> None:
    assert profiles.load(path) == ProfileBook()
    assert not path.parent.exists()  # loading creates nothing


def test_save_then_load_gives_the_same_book(path: Path) -> None:
    book = ProfileBook([OFFICE, LAB], default="lab")
    assert profiles.save(book, path) == path
    assert profiles.load(path) == book
    data = tomllib.loads(path.read_text())
    assert data["default"] == "lab"
    assert [table["name"] for table in data["profile"]] == ["office", "lab"]
    assert data["profile"][1]["mtu"] == "auto"


def test_save_is_private_and_leaves_no_temporary_file(path: Path) -> None:
    profiles.save(ProfileBook([OFFICE]), path)
    profiles.save(ProfileBook([OFFICE, LAB]), path)  # replacing, not only creating
    assert sorted(os.listdir(path.parent)) == ["profiles.toml"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert profiles.load(path).names() == ["office", "lab"]


def test_a_failed_save_keeps_the_old_file_and_removes_its_temporary(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profiles.save(ProfileBook([OFFICE]), path)
    before = path.read_bytes()

    def fail(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        profiles.save(ProfileBook([OFFICE, LAB]), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["profiles.toml"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[[profile]\nname = 1", r"is not valid TOML \(.*\); fix it or move it away \(it was "
                                  r"left untouched\)$"),
        (b'[[profile]]\nname = "caf\xe9"\n', r"is corrupt \(not UTF-8 text\): fix it or move it "
                                             r"away; it was left untouched$"),
        (b'profile = "office"\n', r"'profile' must be an array of tables"),
    ],
    ids=["not_toml", "not_utf8", "profile_not_an_array"],
)
def test_a_corrupt_file_is_reported_and_never_written_over(
        path: Path, content: bytes, expected: str) -> None:
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ProfilesError, match=expected) as raised:
        profiles.load(path)
    assert str(raised.value).startswith(str(path))
    with pytest.raises(ProfilesError):
        profiles.save(ProfileBook([OFFICE]), path)
    assert path.read_bytes() == content
    assert os.listdir(path.parent) == ["profiles.toml"]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('mtu = 1000\n', "profile office: mtu: 1000 is outside 1280-65507"),
        ('mtu = "big"\n', "profile office: mtu: Invalid enum value 'big'"),
        ('ports = ["3544"]\n',
         "profile office: ports: Expected `int`, got `str` - at `$.ports[0]`"),
        ('keepalive = 45\n', "profile office: keepalive: 45 s is outside 1-30 s"),
        ('routes = "everything"\n', "profile office: routes: Invalid enum value 'everything'"),
        ('colour = "blue"\n', "profile office: colour: Object contains unknown field `colour`"),
        ('liveness = { reply_timeout = 0.5 }\n',
         "profile office: liveness.reply_timeout: 0.5 is outside 1-30"),
        ('liveness = { probes = 0 }\n', "profile office: liveness.probes: 0 is outside 1-10"),
        ('liveness = { probe_every = 2 }\n',
         "profile office: liveness: Object contains unknown field `probe_every`"),
    ],
    ids=["mtu_range", "mtu_type", "ports_type", "keepalive", "routes", "unknown_field",
         "liveness_range", "liveness_probes", "liveness_unknown"],
)
def test_a_bad_value_names_the_profile_and_the_field(
        path: Path, table: str, expected: str) -> None:
    path.parent.mkdir()
    # TOML forbids a key twice, so the bad value replaces a line or joins the table.
    key = table.split(" ")[0]
    lines = [line for line in VALID_TABLE.splitlines(keepends=True)
             if not line.startswith(f"{key} =")]
    path.write_text("".join(lines) + table)
    with pytest.raises(ProfilesError) as raised:
        profiles.load(path)
    assert str(raised.value).startswith(f"{path}: {expected}")


def test_a_missing_field_names_the_field_and_an_unnamed_profile_its_position(
        path: Path) -> None:
    path.parent.mkdir()
    path.write_text(VALID_TABLE + '[[profile]]\ngateway = "198.51.100.7"\n')
    with pytest.raises(ProfilesError, match=r"profile #2: .*missing required field `name`"):
        profiles.load(path)
    path.write_text(VALID_TABLE.replace('gateway = "gw.example.net"\n', ""))
    with pytest.raises(ProfilesError, match=r"profile office: .*missing required field "
                                            r"`gateway`"):
        profiles.load(path)


def test_two_profiles_with_one_name_are_refused() -> None:
    with pytest.raises(ProfilesError, match="two profiles are named 'office'"):
        profiles.parse_profiles(VALID_TABLE + VALID_TABLE, "f.toml")


def test_a_default_that_names_no_profile_is_refused() -> None:
    with pytest.raises(ProfilesError, match=r"^f.toml: default = 'lab' names no profile$"):
        profiles.parse_profiles('default = "lab"\n' + VALID_TABLE, "f.toml")


def test_the_default_profile() -> None:
    assert ProfileBook().default_profile() is None
    assert ProfileBook([OFFICE]).default_profile() is OFFICE  # the only one needs no naming
    assert ProfileBook([OFFICE, LAB]).default_profile() is None  # two: which one is unknown
    assert ProfileBook([OFFICE, LAB], default="lab").default_profile() is LAB


def test_removing_the_default_clears_it_and_put_replaces_in_place() -> None:
    book = ProfileBook([OFFICE, LAB], default="office")
    assert book.remove("office") is True
    assert (book.names(), book.default) == (["lab"], None)
    assert book.remove("office") is False
    book.put(OFFICE)
    changed = Profile(name="lab", gateway="198.51.100.8", ports=[53],
                      prefix="fd6d:6d74:1:2:1::/80", home_agent="fd48:4100::2")
    book.put(changed)
    assert book.profiles == [changed, OFFICE]


def test_the_dump_starts_with_the_default_and_parses_back() -> None:
    book = ProfileBook([OFFICE, LAB], default="office")
    text = profiles.dump_profiles(book)
    assert text.startswith('default = "office"\n')
    assert profiles.parse_profiles(text) == book
    assert "default" not in tomllib.loads(profiles.dump_profiles(ProfileBook([OFFICE])))


def test_the_default_path_is_the_user_config_dir_unless_m6t_profiles(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("M6T_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert profiles.default_path() == tmp_path / "xdg" / "m6t" / "profiles.toml"
    monkeypatch.setenv("M6T_PROFILES", str(tmp_path / "elsewhere.toml"))
    assert profiles.default_path() == tmp_path / "elsewhere.toml"
    profiles.save(ProfileBook([OFFICE]))
    assert profiles.load(tmp_path / "elsewhere.toml").names() == ["office"]
