"""bfloat16 against float32 on the CPU: output quality, training-step and forward speed.

    python benchmarks/precision.py quality             # the demo clip, bf16 vs fp32 frames
    python benchmarks/precision.py train --steps 5     # one step of the shipped recipe
    python benchmarks/precision.py forward             # the compact network, 3 frames
    python benchmarks/precision.py train --old-dcn     # also the DCN kernel as before
    python benchmarks/precision.py forward --unfused   # also bf16 without the fused DCN GEMMs

Every mode runs float32 and bf16 with the offset/mask convs both ways
(``bf16-off``: the float32 island; ``bf16-on``: in bf16, the default;
``BF16_OFFSET_CONVS`` in ``zsm/engine/precision.py``), switched in the same
process. ``quality`` upscales the bundled demo clip with bundled weights
(``--weights``, default ``zsm-compact``) under each and prints the PSNR
between each bf16 set of uint8 frames and the
fp32 one (all frames, input times, in between). ``train`` builds the training
state of a recipe (default ``configs/zsm-compact.toml``: the compact model,
batch 4, LR patch 24, 7 frames, gradient clipping, EMA) once with
``train.amp`` ``off`` and twice with ``bf16``, exactly as ``zsm train`` does
(bf16 on the CPU also makes the network channels-last), and times the loop's
own training step (forward, loss, backward, clipping, Adam, scheduler, EMA)
on random frames of the recipe's size (a flow-guided recipe: and a random
LR flow) under each, interleaved, one thread, with the process's CPU time as
the clock by default (steadier on a machine shared with other work).
``forward`` times the inference engine's forward pass (``zsm.engine.prepare``,
the CPU rewrites) of the bundled ``zsm-compact`` weights on 3 random frames
of 176x144, the same way. Both print the best and median of each and the
ratios to fp32.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

# name -> (bf16 autocast, offset/mask convs in bf16)
VARIANTS = {"fp32": (False, False), "bf16-off": (True, False), "bf16-on": (True, True)}
# ``--old-dcn``: bf16-on with the deformable conv's kernel as before its AVX-512 loops
# and fused bf16 backward pass (the portable loops, the general backward), same process
OLD_DCN = "bf16-old-dcn"
# ``--unfused``: bf16-on with the deformable conv's forward as im2col chunks and a GEMM
# and its backward's GEMMs through torch.mm (``function.FUSED_BF16_FORWARD`` and
# ``FUSED_BF16_BACKWARD_GEMMS`` off), not the fused kernels, same process
UNFUSED = "bf16-unfused"


def _variants(args: argparse.Namespace) -> dict[str, tuple[bool, bool]]:
    extra = {OLD_DCN: (True, True)} if getattr(args, "old_dcn", False) else {}
    if getattr(args, "unfused", False):
        extra[UNFUSED] = (True, True)
    return {**VARIANTS, **extra}


def _dcn(name: str) -> None:
    from zsm.ops.dcn import function
    from zsm.ops.dcn.native import load_native

    old = name == OLD_DCN
    lib = load_native()
    if lib is not None:
        lib.set_simd(not old)
    function.FUSED_BF16_BACKWARD = not old
    function.FUSED_BF16_FORWARD = name not in (OLD_DCN, UNFUSED)
    function.FUSED_BF16_BACKWARD_GEMMS = name not in (OLD_DCN, UNFUSED)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _offsets(on: bool) -> None:
    from zsm.engine.precision import set_bf16_offset_convs

    set_bf16_offset_convs(on)


def quality(args: argparse.Namespace) -> int:
    import zsm
    from zsm.demo import demo_clip
    from zsm.video.io import iter_frames, probe

    frames = list(iter_frames(probe(demo_clip())))[: args.frames]
    model = zsm.load_model(args.weights)
    print(f"{args.weights}: the demo clip, {len(frames)} frames")
    out = {}
    for name, (bf16, on) in VARIANTS.items():
        _offsets(on)
        t0 = time.perf_counter()
        precision = "bf16" if bf16 else "fp32"
        out[name] = np.stack(
            list(zsm.upscale_frames(frames, model=model, device="cpu", precision=precision))
        )
        print(f"{name}: {len(out[name])} frames in {time.perf_counter() - t0:.1f} s")
    for name, ref in (("bf16-off", "fp32"), ("bf16-on", "fp32"), ("bf16-on", "bf16-off")):
        a, b = out[ref], out[name]
        print(
            f"PSNR {name} vs {ref}: all frames {_psnr(a, b):.2f} dB, input times "
            f"{_psnr(a[0::2], b[0::2]):.2f} dB, in between {_psnr(a[1::2], b[1::2]):.2f} dB; "
            f"max difference {int(np.abs(a.astype(int) - b.astype(int)).max())} levels"
        )
    return 0


def _interleaved(args: argparse.Namespace, runs: dict[str, Callable[[], None]]) -> None:
    """Time each of ``runs`` (a warm-up, then ``args.steps`` rounds, one of each per round)."""
    clock = time.process_time if args.clock == "process" else time.perf_counter

    def once(name: str) -> float:
        _offsets(_variants(args)[name][1])
        _dcn(name)
        t0 = clock()
        runs[name]()
        return clock() - t0

    times: dict[str, list[float]] = {name: [] for name in runs}
    for name in runs:  # warm-up (kernels compiled, allocator filled)
        once(name)
    for _ in range(args.steps):
        for name in runs:
            times[name].append(once(name))
    for name, t in times.items():
        print(f"{name}: best {min(t):.3f} s, median {statistics.median(t):.3f} s")
    ref = times["fp32"]
    for name in ("bf16-off", "bf16-on"):
        t = times[name]
        ratio = statistics.median(a / b for a, b in zip(ref, t, strict=True))
        print(
            f"{name} speed-up: {min(ref) / min(t):.2f}x (best), "
            f"{ratio:.2f}x (median of paired ratios)"
        )
    ratio = statistics.median(
        a / b for a, b in zip(times["bf16-off"], times["bf16-on"], strict=True)
    )
    print(
        f"bf16-on vs bf16-off: {min(times['bf16-off']) / min(times['bf16-on']):.2f}x (best), "
        f"{ratio:.2f}x (median of paired ratios)"
    )
    for other in (OLD_DCN, UNFUSED):
        if other not in times:
            continue
        old, new = times[other], times["bf16-on"]
        ratio = statistics.median(a / b for a, b in zip(old, new, strict=True))
        print(
            f"bf16-on vs {other}: {min(old) / min(new):.2f}x (best), "
            f"{ratio:.2f}x (median of paired ratios)"
        )


def train_step(args: argparse.Namespace) -> int:
    from zsm.training.config import load_config
    from zsm.training.dist import Dist
    from zsm.training.loop import Trainer

    torch.set_num_threads(args.threads)
    cpu = Dist(rank=0, world_size=1, device=torch.device("cpu"))
    built = {}
    for name, (bf16, _) in _variants(args).items():
        trainer = Trainer(load_config(args.config, [f"train.amp={'bf16' if bf16 else 'off'}"]))
        built[name] = (trainer, trainer._build_state(cpu))
    data = trainer.config.data
    b, n, p = data.batch_size, (data.clip_frames + 1) // 2, data.lr_patch
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(b, n, 3, p, p, generator=gen)
    hr = torch.rand(b, 2 * n - 1, 3, 4 * p, 4 * p, generator=gen)
    flow_guided = built["fp32"][1].model.config.flow_guided
    flow = 2 * torch.randn(b, n - 1, 4, p, p, generator=gen) if flow_guided else None
    print(
        f"{args.config}: batch {b}, LR patch {p}, {n} -> {2 * n - 1} frames"
        f"{', flow-guided' if flow_guided else ''}; {args.threads} thread(s), {args.clock} clock"
    )

    def stepper(name: str) -> Callable[[], None]:
        trainer, state = built[name]
        return lambda: trainer._step(state, lr, hr, flow)

    _interleaved(args, {name: stepper(name) for name in built})
    return 0


def forward(args: argparse.Namespace) -> int:
    import zsm
    from zsm.engine import prepare

    torch.set_num_threads(args.threads)
    model = zsm.load_model(args.weights)
    nets = {
        name: prepare(model, "cpu", precision="bf16" if bf16 else "fp32")
        for name, (bf16, _) in _variants(args).items()
    }
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(1, args.frames, 3, args.height, args.width, generator=gen)
    print(
        f"{args.weights}: forward of {args.frames} frames of {args.width}x{args.height}; "
        f"{args.threads} thread(s), {args.clock} clock"
    )
    _interleaved(args, {name: (lambda net=net: net(frames)) for name, net in nets.items()})
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--frames", type=int, default=None, help="first N frames of the clip")
    q.add_argument("--weights", default="zsm-compact", help="bundled name or .safetensors")
    q.set_defaults(func=quality)
    for what, func, steps in (("train", train_step, 5), ("forward", forward, 3)):
        t = sub.add_parser(what)
        t.add_argument("--steps", type=int, default=steps, help="rounds after the warm-up")
        t.add_argument("--threads", type=int, default=1)
        t.add_argument("--clock", choices=("process", "wall"), default="process")
        t.add_argument(
            "--old-dcn",
            action="store_true",
            help=f"also {OLD_DCN}: bf16 with the DCN kernel's portable loops, general backward",
        )
        t.add_argument(
            "--unfused",
            action="store_true",
            help=f"also {UNFUSED}: bf16 with the DCN's GEMMs outside the kernel (torch.mm)",
        )
        t.set_defaults(func=func)
    sub.choices["train"].add_argument(
        "--config", default="zsm-compact", help="recipe (default: zsm-compact)"
    )
    f = sub.choices["forward"]
    f.add_argument("--weights", default="zsm-compact", help="bundled name or .safetensors")
    f.add_argument("--frames", type=int, default=3)
    f.add_argument("--width", type=int, default=176)
    f.add_argument("--height", type=int, default=144)
    args = p.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
