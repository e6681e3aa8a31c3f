"""Deformable conv alone: each backend against the dense conv of the same shape.

    python benchmarks/dcn_speed.py                      # B=8, C=64, 64x112, 8 groups
    python benchmarks/dcn_speed.py --shape 3,32,144,176 --groups 4 --threads 1

Prints forward and backward times and their ratios to the dense 3x3 conv
(``nn.Conv2d`` of the same shape), measured in the same process (best of
``--repeats`` after a warm-up). The whole network is ``zsm benchmark``.
"""

from __future__ import annotations

import argparse
import json

import torch

from zsm.bench import bench_dcn, device_name, use_process_clock
from zsm.device import resolve_device
from zsm.ops.dcn import available_backends, native_available


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="8,64,64,112", help="B,C,H,W (default: 8,64,64,112)")
    p.add_argument("--groups", type=int, default=8, help="offset groups (default: 8)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--backends",
        default=None,
        help=f"comma-separated, from {available_backends()} (default: all for the device)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="process: CPU time, steadier on a shared machine (with --threads 1)",
    )
    p.add_argument(
        "--layout",
        choices=("nchw", "nhwc"),
        default="nchw",
        help="nhwc: input, output and the dense conv channels-last, offsets and mask as slices "
        "of one NHWC tensor (the network's CPU inference)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    use_process_clock(args.clock == "process" and device.type == "cpu")
    b, c, h, w = (int(v) for v in args.shape.split(","))
    if args.backends:
        backends = [s.strip() for s in args.backends.split(",") if s.strip()]
    else:
        backends = [n for n in available_backends() if device.type == "cpu" or n == "torchvision"]
    r = bench_dcn(
        nf=c, groups=args.groups, shape=(b, h, w), device=device, repeats=args.repeats,
        backends=backends, channels_last=args.layout == "nhwc",
    )  # fmt: skip
    r.update(
        device=str(device),
        device_name=device_name(device),
        threads=torch.get_num_threads(),
        native_kernel=native_available(),
        clock=args.clock,
    )
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"DCN {tuple(r['shape'])} {r['layout']}, 3x3, {r['groups']} offset groups on {device} "
        f"({r['device_name']}, {r['threads']} threads; native kernel: {r['native_kernel']})"
    )
    print(f"{'impl':<14}{'fwd ms':>9}{'x dense':>9}{'bwd ms':>10}{'x dense':>9}")
    for name, v in r["impls"].items():
        print(
            f"{name:<14}{v['forward_ms']:>9.1f}{v['forward_vs_dense']:>9.2f}"
            f"{v['backward_ms']:>10.1f}{v['backward_vs_dense']:>9.2f}"
        )


if __name__ == "__main__":
    main()
