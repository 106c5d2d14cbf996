"""The user's profiles file: TOML in the user's config directory, shared by the CLI and the app.

    ~/.config/m6t/profiles.toml  (platformdirs.user_config_dir("m6t"); M6T_PROFILES overrides)

    default = "office"

    [[profile]]
    name = "office"
    gateway = "gw.example.net"
    ports = [3544, 4500]
    prefix = "fd6d:6d74:1:1:1::/80"
    home_agent = "fd48:4100::2"

Writes are atomic (temporary file in the same directory, fsync, rename). A file that does not
parse is reported and kept as it is: nothing is ever written over it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import platformdirs
import tomli_w

from m6t.control.schema import Profile, ProfileError, profile_from_dict
from m6t.files import write_atomically


class ProfilesError(Exception):
    """The profiles file cannot be used as it is; the message says what to do."""


def default_path() -> Path:
    explicit = os.environ.get("M6T_PROFILES")
    if explicit:
        return Path(explicit)
    return Path(platformdirs.user_config_dir("m6t")) / "profiles.toml"


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    return dict(msgspec.to_builtins(profile))


@dataclass
class ProfileBook:
    profiles: list[Profile] = field(default_factory=list)
    default: str | None = None

    def get(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)

    def names(self) -> list[str]:
        return [p.name for p in self.profiles]

    def put(self, profile: Profile) -> None:
        """Add or replace (by name), keeping the order of the others."""
        for index, existing in enumerate(self.profiles):
            if existing.name == profile.name:
                self.profiles[index] = profile
                return
        self.profiles.append(profile)

    def remove(self, name: str) -> bool:
        before = len(self.profiles)
        self.profiles = [p for p in self.profiles if p.name != name]
        if self.default == name:
            self.default = None
        return len(self.profiles) != before

    def default_profile(self) -> Profile | None:
        if self.default:
            return self.get(self.default)
        return self.profiles[0] if len(self.profiles) == 1 else None


def parse_profiles(text: str, source: str = "profiles") -> ProfileBook:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfilesError(f"{source} is not valid TOML ({exc})") from None
    except RecursionError:
        raise ProfilesError(f"{source} is not valid TOML (nested too deeply)") from None
    tables = data.get("profile", [])
    if not isinstance(tables, list):
        raise ProfilesError(f"{source}: 'profile' must be an array of tables ([[profile]])")
    book = ProfileBook()
    for index, table in enumerate(tables):
        try:
            profile = profile_from_dict(table)
        except ProfileError as exc:
            name = table.get("name", f"#{index + 1}") if isinstance(table, dict) else index + 1
            raise ProfilesError(f"{source}: profile {name}: {exc}") from None
        if book.get(profile.name) is not None:
            raise ProfilesError(f"{source}: two profiles are named {profile.name!r}")
        book.profiles.append(profile)
    default = data.get("default")
    if default is not None:
        if not isinstance(default, str) or book.get(default) is None:
            raise ProfilesError(f"{source}: default = {default!r} names no profile")
        book.default = default
    return book


def dump_profiles(book: ProfileBook) -> str:
    data: dict[str, Any] = {}
    if book.default:
        data["default"] = book.default
    data["profile"] = [profile_to_dict(p) for p in book.profiles]
    return tomli_w.dumps(data)


def load(path: Path | None = None) -> ProfileBook:
    """The profiles in `path`; an empty book if the file does not exist yet."""
    path = path or default_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ProfileBook()
    except UnicodeDecodeError:
        raise ProfilesError(f"{path} is corrupt (not UTF-8 text): fix it or move it "
                            "away; it was left untouched") from None
    except OSError as exc:
        raise ProfilesError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_profiles(text, str(path))
    except ProfilesError as exc:
        raise ProfilesError(f"{exc}; fix it or move it away (it was left untouched)") from None


def save(book: ProfileBook, path: Path | None = None) -> Path:
    """Write atomically. Refuses to replace a file that exists but does not parse."""
    path = path or default_path()
    if path.exists():
        load(path)  # raises ProfilesError for a corrupt file: never write over it
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, dump_profiles(book))
    return path
