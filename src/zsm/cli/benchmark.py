"""``zsm benchmark``: time the network stage by stage against a dense conv (see zsm.bench)."""

from __future__ import annotations

import argparse
import json

from zsm.cli.args import int_at_least


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"expected WIDTHxHEIGHT, e.g. 176x144, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return w, h


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time each stage of the network against a dense conv on this device",
        description="Run a randomly initialised network (offsets set to a realistic few "
        "pixels) on random frames and print, per stage and per output frame, the time, "
        "GFLOP and GFLOP/s, next to a dense 3x3 conv (nf->nf at the input size, batch = "
        "frames) timed in the same process; then the deformable conv alone, forward and "
        "backward, for the fast backend, torchvision and a dense conv. Set "
        "ZSM_DCN_BACKEND=torchvision to time the whole network with torchvision's DCN.",
    )
    p.add_argument("--preset", default="compact", help="model preset (default: compact)")
    p.add_argument(
        "--size", type=_size, default=(176, 144), help="input WIDTHxHEIGHT (default: 176x144)"
    )
    p.add_argument("--frames", type=int_at_least(1), default=3, help="input frames (default: 3)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument(
        "--repeats", type=int_at_least(1), default=2, help="timed runs after a warm-up (default: 2)"
    )
    p.add_argument(
        "--dcn-backends",
        default=None,
        help="comma-separated DCN backends to time alone (default: the automatic choice "
        "and torchvision)",
    )
    p.add_argument(
        "--threads",
        type=int_at_least(1),
        default=None,
        help="CPU threads for torch and the DCN kernel (default: torch's choice)",
    )
    p.add_argument(
        "--tune-malloc",
        action="store_true",
        help="keep freed memory in glibc's heap instead of page-faulting every new tensor "
        "in again (Linux; see zsm.bench.tune_malloc)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="wall time (default) or the process's CPU time, steadier on a machine shared "
        "with other work (use with --threads 1; CPU only)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="fp32 (default), or the network under bf16 (CPU or GPU) or fp16 (GPU) autocast "
        "as `zsm upscale --precision` runs it (deformable sampling and the offsets stay fp32; "
        "the offset convs run in bf16 on a CPU, in fp32 elsewhere), "
        "against the dense conv in that precision and, timed in the same rounds, the fp32 "
        "network and dense conv; the DCN alone then runs in it too (NHWC on a CPU)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="NHWC conv weights and activations (the dense reference too)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsm.bench import format_report, run_benchmark, tune_malloc, use_process_clock
    from zsm.device import resolve_device
    from zsm.errors import ZSMError
    from zsm.ops.dcn import available_backends

    backends = None
    if args.dcn_backends:
        backends = [b.strip() for b in args.dcn_backends.split(",") if b.strip()]
        unknown = sorted(set(backends) - set(available_backends()))
        if unknown:
            raise ZSMError(f"unknown DCN backend(s) {unknown}; available: {available_backends()}")
    if args.frames < 2:
        raise ZSMError(f"--frames must be at least 2, got {args.frames}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.clock == "process":
        if resolve_device(args.device).type != "cpu":
            raise ZSMError("--clock process times CPU work only; use it with --device cpu")
        use_process_clock(True)
    tuned = tune_malloc() if args.tune_malloc else False
    try:
        result = run_benchmark(
            preset=args.preset,
            size=args.size,
            frames=args.frames,
            device=args.device,
            repeats=args.repeats,
            dcn_backends=backends,
            malloc_tuned=tuned,
            precision_name=args.precision,
            channels_last=args.channels_last,
        )
    except ValueError as exc:
        raise ZSMError(str(exc)) from exc
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
