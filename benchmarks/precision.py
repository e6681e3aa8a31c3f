"""bfloat16 against float32 on the CPU: output quality, and training-step speed, side by side.

    python benchmarks/precision.py quality             # the demo clip, bf16 vs fp32 frames
    python benchmarks/precision.py train --steps 3     # one step of the shipped recipe

``quality`` upscales the bundled demo clip with the bundled weights in fp32
and in bf16 and prints the PSNR between the two sets of uint8 frames (and
against each other's interpolated frames only). ``train`` times training
steps of the compact model (batch 4, LR patch 48, 7 frames: the shipped
recipe's patch on a CPU batch) under fp32 and bf16 autocast, interleaved, and
prints the best and median of each and their ratio.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np
import torch


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def quality(args: argparse.Namespace) -> int:
    import zsm
    from zsm.demo import demo_clip
    from zsm.video.io import iter_frames, probe

    frames = list(iter_frames(probe(demo_clip())))[: args.frames]
    model = zsm.load_model("zsm-compact")
    out = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        out[precision] = np.stack(
            list(zsm.upscale_frames(frames, model=model, device="cpu", precision=precision))
        )
        print(f"{precision}: {len(out[precision])} frames in {time.perf_counter() - t0:.1f} s")
    a, b = out["fp32"], out["bf16"]
    print(f"PSNR bf16 vs fp32, all frames: {_psnr(a, b):.2f} dB")
    print(f"                 input times: {_psnr(a[0::2], b[0::2]):.2f} dB")
    print(f"                  in between: {_psnr(a[1::2], b[1::2]):.2f} dB")
    print(f"max difference: {int(np.abs(a.astype(int) - b.astype(int)).max())} levels")
    return 0


def train_step(args: argparse.Namespace) -> int:
    from zsm import ZoomingSlowMo
    from zsm.training.loop import charbonnier

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ZoomingSlowMo.from_preset("compact").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b, n, p = args.batch, 4, args.patch
    lr = torch.rand(b, n, 3, p, p)
    hr = torch.rand(b, 2 * n - 1, 3, 4 * p, 4 * p)

    def step(dtype: torch.dtype | None) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(lr)
        loss = charbonnier(out.float(), hr, 1e-3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    step(None), step(torch.bfloat16)  # warm-up (kernels compiled, allocator filled)
    for _ in range(args.steps):
        times["fp32"].append(step(None))
        times["bf16"].append(step(torch.bfloat16))
    for name, t in times.items():
        print(f"{name}: best {min(t):.2f} s, median {statistics.median(t):.2f} s per step")
    ratio = statistics.median(a / b for a, b in zip(times["fp32"], times["bf16"], strict=True))
    print(f"bf16 speed-up (median of paired ratios): {ratio:.2f}x")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--frames", type=int, default=None, help="first N frames of the clip")
    q.set_defaults(func=quality)
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, default=3)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--patch", type=int, default=48)
    t.add_argument("--threads", type=int, default=1)
    t.set_defaults(func=train_step)
    args = p.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
