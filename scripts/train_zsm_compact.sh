#!/usr/bin/env bash
# Reproduces the shipped zsm-compact weights from scratch: fetch data, train, resume.
# Safe to re-run after an interruption (Ctrl-C saves a checkpoint): it resumes.
# Extra arguments are config overrides, e.g. train.threads=1 train.device=cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_training_data.sh data/train
if [ -f runs/zsm-compact/checkpoints/latest.json ]; then
  exec zsm train configs/zsm-compact.toml "$@" --resume
else
  exec zsm train configs/zsm-compact.toml "$@"
fi
