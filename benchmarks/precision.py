"""bfloat16 against float32 on the CPU: output quality, and training-step speed, side by side.

    python benchmarks/precision.py quality             # the demo clip, bf16 vs fp32 frames
    python benchmarks/precision.py train --steps 5     # one step of the shipped recipe

``quality`` upscales the bundled demo clip with the bundled weights in fp32
and in bf16 and prints the PSNR between the two sets of uint8 frames (and
against each other's interpolated frames only). ``train`` builds the training
state of a recipe (default ``configs/zsm-compact.toml``: the compact model,
batch 4, LR patch 24, 7 frames, gradient clipping, EMA) twice, with
``train.amp`` ``off`` and ``bf16``, exactly as ``zsm train`` does (bf16 on
the CPU also makes the network channels-last), and times the loop's own
training step (forward, loss, backward, clipping, Adam, scheduler, EMA) on
random frames of the recipe's size under each, interleaved, one thread,
with the process's CPU time as the clock by default (steadier on a machine
shared with other work); it prints the best and median of each and their
ratios.
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
    from zsm.training.config import load_config
    from zsm.training.dist import Dist
    from zsm.training.loop import Trainer

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    cpu = Dist(rank=0, world_size=1, device=torch.device("cpu"))
    runs = {}
    for name, amp in (("fp32", "off"), ("bf16", "bf16")):
        trainer = Trainer(load_config(args.config, [f"train.amp={amp}"]))
        runs[name] = (trainer, trainer._build_state(cpu))
    data = trainer.config.data
    b, n, p = data.batch_size, (data.clip_frames + 1) // 2, data.lr_patch
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(b, n, 3, p, p, generator=gen)
    hr = torch.rand(b, 2 * n - 1, 3, 4 * p, 4 * p, generator=gen)
    print(
        f"{args.config}: batch {b}, LR patch {p}, {n} -> {2 * n - 1} frames; "
        f"{args.threads} thread(s), {args.clock} clock"
    )

    def step(name: str) -> float:
        trainer, state = runs[name]
        t0 = clock()
        trainer._step(state, lr, hr)
        return clock() - t0

    times: dict[str, list[float]] = {name: [] for name in runs}
    for name in runs:  # warm-up (kernels compiled, allocator filled)
        step(name)
    for _ in range(args.steps):
        for name in runs:
            times[name].append(step(name))
    for name, t in times.items():
        print(f"{name}: best {min(t):.3f} s, median {statistics.median(t):.3f} s per step")
    ratio = statistics.median(a / b for a, b in zip(times["fp32"], times["bf16"], strict=True))
    print(
        f"bf16 speed-up: {min(times['fp32']) / min(times['bf16']):.2f}x (best), "
        f"{ratio:.2f}x (median of paired ratios)"
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--frames", type=int, default=None, help="first N frames of the clip")
    q.set_defaults(func=quality)
    t = sub.add_parser("train")
    t.add_argument("--config", default="zsm-compact", help="recipe (default: zsm-compact)")
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--clock", choices=("process", "wall"), default="process")
    t.set_defaults(func=train_step)
    args = p.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
