# Sourced by the device call scripts (first_call.sh, train_call.sh, second_call.sh):
#   step NAME LIMIT_SECONDS COMMAND...
# runs COMMAND under its own time limit (SIGTERM at the limit, SIGKILL 15 s later), says how it ended,
# leaves its exit status in $rc and appends NAME to the array `failed` unless it succeeded; with
# STEP_LIMIT_OK=1 a step stopped by its limit (status 124: a training that saved its checkpoint on
# SIGTERM) does not count as failed.
failed=()
rc=0
step() {
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name: limit ${limit}s: $*"
  timeout --kill-after=15 "$limit" "$@"
  rc=$?
  echo "== $name: rc=$rc after $((SECONDS - start))s$([ $rc = 124 ] && echo ' (time limit)')"
  [ $rc = 0 ] || { [ $rc = 124 ] && [ "${STEP_LIMIT_OK:-0}" = 1 ]; } || failed+=("$name")
}
