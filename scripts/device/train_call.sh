#!/usr/bin/env bash
# A GPU call that trains reference runs within one command's time (docs/reproduction.md, "Plan for the
# GPU sessions", step 2) and brings back their curves and bf16 models:
#
#   command:   bash scripts/device/train_call.sh configs/baseline_small_wd05.json [CONFIG ...]
#   carry:     [".whl", "data/debian/debian-shards.tar.xz"] (and ".whl-test" unless TESTS=0)
#   timeout_s: 590
#
# Here, first: scripts/device/fetch_wheels.sh and the corpus pack (docs/data.md). Steps, each under its
# own time limit: the fused Triton kernel's tests (TESTS=0 skips them), then each CONFIG in turn as
# `sinkinterp train CONFIG --out runs/gpu/NAME` (NAME: the file's stem), each given an equal share of
# the seconds left before BUDGET_S (default 540) less what packing needs (a run that fails before its
# first checkpoint is retried once with compile=false in the rest of its share). When its share runs out,
# `timeout` sends SIGTERM and the trainer saves a checkpoint at the next step and stops (the same
# command resumes it, where the optimizer state is still on the machine). Then each run's latest
# checkpoint is re-saved in bf16 with its tokenizer, metrics and config (scripts/ship_models.py) and
# everything goes into $OUT/runs.tar.xz (split into 15 MiB parts when larger). Back come log.txt and
# that archive; here: cat runs.tar.xz* > /tmp/runs.tar.xz && tar -xJf /tmp/runs.tar.xz (runs/gpu/...
# and runs/gpu_models/NAME/), and, when at least 45 s of the budget are left, attention-cuda.json
# from benchmarks/bench_attention.py. TRAIN_SET="KEY=VALUE ..." adds --set overrides to every run;
# WEIGHTS="3 1 1" shares the time unequally (a long first run, two short second phases from it).
#
# A smoke test of the plumbing on a CPU (a few steps, no GPU needed):
#   DEVICE=cpu OUT=/tmp/train_call PYTHON=/tmp/v/bin/python TESTS=0 BUDGET_S=120 \
#     TRAIN_SET="steps=4 data.batch_size=2 compile=false dtype=float32 sink_eval_seqs=4 eval_batches=1" \
#     bash scripts/device/train_call.sh configs/baseline_small_wd05.json
set -u -o pipefail
cd "$(dirname "$0")/../.."
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:?set OUT to the folder that collects the results}"
BUDGET_S="${BUDGET_S:-540}"
PACK_S=60  # kept back for the bf16 export and the archive
[ $# -ge 1 ] || { echo "usage: train_call.sh CONFIG.json [CONFIG.json ...]" >&2; exit 2; }
for c in "$@"; do [ -f "$c" ] || { echo "train_call.sh: CONFIG $c does not exist" >&2; exit 2; }; done
# WEIGHTS="3 1 1": the runs' shares of the time in these proportions (default: equal), each taken from
# what is left when it starts, so a run that ends early leaves its time to the ones after it
read -r -a weights <<< "${WEIGHTS:-}"
if [ ${#weights[@]} -eq 0 ]; then for _ in "$@"; do weights+=(1); done; fi
if [ ${#weights[@]} -ne $# ]; then echo "train_call.sh: WEIGHTS has ${#weights[@]} numbers for $# configs" >&2; exit 2; fi
for w in "${weights[@]}"; do
  case "$w" in ''|*[!0-9]*|0) echo "train_call.sh: WEIGHTS takes positive whole numbers, got '$w'" >&2; exit 2;; esac
done
mkdir -p "$OUT"
exec > >(tee -a "$OUT/${LOG_NAME:-log.txt}") 2>&1  # LOG_NAME: another log file (a caller that logs too)

if [ "$DEVICE" = cuda ]; then
  source scripts/device/setup.sh data/debian/debian-shards.tar.xz  # (a sourced script sees our own "$@" otherwise)
  PY=python3
else
  PY="${PYTHON:-python3}"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
fi
sets=()
for kv in ${TRAIN_SET:-}; do sets+=(--set "$kv"); done

export XZ_OPT="${XZ_OPT:--T0}"  # xz on every core for the archive
STEP_LIMIT_OK=1  # a training stopped at its share saved its checkpoint: not a failure
source scripts/device/steps.sh  # step NAME LIMIT COMMAND... (sets $rc)

echo "train_call: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') device $DEVICE budget ${BUDGET_S}s"
if [ "${TESTS:-1}" = 1 ]; then
  step triton-tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_triton_attention.py \
    tests/test_models_paths.py::test_cuda_flash_kernel_gives_the_log_sum_exp
fi

names=()
i=0
for cfg in "$@"; do
  name=$(basename "$cfg" .json)
  rest=0
  for w in "${weights[@]:$i}"; do rest=$((rest + w)); done
  share=$(( (BUDGET_S - PACK_S - SECONDS) * ${weights[$i]} / rest ))
  i=$((i + 1))
  if [ "$share" -lt 30 ]; then echo "== train-$name: skipped (only ${share}s left)"; continue; fi
  t0=$SECONDS
  step "train-$name" "$share" $PY -m sinkinterp.train train "$cfg" --out "runs/gpu/$name" "${sets[@]}" \
    --set device="$DEVICE"
  if [ $rc != 0 ] && [ $rc != 124 ] && [ ! -f "runs/gpu/$name/checkpoints/latest" ] \
     && [ $((share - SECONDS + t0)) -ge 60 ]; then  # a failure before any checkpoint: try once without compile
    rm -rf "runs/gpu/$name"
    step "train-$name-eager" $((share - SECONDS + t0)) $PY -m sinkinterp.train train "$cfg" --out "runs/gpu/$name" \
      "${sets[@]}" --set device="$DEVICE" --set compile=false
  fi
  [ -f "runs/gpu/$name/checkpoints/latest" ] && names+=("$name")
done

if [ ${#names[@]} -gt 0 ]; then
  args=()
  for n in "${names[@]}"; do args+=("$n=runs/gpu/$n"); done
  step export-bf16 40 $PY scripts/ship_models.py "${args[@]}" --dest runs/gpu_models
  tar -cJf "$OUT/runs.tar.xz" --exclude=checkpoints runs/gpu runs/gpu_models 2>/dev/null \
    || tar -cJf "$OUT/runs.tar.xz" --exclude=checkpoints runs/gpu
  if [ "$(stat -c %s "$OUT/runs.tar.xz")" -gt $((15 * 1024 * 1024)) ]; then
    split -b 15M "$OUT/runs.tar.xz" "$OUT/runs.tar.xz.part-" && rm "$OUT/runs.tar.xz"
  fi
fi
# what is left of the budget: the kernel-level timing of the fused sigmoid / elu+1 kernel (BENCH=0 skips it)
left_s=$((BUDGET_S - SECONDS - 5))
if [ "${BENCH:-1}" = 1 ] && [ "$DEVICE" = cuda ] && [ "$left_s" -ge 45 ]; then
  step bench-attention "$left_s" $PY benchmarks/bench_attention.py --json "$OUT/attention-cuda.json"
fi
echo "train_call: done in ${SECONDS}s; failed: ${failed[*]:-none}"
ls -la "$OUT"
[ ${#failed[@]} = 0 ]
