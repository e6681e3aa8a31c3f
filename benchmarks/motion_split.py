"""Where in-between frames are won or lost, by motion: quartiles of a `zsm evaluate` report.

    zsm evaluate bikes.mp4 -o eval-bikes
    python benchmarks/motion_split.py eval-bikes/report.json bikes.mp4

Each scored in-between (odd) frame j is given the motion of its two input
frames j-1 and j+1: the 90th percentile of the DIS optical flow magnitude
between them, in HR pixels. The frames are split into quartiles of that
motion, and each method's mean Y-PSNR per quartile is printed against the
reference method's (default ``bicubic-flow``). This is the split of
MODEL_CARD.md's "Known limits".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np


def motions(video: Path, indices: list[int]) -> dict[int, float]:
    """The 90th percentile of |DIS flow| (HR px) between frames j-1 and j+1, for each j."""
    from zsm.video.io import iter_frames, probe

    wanted = {i for j in indices for i in (j - 1, j + 1)}
    gray = {}
    for i, frame in enumerate(iter_frames(probe(video))):
        if i in wanted:
            gray[i] = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if i > max(wanted):
            break
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    out = {}
    for j in indices:
        flow = dis.calc(gray[j - 1], gray[j + 1], None)
        out[j] = float(np.percentile(np.hypot(flow[..., 0], flow[..., 1]), 90))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.json of zsm evaluate (one clip)")
    parser.add_argument("video", type=Path, help="the HR clip that report scored")
    parser.add_argument("--reference", default="bicubic-flow")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    clip = report["clips"][0]
    methods = clip["methods"]
    if args.reference not in methods:
        parser.error(f"{args.reference} is not in the report ({', '.join(methods)})")
    kinds = clip["kinds"]
    mids = [j for j, kind in enumerate(kinds) if kind == "interpolated"]
    motion = motions(args.video, mids)
    order = sorted(mids, key=lambda j: motion[j])
    quarters = np.array_split(np.array(order), 4)
    ref = np.array(methods[args.reference]["per_frame"]["psnr"])
    print(f"{clip['name']}: {len(mids)} in-between frames, Y-PSNR dB minus {args.reference}'s")
    header = "motion (HR px, p90)".ljust(24) + "".join(f"{m:>18s}" for m in methods)
    print(header)
    for q in quarters:
        lo, hi = motion[int(q[0])], motion[int(q[-1])]
        cells = []
        for name in methods:
            psnr = np.array(methods[name]["per_frame"]["psnr"])
            gain = float(np.mean(psnr[q] - ref[q]))
            cells.append(f"{gain:+18.2f}" if name != args.reference else f"{np.mean(ref[q]):18.2f}")
        print(f"{lo:7.1f} - {hi:7.1f}".ljust(24) + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
