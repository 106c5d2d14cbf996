"""Profile files other than the app's own (no widgets): import one (every profile checked, the
reason in words when the file cannot be used) and export some profiles to one, atomically, in
the same TOML format as the profiles file and the `m6t` CLI."""

from __future__ import annotations

from pathlib import Path

from m6t.files import write_atomically
from m6t.profiles import ProfileBook, ProfilesError, dump_profiles, parse_profiles


class ProfileFileError(Exception):
    """A profile file that cannot be read or written; the message says why, for people."""


def read_profile_file(path: Path) -> ProfileBook:
    try:
        text = path.read_text(encoding="utf-8")
        return parse_profiles(text, str(path))
    except OSError as exc:
        raise ProfileFileError(str(exc.strerror)) from None
    except (UnicodeDecodeError, ProfilesError) as exc:
        raise ProfileFileError(str(exc)) from None


def write_profile_file(path: Path, book: ProfileBook) -> None:
    try:
        write_atomically(path, dump_profiles(book))
    except OSError as exc:
        raise ProfileFileError(str(exc.strerror)) from None


def home_relative(path: Path) -> str:
    """~/.config/m6t/profiles.toml rather than /home/someone/.config/m6t/profiles.toml."""
    try:
        return "~/" + str(path.resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return str(path)
