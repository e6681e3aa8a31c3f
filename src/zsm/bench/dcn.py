"""The deformable conv alone, forward and backward: each backend against the dense conv."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn import functional as F

from zsm.bench.offsets import OFFSET_STD_PX
from zsm.bench.timing import best_of
from zsm.ops.dcn import modulated_deform_conv2d


def bench_dcn(
    *,
    nf: int,
    groups: int,
    shape: tuple[int, int, int],
    device: torch.device,
    repeats: int,
    backends: list[str],
    seed: int = 0,
    budget_s: float = 30.0,
    channels_last: bool = False,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The deformable conv alone (``nf -> nf``, 3x3): each backend and the dense conv.

    ``shape`` is (batch, H, W). Offsets have std :data:`OFFSET_STD_PX` (some
    samples fall outside the image), masks are uniform in [0, 1].
    ``channels_last``: input, dense conv and output NHWC, offsets and mask
    channel slices of one NHWC tensor, as in the network's CPU inference.
    ``dtype`` (bfloat16, float16): everything under that autocast, as in the
    network: the input (and the incoming gradient) in ``dtype``, the offsets,
    mask and parameters float32; ``dense`` is then the dense conv in
    ``dtype``, and the float32 dense conv and the first backend in float32
    are timed too (``dense-fp32``, ``<backend>-fp32``); every ratio is to
    ``dense``.
    """
    gen = torch.Generator().manual_seed(seed)
    n, h, w = shape
    k = 9 * groups

    def rand(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(s, generator=gen)).to(device)

    x, weight, bias = rand(n, nf, h, w), rand(nf, nf, 3, 3, scale=0.04), rand(nf)
    offset = rand(n, 2 * k, h, w, scale=OFFSET_STD_PX)
    mask = torch.rand(n, k, h, w, generator=gen).to(device)
    grad = rand(n, nf, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        both = torch.cat((offset, mask), dim=1).contiguous(memory_format=torch.channels_last)
        offset, mask = both[:, : 2 * k], both[:, 2 * k :]
    flops = 2.0 * n * h * w * nf * nf * 9
    x32, grad32 = x, grad
    if dtype is not None:
        x, grad = x.to(dtype), grad.to(dtype)  # the layout is kept

    @contextlib.contextmanager
    def autocast(low: bool) -> Iterator[None]:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=low):
            yield

    def conv(inp: torch.Tensor, low: bool) -> torch.Tensor:
        with autocast(low):
            return F.conv2d(inp, weight, bias, padding=1)

    def deform(inp: torch.Tensor, name: str, low: bool) -> torch.Tensor:
        with autocast(low):
            return modulated_deform_conv2d(inp, offset, mask, weight, bias, padding=1, backend=name)

    low = dtype is not None
    # name -> (the op, its input, the incoming gradient)
    impls: dict[str, tuple[Callable[[], torch.Tensor], torch.Tensor, torch.Tensor]] = {
        "dense": (lambda: conv(x, low), x, grad)
    }
    for name in backends:
        impls[name] = (lambda name=name: deform(x, name, low), x, grad)
    if low:
        impls["dense-fp32"] = (lambda: conv(x32, False), x32, grad32)
        impls[f"{backends[0]}-fp32"] = (lambda: deform(x32, backends[0], False), x32, grad32)

    def fwd_bwd(
        fn: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...], grad: torch.Tensor
    ) -> None:
        for t in inputs:
            t.requires_grad_(True)
        fn().backward(grad)
        for t in inputs:
            t.grad = None
            t.requires_grad_(False)

    def forward(fn: Callable[[], torch.Tensor]) -> None:
        with torch.no_grad():
            fn()

    runs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    for name, (fn, inp, g) in impls.items():
        dense = name.startswith("dense")
        inputs = (inp, weight, bias) if dense else (inp, offset, mask, weight, bias)
        runs[name] = (
            lambda fn=fn: forward(fn),
            lambda fn=fn, inputs=inputs, g=g: fwd_bwd(fn, inputs, g),
        )
    fwd_t: dict[str, list[float]] = {name: [] for name in runs}
    both_t: dict[str, list[float]] = {name: [] for name in runs}
    for f, _ in runs.values():
        f()  # warm-up (also builds the native kernel on first use)
    # Rounds interleave the implementations, so a machine shared with other
    # work biases them alike; slow ones stop after ~budget_s. Each runs twice in
    # a row per round (the second warm: its data back in cache after the others').
    for _ in range(max(1, repeats)):
        for name, (f, fb) in runs.items():
            if fwd_t[name] and sum(fwd_t[name]) + sum(both_t[name]) > budget_s:
                continue
            fwd_t[name] += best_of(f, device, 2, budget_s)
            both_t[name] += best_of(fb, device, 2, budget_s)
    results: dict[str, dict[str, float]] = {}
    for name in runs:
        fwd, both = min(fwd_t[name]), min(both_t[name])
        results[name] = {
            "forward_ms": fwd * 1e3,
            "backward_ms": max(both - fwd, 0.0) * 1e3,
            "forward_gflops": flops / fwd / 1e9,
        }
    base = results["dense"]
    for r in results.values():
        r["forward_vs_dense"] = r["forward_ms"] / base["forward_ms"]
        r["backward_vs_dense"] = r["backward_ms"] / base["backward_ms"]
    layout = "NHWC" if channels_last else "NCHW"
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return {
        "shape": [n, nf, h, w],
        "groups": groups,
        "layout": layout,
        "precision": precision,
        "impls": results,
    }
