#!/usr/bin/env bash
# Everything worth doing in one short session on a CUDA machine, bounded in time:
#   1. the GPU tests (CUDA vs CPU, fp16/bf16 vs fp32),
#   2. `zsm benchmark` of the official and compact presets at 176x144, fp32/fp16/bf16,
#   3. the demo clip upscaled on the GPU (fp32 and --half), timed end to end,
#   4. stage 2 of the zsm-compact training (configs/zsm-compact-gpu.toml; CONFIG picks
#      another, e.g. stage 3), its length sized from a short probe to fit TRAIN_S seconds,
#   5. `zsm evaluate` of the weights that training produced (EMA or raw, whichever scores
#      higher on the validation clip) on the clips in CLIPS (a folder of videos).
# Results go to $OUT (default /tmp/zsm-gpu): session.log, results.tar.gz, and the
# trained weights, named after the config (e.g. zsm-compact-gpu-ema.safetensors, -raw).
#
# Environment: PYTHON (default python3), TRAIN_S (default 220), CONFIG (the training config,
# default configs/zsm-compact-gpu.toml; configs/zsm-compact-motion.toml is stage 3, see
# scripts/train_zsm_compact.sh), INIT (the starting weights, default the config's
# train.init), ITERS (a fixed length: no probe), RUN (the run folder, default
# runs/<config file name>), CLIPS (optional), DEVICE (default cuda; cpu for a dry run of
# this script, fp32 only), TRAIN_ARGS (extra config overrides for both training runs, e.g. a
# small batch for a dry run), STEPS (which of tests,bench,upscale,train,eval to run; default
# all), BUDGET (seconds for the whole session: the training is shortened to end ~2 minutes
# before it).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/zsm-gpu}
PY=${PYTHON:-python3}
TRAIN_S=${TRAIN_S:-220}
INIT=${INIT:-}
CLIPS=${CLIPS:-}
CONFIG=${CONFIG:-configs/zsm-compact-gpu.toml}
TAG=$(basename "$CONFIG" .toml)
DEVICE=${DEVICE:-cuda}
PRECISIONS="fp32 fp16 bf16"
[ "$DEVICE" = cpu ] && PRECISIONS=fp32
read -r -a EXTRA <<<"${TRAIN_ARGS:-}"
STEPS=${STEPS:-tests,bench,upscale,train,eval}
DEADLINE=$((SECONDS + ${BUDGET:-100000}))
TIMEFORMAT="%R s wall"
R=$OUT/results
RUN=${RUN:-runs/$TAG}
mkdir -p "$R"
export PYTHONUNBUFFERED=1

step() { echo; echo "=== $(date +%T) $*"; }

session() {
  step environment
  nvidia-smi -L
  "$PY" -c 'import torch, torchvision, av; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "av", av.__version__, "cuda", torch.cuda.is_available())'

  want() { [[ ",$STEPS," == *",$1,"* ]]; }

  want tests && step GPU tests && timeout 180 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_gpu.py

  want bench && for preset in official compact; do
    for prec in $PRECISIONS; do
      step "benchmark $preset $prec"
      if timeout 120 "$PY" -m zsm benchmark --preset "$preset" --frames 7 --repeats 5 \
        --device "$DEVICE" --precision "$prec" --json >"$R/bench-$preset-$prec.json"; then
        "$PY" -c 'import json, sys; from zsm.bench import format_report
print(format_report(json.load(open(sys.argv[1]))))' "$R/bench-$preset-$prec.json"
      fi
    done
  done

  want upscale && for half in "" --half; do
    step "upscale the demo clip on the GPU ${half:-fp32}"
    time timeout 120 "$PY" -m zsm upscale src/zsm/assets/bbb-demo.mp4 \
      -o "$R/demo-gpu${half:+-half}.mp4" --device "$DEVICE" $half --quiet
  done

  want train || return 0
  TRAIN_S=$(( TRAIN_S < DEADLINE - SECONDS - 180 ? TRAIN_S : DEADLINE - SECONDS - 180 ))
  local common=(${INIT:+train.init="$INIT"} train.progress=false train.tensorboard=false "${EXTRA[@]}")
  local n=${ITERS:-}
  if [ -z "$n" ]; then
    step "training ($CONFIG): probe"
    timeout 180 "$PY" -m zsm train "$CONFIG" "${common[@]}" \
      train.out_dir=/tmp/zsm-probe train.iterations=40 train.val_every=0 train.log_every=20
    n=$("$PY" -c 'import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
s_it = [r["s_it"] for r in rows if "s_it" in r][-1]
print(max(100, int(float(sys.argv[2]) / s_it) // 100 * 100))' /tmp/zsm-probe/log.jsonl "$TRAIN_S")
  fi
  step "training ($CONFIG): $n iterations"
  timeout -s INT $((TRAIN_S * 3 / 2)) "$PY" -m zsm train "$CONFIG" "${common[@]}" \
    train.out_dir="$RUN" train.iterations="$n" "schedule.periods=[$n]" train.val_every=$((n / 2))
  cp "$RUN/log.jsonl" "$R/$TAG-log.jsonl"
  # The last checkpoint (the end of the run, or where the time limit stopped it).
  local last
  last=$("$PY" -c 'import sys; from pathlib import Path
from zsm.training.checkpoint import latest_checkpoint; print(latest_checkpoint(Path(sys.argv[1])))' \
    "$RUN")
  cp "$last/ema.safetensors" "$OUT/$TAG-ema.safetensors"
  cp "$last/model.safetensors" "$OUT/$TAG-raw.safetensors"

  want eval && [ -n "$CLIPS" ] || return 0
  local pick
  pick=$("$PY" -c 'import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
row = [r for r in rows if "val_psnr_y_ema" in r][-1]
print("ema" if row["val_psnr_y_ema"] >= row["val_psnr_y"] else "raw", row)' "$RUN/log.jsonl")
  echo "validation picks: $pick"
  for clip in "$CLIPS"/*; do
    step "evaluate $(basename "$clip")"
    timeout 240 "$PY" -m zsm evaluate "$clip" --weights "$OUT/$TAG-${pick%% *}.safetensors" \
      --device "$DEVICE" --no-progress -o "$R/eval-$(basename "${clip%.*}")"
  done
}

session 2>&1 | tee "$OUT/session.log"
tar -czf "$OUT/results.tar.gz" -C "$OUT" results && rm -rf "$R"
