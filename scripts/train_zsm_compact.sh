#!/usr/bin/env bash
# Reproduces the shipped zsm-compact weights from scratch: fetch the data, then
#   stage 1: configs/zsm-compact.toml for 3,451 iterations (sized for a 2-core CPU),
#   stage 2: configs/zsm-compact-gpu.toml, 600 iterations from stage 1's raw weights
#            in float16 (batch 32, LR patch 32: minutes on a GPU, hours on a CPU),
#   stage 3: configs/zsm-compact-motion.toml, 900 iterations of faster motion on larger
#            patches (LR 48), from stage 2's raw weights in float16,
#   stage 4: the same config with faster motion still and a lower learning rate, 560
#            iterations from stage 3's raw weights in float16,
# and writes the raw stage-4 weights as float16 to runs/zsm-compact.safetensors.
# Safe to re-run after an interruption (Ctrl-C saves a checkpoint): each stage resumes.
# Extra arguments are config overrides for every stage, e.g. train.threads=2 or
# train.device=cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_training_data.sh data/train

# stage CONFIG RUN_DIR [overrides...]: train, or resume the run if it has checkpoints.
stage() {
  local config=$1 run=$2
  shift 2
  local resume=()
  [ -f "$run/checkpoints/latest.json" ] && resume=(--resume)
  zsm train "$config" "$@" "${resume[@]}"
}

# half RUN OUT: the raw (non-EMA) weights of RUN's last checkpoint (where the stage
# ended), as float16, to OUT.
half() {
  python - "$1" "$2" <<'PY'
import sys
from pathlib import Path

import torch

from zsm.models.weights import model_from_file, save_weights
from zsm.training.checkpoint import latest_checkpoint

last = latest_checkpoint(Path(sys.argv[1]))
if last is None:
    sys.exit(f"no checkpoint in {sys.argv[1]}")
model = model_from_file(last / "model.safetensors")
print(f"float16 weights of {last}: {save_weights(model, sys.argv[2], dtype=torch.float16)}")
PY
}

stage configs/zsm-compact.toml runs/zsm-compact train.iterations=3451 "$@"
half runs/zsm-compact runs/zsm-compact-stage1.safetensors
stage configs/zsm-compact-gpu.toml runs/zsm-compact-gpu "$@"
half runs/zsm-compact-gpu runs/zsm-compact-stage2.safetensors
stage configs/zsm-compact-motion.toml runs/zsm-compact-motion "$@"
half runs/zsm-compact-motion runs/zsm-compact-stage3.safetensors
stage configs/zsm-compact-motion.toml runs/zsm-compact-motion2 \
  train.init=runs/zsm-compact-stage3.safetensors train.out_dir=runs/zsm-compact-motion2 \
  data.train.1.max_speed=32.0 data.train.1.occluder_speed=28.0 optim.lr=1e-4 \
  train.iterations=560 "schedule.periods=[560]" train.val_every=280 "$@"
half runs/zsm-compact-motion2 runs/zsm-compact.safetensors
