#!/usr/bin/env bash
# The GPU path, end to end: every benchmark that trains or runs a network, at smoke scale, with
# SCIFLOW_DEVICE=cuda (a missing GPU is an error naming SCIFLOW_DEVICE, not a silent CPU run),
# then an assertion per benchmark that its work ran on CUDA (meta.device.devices_used, recorded by
# operators.device.record) and the CUDA peak memory. About 3-5 minutes on one GPU.
#
#   infra/gpu-check.sh [OUT_DIR]          # default: a temporary folder; the JSON results stay there
#
# GPU_CHECK_BENCHMARKS picks benchmarks (default: all four below); SCIFLOW_DEVICE=cpu runs the same
# checks against the CPU (how tests/system/test_gpu_check.py exercises this script without a GPU).
#
# Exit 0 only when every benchmark finished and every one of its networks ran on a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-$(mktemp -d -t sciflow-gpu-check.XXXXXX)}
mkdir -p "$OUT"
export SCIFLOW_DEVICE=${SCIFLOW_DEVICE:-cuda}
export SCIFLOW_HOME=${SCIFLOW_HOME:-$OUT/home}
"$BIN/python" - <<'PY'
import os, torch, sys
if os.environ["SCIFLOW_DEVICE"] == "cpu":
    print("gpu-check: SCIFLOW_DEVICE=cpu: checking that the work ran on the CPU")
elif not torch.cuda.is_available():
    sys.exit(f"gpu-check: torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
else:
    print(f"gpu-check: {torch.cuda.device_count()} CUDA device(s): {torch.cuda.get_device_name(0)}")
PY
# benchmark -> what must have run on CUDA (operators.device.record names)
declare -A MUST=(
  [linear]="dcdm training"
  [operators]="operator training"
  [neural-odes]="node training,node prediction,sde training"
  [hard-constraints]="hard training,hard constraint solves,hard evaluation"
)
status=0
want=cuda
[[ $SCIFLOW_DEVICE == cpu ]] && want=cpu
for name in ${GPU_CHECK_BENCHMARKS:-linear operators neural-odes hard-constraints}; do
  start=$(date +%s)
  "$BIN/sciflow" bench "$name" --scale smoke --out "$OUT/$name-smoke.json" > "$OUT/$name.log" 2>&1 || {
    echo "gpu-check: $name FAILED (log: $OUT/$name.log)"; tail -20 "$OUT/$name.log"; status=1; continue; }
  "$BIN/python" - "$OUT/$name-smoke.json" "${MUST[$name]}" "$(( $(date +%s) - start ))" "$want" <<'PY' || status=1
import json, sys
meta = json.load(open(sys.argv[1]))["meta"]
dev, must, seconds, want = meta["device"], [m for m in sys.argv[2].split(",") if m], sys.argv[3], sys.argv[4]
used = dev["devices_used"]
bad = {m: used.get(m) for m in must if not used.get(m) or not all(d.startswith(want) for d in used[m])}
print(f"gpu-check: {meta['benchmark']}: {seconds} s on {dev['device']}, CUDA peak {dev['cuda_peak_mib']} MiB, used {used}")
if bad:
    sys.exit(f"gpu-check: {meta['benchmark']}: not (only) on {want}: {bad}")
PY
done
echo "gpu-check: results in $OUT"
exit $status
