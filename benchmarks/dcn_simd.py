"""The bf16 deformable conv before and after its AVX-512 loops, in one process, interleaved.

    python benchmarks/dcn_simd.py [--rounds 3]

``old``: the native kernel's portable loops and the general backward pass
(``NativeLib.set_simd(False)``, ``function.FUSED_BF16_BACKWARD = False``);
``tile``: the AVX-512 loops with the forward vectorised over a tile's positions
(``set_simd(True, pairs=False)``) and the fused bf16 NHWC backward pass;
``pairs``: the same with the forward vectorised over each position's (group,
kernel point) pairs, im2col chunks then a GEMM, and the backward's GEMMs through
torch.mm; ``fused``: the fused forward (the columns of 24 positions sampled, then
multiplied by vdpbf16ps while in cache: ``function.FUSED_BF16_FORWARD``) and the
backward's GEMMs made by the kernel tile by tile (``FUSED_BF16_BACKWARD_GEMMS``);
``dense``: the bf16 dense 3x3 conv of the same shape.
NHWC, bf16 autocast, one thread, the process's CPU time, best of the rounds
(two runs each per round); backward = forward+backward minus forward.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from zsm.bench.offsets import OFFSET_STD_PX
from zsm.ops.dcn import function, modulated_deform_conv2d
from zsm.ops.dcn.native import NativeLib, load_native

SHAPES = {"compact": (3, 32, 4, 144, 176), "official": (3, 64, 8, 144, 176)}


def bench(name: str, shape: tuple[int, ...], rounds: int, lib: NativeLib) -> None:
    """Time dense, old and new at ``shape`` (B, C, groups, H, W) and print the ratios."""
    b, c, groups, h, w = shape
    g = torch.Generator().manual_seed(0)
    k = 9 * groups
    nhwc = torch.channels_last
    x = torch.randn(b, c, h, w, generator=g).contiguous(memory_format=nhwc).bfloat16()
    weight = 0.04 * torch.randn(c, c, 3, 3, generator=g)
    bias = torch.randn(c, generator=g)
    off = OFFSET_STD_PX * torch.randn(b, 2 * k, h, w, generator=g)
    both = torch.cat((off, torch.rand(b, k, h, w, generator=g)), 1).contiguous(memory_format=nhwc)
    offset, mask = both[:, : 2 * k], both[:, 2 * k :]
    grad = torch.randn(b, c, h, w, generator=g).bfloat16().contiguous(memory_format=nhwc)

    def dense() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.conv2d(x, weight, bias, padding=1)

    def dcn() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return modulated_deform_conv2d(x, offset, mask, weight, bias, padding=1)

    runs: dict[str, tuple[Callable[[], torch.Tensor], tuple[torch.Tensor, ...]]] = {
        "dense": (dense, (x, weight, bias)),
        "old": (dcn, (x, offset, mask, weight, bias)),
        "tile": (dcn, (x, offset, mask, weight, bias)),
        "pairs": (dcn, (x, offset, mask, weight, bias)),
        "fused": (dcn, (x, offset, mask, weight, bias)),
    }
    fwd = dict.fromkeys(runs, float("inf"))
    both_t = dict.fromkeys(runs, float("inf"))
    for r in range(rounds + 1):  # round 0: warm-up
        for impl, (fn, leaves) in runs.items():
            lib.set_simd(impl != "old", pairs=impl != "tile")
            function.FUSED_BF16_BACKWARD = impl != "old"
            function.FUSED_BF16_FORWARD = impl == "fused"
            function.FUSED_BF16_BACKWARD_GEMMS = impl == "fused"
            for _ in range(2):
                t0 = time.process_time()
                with torch.no_grad():
                    fn()
                t1 = time.process_time()
                for t in leaves:
                    t.requires_grad_(True)
                fn().backward(grad)
                t2 = time.process_time()
                for t in leaves:
                    t.grad = None
                    t.requires_grad_(False)
                if r:
                    fwd[impl] = min(fwd[impl], t1 - t0)
                    both_t[impl] = min(both_t[impl], t2 - t1)
    lib.set_simd(True)
    function.FUSED_BF16_BACKWARD = function.FUSED_BF16_FORWARD = True
    function.FUSED_BF16_BACKWARD_GEMMS = True
    print(f"{name}: (B, C, H, W) = ({b}, {c}, {h}, {w}), {groups} offset groups")
    dense_bwd = both_t["dense"] - fwd["dense"]
    for impl in runs:
        bwd = both_t[impl] - fwd[impl]
        print(
            f"  {impl:5s} forward {fwd[impl] * 1e3:7.2f} ms ({fwd[impl] / fwd['dense']:5.2f}x "
            f"dense)  backward {bwd * 1e3:7.2f} ms ({bwd / dense_bwd:5.2f}x dense)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    lib = load_native()
    assert lib is not None, "the native kernel is not available"
    for name, shape in SHAPES.items():
        bench(name, shape, args.rounds, lib)


if __name__ == "__main__":
    main()
