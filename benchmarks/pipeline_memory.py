"""Peak memory and speed of ``zsm upscale`` on a 1280x720 (or ``--size``) input on the CPU.

Runs the real pipeline (decode -> windows -> tiles -> model -> stitch ->
H.264 encode -> mux) in a child process and reports that process's peak
resident memory (``ru_maxrss``), its resident memory once the model is
loaded, the tile size chosen, and frames per second. Uses the bundled
``zsm-compact`` weights when installed, else a randomly initialised compact
preset (same sizes, same cost). Not a test: it takes minutes to hours.

    python benchmarks/pipeline_memory.py                    # the network: 4 frames, window 4
    python benchmarks/pipeline_memory.py --frames 13 --window 12   # one default window
    python benchmarks/pipeline_memory.py --stand-in --frames 40 --window 12
        # bicubic in place of the network: default windows, 80 frames through the encoder
    python benchmarks/pipeline_memory.py --stand-in --size 3840x2160 --frames 2 --png
        # a 4K input (16K output: PNG frames, beyond H.264's frame size), pipeline memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

SOURCE = Path("/work/shared/data/bigbuckbunny.mp4")
LIMIT_GB = 6.0


def make_input(path: Path, frames: int, width: int = 1280, height: int = 720) -> None:
    """The first ``frames`` frames of the sample clip at ``width x height`` (or a pattern)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if SOURCE.is_file():
            with av.open(str(SOURCE)) as src:
                for k, frame in enumerate(src.decode(video=0)):
                    if k == frames:
                        break
                    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        else:
            yy, xx = np.mgrid[0:height, 0:width]
            for k in range(frames):
                rgb = np.stack([(xx + 8 * k) % 256, yy % 256, (xx + yy) % 256], -1)
                frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def weights_file(folder: Path) -> tuple[str, str]:
    """(weights argument, description)."""
    import torch

    import zsm
    from zsm.models.registry import DEFAULT_WEIGHTS, registered_weights

    entry = registered_weights()[DEFAULT_WEIGHTS]
    if entry.path.is_file():
        return DEFAULT_WEIGHTS, f"bundled {DEFAULT_WEIGHTS}"
    torch.manual_seed(0)
    path = folder / "compact-random.safetensors"
    zsm.save_weights(zsm.ZoomingSlowMo.from_preset("compact"), path)
    return str(path), "random-init compact preset (bundled weights not installed)"


class BicubicStandIn:
    """The network's classical baseline (bicubic x4 + frame blend) with the compact model's
    config, so tiles and buffers are sized as for the network: measures everything but the
    network's own working memory, fast enough to push many frames through the encoder."""

    def __init__(self, config: object) -> None:
        self.config = config

    def __call__(self, x):  # (1, n, 3, h, w) -> (1, 2n-1, 3, 4h, 4w)
        from zsm.models.zsm import bicubic_skip

        return bicubic_skip(x)


def child(args: argparse.Namespace) -> None:
    """Run one upscale and print a JSON line of measurements."""
    import torch

    from zsm.models.registry import load_model
    from zsm.upscale import build_pipeline, upscale_video
    from zsm.video.io import probe

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tune_malloc:
        from zsm.bench import tune_malloc

        tune_malloc()
    model = load_model(args.weights, device="cpu")
    if args.stand_in:
        model = BicubicStandIn(model.config)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pipe = build_pipeline(model=model, device="cpu", window=args.window, tile=args.tile)
    info = probe(args.input)
    frames = min(args.window, info.frame_count or args.window)
    tile = pipe.tile_size(info.height, info.width, frames)
    start = time.perf_counter()
    cpu_start = time.process_time()
    result = upscale_video(
        args.input,
        args.output,
        model=model,
        device="cpu",
        window=args.window,
        tile=args.tile,
        progress=False,
    )
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "input_frames": result.input_frames,
                "output_frames": result.output_frames,
                "tile": tile,
                "budget": pipe.memory_budget,
                "rss_loaded": rss_loaded,
                "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "threads": torch.get_num_threads(),
                "out_size": [result.width, result.height],
                "fps": str(Fraction(result.fps)),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="input frames (default 4)")
    parser.add_argument("--window", type=int, default=4, help="window size (default 4)")
    parser.add_argument("--tile", type=int, help="tile size (default: automatic)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--tune-malloc", action="store_true", help="zsm.bench.tune_malloc() in the child first"
    )
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="bicubic instead of the network: the pipeline's and encoder's memory alone",
    )
    parser.add_argument("--size", default="1280x720", help="input WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--png", action="store_true", help="write PNG frames instead of H.264")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)  # str: keeps a trailing "/"
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="zsm-bench-") as tmp:
        folder = Path(tmp)
        width, height = (int(v) for v in args.size.lower().split("x"))
        src = folder / "input.mp4"
        make_input(src, args.frames, width, height)
        weights, described = weights_file(folder)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--input",
            str(src),
            "--weights",
            weights,
            "--output",
            f"{folder}/out/" if args.png else str(folder / "out.mp4"),
            "--window",
            str(args.window),
        ]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--tile", str(args.tile)] if args.tile else []
        cmd += ["--stand-in"] if args.stand_in else []
        cmd += ["--tune-malloc"] if args.tune_malloc else []
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        m = json.loads(done.stdout.strip().splitlines()[-1])

    gb = 1e9
    source = "bigbuckbunny.mp4" if SOURCE.is_file() else "synthetic"
    print(f"input       : {width}x{height}, {m['input_frames']} frames ({source})")
    print(f"weights     : {described}" + (" -> bicubic stand-in" if args.stand_in else ""))
    print(
        f"settings    : window {args.window}, tile {m['tile'] or 'none (whole frame)'} "
        f"(budget {m['budget'] / gb:.2f} GB), {m['threads']} threads, CPU"
    )
    print(
        f"output      : {m['out_size'][0]}x{m['out_size'][1]}, {m['output_frames']} frames "
        f"at {m['fps']} fps"
    )
    print(
        f"time        : {m['seconds']:.1f} s = {m['output_frames'] / m['seconds']:.4f} output "
        f"frames/s ({m['input_frames'] / m['seconds']:.4f} input frames/s), "
        f"{m['cpu_seconds']:.0f} CPU-s (a busy machine stretches the wall time)"
    )
    print(
        f"RSS         : {m['rss_loaded'] / gb:.2f} GB after loading, "
        f"peak {m['rss_peak'] / gb:.2f} GB "
        f"(limit {LIMIT_GB:.0f} GB: {'ok' if m['rss_peak'] / gb < LIMIT_GB else 'EXCEEDED'})"
    )


if __name__ == "__main__":
    main()
