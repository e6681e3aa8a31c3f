"""Outputs of one checkout against another's: bit-identical frames, float outputs to 1e-6.

Run it under the old code to record, then under the new one to compare::

    PYTHONPATH=/path/to/old/src python benchmarks/equivalence.py save /tmp/ref.npz
    python benchmarks/equivalence.py compare /tmp/ref.npz

Cases (CPU, 2 threads):

* ``vector-*``: the official test vector's network (tests/data) on its input, in
  training mode (autograd on: what training runs) and in inference;
* ``compact-float``: raw float output of the bundled zsm-compact on 5 frames of
  the demo clip (inference);
* ``demo``: every uint8 frame ``zsm demo`` encodes (the API on the demo clip);
* ``tiled``: the demo clip's first 8 frames in 24-px tiles;
* ``windowed``: its first 14 frames in windows of 4 with overlap 1.

Inference goes through ``zsm.engine.prepare`` where the checkout has it (the
redesign), else through the model itself (before it, the model rewrote itself
for CPU inference).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]


def _inference(model: torch.nn.Module) -> torch.nn.Module:
    try:
        from zsm.engine import prepare
    except ImportError:
        return model
    return prepare(model, torch.device("cpu"))


def _vector_model() -> tuple[torch.nn.Module, torch.Tensor]:
    from zsm.models.weights import model_from_official_state

    path = ROOT / "tests" / "data" / "zsm_official_small_vector.safetensors"
    with safe_open(str(path), framework="pt") as f:
        weights = {k.removeprefix("weights."): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    x = weights.pop("input").float()
    weights.pop("output")
    return model_from_official_state(weights, str(path)).eval(), x


def _demo_frames(limit: int | None = None) -> list[np.ndarray]:
    from zsm.demo import demo_clip
    from zsm.video.io import iter_frames, probe

    frames = list(iter_frames(probe(demo_clip())))
    return frames[:limit] if limit else frames


def cases() -> dict[str, np.ndarray]:
    import zsm

    torch.set_num_threads(2)
    out: dict[str, np.ndarray] = {}
    model, x = _vector_model()
    out["vector-train"] = model(x).detach().numpy()
    with torch.inference_mode():
        out["vector-inference"] = _inference(model)(x).numpy()
    compact = zsm.load_model("zsm-compact")
    lr = torch.from_numpy(np.stack(_demo_frames(5))).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        out["compact-float"] = _inference(compact)(lr[None]).numpy()
    run = dict(model=compact, device="cpu")
    out["demo"] = np.stack(list(zsm.upscale_frames(_demo_frames(), **run)))
    out["tiled"] = np.stack(list(zsm.upscale_frames(_demo_frames(8), tile=24, **run)))
    windowed = zsm.upscale_frames(_demo_frames(14), window=4, window_overlap=1, **run)
    out["windowed"] = np.stack(list(windowed))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("save", "compare"))
    p.add_argument("file", type=Path)
    args = p.parse_args()
    now = cases()
    if args.action == "save":
        np.savez_compressed(args.file, **now)
        print(f"saved {len(now)} cases to {args.file}")
        return 0
    ref = np.load(args.file)
    failed = 0
    for name, value in now.items():
        old = ref[name]
        if old.shape != value.shape:
            print(f"{name:18s} shape {value.shape} != {old.shape}  FAIL")
            failed += 1
            continue
        if old.dtype == np.uint8:
            diff = int(np.abs(old.astype(np.int16) - value.astype(np.int16)).max())
            verdict = "bit-identical" if diff == 0 else f"max diff {diff} levels  FAIL"
            failed += diff != 0
        else:
            diff = float(np.abs(old - value).max())
            same = np.array_equal(old, value)
            verdict = "bit-identical" if same else f"max abs diff {diff:.2e}"
            if diff > 1e-6:
                verdict += "  FAIL (> 1e-6)"
                failed += 1
        print(f"{name:18s} {value.shape!s:22s} {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
