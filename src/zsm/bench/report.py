"""The text table ``zsm benchmark`` prints from the JSON-ready result."""

from __future__ import annotations

from typing import Any


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table ``zsm benchmark`` prints."""
    c, d = r["config"], r["dense_conv"]
    w, h = r["size"]
    lines = [
        f"zsm benchmark: preset {r['preset']} (nf={c['nf']}, groups={c['groups']}, "
        f"front_RBs={c['front_RBs']}, back_RBs={c['back_RBs']}, hr_nf={c['hr_nf']})",
        f"input {r['frames']} frames {w}x{h} -> {r['output_frames']} frames {4 * w}x{4 * h}; "
        f"device {r['device']} ({r['device_name']}, {r['threads']} threads); "
        f"DCN backend {r['dcn_backend']}; {r.get('precision', 'fp32')}"
        + ("; channels_last" if r.get("channels_last") else "")
        + f"; best of {r['repeats']}"
        + ("; malloc tuned" if r.get("malloc_tuned") else "")
        + ("; CPU-time clock" if r.get("clock") == "process" else ""),
        f"dense 3x3 conv {c['nf']}->{c['nf']} on {tuple(d['shape'])}: {d['ms']:.1f} ms, "
        f"{d['gflops']:.1f} GFLOP/s"
        + (
            f" ({d['layout']}, the faster layout: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in d["ms_by_layout"].items())
            + ")"
            if "layout" in d
            else ""
        ),
        "",
        f"{'stage':<12}{'ms/frame':>10}{'GFLOP/frame':>13}{'GFLOP/s':>9}"
        f"{'% of dense GFLOP/s':>20}{'median ms/frame':>17}",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"{name:<12}{s['ms_per_frame']:>10.1f}{s['gflop_per_frame']:>13.2f}"
            f"{s['gflops']:>9.1f}{100 * s['vs_dense_gflops']:>19.0f}%"
            f"{s['ms_per_frame_median']:>17.1f}"
        )
    if r.get("stage_timing") == "module_hooks":
        lines += [
            "stages timed at the network's four top-level modules (ConvLSTM = aggregate); "
            "total is the",
            "whole forward pass, so padding, pairing, interleaving and the global skip count "
            "in it only",
        ]
    lines.append(
        f"whole forward, no sync between stages: {r['whole_ms']:.1f} ms for "
        f"{r['output_frames']} output frames = {r['output_fps']:.1f} output frames/s"
    )
    if r.get("flow_ms") is not None:
        share = 100 * r["flow_ms"] / r["whole_ms"]
        lines.append(
            f"DIS optical flow of the input frames (flow-guided; not in the times above): "
            f"{r['flow_ms']:.1f} ms = {share:.1f}% of the whole forward"
        )
    mem = r["peak_memory_mb"]
    kind = "peak RSS" if r["peak_memory_kind"] == "rss" else "peak CUDA memory allocated"
    lines.append(f"{kind}: {mem:.0f} MB" if mem is not None else f"{kind}: unknown")
    dcn = r["dcn"]
    lines += [
        "",
        f"deformable conv alone: {tuple(dcn['shape'])}, 3x3, {dcn['groups']} offset groups",
        f"{'impl':<14}{'fwd ms':>9}{'x dense':>9}{'bwd ms':>10}{'x dense':>9}{'fwd GFLOP/s':>13}",
    ]
    for name, v in dcn["impls"].items():
        lines.append(
            f"{name:<14}{v['forward_ms']:>9.1f}{v['forward_vs_dense']:>9.2f}"
            f"{v['backward_ms']:>10.1f}{v['backward_vs_dense']:>9.2f}{v['forward_gflops']:>13.1f}"
        )
    return "\n".join(lines)
