"""The `m6t` command: tunnels through m6t-helper, and the user's profiles file.

A client of the helper's control API (docs/control-api.md) and the editor of the profiles file
(m6t/profiles.py). Human output is short; `--json` prints the helper's records unchanged, for
scripts. Every failure is one line on stderr, "m6t: what went wrong: what to do", with exit
status 1, or 2 when the command line itself is wrong; never a traceback.

    parser.py            the command line: commands, options, argument types
    tunnel_commands.py   the commands that go through the helper (status, connect, watch...)
    network_commands.py  `m6t networks`: what the helper remembers of each network, forgetting
    profile_commands.py  the profiles file, `prefix new`, and which profile a command uses
    render.py            records in words for people, or as JSON for scripts
    errors.py            failures as one line (CliError, UsageError, ControlError)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from m6t.cli.errors import CliError, control_error_line
from m6t.cli.parser import build_parser
from m6t.control.errors import ControlError
from m6t.profiles import ProfilesError

__all__ = ["build_parser", "main"]


def _fail(message: str) -> None:
    print(f"m6t: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except CliError as exc:
        _fail(str(exc))
        return exc.status
    except ControlError as exc:
        _fail(control_error_line(exc))
        return 1
    except ProfilesError as exc:
        _fail(str(exc))
        return 1
    except BrokenPipeError:  # `m6t watch | head`: the reader left, nothing more to say
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, and the traceback on request
        if os.environ.get("M6T_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (a bug in m6t: please report "
              "it; M6T_DEBUG=1 shows the traceback)")
        return 1
