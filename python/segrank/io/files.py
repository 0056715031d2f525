"""Output files written whole or not at all, and full disks reported in one line."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path

from ..errors import SegrankError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(SegrankError):
    """A write failed for lack of space; what was finished before it is kept."""


def atomic_write(path, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file beside it and a rename: a reader (or a
    crash, or a full disk) never leaves a truncated file behind, only the old one or the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def free_bytes(path) -> int | None:
    """Free space on the file system that holds `path` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full_message(err: OSError, where) -> str:
    """One line: which file could not be written, how much space is left, what to do."""
    path = err.filename or where
    free = free_bytes(path)
    left = f"{free / 2**20:.0f} MiB free" if free is not None else "free space unknown"
    return (f"{path}: disk full ({left}); what was finished is kept: free some space (a few hundred MiB for the "
            "outputs, more with a prediction cache) or choose another folder, then rerun to resume")


@contextlib.contextmanager
def disk_full_as_error(where):
    """Turn a full disk (ENOSPC, EDQUOT) inside the block into a one-line `DiskFullError`."""
    try:
        yield
    except OSError as err:
        if err.errno in DISK_FULL:
            raise DiskFullError(disk_full_message(err, where)) from None
        raise


__all__ = ["DiskFullError", "atomic_write", "disk_full_as_error", "disk_full_message", "free_bytes"]
