"""Public API: space-time upscaling of a video file, a frame folder, many files, or frames.

* :func:`upscale_video` — one input (video file or image folder) to one output
  (video file, or a folder of PNG frames), streaming, resumable, atomic.
* :func:`upscale_batch` — every video of a folder into an output folder.
* :func:`upscale_frames` — an iterator of uint8 frames in, upscaled frames out.

n input frames give 2n output frames at exactly twice the frame rate (the
last one is held for its successor's slot; see :mod:`zsm.video.pipeline`),
4x the width and height; ``time_factor=1`` keeps only the frames at input
times (n frames, same rate, 4x size), ``time_factor=N`` gives nN frames at N
times the rate, and ``fps=RATE`` any output rate, each frame at its exact time
between the inputs and the duration kept (:mod:`zsm.video.timing`). Time
factors other than 1 and 2, and most rates, need time-step weights (a model
whose descriptor has ``time_steps``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zsm.atomic import describe_os_error
from zsm.device import memory_budget, resolve_device, torch_threads
from zsm.engine import SelfEnsemble, prepare
from zsm.errors import Cancelled, InputError, OutputError, WeightsError, ZSMError
from zsm.models.config import SCALE
from zsm.models.descriptor import describe
from zsm.models.registry import load_model, resolve_weights
from zsm.models.zsm import ZoomingSlowMo
from zsm.options import UpscaleOptions
from zsm.video.encode import EncodeSettings, choose_codec, container_format
from zsm.video.io import FRAME_NAME, VideoInfo, list_images, list_videos, probe
from zsm.video.job import UpscaleJob
from zsm.video.pipeline import Pipeline, output_frames
from zsm.video.progress import ProgressCallback
from zsm.video.resume import WorkDir
from zsm.video.timing import TimePlan
from zsm.video.windows import TooFewFrames, WindowPlan

if TYPE_CHECKING:
    from zsm.distributed.report import ClusterReport

log = logging.getLogger("zsm")

ModelLike = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class UpscaleResult:
    """What :func:`upscale_video` wrote."""

    input: Path
    output: Path
    input_frames: int
    output_frames: int
    fps: Fraction  # of the output
    width: int
    height: int
    seconds: float  # wall time of this call
    resumed_frames: int = 0  # output frames taken over from an interrupted run
    cluster: ClusterReport | None = None  # with ``ray``: segments, nodes, speed per node


@dataclass
class BatchResult:
    """What :func:`upscale_batch` did with each input."""

    done: list[UpscaleResult] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # output already there
    failed: list[tuple[Path, str]] = field(default_factory=list)
    cluster: ClusterReport | None = None  # with ``ray``: segments, nodes, speed per node


# --- frames -----------------------------------------------------------------------------


def build_pipeline(
    options: UpscaleOptions | None = None,
    *,
    model: ModelLike | None = None,
    cancel: threading.Event | None = None,
    in_fps: Fraction | None = None,
    label: str | None = None,
    **changes: Any,
) -> Pipeline:
    """The :class:`~zsm.video.pipeline.Pipeline` the other functions run (model loaded).

    ``model`` (a loaded network or callable) replaces ``options.weights``;
    ``changes`` are option overrides (``window=8``); see :class:`UpscaleOptions`.
    ``in_fps``: the input's frame rate (default ``options.input_fps``; only ``fps``
    needs it); ``label``: what the model is, for the error when it cannot make the
    output's time steps (default: the weights' name, or the model's type).
    """
    options = UpscaleOptions.of(options, **changes)
    in_fps = in_fps if in_fps is not None else options.input_fps
    times = options.time_plan(in_fps)
    if label is None:
        label = _label(model, options)
    plan = WindowPlan.fitted_warning(options.window, options.window_overlap)
    dev = resolve_device(options.device)
    if model is None:
        model = load_model(options.weights_name, device=dev)
    if isinstance(model, ZoomingSlowMo | SelfEnsemble):
        model = prepare(model, dev, precision=options.precision, ensemble=options.ensemble)
    elif options.ensemble != 1 or options.precision not in ("fp32", "auto"):
        raise ValueError(
            f"ensemble and precision need a zsm network, not {type(model).__name__}; "
            "a model callable of your own runs as it is"
        )
    else:
        describe(model)  # a foreign callable declares its descriptor, or is refused here
    check_time_steps(model, times, options, label, in_fps)
    return Pipeline(
        model=model,
        device=dev,
        plan=plan,
        tile=options.tile,
        tile_overlap=options.tile_overlap,
        memory_budget=None if options.tile is not None else memory_budget(dev),
        cancel=cancel,
        times=times,
    )


def _label(model: ModelLike | None, options: UpscaleOptions) -> str:
    """What a model is, in an error: its weights' name, or its type when given as an object."""
    if model is not None and not options.weights:
        return f"model {type(model).__name__}"
    return f"weights {options.weights_name}"


