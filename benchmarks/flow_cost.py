"""What flow guidance costs on the CPU: the DIS flow and the guided network, side by side.

    python benchmarks/flow_cost.py                    # 640x360 -> 160x90 LR, 12-frame window
    python benchmarks/flow_cost.py --size 320x180 --frames 8 --repeats 3

On one temporal window of LR frames (Big Buck Bunny from the training data
folder, else the bundled demo clip, resized to ``--size`` and then shrunk
4x), interleaved and best of ``--repeats``, it times:

* the DIS flow of every neighbouring pair, both ways (:mod:`zsm.ops.flow`),
* the prepared ``compact`` network (learned offsets) on the window,
* the prepared ``compact-flow`` network given that flow,

and prints the flow's time as a share of the flow-guided network's, and the
flow-guided network's time against the learned-offset one's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _frames(size: tuple[int, int], count: int) -> list[np.ndarray]:
    import cv2

    from zsm.demo import demo_clip
    from zsm.video.io import iter_frames, probe

    bbb = REPO / "data" / "train" / "bigbuckbunny.mp4"
    clip = bbb if bbb.is_file() else demo_clip()
    frames = []
    for frame in iter_frames(probe(clip)):
        hr = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        lr = cv2.resize(hr, (size[0] // 4, size[1] // 4), interpolation=cv2.INTER_AREA)
        frames.append(lr)
        if len(frames) == count:
            break
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x360", help="HR size WxH (the LR is a quarter)")
    parser.add_argument("--frames", type=int, default=12, help="input frames in the window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from zsm.engine import prepare
    from zsm.models.zsm import ZoomingSlowMo
    from zsm.ops.flow import DISFlow

    w, h = (int(v) for v in args.size.lower().split("x"))
    frames = _frames((w, h), args.frames)
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)[None]
    torch.manual_seed(0)
    learned = prepare(ZoomingSlowMo.from_preset("compact"), "cpu")
    guided = prepare(ZoomingSlowMo.from_preset("compact-flow"), "cpu")
    dis = DISFlow()
    flow = torch.from_numpy(dis.clip(frames))[None]

    def flow_only() -> None:
        dis.clip(frames)

    cases = {
        "DIS flow": flow_only,
        "compact (learned offsets)": lambda: learned(x),
        "compact-flow (given the flow)": lambda: guided(x, flow),
    }
    best = dict.fromkeys(cases, float("inf"))
    for fn in cases.values():  # warm-up: oneDNN primitives, the native kernel
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    lh, lw = frames[0].shape[:2]
    print(
        f"{len(frames)} LR frames of {lw}x{lh} ({w}x{h} out), torch threads "
        f"{torch.get_num_threads()}, best of {args.repeats}, interleaved:"
    )
    for name, seconds in best.items():
        print(f"  {name:32s} {seconds * 1e3:9.1f} ms")
    share = best["DIS flow"] / best["compact-flow (given the flow)"]
    ratio = best["compact-flow (given the flow)"] / best["compact (learned offsets)"]
    print(f"flow / flow-guided network: {100 * share:.1f}%")
    print(f"flow-guided network / learned-offset network: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
