"""The web app's work folder: where uploads and results live, what is accepted, and expiry.

Layout of the root (a new temporary folder unless ``--work-dir`` names one), which
is also Gradio's upload and serving cache (``GRADIO_TEMP_DIR``)::

    <hash>/<name>     an upload, or a file Gradio copied to serve it
    sample/           the bundled sample clip, copied so that Gradio may serve it
    jobs/<id>/        one job's result, side-by-side video and contact sheet

Results live inside Gradio's cache so that it serves them where they are
instead of copying them (a 4x video can be gigabytes). Everything the app
writes is under the root; entries older than the configured time are removed
by :class:`Sweeper`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from zsm.atomic import describe_os_error
from zsm.errors import InputError, OutputError
from zsm.video.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

log = logging.getLogger("zsm")

# What the upload accepts: videos, and images (an animated WebP is one; a still image
# then gets zsm's own "is a still image" error, as the CLI gives it).
ACCEPTED_EXTENSIONS = frozenset(VIDEO_EXTENSIONS | IMAGE_EXTENSIONS)
MARKER = ".zsm-ui-work"  # marks a folder as this app's: --work-dir may reuse it


@dataclass(frozen=True)
class WorkFolder:
    """The app's root folder; ``owned`` roots (made by the app) are removed on close."""

    root: Path
    owned: bool

    @classmethod
    def open(cls, root: Path | str | None) -> WorkFolder:
        """Use ``root`` (created if missing) or a new temporary folder when None."""
        path = Path(root).expanduser().resolve() if root is not None else None
        # The sweeper removes whatever is old in here: never in a folder of the user's.
        if (
            path is not None
            and path.is_dir()
            and not (path / MARKER).exists()
            and any(path.iterdir())
        ):
            raise OutputError(
                f"work folder {path} holds other files; give an empty or new folder "
                "(the app removes old files in it)"
            )
        try:
            if path is None:
                work = cls(Path(tempfile.mkdtemp(prefix="zsm-ui-")).resolve(), owned=True)
            else:
                path.mkdir(parents=True, exist_ok=True)
                work = cls(path, owned=False)
            (work.root / MARKER).touch()
            work.jobs.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, path or tempfile.gettempdir())) from exc
        return work

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def contains(self, path: Path | str) -> bool:
        return Path(os.path.realpath(path)).is_relative_to(self.root)

    def sweep(self, max_age: float, keep: Iterable[Path] = ()) -> list[Path]:
        """Remove uploads and job folders untouched for ``max_age`` seconds.

        An entry is a job folder or one of Gradio's per-file cache folders; ``keep``
        protects those that hold a path of a queued or running job, or the sample.
        """
        kept = [Path(os.path.realpath(p)) for p in keep]
        limit = time.time() - max_age
        removed = []
        top = [e for e in _entries(self.root) if e not in (self.jobs, self.root / MARKER)]
        entries = top + _entries(self.jobs)
        for entry in entries:
            if any(p.is_relative_to(entry) for p in kept) or _newest_mtime(entry) > limit:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        return removed

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


def _entries(folder: Path) -> list[Path]:
    try:
        return [Path(os.path.realpath(p)) for p in folder.iterdir()]
    except FileNotFoundError:
        return []


def _newest_mtime(path: Path) -> float:
    """Latest modification time in ``path`` (a file, or a folder's whole tree)."""
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


def check_upload(path: Path | str, max_bytes: int) -> Path:
    """The upload ``path`` if its type and size are acceptable; else an :class:`InputError`."""
    path = Path(path)
    if path.suffix.lower() not in ACCEPTED_EXTENSIONS:
        kinds = ", ".join(sorted(e.lstrip(".") for e in VIDEO_EXTENSIONS))
        raise InputError(f"{path.name} is not a video file; accepted: {kinds}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"upload {path.name} is missing; upload it again") from exc
    if size > max_bytes:
        raise InputError(
            f"{path.name} is {size / 1e6:.0f} MB; this app accepts uploads up to "
            f"{max_bytes / 1e6:.0f} MB"
        )
    return path


class Sweeper:
    """A thread that calls ``work.sweep`` every ``interval`` seconds until stopped."""

    def __init__(
        self,
        work: WorkFolder,
        max_age: float,
        keep: Callable[[], Iterable[Path]],
        interval: float = 60.0,
    ) -> None:
        self._work, self._max_age, self._keep = work, max_age, keep
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zsm-ui-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                removed = self._work.sweep(self._max_age, self._keep())
            except OSError as exc:  # a full or vanished disk must not stop the app
                log.warning("zsm ui: cleaning %s failed: %s", self._work.root, exc)
                continue
            if removed:
                log.info("zsm ui: removed %d expired upload(s)/result(s)", len(removed))
