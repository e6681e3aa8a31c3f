"""What a worker runs: one time segment of one video, written as a file of the work folder.

:func:`run_segment` is plain Python (the tests run it without Ray too): it
decodes the segment's input frames, runs them through the same
:class:`~zsm.video.pipeline.Pipeline` as a single-machine run, from the
segment's first window, and writes the outputs its windows own, either
encoded (the video codec of the final output: the driver then joins the
segments without re-encoding) or as PNG frames. It writes under a name of its
own attempt and renames the result into place only when complete, so a
retried or cancelled attempt never leaves a partial segment under the final
name. :class:`ProgressBoard` is the Ray actor through which tasks report
their frames to the driver's progress bar.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsm.atomic import describe_os_error
from zsm.device import torch_threads
from zsm.distributed.segments import Segment
from zsm.errors import InputError, OutputError
from zsm.options import UpscaleOptions
from zsm.upscale import ModelLike, build_pipeline
from zsm.video.encode import EncodeSettings, VideoWriter, segment_format
from zsm.video.io import VideoInfo, iter_frames
from zsm.video.job import write_window
from zsm.video.windows import WindowPlan

MAX_RETRIES = 3  # attempts after the first when a task's worker or node dies


@dataclass(frozen=True)
class SegmentSpec:
    """Everything a task needs for one segment (sent to the worker)."""

    job: int
    segment: Segment
    info: VideoInfo
    options: UpscaleOptions
    work: Path  # the work folder, on shared storage
    frames: int  # input frames of the run (the driver's count, after max_frames)
    encode: EncodeSettings | None  # None: PNG frames

    @property
    def key(self) -> tuple[int, int]:
        return (self.job, self.segment.index)

    def final_name(self) -> str:
        stem = f"seg-{self.segment.index:05d}"
        if self.encode is None:
            return stem  # a folder of PNG frames
        return stem + (".mp4" if segment_format(self.encode.codec) == "mp4" else ".mkv")


@dataclass(frozen=True)
class SegmentResult:
    """A finished segment: what it holds, and where and how fast it was made."""

    job: int
    index: int
    first_window: int
    end_window: int  # one past its last window
    first_frame: int
    frames: int  # output frames
    file: str  # name in the work folder
    last: bool
    input_frames: int  # of the whole stream, as far as this task read it
    node: str  # id of the Ray node that made it
    started: float  # wall clock (time.time()) at the start and end of the work
    finished: float
    attempt: int = 0  # 1 or more: a retry (an earlier attempt's worker died)


def run_segment(
    spec: SegmentSpec,
    model: ModelLike | None,
    *,
    threads: int | None = None,
    device: str | None = None,
    memory_share: int = 1,
    report: Callable[[int], None] | None = None,
    node: str = "local",
    attempt: int = 0,
) -> SegmentResult:
    """Make segment ``spec`` into ``spec.work``; ``report(frames)`` after every window.

    ``threads``: torch and encoder threads unless the options name them;
    ``memory_share``: tasks sharing this machine's RAM (the automatic tile size
    takes its part of the CPU budget).
    """
    started = time.time()
    options = spec.options
    plan = WindowPlan.fitted(options.window, options.window_overlap)
    seg = spec.segment
    final = spec.work / spec.final_name()
    part = spec.work / f"{final.stem}.{uuid.uuid4().hex[:8]}.part{final.suffix}"
    frames: Iterable[np.ndarray | None] = iter_frames(spec.info, skip=seg.skip(plan))
    stop = seg.stop(plan) if not seg.last else options.max_frames
    if stop is not None:
        frames = itertools.islice(frames, stop)
    writer: VideoWriter | None = None
    times = options.time_plan(spec.info.fps)
    next_frame = first = seg.first_output(plan, times)
    end_window, n_in = seg.first_window, 0
    threads = options.threads or threads
    with torch_threads(threads):
        pipe = build_pipeline(
            options.replace(device=device or options.device), model=model, in_fps=spec.info.fps
        )
        if pipe.device.type == "cpu" and pipe.memory_budget is not None:
            pipe.memory_budget //= max(1, memory_share)
        try:
            if spec.encode is not None:
                encode = dataclasses.replace(spec.encode, threads=spec.encode.threads or threads)
                writer = VideoWriter(part, encode, fmt=segment_format(encode.codec))
            else:
                part.mkdir()
            if report is not None:
                report(0)
            for win, chunk in pipe.run(frames, first_window=seg.first_window):
                if win.last and not seg.last:
                    raise InputError(
                        f"{spec.info.path} ended after {win.stop} frames, before its stated "
                        f"{spec.frames}; re-encode it (or run without --ray)"
                    )
                next_frame = write_window(
                    win,
                    chunk,
                    next_frame,
                    times=pipe.times,
                    writer=writer,
                    folder=part,
                )
                del chunk
                end_window, n_in = win.index + 1, win.stop
                if report is not None:
                    report(next_frame - first)
                if seg.end_window is not None and end_window == seg.end_window:
                    break
            if writer is not None:
                writer.close()
                writer = None
                os.replace(part, final)
            elif final.exists():  # an earlier attempt of this segment finished after all
                shutil.rmtree(part)
            else:
                os.replace(part, final)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, final)) from exc
        finally:
            if writer is not None:
                writer.abort()
            if part.is_dir():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)
    return SegmentResult(
        job=spec.job,
        index=seg.index,
        first_window=seg.first_window,
        end_window=end_window,
        first_frame=first,
        frames=next_frame - first,
        file=final.name,
        last=seg.last,
        input_frames=n_in,
        node=node,
        started=started,
        finished=time.time(),
        attempt=attempt,
    )


def remote_segment(
    spec: SegmentSpec,
    model: Any,
    board: Any,
    threads: int | None,
    device: str,
    per_node: dict[str, int],
) -> SegmentResult:
    """The Ray task: :func:`run_segment` reporting to ``board`` (a ``ProgressBoard`` actor);
    ``per_node``: node id -> tasks that run on it at once."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return run_segment(
        spec,
        model,
        threads=threads,
        device=device,
        memory_share=per_node.get(node, 1),
        report=lambda frames: board.report.remote(spec.key, frames),
        node=node,
        attempt=_attempt(ray),
    )


def _attempt(ray: Any) -> int:
    """This task's attempt number (0: the first); Ray has no public API for it yet."""
    try:
        return int(ray._private.worker.global_worker.core_worker.get_current_task_attempt_number())
    except Exception:
        return 0
