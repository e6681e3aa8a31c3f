"""``zsm demo``: upscale the bundled clip, write a side-by-side comparison, print the paths."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsm.cli.args import int_at_least
from zsm.cli.upscale import add_model_options, options_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="upscale a bundled 2.6 s clip and compare it with bicubic (offline, ~1 min on CPU)",
        description="Upscale the bundled Big Buck Bunny clip (128x72, 12.5 fps, with audio) "
        "with the bundled weights to 512x288 at 25 fps, and write the input, the result, a "
        "side-by-side video (bicubic + frame repeat | zsm) and a PNG contact sheet.",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("zsm-demo"),
        help="folder for the demo files (default: zsm-demo)",
    )
    add_model_options(p)
    p.add_argument("--frames", type=int_at_least(2), help="use only the first N frames of the clip")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsm.demo import run_demo

    result = run_demo(
        args.output_dir, options_from_args(args), progress=False if args.quiet else None
    )
    if not args.quiet:
        up = result.upscale
        print(
            f"upscaled {up.input_frames} frames to {up.output_frames} "
            f"({up.width}x{up.height} at {float(up.fps):g} fps) in {up.seconds:.1f} s"
        )
    for label, path in (
        ("input", result.input),
        ("result", result.result),
        ("side by side", result.side_by_side),
        ("contact sheet", result.contact_sheet),
    ):
        print(f"{label + ':':15s}{path}")
    return 0
