"""``zsm upscale INPUT -o OUTPUT``: 4x larger, 2x (or Nx, or any) frame rate, for a video,
frames or many videos."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsm.cli.args import frame_rate, int_at_least, non_negative_float, positive_float
from zsm.device import DEVICES
from zsm.options import (
    DEFAULT_FOLDER_FPS,
    DEFAULT_TIME_FACTOR,
    DEFAULT_TIME_WEIGHTS,
    DEFAULTS,
    ENSEMBLE_PASSES,
    PRECISIONS,
    UpscaleOptions,
)

# Option fields the CLI sets from arguments of the same name (unset arguments are None,
# so the library's defaults apply); --frames is max_frames, --half is precision fp16.
OPTION_ARGS = (
    "weights",
    "device",
    "precision",
    "threads",
    "window",
    "window_overlap",
    "tile",
    "tile_overlap",
    "ensemble",
    "time_factor",
    "codec",
    "crf",
    "fps",
    "input_fps",
    "segment_seconds",
    "ray",
    "ray_cpus_per_task",
    "ray_segments",
)


def options_from_args(args: argparse.Namespace) -> UpscaleOptions:
    """The :class:`~zsm.options.UpscaleOptions` that the parsed arguments name (a value
    they reject is a :class:`~zsm.errors.ZSMError`)."""
    from zsm.errors import ZSMError

    given = {k: getattr(args, k) for k in OPTION_ARGS if getattr(args, k, None) is not None}
    if getattr(args, "frames", None) is not None:
        given["max_frames"] = args.frames
    if getattr(args, "half", False):
        if given.get("precision", "fp16") != "fp16":
            raise ZSMError(f"--half is --precision fp16, not {given['precision']}; give one")
        given["precision"] = "fp16"
    try:
        return UpscaleOptions(**given)
    except ValueError as exc:  # e.g. --ray= (an empty address)
        raise ZSMError(f"invalid option: {exc}") from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``upscale`` and ``demo``: weights, device, precision, threads."""
    p.add_argument(
        "--weights",
        metavar="NAME|PATH",
        help="registered weights name or .safetensors file (default: "
        f"{DEFAULTS.weights_name}; {DEFAULT_TIME_WEIGHTS} for --time-factor above 2 or --fps)",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        help=f"where the network runs (default: {DEFAULTS.device} = cuda, then mps, then cpu)",
    )
    add_precision_option(p)
    p.add_argument("--half", action="store_true", help="the same as --precision fp16")
    p.add_argument(
        "--threads", type=int_at_least(1), help="CPU threads for the network and encoder"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def add_precision_option(p: argparse.ArgumentParser) -> None:
    """``--precision``, shared by ``upscale``, ``demo`` and ``evaluate``."""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32; bf16 (bfloat16 autocast: fast on CPUs with native bf16 and on GPUs); "
        "fp16 (float16 autocast on a GPU); auto: bf16 where it is native and measured "
        f"not to lower scores, else fp32 (default {DEFAULTS.precision})",
    )