def check_time_steps(
    model: ModelLike,
    times: TimePlan,
    options: UpscaleOptions,
    label: str,
    in_fps: Fraction | None = None,
) -> None:
    """A :class:`~zsm.errors.WeightsError` (one line) when ``model`` makes only the frame
    halfway between inputs and ``times`` asks for others."""
    if times.halfway_only or describe(model).time_steps:
        return
    asked = options.time_label()
    if options.fps is not None and in_fps is not None:
        asked += f" from {in_fps} fps"
    raise WeightsError(
        f"{label} can make only the frame halfway between two inputs; {asked} needs "
        "time-step weights"
    )


def upscale_frames(
    frames: Iterable[np.ndarray],
    options: UpscaleOptions | None = None,
    *,
    model: ModelLike | None = None,
    cancel: threading.Event | None = None,
    **changes: Any,
) -> Iterator[np.ndarray]:
    """Upscale ``frames`` ((H, W, 3) uint8 RGB, one size) lazily.

    Yields (4H, 4W, 3) uint8 frames: 2n for n inputs (``time_factor=2``), n
    (``time_factor=1``), nN (``time_factor=N``) or ``ceil(n * fps / input_fps)``
    (``fps``, which needs ``input_fps``, the frames' rate), holding only one
    temporal window in memory. The options of the encoder and the threads (codec,
    crf, threads, segment_seconds) do not apply: a generator cannot hold the
    process's thread count while its caller runs.
    """
    options = UpscaleOptions.of(options, **changes)
    if options.ray is not None:
        raise ValueError("ray= runs upscale_video and upscale_batch; upscale_frames runs here")
    pipe = build_pipeline(options, model=model, cancel=cancel)
    frames = _checked(frames)
    if options.max_frames is not None:
        frames = itertools.islice(frames, options.max_frames)
    try:
        for win, chunk in pipe.run(frames):
            outs = [f.numpy() for _, f in output_frames(win, chunk, times=pipe.times)]
            del chunk  # hold one window, not two, while the next is made
            while outs:
                yield outs.pop(0)
    except TooFewFrames as exc:
        raise InputError(f"need at least 2 frames to upscale, got {exc.count}") from None


