"""Export a training checkpoint's weights as a shippable float16 safetensors file.

    python scripts/export_weights.py runs/zsm-compact-time/checkpoints/iter_00001500 \\
        src/zsm/weights/zsm-compact-time.safetensors \\
        --recipe "configs/zsm-compact-time.toml, 1,500 iterations (2-core CPU, bf16)"

Takes the checkpoint's EMA weights (``ema.safetensors``) when it has them, else its
raw ``model.safetensors`` (``--raw`` forces the raw ones); a .safetensors file is taken
as it is. Writes float16 (``--dtype float32`` keeps full precision) atomically, with
``zsm.recipe`` and ``zsm.weights`` metadata saying where the weights come from.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from zsm.models.weights import model_from_file, save_weights


def source_file(src: Path, *, raw: bool) -> tuple[Path, str]:
    """The weights file of ``src`` (a checkpoint folder or a file) and what it holds."""
    if src.is_file():
        return src, src.name
    if not src.is_dir():
        raise SystemExit(f"export_weights: no such checkpoint: {src}")
    match = re.search(r"iter_0*(\d+)$", src.name)
    at = f" at iteration {match.group(1)}" if match else ""
    ema = src / "ema.safetensors"
    if ema.is_file() and not raw:
        return ema, f"EMA{at}"
    model = src / "model.safetensors"
    if not model.is_file():
        raise SystemExit(f"export_weights: {src} holds no model.safetensors")
    return model, f"raw weights{at}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="checkpoint folder (iter_*) or .safetensors")
    ap.add_argument("output", type=Path, help="the .safetensors file to write")
    ap.add_argument("--recipe", required=True, help="how the weights were trained (metadata)")
    ap.add_argument("--raw", action="store_true", help="the raw weights, not the EMA")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    args = ap.parse_args(argv)
    path, what = source_file(args.checkpoint, raw=args.raw)
    model = model_from_file(path)
    dtype = torch.float16 if args.dtype == "float16" else None
    meta = {"zsm.recipe": args.recipe, "zsm.weights": what}
    save_weights(model, args.output, dtype=dtype, metadata=meta)
    size = args.output.stat().st_size / 1e6
    print(f"{args.output}: {what} of {path} ({args.dtype}, {size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
