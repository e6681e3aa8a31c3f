"""``zsm convert-weights IN OUT``: official checkpoint -> our safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsm.models.weights import read_official_checkpoint, save_weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-weights",
        help="convert an official Zooming Slow-Mo checkpoint (.pth) to safetensors",
        description="Convert an official-layout checkpoint to a zsm safetensors file. "
        "nf, groups and the block counts are inferred from the tensors; pickles are "
        "read with torch.load(weights_only=True), so no code inside them can run.",
    )
    p.add_argument("input", type=Path, help="official checkpoint (.pth or .safetensors)")
    p.add_argument("output", type=Path, help="output .safetensors file")
    p.add_argument("--half", action="store_true", help="store float16 tensors (half the size)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from zsm.errors import OutputError

    if args.output.exists() and args.input.exists() and args.output.samefile(args.input):
        raise OutputError(f"output {args.output} is the input; choose another name")
    model = read_official_checkpoint(args.input)
    save_weights(
        model,
        args.output,
        dtype=torch.float16 if args.half else None,
        metadata={"zsm.source": f"converted from official checkpoint {args.input.name}"},
    )
    c = model.config
    print(
        f"wrote {args.output} (nf={c.nf}, groups={c.groups}, front_RBs={c.front_RBs}, "
        f"back_RBs={c.back_RBs}, hr_nf={c.hr_nf})"
    )
    return 0