def _checked(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    shape = None
    for k, f in enumerate(frames):
        f = np.asarray(f)
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise InputError(
                f"frame {k}: expected an (H, W, 3) uint8 array, got {f.shape} {f.dtype}"
            )
        if shape is None:
            shape = f.shape
        elif f.shape != shape:
            raise InputError(f"frame {k} is {f.shape}, frame 0 was {shape}; sizes must match")
        yield f


# --- one video --------------------------------------------------------------------------


def is_folder_output(dst: Path | str) -> bool:
    """OUTPUT names a folder of PNG frames: ends with a separator or is an existing folder."""
    text = os.fspath(dst)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def upscale_video(
    src: Path | str,
    dst: Path | str,
    options: UpscaleOptions | None = None,
    *,
    model: ModelLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    **changes: Any,
) -> UpscaleResult:
    """Upscale the video file or image folder ``src`` into ``dst``.

    ``dst`` is a video file (container from its extension; audio and
    subtitles carried over) or, when it ends with ``/`` or is a folder, PNG
    frames ``00000001.png``, ... . Work happens in ``.<dst name>.zsm-work``
    beside ``dst``; a video file appears under its name only when complete.
    ``resume`` continues an interrupted run from its last finished segment.
    ``progress``: a tqdm bar (``None``: only on a terminal); ``on_progress``
    is called with a :class:`~zsm.video.progress.Progress` as frames are
    written; setting ``cancel`` stops the run before its next window or tile
    with :class:`~zsm.errors.Cancelled`, leaving neither output nor work
    folder. ``options`` and the keyword ``changes`` (``window=8``): see
    :class:`~zsm.options.UpscaleOptions`; with ``ray`` set, the video is cut
    into segments that run as tasks of a Ray cluster (:mod:`zsm.distributed`).
    """
    started = time.monotonic()
    options = UpscaleOptions.of(options, **changes)
    if options.ray is not None:
        from zsm.distributed.driver import upscale_on_cluster

        how = dict(resume=resume, progress=progress, on_progress=on_progress, cancel=cancel)
        return upscale_on_cluster([(Path(src), dst)], options, model=model, **how).done[0]
    src, folder_out = Path(src), is_folder_output(dst)
    dst = Path(os.path.abspath(dst))
    info = probe_input(src, options.input_fps)
    check_folder_rate(info, options)
    times = options.time_plan(info.fps)
    if info.frame_count_exact and info.frame_count is not None and info.frame_count < 2:
        raise InputError(f"{src} has only {info.frame_count} frame; need at least 2")
    fmt = codec_name = None
    if not folder_out:
        fmt = container_format(dst)
        codec_name = choose_codec(fmt, options.codec)
    check_output(src, dst, folder_out)
    weights_path = resolve_weights(options.weights_name) if model is None else None
    dev = resolve_device(options.device)
    plan = WindowPlan.fitted(options.window, options.window_overlap)
    output_kind = "png" if folder_out else f"{codec_name} crf {options.crf}"
    key = run_key(info, options, weights_path, model, plan, output_kind)
    work = WorkDir.open(dst, key, resume=resume)
    try:
        with torch_threads(options.threads):
            if work.complete:
                pipe = None
            else:
                pipe = build_pipeline(
                    options.replace(device=str(dev)),
                    model=model if model is not None else load_model(weights_path, device=dev),
                    cancel=cancel,
                    in_fps=info.fps,
                    label=f"weights {options.weights_name}" if model is None else None,
                )
            scale = pipe.descriptor.scale if pipe is not None else SCALE
            settings = EncodeSettings(
                codec=codec_name or "",
                fps=info.fps * times.rate,
                width=scale * info.width,
                height=scale * info.height,
                crf=options.crf,
                threads=options.threads,
            )
            job = UpscaleJob(
                info=info,
                dst=dst,
                work=work,
                pipe=pipe,
                times=times,
                max_frames=options.max_frames,
                progress=progress,
                segment_seconds=options.segment_seconds,
                fmt=fmt,
                settings=settings,
                on_progress=on_progress,
                cancel=cancel,
            )
            n_in, n_out, resumed = job.run()
    except BaseException as exc:
        if work.segments and not isinstance(exc, Cancelled):
            # A note, not a log line: the command line says it on its one line of error.
            kept = f"{work.next_frame} finished output frames kept in {work.path}"
            exc.add_note(f"{kept}; rerun with --resume to continue")
        else:
            work.remove()
        raise
    work.remove()
    return UpscaleResult(
        input=src,
        output=dst,
        input_frames=n_in,
        output_frames=n_out,
        fps=settings.fps,
        width=settings.width,
        height=settings.height,
        seconds=time.monotonic() - started,
        resumed_frames=resumed,
    )


def probe_input(src: Path, fps: Fraction | None) -> VideoInfo:
    if src.is_dir() and not list_images(src) and list_videos(src):
        raise InputError(
            f"{src} is a folder of videos, not of frames; "
            "give an output folder to upscale each of them"
        )
    return probe(src, fps=fps)


def check_folder_rate(info: VideoInfo, options: UpscaleOptions) -> None:
    """An image folder's rate is ``input_fps``; ``fps`` alone there is refused, not guessed
    (it once named the folder's rate; it is now the output's)."""
    if info.is_folder and options.fps is not None and options.input_fps is None:
        raise InputError(
            f"{info.path.name} is a folder of images, which states no frame rate: give it "
            f"with --input-fps (input_fps=) as well as the output's --fps {options.fps}"
        )


def check_output(src: Path, dst: Path, folder_out: bool) -> None:
    if src.exists() and dst.exists() and dst.resolve() == src.resolve():
        raise OutputError(f"output {dst} is the input; choose another name")
    if not dst.parent.is_dir():
        raise OutputError(f"cannot write {dst}: folder {dst.parent} does not exist")
    if folder_out and dst.exists():
        if not dst.is_dir():
            raise OutputError(f"cannot write frames to {dst}: it is a file")
        foreign = [p.name for p in dst.iterdir() if not FRAME_NAME.match(p.name)]
        if foreign:
            raise OutputError(
                f"output folder {dst} holds other files ({foreign[0]}, ...); "
                "give an empty or new folder"
            )


def run_key(
    info: VideoInfo,
    options: UpscaleOptions,
    weights_path: Path | None,
    model: ModelLike | None,
    plan: WindowPlan,
    output_kind: str,
) -> dict[str, Any]:
    """What must not change between an interrupted run and its ``--resume``."""
    if info.is_folder:
        ident = f"{len(info.images)} images, last {info.images[-1].name}"
    else:
        st = info.path.stat()
        ident = f"{st.st_size} bytes, mtime {st.st_mtime_ns}"
    if weights_path is not None:
        ws = weights_path.stat()
        wid = f"{weights_path.resolve()} ({ws.st_size} bytes, mtime {ws.st_mtime_ns})"
    else:
        wid = f"model object {type(model).__name__} ({options.weights or 'unnamed'})"
    return {
        "input": f"{info.path.resolve()} ({ident})",
        "weights": wid,
        "window": [plan.size, plan.overlap],
        **(
            {"time_factor": options.effective_time_factor}
            if options.fps is None
            else {"output_fps": str(options.fps)}
        ),
        "output": output_kind,
        "fps": str(info.fps),
        "max_frames": options.max_frames,
        # Only when used: work folders made before --ensemble existed still resume.
        **({"ensemble": options.ensemble} if options.ensemble != 1 else {}),
    }


# --- many videos ------------------------------------------------------------------------


def upscale_batch(
    src_dir: Path | str,
    dst_dir: Path | str,
    options: UpscaleOptions | None = None,
    *,
    ext: str = ".mp4",
    model: ModelLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    **changes: Any,
) -> BatchResult:
    """Upscale every video file of ``src_dir`` into ``dst_dir/<name><ext>``.

    Outputs already present are skipped (they are complete: outputs appear
    only when finished); a failing input is recorded in the result and the
    batch goes on. The other arguments are those of :func:`upscale_video`.
    """
    options = UpscaleOptions.of(options, **changes)
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.is_dir():
        raise InputError(f"input folder not found: {src_dir}")
    videos = list_videos(src_dir)
    if not videos:
        raise InputError(f"{src_dir} holds no video files")
    ext = ext if ext.startswith(".") else f".{ext}"
    container_format(Path(f"x{ext}"))
    try:
        dst_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, dst_dir)) from exc
    if options.ray is not None:
        from zsm.distributed.driver import upscale_on_cluster

        how = dict(resume=resume, progress=progress, on_progress=on_progress, cancel=cancel)
        pairs = batch_outputs(videos, dst_dir, ext)
        skipped = [v for v, out in pairs if out.exists()]
        todo = [(v, out) for v, out in pairs if v not in skipped]
        result = upscale_on_cluster(todo, options, model=model, batch=True, **how)
        result.skipped = skipped
        return result
    dev = resolve_device(options.device)
    options = options.replace(device=str(dev))
    label = f"weights {options.weights_name}" if model is None else None
    if model is None:
        model = load_model(options.weights_name, device=dev)
    if options.fps is None:  # the same time steps for every video: refused once, up front
        check_time_steps(model, options.time_plan(None), options, label or _label(model, options))
    result = BatchResult()
    for video, out in batch_outputs(videos, dst_dir, ext):
        if out.exists():
            result.skipped.append(video)
            continue
        try:
            result.done.append(
                upscale_video(
                    video,
                    out,
                    options,
                    model=model,
                    resume=resume,
                    progress=progress,
                    on_progress=on_progress,
                    cancel=cancel,
                )
            )
        except Cancelled:
            raise
        except ZSMError as exc:
            log.warning("zsm: %s failed: %s", video.name, exc)
            result.failed.append((video, str(exc)))
    return result


def batch_outputs(videos: list[Path], dst_dir: Path, ext: str) -> list[tuple[Path, Path]]:
    """Each input video with its output path: ``<stem><ext>``, ``<name><ext>`` if stems clash."""
    stems = [v.stem for v in videos]
    return [(v, dst_dir / f"{v.stem if stems.count(v.stem) == 1 else v.name}{ext}") for v in videos]


__all__ = [
    "BatchResult",
    "UpscaleResult",
    "build_pipeline",
    "check_time_steps",
    "is_folder_output",
    "upscale_batch",
    "upscale_frames",
    "upscale_video",
]
