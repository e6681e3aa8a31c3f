"""``zsm train CONFIG [--resume] [KEY=VALUE ...]``: train or continue training a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zsm.cli.args import int_at_least


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a config (Vimeo-90K, Vid4 folders, videos, synthetic motion)",
        description="Train Zooming Slow-Mo from a TOML/YAML config (a path, or a name under "
        "configs/: official-vimeo, compact-cpu). Checkpoints go to train.out_dir "
        "(default runs/<config name>) every train.checkpoint_every iterations and on Ctrl-C; "
        "--resume continues exactly where the last checkpoint stopped. For several GPUs or "
        "nodes, launch under torchrun: torchrun --nproc_per_node=N $(which zsm) train CONFIG.",
    )
    p.add_argument("config", help="config file or name (e.g. compact-cpu)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override config values, right after CONFIG: train.iterations=100 "
        "data.batch_size=2 'optim.betas=[0.9, 0.999]' (values are TOML)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--run-dir", type=Path, default=None, help="run folder (default: train.out_dir)")
    p.add_argument(
        "--stop-after",
        type=int_at_least(0),
        default=None,
        metavar="N",
        help="checkpoint and stop after N more iterations (continue later with --resume)",
    )
    p.add_argument(
        "--precision",
        choices=tuple(AMP_OF_PRECISION),
        help="autocast of the forward pass: the same as train.amp=off|bf16|fp16|auto; bf16 "
        "also on CPUs (about twice as fast where they compute bf16 natively)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


# --precision NAME -> train.amp
AMP_OF_PRECISION = {"fp32": "off", "bf16": "bf16", "fp16": "fp16", "auto": "auto"}


def run(args: argparse.Namespace) -> int:
    from zsm.training import load_config, train

    overrides = list(args.overrides)
    if args.precision is not None:
        overrides.append(f'train.amp="{AMP_OF_PRECISION[args.precision]}"')
    config = load_config(args.config, overrides)
    if args.print_config:
        import json

        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return 0
    result = train(config, run_dir=args.run_dir, resume=args.resume, stop_after=args.stop_after)
    if result.stopped is None:
        where = f"; weights: {result.weights}" if result.weights else ""
        print(f"zsm: training done at iteration {result.iteration}{where}", file=sys.stderr)
        return 0
    print(
        f"zsm: stopped at iteration {result.iteration} ({result.stopped}); checkpoint "
        f"{result.checkpoint}. Continue with: zsm train {args.config} --resume"
        + (f" --run-dir {args.run_dir}" if args.run_dir else ""),
        file=sys.stderr,
    )
    return {"stop_after": 0, "SIGTERM": 143}.get(result.stopped, 130)  # 128 + signal number
