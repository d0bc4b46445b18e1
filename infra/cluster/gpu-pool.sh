#!/usr/bin/env bash
# Create (or update) the `gpu` work pool with its concurrency bound and the image of this release.
#
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   CLUSTER_IMAGE=registry.example/team/sciflow-gpu:<commit> infra/cluster/gpu-pool.sh kubernetes
#   infra/cluster/gpu-pool.sh process       # compose: the gpu-worker container runs the flow runs
#
# TYPE kubernetes (default): base job template infra/cluster/k8s-gpu-job-template.json; docker:
# infra/docker/gpu-base-job-template.json; both with their default image set to $CLUSTER_IMAGE
# (required: the commit-tagged image infra/cluster/build.sh printed) and pull policy IfNotPresent
# (commit tags are immutable). process: Prefect's default template.
# The pool's concurrency limit, $GPU_POOL_LIMIT (default 2), is how many flow runs the
# server lets start on the pool at once, however many are queued or however many workers poll it.
#
# A stand-in on a machine without GPUs (the container test, tests/system/test_containers.py):
#   GPU_POOL_DEVICES=none        drops the template's GPU device request (docker refuses to start a
#                                container asking for the nvidia driver where there is none) and
#                                the gpu_count variable; nothing else of the template changes
#   GPU_POOL_JOB_VARIABLES=JSON  more variable defaults, e.g. {"network_mode": "host",
#                                "volumes": ["/data:/data"], "env": {"SCIFLOW_HOME": "/data"}}
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
type=${1:-kubernetes}
name=${GPU_POOL_NAME:-gpu}
limit=${GPU_POOL_LIMIT:-2}
prefect=(${PREFECT:-prefect} --no-prompt)

case "$type" in
  kubernetes) template=$here/k8s-gpu-job-template.json ;;
  docker) template=$here/../docker/gpu-base-job-template.json ;;
  process) template= ;;
  *) echo "gpu-pool.sh: TYPE must be kubernetes, docker or process, got '$type'" >&2; exit 2 ;;
esac

if [ -n "$template" ]; then
  image=${CLUSTER_IMAGE:?gpu-pool.sh: set CLUSTER_IMAGE to the commit-tagged image (infra/cluster/build.sh prints it)}
  case "$image" in
    *:latest|*:set-by-*) echo "gpu-pool.sh: CLUSTER_IMAGE=$image is not a commit tag" >&2; exit 2 ;;
  esac
  rendered=$(mktemp --suffix=.json)
  trap 'rm -f "$rendered"' EXIT
  python3 - "$template" "$image" "${GPU_POOL_DEVICES:-gpu}" "${GPU_POOL_JOB_VARIABLES:-{\}}" > "$rendered" <<'PY'
import json, sys
template = json.load(open(sys.argv[1]))
props = template["variables"]["properties"]
props["image"]["default"] = sys.argv[2]
if "image_pull_policy" in props:
    props["image_pull_policy"]["default"] = "IfNotPresent"
if sys.argv[3] == "none":
    kwargs = template["job_configuration"].get("container_create_kwargs")
    if kwargs is None or "device_requests" not in kwargs:
        sys.exit("gpu-pool.sh: GPU_POOL_DEVICES=none is for the docker template (its device_requests)")
    del kwargs["device_requests"]
    props.pop("gpu_count", None)
elif sys.argv[3] != "gpu":
    sys.exit(f"gpu-pool.sh: GPU_POOL_DEVICES must be gpu or none, got {sys.argv[3]!r}")
try:
    extra = json.loads(sys.argv[4])
except json.JSONDecodeError as e:
    sys.exit(f"gpu-pool.sh: GPU_POOL_JOB_VARIABLES is not JSON: {e}")
unknown = sorted(set(extra) - set(props))
if unknown:
    sys.exit(f"gpu-pool.sh: GPU_POOL_JOB_VARIABLES names {unknown}, not variables of {sys.argv[1]}")
for key, value in extra.items():
    props[key]["default"] = value
json.dump(template, sys.stdout, indent=2)
PY
  "${prefect[@]}" work-pool create "$name" --type "$type" --base-job-template "$rendered" --overwrite
else
  "${prefect[@]}" work-pool create "$name" --type process --overwrite
fi
"${prefect[@]}" work-pool set-concurrency-limit "$name" "$limit"
