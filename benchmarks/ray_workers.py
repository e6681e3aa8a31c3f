"""Speed-up of ``zsm upscale --ray`` with 2 local workers over 1, measured in one run.

Upscales the same clip (the bundled demo clip, 128x72, with the bundled
``zsm-compact`` weights) into PNG frames on a local Ray cluster of 1 CPU (one
worker, one torch thread) and then of 2 CPUs (two workers, one thread each),
``--repeats`` times in alternation, plus once in a single process with one
thread for reference (what Ray's overhead costs). Prints each time, the best
of each, the ratio 1-worker / 2-worker time, and the cluster summaries; the
frames of every run are checked identical to the single-process run's. Before
and after, it measures how much more work 2 busy processes get done than 1 on
the machine at that moment (2.0 on two idle cores): on a shared machine the
speed-up cannot exceed it.

    python benchmarks/ray_workers.py                       # 33 frames, window 12, 4 segments
    python benchmarks/ray_workers.py --frames 20 --repeats 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Local clusters on loopback only (Ray otherwise binds to the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

CLIP = Path(__file__).resolve().parents[1] / "src" / "zsm" / "assets" / "bbb-demo.mp4"


def _spin(seconds: float) -> int:
    """Count loop turns for ``seconds`` of wall time (one core's worth of work)."""
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


def parallel_capacity(seconds: float = 2.0) -> float:
    """How much more work 2 processes get done than 1 right now (2.0: two idle cores)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        one = pool.submit(_spin, seconds).result()
        two = sum(f.result() for f in [pool.submit(_spin, seconds) for _ in range(2)])
    return two / one


def frames_of(folder: Path) -> list:
    from zsm.video.io import iter_frames, probe

    return list(iter_frames(probe(folder)))


def on_cluster(cpus: int, src: Path, out: Path, args: argparse.Namespace) -> tuple[float, list]:
    """Seconds of one ``--ray`` run on a fresh local cluster of ``cpus`` CPUs (start excluded)."""
    import ray

    import zsm

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    try:
        started = time.perf_counter()
        r = zsm.upscale_video(
            src,
            f"{out}/",
            window=args.window,
            max_frames=args.frames,
            ray="auto",
            ray_segments=args.segments,
            device="cpu",
            progress=False,
        )
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    assert r.cluster is not None
    return seconds, r.cluster.lines()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=33, help="input frames of the clip (33: all)")
    p.add_argument("--window", type=int, default=12)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1, help="alternating 1- and 2-worker runs")
    p.add_argument("--no-single", action="store_true", help="skip the single-process run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    import zsm

    capacity = [parallel_capacity()]
    print(f"2 processes do {capacity[0]:.2f}x the work of 1 on this machine now", flush=True)
    times: dict[str, list[float]] = {"1 worker": [], "2 workers": []}
    summaries: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        reference = None
        single = None
        if not args.no_single:
            torch.set_num_threads(1)
            started = time.perf_counter()
            zsm.upscale_video(
                CLIP,
                f"{tmp_path}/single/",
                window=args.window,
                max_frames=args.frames,
                device="cpu",
                threads=1,
                progress=False,
            )
            single = time.perf_counter() - started
            reference = frames_of(tmp_path / "single")
            print(f"single process, 1 thread: {single:.1f} s", flush=True)
        for k in range(args.repeats):
            for name, cpus in (("1 worker", 1), ("2 workers", 2)):
                out = tmp_path / f"{cpus}-{k}"
                seconds, lines = on_cluster(cpus, CLIP, out, args)
                times[name].append(seconds)
                summaries[name] = lines
                if reference is not None:
                    got = frames_of(out)
                    same = len(got) == len(reference) and all(
                        (a == b).all() for a, b in zip(got, reference, strict=True)
                    )
                    if not same:
                        print(f"{name}: frames differ from the single process's", file=sys.stderr)
                        return 1
                print(f"{name}: {seconds:.1f} s", flush=True)
                print("\n".join(f"    {line}" for line in lines), flush=True)
    capacity.append(parallel_capacity())
    print(f"2 processes do {capacity[1]:.2f}x the work of 1 on this machine now", flush=True)
    best1, best2 = min(times["1 worker"]), min(times["2 workers"])
    result = {
        "clip": CLIP.name,
        "frames": args.frames,
        "window": args.window,
        "segments": args.segments,
        "single_process_s": single,
        "one_worker_s": times["1 worker"],
        "two_workers_s": times["2 workers"],
        "speedup_2_vs_1": best1 / best2,
        "parallel_capacity_before_after": capacity,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result, indent=1))
    print(
        f"2 workers vs 1: {best1:.1f} s / {best2:.1f} s = {best1 / best2:.2f}x "
        f"(best of {args.repeats}; {os.cpu_count()} CPUs giving 2 processes "
        f"{min(capacity):.2f}-{max(capacity):.2f}x the work of 1)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
