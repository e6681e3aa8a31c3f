"""The work folder beside an output: finished segments and a manifest, for ``--resume``.

A run writes its output in segments (a few windows each) into
``.<OUTPUT name>.zsm-work/`` beside OUTPUT and records each finished one in
``manifest.json`` (written atomically, after the segment file is complete).
An interrupted run leaves the folder; ``--resume`` reads it and continues
at the first window no finished segment covers. The window layout is fixed
by the settings in the manifest, so the resumed output equals an
uninterrupted run's. A successful run deletes the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zsm.atomic import describe_os_error
from zsm.errors import OutputError

log = logging.getLogger("zsm")

MANIFEST = "manifest.json"
VERSION = 1


@dataclass(frozen=True)
class SegmentRecord:
    """A finished segment: windows ``[first_window, end_window)`` gave output frames
    ``[first_frame, first_frame + frames)``; ``file`` is None for PNG-folder output."""

    first_window: int
    end_window: int
    first_frame: int
    frames: int
    file: str | None = None
    last: bool = False


def work_dir_for(output: Path) -> Path:
    output = Path(os.path.abspath(output))
    return output.parent / f".{output.name}.zsm-work"


class WorkDir:
    """The work folder of one output; see the module docstring."""

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path = path
        self.key = key
        self.segments: list[SegmentRecord] = []
        self.meta: dict[str, Any] = {}  # a runner's own state (the Ray runner's segment plan)

    @classmethod
    def open(cls, output: Path, key: dict[str, Any], *, resume: bool) -> WorkDir:
        """Create the folder, or with ``resume`` take up the one an earlier run left."""
        work = cls(work_dir_for(output), key)
        if work.path.exists():
            if resume and (work.path / MANIFEST).is_file():
                work._load()
                return work
            if (work.path / MANIFEST).is_file():
                log.warning(
                    "zsm: discarding unfinished work of an earlier run in %s "
                    "(use --resume to continue it)",
                    work.path,
                )
            work.remove()
        elif resume:
            log.warning("zsm: nothing to resume for %s; starting from the beginning", output)
        try:
            work.path.mkdir()
        except OSError as exc:
            raise OutputError(describe_os_error(exc, output)) from exc
        work._save()
        return work

    def _load(self) -> None:
        try:
            data = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise OutputError(
                f"cannot resume: unreadable manifest in {self.path} ({exc}); "
                "delete that folder to start over"
            ) from exc
        if data.get("version") != VERSION or data.get("key") != self.key:
            old = data.get("key") or {}
            changed = sorted(k for k in set(old) | set(self.key) if old.get(k) != self.key.get(k))
            raise OutputError(
                f"cannot resume from {self.path}: it was made with other settings or input "
                f"({', '.join(changed) or 'format version'} differ); run without --resume "
                "to start over"
            )
        self.segments = [SegmentRecord(**s) for s in data.get("segments", [])]
        self.meta = data.get("meta", {})
        keep = {MANIFEST} | {s.file for s in self.segments if s.file}
        for p in self.path.iterdir():
            if p.is_file() and p.name not in keep:
                p.unlink()  # a segment cut short by the interruption

    def _save(self) -> None:
        data: dict[str, Any] = {"version": VERSION, "key": self.key}
        data["segments"] = [asdict(s) for s in self.segments]
        if self.meta:
            data["meta"] = self.meta
        tmp = self.path / f".{MANIFEST}.tmp"
        try:
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path / MANIFEST)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path / MANIFEST)) from exc

    def add(self, record: SegmentRecord) -> None:
        self.segments.append(record)
        self._save()

    def set_meta(self, **values: Any) -> None:
        """Record ``values`` in the manifest's ``meta`` (kept by ``resume``)."""
        self.meta.update(values)
        self._save()

    @property
    def next_window(self) -> int:
        return self.segments[-1].end_window if self.segments else 0

    @property
    def next_frame(self) -> int:
        s = self.segments[-1] if self.segments else None
        return s.first_frame + s.frames if s else 0

    @property
    def complete(self) -> bool:
        return bool(self.segments) and self.segments[-1].last

    def segment_path(self, number: int, suffix: str) -> Path:
        return self.path / f"seg-{number:05d}{suffix}"

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.path)
