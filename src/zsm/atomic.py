"""Atomic file output: write to a temporary name beside the target, rename on success."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from zsm.errors import OutputError


def describe_os_error(exc: OSError, path: Path | str) -> str:
    """One line naming the path and the cause of an OS error."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied"
    if exc.errno == errno.ENOENT:
        return f"cannot write {path}: folder {Path(path).parent} does not exist"
    if exc.errno == errno.EEXIST and not Path(path).is_dir():
        return f"cannot make folder {path}: a file of that name is in the way"
    if exc.errno == errno.EISDIR:
        return f"cannot write {path}: it is a folder"
    return f"cannot write {path}: {exc.strerror or exc}"


def make_folder(path: Path | str) -> Path:
    """``mkdir -p path``; an OS error (a file in the way, no permission) is an
    :class:`OutputError` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path)) from exc
    return path


@contextlib.contextmanager
def atomic_path(target: Path | str, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` if the block succeeds.

    On any exception (Ctrl-C included) the temporary file is removed and
    nothing appears under ``target``. OS errors become :class:`OutputError`.
    ``suffix`` defaults to the target's (encoders pick the format from it).
    """
    target = Path(target)
    suffix = target.suffix if suffix is None else suffix
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=f".part{suffix}", dir=target.parent or "."
        )
    except OSError as exc:
        raise OutputError(describe_os_error(exc, target)) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, target)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
