"""``zsm upscale INPUT -o OUTPUT``: 4x larger, 2x frame rate, for a video, frames or many videos."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsm.cli.args import frame_rate, int_at_least


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``upscale`` and ``demo``: weights, device, precision, threads."""
    p.add_argument(
        "--weights",
        metavar="NAME|PATH",
        help="registered weights name or .safetensors file (default: the bundled zsm-compact)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where the network runs (default: auto = cuda, then mps, then cpu)",
    )
    p.add_argument("--half", action="store_true", help="float16 autocast on a GPU (ignored on CPU)")
    p.add_argument(
        "--threads", type=int_at_least(1), help="CPU threads for the network and encoder"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def add_ensemble_option(p: argparse.ArgumentParser) -> None:
    """``--ensemble N``, shared by ``upscale`` and ``evaluate``."""
    from zsm.models.ensemble import ENSEMBLE_PASSES

    p.add_argument(
        "--ensemble",
        type=int,
        choices=ENSEMBLE_PASSES,
        default=1,
        metavar="N",
        help="average N passes of the network over flips, time reversal and transposition "
        "(1, 2, 4, 8 or 16; default 1): N times slower, a little sharper "
        "(+0.1 dB at 8 on our validation clips)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale a video (4x size, 2x frame rate)",
        description="Space-time super-resolution of a video file, a folder of frames, or a "
        "folder of videos. The output has 4x the width and height and exactly twice the "
        "frame rate (n frames in, 2n out); audio and subtitles are carried over.",
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
        "--window", type=int_at_least(2), default=12, help="input frames per temporal window (12)"
    )
    p.add_argument(
        "--window-overlap",
        type=int_at_least(0),
        help="frames of context dropped at each window edge (default 2)",
    )
    p.add_argument(
        "--tile", type=int_at_least(1), help="spatial tile size in input pixels (default: auto)"
    )
    p.add_argument(
        "--tile-overlap", type=int_at_least(0), default=16, help="tile halo in input pixels (16)"
    )
    add_ensemble_option(p)
    p.add_argument(
        "--time-factor",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: double the frame rate (default); 1: only 4x the size",
    )
    p.add_argument("--codec", help="video encoder (default libx264; libvpx-vp9 for .webm)")
    p.add_argument(
        "--crf", type=int_at_least(0), default=18, help="encoder quality (lower = better; 18)"
    )
    p.add_argument(
        "--fps", type=frame_rate, help="frame rate of an image-folder input (default 25)"
    )
    p.add_argument(
        "--frames", type=int_at_least(2), help="process only the first N input frames (a preview)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its work folder"
    )
    p.add_argument(
        "--segment-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="close a finished segment in the work folder every S seconds of work; what "
        "--resume keeps after an interruption (default 60)",
    )
    p.add_argument(
        "--ext", default=".mp4", help="output container for a folder of videos (default .mp4)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsm.errors import ZSMError
    from zsm.upscale import upscale_batch, upscale_video
    from zsm.video.io import list_images, list_videos

    options = dict(
        window=args.window,
        window_overlap=args.window_overlap,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        threads=args.threads,
        time_factor=args.time_factor,
        ensemble=args.ensemble,
        codec=args.codec,
        crf=args.crf,
        fps=args.fps,
        resume=args.resume,
        max_frames=args.frames,
        segment_seconds=args.segment_seconds,
        half=args.half,
        progress=False if args.quiet else None,
    )
    src: Path = args.input
    if src.is_dir() and not list_images(src) and list_videos(src):
        result = upscale_batch(
            src,
            Path(args.output),
            ext=args.ext,
            weights=args.weights,
            device=args.device,
            **options,
        )
        if not args.quiet:
            for r in result.done:
                print(f"wrote {r.output}")
            print(
                f"{len(result.done)} done, {len(result.skipped)} skipped (already done), "
                f"{len(result.failed)} failed"
            )
        if result.failed:
            causes = "; ".join(f"{p.name}: {msg}" for p, msg in result.failed)
            raise ZSMError(
                f"{len(result.failed)} of {len(result.failed) + len(result.done)} "
                f"inputs failed: {causes}"
            )
        return 0
    r = upscale_video(src, args.output, weights=args.weights, device=args.device, **options)
    if not args.quiet:
        extra = f", {r.resumed_frames} resumed" if r.resumed_frames else ""
        print(
            f"wrote {r.output} ({r.output_frames} frames, {r.width}x{r.height} at "
            f"{float(r.fps):.6g} fps, {r.seconds:.1f} s{extra})"
        )
    return 0
