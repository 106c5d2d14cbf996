"""Writing a file so that a crash, a full disk or a read-only file system never leaves half of
one: the profiles, the helper's network memory, the gateway's note of the forwarding sysctl."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """A temporary file in the same directory, fsync, rename, fsync of the directory: readers
    see the old file or the new one, never half of one, and the rename survives a power cut.
    Mode 0600 by default. Raises OSError (ENOSPC, EROFS, EACCES...) with nothing left behind."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
