"""Profiles as they are being typed (no widgets): a `Draft` holds each field as text and the
reason each one is wrong, checked with the helper's own checks (m6t.control.schema.check_*);
a `DraftSet` is the list being edited and its default, with the list operations of the editor
(add, duplicate, remove, rename, import) and what Save and Export write."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

from m6t.control.schema import (
    Liveness,
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
from m6t.profiles import ProfileBook
from m6t.protocol.addressing import TunnelPrefix
from m6t.protocol.constants import DEFAULT_TUNNEL_MTU, KEEPALIVE_INTERVAL, SUGGESTED_PORTS

FIELDS = ("name", "gateway", "ports", "prefix", "home_agent", "mtu", "keepalive", "routes")
ROUTE_MODES = (("home-agent", "The home agent only"),
               ("default", "Everything (::/0, native IPv6 stays preferred)"),
               ("list", "These prefixes:"))

_T = TypeVar("_T")


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
    # Not in the form (set in the profiles file): carried through unchanged.
    liveness: Liveness = field(default_factory=Liveness)
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
                   auto_connect=profile.auto_connect, liveness=profile.liveness)

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

        def check(name: str, action: Callable[[], _T]) -> _T | None:
            try:
                return action()
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
                          auto_connect=self.auto_connect, liveness=self.liveness)
        return validate_profile(profile)


class DraftSet:
    """The profiles being edited, in order, and the name of the default one. Names must be
    unique, so each draft is validated against the others."""

    def __init__(self, drafts: list[Draft] | None = None, default: str | None = None) -> None:
        self.drafts = drafts or []
        self.default = default
        self.revalidate()

    @classmethod
    def from_book(cls, book: ProfileBook) -> DraftSet:
        return cls([Draft.from_profile(p) for p in book.profiles], book.default)

    def __len__(self) -> int:
        return len(self.drafts)

    def __iter__(self) -> Iterator[Draft]:
        return iter(self.drafts)

    def __getitem__(self, index: int) -> Draft:
        return self.drafts[index]

    def other_names(self, draft: Draft) -> set[str]:
        return {d.name for d in self.drafts if d is not draft}

    def revalidate(self) -> None:
        for draft in self.drafts:
            draft.validate(self.other_names(draft))

    @property
    def valid(self) -> bool:
        return all(not d.errors for d in self.drafts)

    def first_error(self) -> tuple[Draft, str, str] | None:
        """The first draft that is wrong, its first wrong field and why."""
        for draft in self.drafts:
            if draft.errors:
                field_name, reason = next(iter(draft.errors.items()))
                return draft, field_name, reason
        return None

    def is_default(self, draft: Draft | None) -> bool:
        return draft is not None and bool(draft.name) and draft.name == self.default

    # --- editing ---

    def set_field(self, draft: Draft, name: str, value: str | bool) -> None:
        if name == "name" and draft.name == self.default:
            self.default = str(value)  # renaming the default keeps it the default (also
            # through an empty name on the way, as when the old one is erased first)
        setattr(draft, name, value)
        self.revalidate()

    def add(self) -> int:
        """A new, empty profile named "profile N"; returns its index."""
        names = {d.name for d in self.drafts}
        number = len(self.drafts) + 1
        while f"profile {number}" in names:
            number += 1
        self.drafts.append(Draft(name=f"profile {number}"))
        self.revalidate()
        return len(self.drafts) - 1

    def duplicate(self, index: int) -> int:
        """A copy of the draft at `index`, named "... copy", just after it; returns its index."""
        draft = self.drafts[index]
        names = {d.name for d in self.drafts}
        name = f"{draft.name} copy"
        while name in names:
            name += " copy"
        self.drafts.insert(index + 1, replace(draft, name=name, errors={}))
        self.revalidate()
        return index + 1

    def remove(self, index: int) -> None:
        removed = self.drafts.pop(index)
        if removed.name == self.default:
            self.default = None
        self.revalidate()

    def make_default(self, draft: Draft) -> None:
        self.default = draft.name

    def merge(self, book: ProfileBook) -> list[str]:
        """Add the profiles of `book`, replacing same-named drafts; returns the names replaced.
        The book's default becomes ours only when we have none."""
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
        self.revalidate()
        return replaced

    # --- what is written ---

    def book(self, names: list[str] | None = None) -> ProfileBook:
        """The drafts (those named, when `names` is given) as a book; raises ProfileError
        naming the first bad profile and field."""
        profiles = []
        for draft in self.drafts:
            if names is not None and draft.name not in names:
                continue
            errors = draft.validate(self.other_names(draft))
            if errors:
                field_name, reason = next(iter(errors.items()))
                raise ProfileError(field_name, f"profile {draft.name!r}: {reason}")
            profiles.append(draft.to_profile())
        default = self.default if any(p.name == self.default for p in profiles) else None
        return ProfileBook(profiles=profiles, default=default)
