"""``zsm evaluate DATA``: PSNR/SSIM of the model and classical baselines, report + plots."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsm.evaluation import EvaluationResult


def register(sub: argparse._SubParsersAction) -> None:
    from zsm.cli.upscale import add_ensemble_option, add_precision_option
    from zsm.evaluation import BASELINES

    p = sub.add_parser(
        "evaluate",
        help="score the model and classical baselines (PSNR/SSIM on Y) on HR clips",
        description="Make the LR input from HR clips with the training degradation (MATLAB "
        "bicubic x4, frames 0, N, 2N, ... kept; N = --time-factor, default 2), run the model "
        "and the baselines over whole sequences, and score every frame against the HR "
        "frames: PSNR and SSIM on Y (BT.601), reconstructed and interpolated frames apart "
        "(and each time step t = 1/N, ..., (N-1)/N), plus each method's frames/s. "
        "Writes report.json, report.md and PNG plots.",
    )
    p.add_argument(
        "data",
        type=Path,
        help="a folder of clip folders (<root>/<clip>/*.png), a folder of frames, "
        "the Vimeo-90K sep_testlist.txt, or a video file",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="registered weights name or .safetensors file (default: the bundled "
        "zsm-compact-flow, or zsm-compact-time at --time-factor above 2); 'none' scores the "
        "baselines only",
    )
    p.add_argument(
        "--baselines",
        default="all",
        help=f"comma-separated baselines, 'all' or 'none' (all: {', '.join(BASELINES)})",
    )
    p.add_argument(
        "--baselines-only", action="store_true", help="no model: score the baselines only"
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("zsm-evaluation"),
        help="report folder (default: ./zsm-evaluation)",
    )
    p.add_argument(
        "--max-frames", type=int, default=None, help="use at most N HR frames of each clip"
    )
    p.add_argument(
        "--time-factor",
        type=int,
        default=None,
        metavar="N",
        help="LR inputs are every N-th HR frame; the N-1 frames between, at t = 1/N, ..., "
        "(N-1)/N, are made and scored (default 2: one halfway; a model that makes only "
        "t = 1/2 is then skipped)",
    )
    p.add_argument(
        "--crop-border",
        type=int,
        default=0,
        help="pixels dropped on each side before scoring (default: 0, no crop)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    add_ensemble_option(p)
    add_precision_option(p)
    p.add_argument("--lpips", action="store_true", help='also LPIPS (pip install "zsm[lpips]")')
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def parse_baselines(text: str) -> list[str]:
    from zsm.errors import InputError
    from zsm.evaluation import BASELINES

    text = text.strip().lower()
    if text == "all":
        return list(BASELINES)
    if text in ("none", ""):
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise InputError(
            f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}"
        )
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    from zsm.device import resolve_device
    from zsm.errors import InputError, WeightsError
    from zsm.evaluation import EvalOptions, evaluate, write_report
    from zsm.models.registry import default_weights, load_model

    factor = 2 if args.time_factor is None else args.time_factor
    if factor < 2:
        raise InputError(f"--time-factor must be an integer >= 2, got {factor}")
    if args.max_frames is not None and args.max_frames < factor + 1:
        at = f" at --time-factor {factor}" if factor != 2 else ""
        raise InputError(
            f"--max-frames must be >= {factor + 1} (two inputs{at}), got {args.max_frames}"
        )
    if args.crop_border < 0:
        raise InputError(f"--crop-border must be >= 0, got {args.crop_border}")
    device = resolve_device(args.device)
    baselines = parse_baselines(args.baselines)
    weights = None if args.baselines_only else (args.weights or default_weights(factor))
    if weights is not None and weights.lower() == "none":
        weights = None
    model = None
    if weights is not None:
        try:
            model = load_model(weights, device=device)
        except WeightsError as exc:
            raise WeightsError(f"{exc} (--baselines-only scores the baselines alone)") from exc
    options = EvalOptions(
        crop_border=args.crop_border,
        max_frames=args.max_frames,
        lpips=args.lpips,
        progress=not args.no_progress,
        device=str(device),
        **({"time_factor": args.time_factor} if args.time_factor is not None else {}),
        **({"ensemble": args.ensemble} if args.ensemble is not None else {}),
        **({"precision": args.precision} if args.precision is not None else {}),
    )
    result = evaluate(args.data, model=model, weights=weights, baselines=baselines, options=options)
    write_report(result, args.output)
    _print_summary(result)
    print(f"report: {args.output / 'report.md'}")
    return 0


def _cells(means: dict[str, dict[str, float]], columns: list[str]) -> str:
    return "".join(
        f"{means[k]['psnr']:>12.2f} dB {means[k]['ssim']:.4f}"
        if not math.isnan(means[k]["psnr"])
        else f"{'-':>22s}"
        for k in columns
    )


def _print_summary(result: EvaluationResult) -> None:
    from zsm.evaluation import KINDS
    from zsm.evaluation.results import time_labels

    summary = result.summary()
    kinds = list(KINDS)
    print(f"{'method':16s}" + "".join(f"{k:>22s}" for k in kinds) + f"{'fps':>9s}")
    for method, entry in summary.items():
        print(f"{method:16s}{_cells(entry, kinds)}{entry['fps']:9.2f}")
    labels = time_labels(result.options.time_factor)
    if len(labels) > 1:  # at time factor 2 the one step is the interpolated column
        print(f"{'time step':16s}" + "".join(f"{t:>22s}" for t in labels))
        for method, entry in summary.items():
            print(f"{method:16s}{_cells(entry['times'], labels)}")
