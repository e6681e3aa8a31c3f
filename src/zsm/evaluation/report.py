"""Write an evaluation as ``report.json``, ``report.md`` and PNG plots in one folder."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from zsm import __version__
from zsm.atomic import atomic_path, describe_os_error
from zsm.errors import OutputError
from zsm.evaluation.plots import plot_crop_grid, plot_psnr_per_frame
from zsm.evaluation.results import (
    INTERPOLATED,
    KINDS,
    RECONSTRUCTED,
    EvaluationResult,
    time_labels,
)

MAX_MD_CLIPS = 40  # larger sets (Vimeo-90K: 7824 clips) list only the average in report.md


def protocol(result: EvaluationResult) -> dict[str, str]:
    """How the numbers were made, in words that go into both report files."""
    border, passes = result.options.crop_border, result.options.ensemble
    n = result.options.time_factor
    if n == 2:
        kept = "HR frames 0, 2, 4, ... (1-based: the odd frames)"
        frames = (
            "reconstructed = even frames (their LR version was an input); "
            "interpolated = odd frames (never seen)"
        )
    else:
        steps = ", ".join(time_labels(n))
        kept = f"every {n}th HR frame (0, {n}, {2 * n}, ...)"
        frames = (
            f"reconstructed = frames 0, {n}, {2 * n}, ... (their LR version was an input); "
            f"interpolated = the {n - 1} frames between each pair, at {steps} (never seen), "
            "also scored per time step"
        )
    return {
        "degradation": "LR = MATLAB-style bicubic x4 down-scaling (antialiased, a=-0.5) of "
        f"{kept}, rounded to 8 bits",
        "time_factor": f"{n}: each method makes {n - 1} frame(s) between neighbouring inputs",
        "scoring": "every HR frame, after the whole sequence went through each method "
        "(windows stitched), scored frame by frame - not per 7-frame window",
        "frames": frames,
        "color": "Y channel of ITU-R BT.601 (16-235), from uint8-rounded RGB outputs",
        "ssim": "Wang et al. ssim.m: 11x11 Gaussian window, sigma 1.5, K=(0.01, 0.03), "
        "L=255, mean over valid window positions",
        "border_crop": f"{border} px on every side" if border else "none (0 px)",
        "ensemble": f"model output averaged over {passes} transformed passes (self-ensemble; "
        "see zsm.engine.ensemble)"
        if passes > 1
        else "none (one pass of the model)",
        "precision": f"the model in {result.options.precision} (zsm.engine.precision)",
        "averages": "per clip: mean over its frames; overall: mean of the clip means",
        "fps": "output HR frames per second of each method in this run (bicubic "
        "enlargement included; decoding, degradation and scoring excluded)",
    }


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: they become null (PSNR of identical frames is infinite)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(result: EvaluationResult, plots: list[str]) -> dict[str, Any]:
    clips = []
    for clip in result.clips:
        methods = {}
        for method, s in clip.scores.items():
            entry: dict[str, Any] = {k: s.mean(clip.kinds, k) for k in KINDS}
            entry["times"] = clip.time_means(method)
            entry["seconds"] = s.seconds
            entry["fps"] = s.fps()
            entry["per_frame"] = {"psnr": s.psnr, "ssim": s.ssim}
            if s.lpips is not None:
                entry["per_frame"]["lpips"] = s.lpips
            methods[method] = entry
        crops = [
            {
                "label": c.label,
                "frame": c.frame,
                "kind": c.kind,
                "subject": c.subject,
                "reference": c.reference,
                "gain_db": c.gain_db,
                "box": {"top": c.box[0], "left": c.box[1], "size": c.box[2]},
            }
            for c in clip.crops
        ]
        clips.append(
            {
                "name": clip.name,
                "width": clip.width,
                "height": clip.height,
                "frames": len(clip.kinds),
                "kinds": clip.kinds,
                "times": clip.times,
                "notes": clip.notes,
                "methods": methods,
                "crops": crops,
            }
        )
    return _finite(
        {
            "zsm_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "data": result.data,
            "weights": result.weights,
            "methods": result.methods,
            "skipped": result.skipped,
            "time_factor": result.options.time_factor,
            "max_frames": result.options.max_frames,
            "protocol": protocol(result),
            "summary": result.summary(),
            "clips": clips,
            "plots": plots,
        }
    )


def _num(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _fps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _header() -> list[str]:
    cols = ["clip", "method"]
    for kind in KINDS:
        cols += [f"PSNR {kind}", f"SSIM {kind}"]
    cols.append("fps")
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _row(clip: str, method: str, means: dict[str, dict[str, float]], fps: float) -> str:
    cells = [clip, method]
    for kind in KINDS:
        cells += [_num(means[kind]["psnr"], 2), _num(means[kind]["ssim"], 4)]
    cells.append(_fps(fps))
    return "| " + " | ".join(cells) + " |"


def _time_header(labels: list[str]) -> list[str]:
    cols = ["clip", "method"]
    for label in labels:
        cols += [f"PSNR {label}", f"SSIM {label}"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _time_row(clip: str, method: str, means: dict[str, dict[str, float]]) -> str:
    cells = [clip, method]
    for label in means:
        cells += [_num(means[label]["psnr"], 2), _num(means[label]["ssim"], 4)]
    return "| " + " | ".join(cells) + " |"


def to_markdown(result: EvaluationResult, plots: list[str]) -> str:
    summary = result.summary()
    n_frames = sum(len(c.kinds) for c in result.clips)
    lines = [
        "# zsm evaluation",
        "",
        f"Data: `{result.data}` - {len(result.clips)} clip(s), {n_frames} scored frames"
        + (f" (at most {result.options.max_frames} per clip)" if result.options.max_frames else "")
        + f". Weights: {result.weights or 'none (baselines only)'}. zsm {__version__}.",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in protocol(result).items()]
    lines += [f"- **{m} not scored**: {why}" for m, why in result.skipped.items()]
    labels = time_labels(result.options.time_factor)
    by_time = len(labels) > 1  # at time factor 2 the one step is the interpolated column
    lines += ["", "## Average over clips", "", *_header()]
    for method, entry in summary.items():
        lines.append(_row("**average**", method, entry, entry["fps"]))
    if by_time:
        lines += ["", "By time step between inputs:", "", *_time_header(labels)]
        for method, entry in summary.items():
            lines.append(_time_row("**average**", method, entry["times"]))
    if any("lpips" in e["all"] for e in summary.values()):
        lines += ["", "LPIPS (AlexNet, lower is better), all / reconstructed / interpolated:", ""]
        for method, e in summary.items():
            if "lpips" in e["all"]:
                vals = " / ".join(_num(e[k]["lpips"], 4) for k in KINDS)
                lines.append(f"- {method}: {vals}")
    lines += ["", "## Per clip", ""]
    if len(result.clips) > MAX_MD_CLIPS:
        lines.append(f"{len(result.clips)} clips: see `report.json` for each one.")
    else:
        lines += _header()
        for clip in result.clips:
            for method, s in clip.scores.items():
                means = {k: s.mean(clip.kinds, k) for k in KINDS}
                lines.append(_row(clip.name, method, means, s.fps()))
        if by_time:
            lines += ["", *_time_header(labels)]
            for clip in result.clips:
                for method in clip.scores:
                    lines.append(_time_row(clip.name, method, clip.time_means(method)))
        notes = [f"- {c.name}: {n}" for c in result.clips for n in c.notes]
        if notes:
            lines += ["", "Notes:", *notes]
    crops = [(c.name, x) for c in result.clips for x in c.crops]
    if crops:
        lines += ["", "## Largest and smallest gains", ""]
        for name, c in crops:
            lines.append(
                f"- {name}, {c.label}: frame {c.frame} ({c.kind}), {c.subject} "
                f"{c.gain_db:+.2f} dB over {c.reference}; crop {c.box[2]}px at "
                f"(top {c.box[0]}, left {c.box[1]})"
            )
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p}]({p})" for p in plots]
    between = f"at {', '.join(labels)} between inputs" if by_time else "halfway between inputs"
    lines += ["", f"Frames: {RECONSTRUCTED} = inputs enlarged; {INTERPOLATED} = {between}."]
    return "\n".join(lines) + "\n"


def write_report(result: EvaluationResult, folder: Path | str) -> list[Path]:
    """Write report.json, report.md and the plots into ``folder``; return the paths written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, folder)) from exc
    written: list[Path] = []
    plots: list[str] = []
    for i, clip in enumerate(result.clips):
        if len(result.clips) > MAX_MD_CLIPS:
            break  # thousands of tiny septuplets: a plot each helps no one
        stem = f"{i:03d}-{_safe(clip.name)}"
        path = folder / f"psnr-{stem}.png"
        with atomic_path(path) as tmp:
            plot_psnr_per_frame(clip, tmp)
        written.append(path)
        plots.append(path.name)
        if clip.crops:
            path = folder / f"crops-{stem}.png"
            with atomic_path(path) as tmp:
                plot_crop_grid(clip, tmp)
            written.append(path)
            plots.append(path.name)
    path = folder / "report.json"
    text = json.dumps(to_json(result, plots), indent=1, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    written.append(path)
    path = folder / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text(to_markdown(result, plots))
    written.append(path)
    return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:60]
