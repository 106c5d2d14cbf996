"""How the `m6t` command fails: one line on stderr, "m6t: what went wrong: what to do".

`CliError` and `UsageError` are the command's own failures. `control_error_line` says a
`ControlError` in the same shape, deciding from its class and its typed `data` (the group to
join, the refused field, the cause, the socket) and never from the wording of its message,
which is shown to the user as it came.
"""

from __future__ import annotations

from m6t.control.client import DEFAULT_GROUP
from m6t.control.errors import (
    BadReply,
    Conflict,
    ConnectionLost,
    ControlError,
    HelperNotRunning,
    InternalError,
    InvalidParams,
    NotFound,
    PermissionDenied,
    TimedOut,
    Unavailable,
)
from m6t.control.schema import Cause

# What helps when the helper cannot do something right now (Unavailable's `data.cause`).
UNAVAILABLE_ADVICE: dict[Cause, str] = {
    Cause.NO_IPV4_NETWORK: "connect this machine to an IPv4 network first",
    Cause.RESOLVE_FAILED: "check the gateway's name, and DNS",
    Cause.GATEWAY_UNREACHABLE: "check the gateway's address and ports with `m6t probe`",
}


class CliError(Exception):
    """A failure reported as one line on stderr; `status` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class UsageError(CliError):
    """The command line itself is wrong (exit status 2, like argparse's own errors)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=2)


def join_group_advice(group: str) -> str:
    return f"sudo usermod -aG {group} $USER, then log in again"


def _permission_denied_line(exc: PermissionDenied) -> str:
    group = exc.data.group or DEFAULT_GROUP
    advice = join_group_advice(group)
    if exc.data.socket is not None:
        # The socket itself refused the connection: the helper never saw the call.
        return f"{exc.message}: join group {group} ({advice})"
    # The helper's own sentence; only the punctuation depends on how it ends.
    return f"{exc.message}; {advice}" if exc.message.endswith(")") \
        else f"{exc.message} ({advice})"


def _invalid_params_line(exc: InvalidParams) -> str:
    field = exc.data.field
    if not field:
        return f"the helper refused the request: {exc.message}"
    # "profile.mtu" is named once: a message that starts with "mtu: " does not repeat it.
    reason = exc.message.removeprefix(f"{field.rpartition('.')[2]}: ")
    return f"the helper refused {field}: {reason}"


def control_error_line(exc: ControlError) -> str:
    """The line for an error of the control API that no command handled itself."""
    message = exc.message
    match exc:
        case ConnectionLost():  # before HelperNotRunning: it is one
            return message
        case HelperNotRunning():
            return f"helper not running: start m6t-helper ({message})"
        case TimedOut():
            return "the helper did not answer in time: is it stuck? (journalctl -u m6t-helper)"
        case BadReply():
            socket = exc.data.socket or "the socket"
            return f"the helper sent a malformed message ({message}): is {socket} an " \
                   "m6t-helper socket?"
        case PermissionDenied():
            return _permission_denied_line(exc)
        case InvalidParams():
            return _invalid_params_line(exc)
        case NotFound():
            return message
        case Unavailable():
            advice = UNAVAILABLE_ADVICE.get(exc.data.cause) if exc.data.cause else None
            return f"unavailable: {message}" + (f": {advice}" if advice else "")
        case Conflict():
            return f"conflict: {message}"
        case InternalError():
            return (f"the helper failed: {message} (a bug in m6t-helper: please report it; "
                    "its tunnels keep running)")
    return f"helper error {exc.code}: {message}"
