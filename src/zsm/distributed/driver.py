"""The driver of a run on a Ray cluster: plan, submit, follow, assemble, summarise.

:func:`upscale_on_cluster` does for one video or a folder of them what
:func:`zsm.upscale.upscale_video` does on one machine, with the same checks,
work folder and resume key (plus ``runner: ray``): every video is cut into
time segments on window boundaries (:mod:`zsm.distributed.segments`), the
segments of all videos are submitted together as Ray tasks (one GPU each, or
CPUs; retried by Ray when their worker dies), each finished segment is
recorded in the video's manifest, and a video whose segments are all done is
joined with its audio and subtitles into its output, atomically, on the
driver. One progress bar counts the output frames of every task (reported
through a :class:`~zsm.distributed.tasks.ProgressBoard` actor).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsm.distributed import cluster
from zsm.distributed.report import ClusterReport
from zsm.distributed.segments import Segment, from_meta, plan_segments, to_meta
from zsm.errors import Cancelled, InputError, ZSMError
from zsm.models.descriptor import describe
from zsm.models.registry import load_model, resolve_weights
from zsm.options import UpscaleOptions
from zsm.upscale import (
    BatchResult,
    ModelLike,
    UpscaleResult,
    check_folder_rate,
    check_output,
    check_time_steps,
    is_folder_output,
    probe_input,
    run_key,
)
from zsm.video.encode import EncodeSettings, choose_codec, container_format
from zsm.video.io import VideoInfo, count_frames
from zsm.video.job import assemble_video, install_folder
from zsm.video.mux import SegmentFile
from zsm.video.progress import ProgressCallback, ProgressReporter, check_cancel
from zsm.video.resume import SegmentRecord, WorkDir
from zsm.video.timing import TimePlan
from zsm.video.windows import WindowPlan

log = logging.getLogger("zsm")

POLL_S = 0.25  # how often the driver looks at finished tasks and progress
CANCEL_WAIT_S = 10.0  # for cancelled tasks to remove their partial files
MAX_SEGMENT_FRAMES = 18_000  # input frames per segment at most, by default (10 min at 30 fps)


@dataclass(eq=False)
class _Job:
    """One input video of the run, from its checks to its output."""

    number: int
    src: Path
    dst: Path
    info: VideoInfo
    frames: int  # input frames (counted, after max_frames)
    fmt: str | None  # None: PNG frames
    settings: EncodeSettings | None
    key: dict[str, Any]
    times: TimePlan
    scale: int = 4  # of the model: output frames are scale x the input's size
    started: float = field(default_factory=time.monotonic)
    work: WorkDir | None = None
    segments: list[Segment] = field(default_factory=list)
    done: dict[int, SegmentRecord] = field(default_factory=dict)  # by segment index
    resumed: int = 0  # output frames taken over from an interrupted run
    result: UpscaleResult | None = None
    failed: bool = False

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.segments)


def upscale_on_cluster(
    items: Sequence[tuple[Path, Path | str]],
    options: UpscaleOptions,
    *,
    model: ModelLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    batch: bool = False,
) -> BatchResult:
    """Upscale each ``(input, output)`` of ``items`` on the cluster ``options.ray`` names.

    Arguments as for :func:`zsm.upscale.upscale_video`. ``batch``: a failing
    input is recorded in the result and the others go on; otherwise its error
    is raised.
    """
    started = time.monotonic()
    assert options.ray is not None
    plan = WindowPlan.fitted_warning(options.window, options.window_overlap)
    weights_path = resolve_weights(options.weights_name) if model is None else None
    result = BatchResult()
    jobs: list[_Job] = []
    for number, (src, dst) in enumerate(items):
        try:
            jobs.append(_checked_job(number, Path(src), dst, options, weights_path, model, plan))
        except ZSMError as exc:
            if not batch:
                raise
            log.warning("zsm: %s failed: %s", Path(src).name, exc)
            result.failed.append((Path(src), str(exc)))
    if not jobs:
        return result
    network = model if model is not None else load_model(weights_path, device="cpu")
    scale = describe(network).scale
    label = f"weights {options.weights_name}" if model is None else f"model {type(model).__name__}"
    for job in list(jobs):
        try:
            check_time_steps(network, job.times, options, label, job.info.fps)
        except ZSMError as exc:
            if not batch:
                raise
            log.warning("zsm: %s failed: %s", job.src.name, exc)
            result.failed.append((job.src, str(exc)))
            jobs.remove(job)
    if not jobs:
        return result
    for job in jobs:
        job.scale = scale
        if job.settings is not None:
            job.settings = dataclasses.replace(
                job.settings, width=scale * job.info.width, height=scale * job.info.height
            )
    with cluster.connect(options.ray) as ray:
        shape = cluster.task_shape(ray, options.device, options.ray_cpus_per_task)
        run = _Run(ray, options, plan, shape, jobs, batch, result)
        try:
            run.open_work(resume)
            run.check_storage()
            run.start(network, progress, on_progress)
            run.follow(cancel)
        except BaseException as exc:
            run.abandon(exc)
            raise
        finally:
            run.close()
        report = ClusterReport.of(
            run.results,
            resumed=run.resumed_segments,
            retried=run.retried(),
            slots=shape.slots,
            seconds=time.monotonic() - started,
            names=cluster.node_names(ray),
        )
    result.cluster = report
    result.done = [dataclasses.replace(j.result, cluster=report) for j in jobs if j.result]
    return result


def _checked_job(
    number: int,
    src: Path,
    dst: Path | str,
    options: UpscaleOptions,
    weights_path: Path | None,
    model: ModelLike | None,
    plan: WindowPlan,
) -> _Job:
    """The checks of a single-machine run, before anything is written."""
    folder_out = is_folder_output(dst)
    dst = Path(os.path.abspath(dst))
    info = probe_input(src, options.input_fps)
    check_folder_rate(info, options)
    times = options.time_plan(info.fps)
    frames = count_frames(info)
    if options.max_frames is not None:
        frames = min(frames, options.max_frames)
    if frames < 2:
        raise InputError(f"{src} has only {frames} frame; need at least 2")
    fmt, settings, output_kind = None, None, "png"
    if not folder_out:
        fmt = container_format(dst)
        codec = choose_codec(fmt, options.codec)
        fps = info.fps * times.rate
        settings = EncodeSettings(codec, fps, info.width, info.height, options.crf, options.threads)
        output_kind = f"{codec} crf {options.crf}"
    check_output(src, dst, folder_out)
    key = run_key(info, options, weights_path, model, plan, output_kind) | {"runner": "ray"}
    return _Job(number, src, dst, info, frames, fmt, settings, key, times)


class _Run:
    """The jobs of one call on the cluster, their tasks and their progress."""

    def __init__(
        self,
        ray: Any,
        options: UpscaleOptions,
        plan: WindowPlan,
        shape: cluster.TaskShape,
        jobs: list[_Job],
        batch: bool,
        result: BatchResult,
    ) -> None:
        self.ray, self.options, self.plan, self.shape = ray, options, plan, shape
        self.jobs, self.batch, self.result = jobs, batch, result
        self.pending: dict[Any, tuple[_Job, Segment]] = {}
        self.results: list[Any] = []  # SegmentResult of this call's tasks
        self.resumed_segments = 0
        self.board: Any = None
        self.bar: ProgressReporter | None = None
        self.running: dict[tuple[int, int], int] = {}  # from the board: frames per segment
        self.snapshot: Any = None  # the board's answer on its way

    # --- before the tasks ---

    def open_work(self, resume: bool) -> None:
        """Open (or take up) each job's work folder and plan (or reload) its segments."""
        default = self.options.ray_segments or math.ceil(2 * self.shape.slots / len(self.jobs))
        for job in list(self.jobs):
            try:
                job.work = work = WorkDir.open(job.dst, job.key, resume=resume)
            except ZSMError as exc:
                self._fail(job, exc)
                continue
            if work.meta.get("segments") and work.meta.get("frames") == job.frames:
                job.segments = from_meta(work.meta["segments"])
            else:
                count = max(default, math.ceil(job.frames / MAX_SEGMENT_FRAMES))
                job.segments = plan_segments(job.frames, self.plan, count)
                work.set_meta(frames=job.frames, segments=to_meta(job.segments))
            by_window = {s.first_window: s for s in job.segments}
            for record in work.segments:
                seg = by_window.get(record.first_window)
                if seg is None or not record.file or not (work.path / record.file).exists():
                    continue
                if record.last == seg.last and (seg.last or record.end_window == seg.end_window):
                    job.done[seg.index] = record
            _remove_leftovers(work, {r.file for r in job.done.values() if r.file})
            job.resumed = sum(r.frames for r in job.done.values())
            self.resumed_segments += len(job.done)

    def check_storage(self) -> None:
        """Every node that would run a segment must see the work folders and the inputs."""
        live = [j for j in self.jobs if not j.failed and not j.complete]
        seen: set[Path] = set()
        for job in live:
            assert job.work is not None
            if job.work.path.parent not in seen:
                seen.add(job.work.path.parent)
                cluster.check_shared_storage(
                    self.ray, job.work.path, [j.src for j in live], self.shape
                )

    def start(self, network: Any, progress: bool | None, on_progress: Any) -> None:
        """Assemble jobs already done, submit every unfinished segment."""
        from zsm.distributed import board
        from zsm.distributed.tasks import MAX_RETRIES, SegmentSpec, remote_segment

        ray, live = self.ray, [j for j in self.jobs if not j.failed]
        total = sum(j.times.count(j.frames) for j in live)
        self.bar = ProgressReporter(
            total=total,
            initial=sum(j.resumed for j in live),
            desc=live[0].src.name if len(live) == 1 else f"{len(live)} videos",
            bar=progress,
            callback=on_progress,
        )
        for job in live:
            if job.complete:
                self._assemble(job)
        ray.cloudpickle.register_pickle_by_value(board)  # its process need not import zsm
        self.board = ray.remote(num_cpus=0)(board.ProgressBoard).remote()
        model_ref = ray.put(network)
        task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(remote_segment)
        task = task.options(**self.shape.resources)
        for job in live:
            for seg in job.segments:
                if seg.index in job.done:
                    continue
                assert job.work is not None
                spec = SegmentSpec(
                    job.number, seg, job.info, self.options, job.work.path, job.frames, job.settings
                )
                shape = self.shape
                ref = task.remote(
                    spec, model_ref, self.board, shape.threads, shape.device, shape.per_node
                )
                self.pending[ref] = (job, seg)

    # --- while they run ---

    def follow(self, cancel: threading.Event | None) -> None:
        """Record finished segments and assemble finished videos until no task is left."""
        ray = self.ray
        while self.pending:
            check_cancel(cancel)
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                job, seg = self.pending.pop(ref)
                if job.failed:
                    continue
                try:
                    res = ray.get(ref)
                except Exception as exc:
                    self._fail(job, _task_error(ray, exc, job, seg))
                    continue
                self.results.append(res)
                record = SegmentRecord(
                    res.first_window,
                    res.end_window,
                    res.first_frame,
                    res.frames,
                    res.file,
                    res.last,
                )
                assert job.work is not None
                job.work.add(record)
                job.done[seg.index] = record
                if job.complete:
                    self._assemble(job)
            self._update_progress()

    def _update_progress(self) -> None:
        """Ask the board (without waiting for its answer) and move the bar."""
        ray = self.ray
        if self.snapshot is None:
            self.snapshot = self.board.snapshot.remote()
        if ray.wait([self.snapshot], timeout=0)[0]:
            self.running = ray.get(self.snapshot)
            self.snapshot = None
        running = {(job.number, seg.index) for job, seg in self.pending.values()}
        done = sum(j.resumed for j in self.jobs if not j.failed)
        done += sum(r.frames for r in self.results if not self.jobs[r.job].failed)
        done += sum(n for key, n in self.running.items() if key in running)
        assert self.bar is not None
        if done != self.bar.done:
            self.bar.update(done - self.bar.done)

    def retried(self) -> int:
        return sum(1 for r in self.results if r.attempt > 0)

    def _fail(self, job: _Job, exc: ZSMError) -> None:
        """A user error in one job: raised, or (in a batch) recorded while the others go on."""
        if not self.batch:
            raise exc
        log.warning("zsm: %s failed: %s", job.src.name, exc)
        job.failed = True
        self.result.failed.append((job.src, str(exc)))
        self._cancel([ref for ref, (j, _) in self.pending.items() if j is job])
        self._drop_work(job, keep=True)

    def _cancel(self, refs: list[Any]) -> None:
        for ref in refs:
            self.pending.pop(ref, None)
            try:
                self.ray.cancel(ref)
            except Exception as exc:  # a task that just finished
                log.debug("zsm: cancelling %s: %s", ref, exc)

    # --- after them ---

    def _assemble(self, job: _Job) -> None:
        """Join the finished segments of ``job`` into its output; remove its work folder."""
        work = job.work
        assert work is not None
        records = sorted(job.done.values(), key=lambda r: r.first_frame)
        total = sum(r.frames for r in records)
        n_in = job.frames
        try:
            if job.fmt is None:
                frames_dir = work.path / "frames"
                frames_dir.mkdir(exist_ok=True)
                for r in records:
                    for p in sorted((work.path / str(r.file)).iterdir()):
                        os.replace(p, frames_dir / p.name)
                install_folder(frames_dir, job.dst)
            else:
                assert job.settings is not None
                files = [
                    SegmentFile(work.path / str(r.file), r.first_frame, r.frames) for r in records
                ]
                assemble_video(
                    job.info,
                    job.dst,
                    files,
                    fmt=job.fmt,
                    fps=job.settings.fps,
                    n_in=n_in,
                    max_frames=self.options.max_frames,
                )
        except ZSMError as exc:
            self._fail(job, exc)
            return
        work.remove()
        job.result = UpscaleResult(
            input=job.src,
            output=job.dst,
            input_frames=n_in,
            output_frames=total,
            fps=job.info.fps * job.times.rate,
            width=job.scale * job.info.width,
            height=job.scale * job.info.height,
            seconds=time.monotonic() - job.started,
            resumed_frames=job.resumed,
        )

    def abandon(self, exc: BaseException) -> None:
        """Stop every task; keep the work of finished segments unless cancelled."""
        refs = list(self.pending)
        self._cancel(refs)
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
        for job in self.jobs:
            if job.result is None and not job.failed:
                self._drop_work(job, keep=not isinstance(exc, Cancelled))

    def _drop_work(self, job: _Job, *, keep: bool) -> None:
        if job.work is None:
            return
        if keep and job.done:
            log.warning(
                "zsm: %d of %d segments of %s kept in %s; rerun with --resume to continue",
                len(job.done),
                len(job.segments),
                job.src.name,
                job.work.path,
            )
        else:
            job.work.remove()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.board is not None:
            try:
                self.ray.kill(self.board)
            except Exception as exc:
                log.debug("zsm: stopping the progress actor: %s", exc)


def _task_error(ray: Any, exc: Exception, job: _Job, seg: Segment) -> ZSMError:
    """A failed task as a user error (one line), or raised again if it is a bug."""
    where = f"segment {seg.index + 1} of {job.src.name}"
    if isinstance(exc, ray.exceptions.RayTaskError):
        if isinstance(exc.cause, ZSMError):
            return exc.cause
        raise exc  # a bug: its remote traceback
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return ZSMError(
            f"{where}: its worker ran out of memory; use --tile or fewer tasks per node"
        )
    if isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError):
        from zsm.distributed.tasks import MAX_RETRIES

        return ZSMError(f"{where} failed: its worker died {MAX_RETRIES + 1} times ({exc})")
    if isinstance(exc, ray.exceptions.RayError):
        return ZSMError(f"{where} failed on the Ray cluster: {type(exc).__name__}")
    raise exc


def _remove_leftovers(work: WorkDir, keep: set[str]) -> None:
    """Partial segments of an interrupted run and folders no record names."""
    for p in work.path.iterdir():
        if p.name == "frames" or p.name in keep or not p.name.startswith("seg-"):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


__all__ = ["MAX_SEGMENT_FRAMES", "upscale_on_cluster"]
