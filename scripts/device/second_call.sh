#!/usr/bin/env bash
# The next GPU call after the first session's (docs/performance.md, "What the next GPU session runs
# first"), one command of under 10 minutes, each step under its own time limit:
#
#   command:   bash scripts/device/second_call.sh
#   carry:     [".whl", "data/debian/debian-shards.tar.xz"]
#   timeout_s: 590
#
# 1. The fused kernel's tests with their failure messages (`--tb=short`, stopping after 3 failures):
#    on the H200 on 2026-12-04, 13 of 18 failed where the head dimension was masked, since padded.
# 2. The tile sweep of the fused sigmoid kernel against SDPA softmax at T 2048 / 4096
#    (`bench_attention.py --tiles`), which picks the kernel's launch defaults.
# 3. In the time left, `scripts/device/train_call.sh` on CONFIGS (default configs/baseline_small.json,
#    the reference's wd 0.1 row: about 190 s for 9,000 steps), curves and bf16 models back as
#    runs.tar.xz parts.
# TEST_LIMIT / TILES_LIMIT change the two steps' limits (a call in what is left of a session's device time;
# TILES_LIMIT=0 skips the sweep, which ran on the H200 on 2026-12-04: benchmarks/results/attention-tiles-h200.json).
# Back come log.txt (steps 1-2), train_log.txt, attention-tiles.json and the archive. Here, first:
# scripts/device/fetch_wheels.sh and the corpus pack (docs/data.md).
#
# A smoke test of the plumbing on a CPU (Triton's interpreter, toy sizes):
#   DEVICE=cpu OUT=/tmp/second_call PYTHON=/tmp/v/bin/python BUDGET_S=200 \
#     TRAIN_SET="steps=4 warmup_steps=1 data.batch_size=2 compile=false dtype=float32 sink_eval_seqs=4 eval_batches=1" \
#     bash scripts/device/second_call.sh
set -u -o pipefail
cd "$(dirname "$0")/../.."
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:?set OUT to the folder that collects the results}"
BUDGET_S="${BUDGET_S:-550}"
CONFIGS="${CONFIGS:-configs/baseline_small.json}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

if [ "$DEVICE" = cuda ]; then
  source scripts/device/setup.sh data/debian/debian-shards.tar.xz  # (a sourced script sees our "$@" otherwise)
  PY=python3
  tests=(tests/test_triton_attention.py)
  tiles=(--seq-lens 2048,4096 --methods sdpa_softmax,triton_sigmoid
         --tiles 32x4x2,64x4x2,64x4x3,64x8x3,128x4x2,128x8x2,128x8x3)
  limits=("${TEST_LIMIT:-150}" "${TILES_LIMIT:-100}")  # seconds for steps 1 and 2
else  # the CPU smoke test: Triton's interpreter, toy sizes
  PY="${PYTHON:-python3}"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=1
  tests=(tests/test_triton_attention.py -k "never_mask and 8")
  tiles=(--device cpu --interpret --seq-lens 32 --batch-size 1 --heads 2 --d-head 16 --warmup 0 --repeats 1
         --methods sdpa_softmax,triton_sigmoid --tiles 16x2x2,32)
  limits=("${TEST_LIMIT:-120}" "${TILES_LIMIT:-120}")
fi

source scripts/device/steps.sh  # step NAME LIMIT COMMAND...

echo "second_call: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') device $DEVICE budget ${BUDGET_S}s"
step triton-tests "${limits[0]}" $PY -m pytest -q -p no:cacheprovider --tb=short --maxfail=3 "${tests[@]}"
if [ "${limits[1]}" -gt 0 ]; then
  step bench-tiles "${limits[1]}" $PY benchmarks/bench_attention.py "${tiles[@]}" --json "$OUT/attention-tiles.json"
else
  echo "== bench-tiles: skipped (TILES_LIMIT=0)"
fi
left=$((BUDGET_S - SECONDS))
if [ "$left" -ge 120 ]; then
  # train_call.sh sets itself up again (quick: the shards are unpacked) and logs to train_log.txt
  # shellcheck disable=SC2086
  step train $((left + 10)) env LOG_NAME=train_log.txt BUDGET_S="$left" TESTS=0 BENCH=0 \
    bash scripts/device/train_call.sh $CONFIGS
else
  echo "== train: skipped (only ${left}s left)"
fi
echo "second_call: done in ${SECONDS}s; failed: ${failed[*]:-none}"
ls -la "$OUT"
[ ${#failed[@]} = 0 ]
