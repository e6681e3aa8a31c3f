"""The text table ``zsm benchmark`` prints from the JSON-ready result."""

from __future__ import annotations

from typing import Any


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table ``zsm benchmark`` prints."""
    c, d = r["config"], r["dense_conv"]
    w, h = r["size"]
    prec = r.get("precision", "fp32")
    low = "dense_conv_fp32" in r  # a low-precision run, with its float32 figures beside it
    lines = [
        f"zsm benchmark: preset {r['preset']} (nf={c['nf']}, groups={c['groups']}, "
        f"front_RBs={c['front_RBs']}, back_RBs={c['back_RBs']}, hr_nf={c['hr_nf']})",
        f"input {r['frames']} frames {w}x{h} -> {r['output_frames']} frames {4 * w}x{4 * h}; "
        f"device {r['device']} ({r['device_name']}, {r['threads']} threads); "
        f"DCN backend {r['dcn_backend']}; {prec}"
        + (_cpu_bf16(r) if prec == "bf16" else "")
        + ("; channels_last" if r.get("channels_last") else "")
        + f"; best of {r['repeats']}"
        + ("; malloc tuned" if r.get("malloc_tuned") else "")
        + ("; CPU-time clock" if r.get("clock") == "process" else ""),
        _dense_line(f"dense 3x3 conv {c['nf']}->{c['nf']}" + (f", {prec}" if low else ""), d),
    ]
    if low:
        f32 = r["dense_conv_fp32"]
        lines.append(_dense_line("                   fp32", f32))
        lines.append(f"  {prec} dense conv = {r['dense_speedup_vs_fp32']:.2f}x the fp32 one")
    lines += [
        "",
        f"{'stage':<12}{'ms/frame':>10}{'GFLOP/frame':>13}{'GFLOP/s':>9}"
        f"{'% of dense GFLOP/s':>20}"
        + (f"{'% of fp32 dense':>17}{'fp32 ms/frame':>15}{'x fp32':>8}" if low else "")
        + f"{'median ms/frame':>17}",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"{name:<12}{s['ms_per_frame']:>10.1f}{s['gflop_per_frame']:>13.2f}"
            f"{s['gflops']:>9.1f}{100 * s['vs_dense_gflops']:>19.0f}%"
            + (
                f"{100 * s['vs_fp32_dense_gflops']:>16.0f}%{s['fp32_ms_per_frame']:>15.1f}"
                f"{s['speedup_vs_fp32']:>8.2f}"
                if low
                else ""
            )
            + f"{s['ms_per_frame_median']:>17.1f}"
        )
    if low:
        lines.append(
            f"% of dense: of the {prec} dense conv's GFLOP/s; % of fp32 dense: of the fp32 "
            f"one's; x fp32: the stage's speed-up over itself in fp32, timed in the same rounds"
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
    if low:
        f = r["fp32"]
        lines.append(
            f"                               fp32: {f['whole_ms']:.1f} ms = "
            f"{f['output_fps']:.1f} output frames/s; {prec} = {r['speedup_vs_fp32']:.2f}x fp32"
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
    dcn_prec = dcn.get("precision", "fp32")
    lines += [
        "",
        f"deformable conv alone: {tuple(dcn['shape'])}, 3x3, {dcn['groups']} offset groups, "
        f"{dcn.get('layout', 'NCHW')}, {dcn_prec}"
        + (f" (x dense: to the {dcn_prec} dense conv)" if dcn_prec != "fp32" else ""),
        f"{'impl':<14}{'fwd ms':>9}{'x dense':>9}{'bwd ms':>10}{'x dense':>9}{'fwd GFLOP/s':>13}",
    ]
    for name, v in dcn["impls"].items():
        lines.append(
            f"{name:<14}{v['forward_ms']:>9.1f}{v['forward_vs_dense']:>9.2f}"
            f"{v['backward_ms']:>10.1f}{v['backward_vs_dense']:>9.2f}{v['forward_gflops']:>13.1f}"
        )
    return "\n".join(lines)


def _dense_line(label: str, d: dict[str, Any]) -> str:
    text = f"{label} on {tuple(d['shape'])}: {d['ms']:.1f} ms, {d['gflops']:.1f} GFLOP/s"
    if "layout" in d:
        text += (
            f" ({d['layout']}, the faster layout: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in d["ms_by_layout"].items())
            + ")"
        )
    return text


def _cpu_bf16(r: dict[str, Any]) -> str:
    flags = r.get("cpu_bf16")
    if flags is None:
        return ""
    return f" ({', '.join(flags)})" if flags else " (emulated: this CPU has no native bf16)"