def add_ensemble_option(p: argparse.ArgumentParser) -> None:
    """``--ensemble N``, shared by ``upscale`` and ``evaluate``."""
    p.add_argument(
        "--ensemble",
        type=int,
        choices=ENSEMBLE_PASSES,
        metavar="N",
        help="average N passes of the network over flips, time reversal and transposition "
        f"({', '.join(map(str, ENSEMBLE_PASSES))}; default {DEFAULTS.ensemble}): N times "
        "slower, a little sharper (+0.1 dB at 8 on our validation clips)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale a video (4x size, 2x frame rate)",
        description="Space-time super-resolution of a video file, a folder of frames, or a "
        "folder of videos. The output has 4x the width and height and exactly twice the "
        "frame rate (n frames in, 2n out), or N times it (--time-factor N), or any rate "
        "(--fps RATE), with the input's duration; audio and subtitles are carried over.",
    )
    p.add_argument("input", type=Path, help="video file, folder of images, or folder of videos")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="video file (container from the extension), or a folder (ends with / or exists) "
        "for PNG frames; for a folder of videos, the folder for the results",
    )
    add_model_options(p)
    p.add_argument(
        "--window",
        type=int_at_least(2),
        help=f"input frames per temporal window ({DEFAULTS.window})",
    )
    p.add_argument(
        "--window-overlap",
        type=int_at_least(0),
        help=f"frames of context dropped at each window edge (default {DEFAULTS.overlap})",
    )
    p.add_argument(
        "--tile", type=int_at_least(1), help="spatial tile size in input pixels (default: auto)"
    )
    p.add_argument(
        "--tile-overlap",
        type=int_at_least(0),
        help=f"tile halo in input pixels ({DEFAULTS.tile_overlap})",
    )
    add_ensemble_option(p)
    rate = p.add_mutually_exclusive_group()
    rate.add_argument(
        "--time-factor",
        type=int_at_least(1),
        metavar="N",
        help="N output frames per input frame: 2 doubles the frame rate, 1 only makes it 4x "
        f"the size (default {DEFAULT_TIME_FACTOR}); N > 2 needs time-step weights",
    )
    rate.add_argument(
        "--fps",
        type=frame_rate,
        metavar="RATE",
        help="the output's frame rate (60, 60000/1001, 29.97), each frame made at its exact "
        "time between the inputs, duration kept; most rates need time-step weights",
    )
    p.add_argument("--codec", help="video encoder (default libx264; libvpx-vp9 for .webm)")
    p.add_argument(
        "--crf",
        type=int_at_least(0),
        help=f"encoder quality (lower = better; {DEFAULTS.crf})",
    )
    p.add_argument(
        "--input-fps",
        type=frame_rate,
        metavar="RATE",
        help=f"frame rate of an image-folder input (default {DEFAULT_FOLDER_FPS})",
    )
    p.add_argument(
        "--frames", type=int_at_least(2), help="process only the first N input frames (a preview)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its work folder"
    )
    p.add_argument(
        "--segment-seconds",
        type=non_negative_float,
        metavar="S",
        help="close a finished segment in the work folder every S seconds of work; what "
        f"--resume keeps after an interruption (default {DEFAULTS.segment_seconds:g})",
    )
    p.add_argument(
        "--ext", default=".mp4", help="output container for a folder of videos (default .mp4)"
    )
    add_ray_options(p)
    p.set_defaults(func=run)


def add_ray_options(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--ray-cpus-per-task``, ``--ray-segments``."""
    g = p.add_argument_group("on a Ray cluster (pip install 'zsm[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run the segments as tasks of a Ray cluster: ADDRESS (host:port, ray://...) or "
        "auto (default): the cluster RAY_ADDRESS names, else a running one, else a local one. "
        "OUTPUT (and INPUT) must be on storage every node sees; give it after INPUT, or as "
        "--ray=ADDRESS",
    )
    g.add_argument(
        "--ray-cpus-per-task",
        type=positive_float,
        metavar="N",
        help="CPUs each task asks for where the cluster has no GPUs (default 1; with GPUs "
        "each task asks for one GPU)",
    )
    g.add_argument(
        "--ray-segments",
        type=int_at_least(1),
        metavar="N",
        help="time segments per video (default: twice the tasks the cluster runs at once, "
        "shared among the videos of a folder; a resumed run keeps its own)",
    )


def run(args: argparse.Namespace) -> int:
    from zsm.errors import ZSMError
    from zsm.upscale import upscale_batch, upscale_video
    from zsm.video.io import list_images, list_videos

    options = options_from_args(args)
    how = dict(resume=args.resume, progress=False if args.quiet else None)
    src: Path = args.input
    if src.is_dir() and not list_images(src) and list_videos(src):
        result = upscale_batch(src, Path(args.output), options, ext=args.ext, **how)
        if not args.quiet:
            for r in result.done:
                print(f"wrote {r.output}")
            print(
                f"{len(result.done)} done, {len(result.skipped)} skipped (already done), "
                f"{len(result.failed)} failed"
            )
            if result.cluster is not None:
                print("\n".join(result.cluster.lines()))
        if result.failed:
            causes = "; ".join(f"{p.name}: {msg}" for p, msg in result.failed)
            raise ZSMError(
                f"{len(result.failed)} of {len(result.failed) + len(result.done)} "
                f"inputs failed: {causes}"
            )
        return 0
    r = upscale_video(src, args.output, options, **how)
    if not args.quiet:
        extra = f", {r.resumed_frames} resumed" if r.resumed_frames else ""
        print(
            f"wrote {r.output} ({r.output_frames} frames, {r.width}x{r.height} at "
            f"{float(r.fps):.6g} fps, {r.seconds:.1f} s{extra})"
        )
        if r.cluster is not None:
            print("\n".join(r.cluster.lines()))
    return 0
