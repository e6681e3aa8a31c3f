"""One upscaling run: decode, windows and tiles through the model, segments, final file.

:func:`zsm.upscale.upscale_video` checks the input, output and options, opens
the work folder (:mod:`zsm.video.resume`) and hands over to :class:`UpscaleJob`,
which streams the frames through the :class:`~zsm.video.pipeline.Pipeline`
into encoded segments (or PNG frames), then joins them with the input's audio
and subtitles into the output (:mod:`zsm.video.mux`), atomically.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from zsm.atomic import atomic_path, describe_os_error
from zsm.errors import InputError, OutputError
from zsm.video.encode import EncodeSettings, VideoWriter, segment_format
from zsm.video.io import FRAME_NAME, VideoInfo, frame_name, iter_frames, write_png
from zsm.video.mux import SegmentFile, join
from zsm.video.pipeline import Pipeline, output_frames
from zsm.video.progress import ProgressCallback, ProgressReporter, check_cancel
from zsm.video.resume import SegmentRecord, WorkDir
from zsm.video.timing import TimePlan
from zsm.video.windows import TooFewFrames, Window


@dataclass
class UpscaleJob:
    """One run of :func:`zsm.upscale.upscale_video`, once its inputs and options are checked."""

    info: VideoInfo
    dst: Path
    work: WorkDir
    pipe: Pipeline | None
    times: TimePlan
    max_frames: int | None
    progress: bool | None
    segment_seconds: float
    fmt: str | None  # None: PNG folder
    settings: EncodeSettings
    on_progress: ProgressCallback | None = None
    cancel: threading.Event | None = None

    def run(self) -> tuple[int, int, int]:
        """(input frames, output frames, resumed output frames)."""
        resumed = self.work.next_frame
        if self.fmt is None:
            self._prepare_frames_dir(resumed)
        if not self.work.complete:
            self._process()
        total = self.work.next_frame
        n_in = self.work.meta.get("input_frames") or input_frames(self.times, total)
        if self.fmt is None:
            install_folder(self.work.path / "frames", self.dst)
        else:
            self._assemble(n_in)
        return n_in, total, resumed

    def _expected_outputs(self) -> int | None:
        n = self.info.frame_count
        if n is None:
            return None
        if self.max_frames is not None:
            n = min(n, self.max_frames)
        return self.times.count(n)

    def _prepare_frames_dir(self, keep: int) -> None:
        frames_dir = self.work.path / "frames"
        frames_dir.mkdir(exist_ok=True)
        for p in frames_dir.iterdir():  # frames of a segment cut short by an interruption
            if FRAME_NAME.match(p.name) and int(p.stem) > keep:
                p.unlink()

    def _process(self) -> None:
        assert self.pipe is not None
        plan, work = self.pipe.plan, self.work
        frames: Iterable[np.ndarray | None] = iter_frames(
            self.info, skip=plan.skippable(work.next_window)
        )
        if self.max_frames is not None:
            frames = itertools.islice(frames, self.max_frames)
        seg_suffix = ".mp4" if self.fmt and segment_format(self.settings.codec) == "mp4" else ".mkv"
        bar = ProgressReporter(
            total=self._expected_outputs(),
            initial=work.next_frame,
            desc=self.info.path.name,
            bar=self.progress,
            callback=self.on_progress,
        )
        writer: VideoWriter | None = None
        seg_start: tuple[int, int, float] | None = None  # first window, first frame, clock
        next_frame = work.next_frame
        try:
            for win, chunk in self.pipe.run(frames, first_window=work.next_window):
                check_cancel(self.cancel)
                if seg_start is None:
                    seg_start = (win.index, next_frame, time.monotonic())
                    if self.fmt is not None:
                        part = work.segment_path(len(work.segments), ".part" + seg_suffix)
                        seg_fmt = segment_format(self.settings.codec)
                        writer = VideoWriter(part, self.settings, fmt=seg_fmt)
                next_frame = self._write(win, chunk, next_frame, writer, bar)
                del chunk  # before the next window's is made: one window in memory, not two
                if win.last:
                    work.set_meta(input_frames=win.stop)
                if win.last or time.monotonic() - seg_start[2] >= self.segment_seconds:
                    file = None
                    if writer is not None:
                        writer.close()
                        final = work.segment_path(len(work.segments), seg_suffix)
                        os.replace(writer.path, final)
                        file, writer = final.name, None
                    work.add(
                        SegmentRecord(
                            seg_start[0],
                            win.index + 1,
                            seg_start[1],
                            next_frame - seg_start[1],
                            file,
                            win.last,
                        )
                    )
                    seg_start = None
        except TooFewFrames as exc:
            raise InputError(
                f"{self.info.path} has only {exc.count} frame; need at least 2"
            ) from None
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.dst)) from exc
        finally:
            bar.close()
            if writer is not None:
                writer.abort()
                writer.path.unlink(missing_ok=True)

    def _write(
        self,
        win: Window,
        chunk: torch.Tensor,
        next_frame: int,
        writer: VideoWriter | None,
        bar: ProgressReporter,
    ) -> int:
        """Write one window's frames; returns the index of the next output frame."""
        first = next_frame
        next_frame = write_window(
            win,
            chunk,
            next_frame,
            times=self.times,
            writer=writer,
            folder=self.work.path / "frames",
        )
        bar.update(next_frame - first)
        return next_frame

    def _assemble(self, n_in: int) -> None:
        assert self.fmt is not None
        segments = [
            SegmentFile(self.work.path / s.file, s.first_frame, s.frames)
            for s in self.work.segments
            if s.file
        ]
        assemble_video(
            self.info,
            self.dst,
            segments,
            fmt=self.fmt,
            fps=self.settings.fps,
            n_in=n_in,
            max_frames=self.max_frames,
        )


