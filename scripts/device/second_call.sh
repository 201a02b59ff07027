#!/usr/bin/env bash
# The next GPU call after the first session's (docs/performance.md, "What the next GPU session runs
# first"), one command of under 10 minutes, each step under its own time limit:
#
#   command:   bash scripts/device/second_call.sh
#   carry:     [".whl", ".whl-test", "data/debian/debian-shards.tar.xz"] (the pack only where BUDGET_S > 0
#              trains; with it and the tests' wheels the tree must stay under 64 MiB: tests/test_device_budget.py)
#   timeout_s: 590
#
# 1. bench_attention.py (each row checks its output against a float32 reference before it is timed):
#    SDPA softmax against the fused kernel with each way of computing a weight (sim_impl "mufu", the
#    default now, "portable", the code that ran before, and "tanh"), two-pass and atomic dq, square
#    64 x 64 tiles and 128 x 64 ones with 8 warps (FlashAttention's Triton setting on Hopper), sigmoid
#    and elu+1, at T 2048 / 4096 -> attention-cuda.json. None of it has run on a GPU: since the second
#    session's calls, whole tiles are scored without a mask, `sim_attention(dq="atomic")`,
#    `block=(BLOCK_M, BLOCK_N)` and `sim_impl` (docs/performance.md, "The kernel's instruction
#    budget": its estimates are what this step checks). BENCH_ARGS replaces the arguments (the tile
#    sweep of 2026-12-04: `--seq-lens 2048,4096 --methods sdpa_softmax,triton_sigmoid --tiles
#    32x4x2,64x4x2,...`, benchmarks/results/attention-tiles-h200.json).
# 2. The fused kernel's tests with their failure messages (`--tb=short`, stopping after 3 failures).
#    On the H200 on 2026-12-04 (second session) all that ran passed after the float32-scalar fix but
#    the compiled-step test (its subprocess lost PYTHONPATH, since fixed); the whole file needed about
#    4 minutes compiled then, more now (each sim_impl in the bf16 tests): TEST_LIMIT=240.
# 3. In the time left, `scripts/device/train_call.sh` on CONFIGS (default configs/kv_bias_small.json,
#    to 9,000 steps: about 175 s), curves and bf16 models back as runs.tar.xz parts.
# BENCH_LIMIT / TEST_LIMIT change the first two steps' limits (0 skips a step): a call in what is left
# of a session's device time. Back come log.txt (steps 1-2), train_log.txt, attention-cuda.json and
# the archive. Here, first: scripts/device/fetch_wheels.sh and the corpus pack (docs/data.md).
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
CONFIGS="${CONFIGS:-configs/kv_bias_small.json}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

if [ "$DEVICE" = cuda ]; then
  source scripts/device/setup.sh data/debian/debian-shards.tar.xz  # (a sourced script sees our "$@" otherwise)
  PY=python3
  tests=(tests/test_triton_attention.py)
  bench=(--seq-lens 2048,4096 --tiles 64,128/64x8x3
         --methods "sdpa_softmax,triton_sigmoid,triton_sigmoid_portable,triton_sigmoid_tanh,triton_sigmoid_atomic,\
triton_sigmoid_atomic_tanh,triton_elu1,triton_elu1_portable,triton_elu1_atomic")
  limits=("${BENCH_LIMIT:-150}" "${TEST_LIMIT:-240}")  # seconds for steps 1 and 2 (the bench: 34 rows; 18 took 50 s)
else  # the CPU smoke test: Triton's interpreter, toy sizes
  PY="${PYTHON:-python3}"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=1
  tests=(tests/test_triton_attention.py -k "never_mask and 8")
  bench=(--device cpu --interpret --seq-lens 32 --batch-size 1 --heads 2 --d-head 16 --warmup 0 --repeats 1
         --methods sdpa_softmax,triton_sigmoid,triton_sigmoid_atomic --tiles 16,16/32x2)
  limits=("${BENCH_LIMIT:-120}" "${TEST_LIMIT:-120}")
fi

source scripts/device/steps.sh  # step NAME LIMIT COMMAND...

echo "second_call: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') device $DEVICE budget ${BUDGET_S}s"
if [ -n "${BENCH_ARGS:-}" ]; then read -r -a bench <<< "$BENCH_ARGS"; fi
if [ "${limits[0]}" -gt 0 ]; then
  step bench-attention "${limits[0]}" $PY benchmarks/bench_attention.py "${bench[@]}" --json "$OUT/attention-cuda.json"
else
  echo "== bench-attention: skipped (BENCH_LIMIT=0)"
fi
if [ "${limits[1]}" -gt 0 ]; then
  step triton-tests "${limits[1]}" $PY -m pytest -q -s -p no:cacheprovider --tb=short --maxfail=3 "${tests[@]}"
else
  echo "== triton-tests: skipped (TEST_LIMIT=0)"
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
