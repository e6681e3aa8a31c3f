#!/usr/bin/env bash
# Reproduces the shipped zsm-compact weights from scratch: fetch the data, then
#   stage 1: configs/zsm-compact.toml for 3,451 iterations (sized for a 2-core CPU),
#   stage 2: configs/zsm-compact-gpu.toml, 600 iterations from stage 1's raw weights
#            (batch 32, LR patch 32: minutes on a GPU, hours on a CPU),
# and writes the raw stage-2 weights as float16 to runs/zsm-compact.safetensors.
# Safe to re-run after an interruption (Ctrl-C saves a checkpoint): each stage resumes.
# Extra arguments are config overrides for both stages, e.g. train.threads=2 or
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

stage configs/zsm-compact.toml runs/zsm-compact train.iterations=3451 "$@"
stage configs/zsm-compact-gpu.toml runs/zsm-compact-gpu "$@"
python - <<'PY'
import torch

from zsm.models.weights import model_from_file, save_weights

model = model_from_file("runs/zsm-compact-gpu/checkpoints/iter_00000600/model.safetensors")
out = save_weights(model, "runs/zsm-compact.safetensors", dtype=torch.float16)
print(f"zsm-compact weights: {out}")
PY