def assemble_video(
    info: VideoInfo,
    dst: Path,
    segments: list[SegmentFile],
    *,
    fmt: str,
    fps: Fraction,
    n_in: int,
    max_frames: int | None,
) -> None:
    """Join the encoded ``segments`` (in time order) with ``info``'s audio and subtitles
    into ``dst``, atomically; audio is cut to the ``n_in`` input frames of a preview."""
    truncated = max_frames is not None and (info.frame_count is None or n_in < info.frame_count)
    end = info.start_time + float(n_in / info.fps) if truncated else None
    with atomic_path(dst) as tmp:
        join(
            segments,
            tmp,
            fmt=fmt,
            fps=fps,
            source=None if info.is_folder else info.path,
            video_start=info.start_time,
            end_time=end,
        )


def install_folder(frames_dir: Path, dst: Path) -> None:
    """Move the finished frames folder to ``dst`` (replacing earlier zsm frames there)."""
    old = None
    try:
        if dst.exists():
            old = dst.with_name(f".{dst.name}.zsm-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dst, old)
        os.replace(frames_dir, dst)
    except OSError as exc:
        if old is not None and old.exists() and not dst.exists():
            os.replace(old, dst)
        raise OutputError(describe_os_error(exc, dst)) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def input_frames(times: TimePlan, outputs: int) -> int:
    """The fewest input frames that give ``outputs`` output frames (the only count when the
    output has at least the input's rate; for work folders that did not record it)."""
    return (outputs - 1) * times.rate.denominator // times.rate.numerator + 1


def write_window(
    win: Window,
    chunk: torch.Tensor,
    next_frame: int,
    *,
    times: TimePlan,
    writer: VideoWriter | None,
    folder: Path,
) -> int:
    """Write one window's output frames, in order, to ``writer`` (else as PNGs into
    ``folder``), checking they continue at ``next_frame``; returns the next index."""
    for index, frame in output_frames(win, chunk, times=times):
        if index != next_frame:
            raise RuntimeError(f"output frame {index} != expected {next_frame}")
        if writer is not None:
            writer.write(frame.numpy())
        else:
            write_png(folder / frame_name(index), frame.numpy())
        next_frame += 1
    return next_frame
