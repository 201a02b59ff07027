#!/usr/bin/env bash
# The first GPU call of a session, prepared so that it fits the device budget (15 device minutes a
# session, machine start included; 10 minutes a command): one command, each step under its own time
# limit so that a slow or hanging step cannot eat the others, everything it learns under $OUT.
#
# Here, first: scripts/device/fetch_wheels.sh. Then the device tool's run with
#   command:   bash scripts/device/first_call.sh
#   carry:     [".whl", ".whl-test"]
#   timeout_s: 590
# It checks and times, in this order: the fused Triton sigmoid / elu+1 kernel against its float64
# reference, that kernel against FlashAttention-backed SDPA (both also in second_call.sh, which ran
# them on the H200 on 2026-12-04: TEST_LIMIT=0 ATTENTION_LIMIT=0 skips them here), training
# throughput and MFU of the reduced-scale model (softmax, k*/v*, sigmoid, elu+1 and the plain compiled
# SDPA reference), streaming measurement against run_with_cache (every key's column sums in PyTorch
# and in the Triton column kernels: measure vs measure_triton), and batched patching against
# TransformerLens's per-cell functions. Back come log.txt and one JSON per benchmark (the device
# returns at most 8 files): copy the JSON into benchmarks/results/ and update docs/performance.md.
#
# A smoke test of the plumbing on a CPU (tiny sizes, no GPU needed):
#   DEVICE=cpu OUT=/tmp/first_call PYTHON=.venv/bin/python bash scripts/device/first_call.sh
set -u -o pipefail
cd "$(dirname "$0")/../.."
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:?set OUT to the folder that collects the results}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

if [ "$DEVICE" = cuda ]; then
  source scripts/device/setup.sh
  PY=python3
  attention=(--json "$OUT/attention-cuda.json")
  train=(--models reduced --json "$OUT/train-cuda-reduced.json")
  measure=(--device cuda --dtype bfloat16 --models small,large --seq-lens 64,512,2048 --num-seqs 16
           --methods forward,forward_materialized,measure,measure_first,measure_triton,cache
           --json "$OUT/measure-cuda.json")
  patching=(--device cuda --models 12l --json "$OUT/patching-cuda.json")
  limits=("${TEST_LIMIT:-180}" "${ATTENTION_LIMIT:-100}" 260 60 60)  # bench-train: 11 compiled rows (triton_fast added)
else  # the CPU smoke test: the same steps at toy sizes
  PY="${PYTHON:-python3}"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  attention=(--device cpu --interpret --seq-lens 32 --batch-size 1 --heads 2 --d-head 16 --warmup 0 --repeats 1
             --methods sdpa_softmax,triton_sigmoid --json "$OUT/attention-cpu.json")
  train=(--device cpu --models tiny --steps 2 --repeats 1 --warmup 1 --json "$OUT/train-cpu-tiny.json")
  measure=(--device cpu --models tiny --seq-lens 16 --num-seqs 4 --repeats 1 --warmup 0 --isolation none
           --json "$OUT/measure-cpu-tiny.json")
  patching=(--device cpu --models tiny --sweeps resid_pre --json "$OUT/patching-cpu-tiny.json")
  limits=("${TEST_LIMIT:-300}" "${ATTENTION_LIMIT:-120}" 120 120 120)
fi

source scripts/device/steps.sh  # step NAME LIMIT COMMAND...

echo "first_call: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') device $DEVICE"
[ "$DEVICE" = cuda ] || export TRITON_INTERPRET=1  # the CPU smoke test runs the kernel in Triton's interpreter
if [ "${limits[0]}" -gt 0 ]; then
  step triton-tests "${limits[0]}" $PY -m pytest -q -p no:cacheprovider tests/test_triton_attention.py \
    tests/test_models_paths.py::test_cuda_flash_kernel_gives_the_log_sum_exp
else
  echo "== triton-tests: skipped (TEST_LIMIT=0)"
fi
unset TRITON_INTERPRET
if [ "${limits[1]}" -gt 0 ]; then
  step bench-attention "${limits[1]}" $PY benchmarks/bench_attention.py "${attention[@]}"
else
  echo "== bench-attention: skipped (ATTENTION_LIMIT=0)"
fi
step bench-train "${limits[2]}" $PY benchmarks/bench_train.py "${train[@]}"
step bench-measure "${limits[3]}" $PY benchmarks/bench_measure.py "${measure[@]}"
step bench-patching "${limits[4]}" $PY benchmarks/bench_patching.py "${patching[@]}"
echo "first_call: done in ${SECONDS}s; failed: ${failed[*]:-none}"
ls -la "$OUT"
[ ${#failed[@]} = 0 ]
