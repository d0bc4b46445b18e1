#!/usr/bin/env bash
# Prove the project from nothing, as a new user would: clone the committed HEAD into a temporary
# folder, make its environment with an empty pip cache, then `make test` and `make run`.
# Prints the timings of each step; exits non-zero if any step fails. The clone is removed at the
# end unless KEEP=1. System packages (apt) are installed by `make` if missing; the summary says
# whether they were already present.
#
#   infra/fresh-check.sh            # HEAD of this repository
#   KEEP=1 infra/fresh-check.sh     # keep the clone (its path is printed)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/sciflow-fresh.XXXXXX")
log="$work/fresh-check.log"
cleanup() { if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work/sciflow"; fi; }
trap cleanup EXIT

export PIP_NO_CACHE_DIR=1
export SCIFLOW_HOME="$work/state"
apt_present=yes
for p in petsc-dev libopenblas-dev openmpi-bin postgresql; do dpkg -s "$p" >/dev/null 2>&1 || apt_present=no; done

step() {  # step NAME COMMAND...: run, time, log
  local name=$1; shift
  local t0=$SECONDS
  echo "[fresh-check] $name: $*" | tee -a "$log"
  if ! "$@" >>"$log" 2>&1; then
    echo "[fresh-check] $name FAILED after $((SECONDS - t0)) s; last lines of $log:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$work/timings.tsv"
  echo "[fresh-check] $name: $((SECONDS - t0)) s" | tee -a "$log"
}

commit=$(git -C "$src" rev-parse HEAD)
step clone git clone -q --no-local "$src" "$work/sciflow"
cd "$work/sciflow"
git checkout -q "$commit"
step setup make setup
step test make test
step run make run

echo
echo "fresh check of $commit (pip cache disabled; apt packages already present: $apt_present)"
column -t "$work/timings.tsv"
grep -E "^[0-9]+ passed|passed" "$log" | tail -1 || true
echo "log: $log"
