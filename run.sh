#!/usr/bin/env bash
# Set up (or reuse) the virtual environment in .venv, then run a sinkinterp command.
#   ./run.sh report [ARGS]   the main job: a sink report on the embedded default model (CPU, offline)
#   ./run.sh test [ARGS]     the test suite (pytest ARGS; add --run-slow for real-model tests), in up to 4
#                            parallel workers, one torch thread each (pass -n 0 for one process)
#   ./run.sh ARGS            any other `sinkinterp ARGS`
# The environment is rebuilt when pyproject.toml or constraints.txt change.
# SINKINTERP_TL=4.3.0 (with its own SINKINTERP_VENV) installs that TransformerLens release instead of
# constraints.txt's pin, to run the suite against another TransformerLens line. SINKINTERP_BASE=.venv (an
# environment this script set up, same Python) lets the new one read that one's packages (a .pth file) and
# install only what differs, in under a minute instead of several; its own packages come first on sys.path.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${SINKINTERP_VENV:-.venv}"
if [ -z "${PYTHON:-}" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
TL="${SINKINTERP_TL:-}"
BASE="${SINKINTERP_BASE:-}"
if [ -n "$BASE" ]; then
  if [ ! -x "$BASE/bin/python" ] || [ ! -f "$BASE/.sinkinterp-stamp" ]; then
    echo "run.sh: SINKINTERP_BASE=$BASE is not an environment set up by run.sh (run ./run.sh once with it first)" >&2
    exit 2
  fi
  # resolved by Python, not realpath(1): BSD / macOS realpath has no -m for a path that does not exist yet
  abspath() { "$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.argv[1]))' "$1"; }
  BASE="$(abspath "$BASE")"
  if [ "$BASE" = "$(abspath "$VENV")" ]; then
    echo "run.sh: SINKINTERP_BASE must name another environment than SINKINTERP_VENV ($VENV)" >&2
    exit 2
  fi
  py_version='import sys; print(sys.version_info[:2])'
  if [ "$("$BASE/bin/python" -c "$py_version")" != "$("$PYTHON" -c "$py_version")" ]; then
    echo "run.sh: SINKINTERP_BASE=$BASE runs another Python version than $PYTHON" >&2
    exit 2
  fi
fi
stamp_source() {
  cat pyproject.toml constraints.txt
  if [ -n "$TL" ]; then echo "transformer-lens==$TL"; fi
  if [ -n "$BASE" ]; then echo "base=$BASE $(cat "$BASE/.sinkinterp-stamp")"; fi
}
stamp="$(stamp_source | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.sinkinterp-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "run.sh: setting up $VENV (first run takes a few minutes)..." >&2
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sinkinterp needs Python >= 3.11")'
  "$PYTHON" -m venv "$VENV"
  pip_q=(-q --disable-pip-version-check)
  base_pth="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_sinkinterp_base.pth"
  rm -f "$base_pth"
  if [ -n "$BASE" ]; then
    base_site="$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$base_site" > "$base_pth"
  fi
  # torch first, pinned to the CPU build, so no dependency pulls a multi-GB CUDA build.
  "$VENV/bin/pip" install "${pip_q[@]}" "$(grep '^torch==' constraints.txt)"
  constraints=constraints.txt
  if [ -n "$TL" ]; then
    constraints="$VENV/constraints-tl.txt"
    sed "s/^transformer-lens==.*/transformer-lens==$TL/" constraints.txt > "$constraints"
  fi
  "$VENV/bin/pip" install "${pip_q[@]}" -c "$constraints" -e ".[test]"
  if [ -n "$TL" ]; then  # the release asked for, not one read from SINKINTERP_BASE
    got="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("transformer-lens"))')"
    if [ "$got" != "$TL" ]; then echo "run.sh: $VENV has transformer-lens $got, not $TL" >&2; exit 1; fi
  fi
  echo "$stamp" > "$VENV/.sinkinterp-stamp"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cmd="${1:-report}"
[ $# -gt 0 ] && shift
case "$cmd" in
  test)
    # parallel workers (pytest-xdist), one torch thread each: the suite's small tensors leave a second thread
    # idle, so two workers on two cores take about half the time; -n / -p no:xdist of the caller win
    cores=$(nproc 2>/dev/null || echo 1)
    workers=$(( cores < 4 ? cores : 4 ))
    chosen=0
    for arg in "$@"; do
      case "$arg" in -n|-n*|--numprocesses*|no:xdist) chosen=1 ;; esac
    done
    if [ "$chosen" -eq 0 ] && [ "$workers" -gt 1 ]; then
      export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
      exec "$VENV/bin/python" -m pytest -n "$workers" "$@"
    fi
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *) exec "$VENV/bin/sinkinterp" "$cmd" "$@" ;;
esac
