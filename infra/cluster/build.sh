#!/usr/bin/env bash
# Build the sciflow images tagged with the git commit they contain (never :latest), from the
# repository root, and pin the Kubernetes manifests to that tag.
#
#   infra/cluster/build.sh --local                           # a machine with no image registry
#   infra/cluster/build.sh                                   # images FROM Docker Hub's python:3.11
#   CLUSTER_REGISTRY=registry.example/team TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     infra/cluster/build.sh --push                          # a GPU cluster
#
# --local: the base image comes from Debian alone (infra/cluster/base-image.sh, debootstrap), so
# does PostgreSQL (Dockerfile.postgres; the worker image serves as the Prefect server), the
# lock's CPU torch from this machine's wheel folder ($PIP_FIND_LINKS, served to the build on a
# loopback port; the build runs with --network host), and the worker image runs as this user's
# uid, so flow runs in it can write the bind-mounted $SCIFLOW_HOME.
#
# sciflow-gpu:<commit> gets the commit as its build argument GIT_COMMIT, so every run inside it
# records that commit (SCIFLOW_GIT_COMMIT, read by flows.tracking.git_commit: the image has no
# .git). A tree with uncommitted changes is refused (the tag would lie); CLUSTER_ALLOW_DIRTY=1
# builds it anyway as <commit>-dirty. Writes $CLUSTER_RELEASE_DIR (default infra/cluster/k8s/release,
# git-ignored): a kustomize overlay of infra/cluster/k8s with the image pinned
# (`kubectl apply -k infra/cluster/k8s/release`). Prints the variables compose and
# infra/cluster/gpu-pool.sh read (stdout; progress goes to stderr).
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

commit=$(git rev-parse HEAD)
tag=$commit
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  if [ -z "${CLUSTER_ALLOW_DIRTY:-}" ]; then
    echo "build.sh: uncommitted changes to tracked files; commit them (an image is one commit), or set CLUSTER_ALLOW_DIRTY=1" >&2
    exit 1
  fi
  tag=$commit-dirty
fi
registry=${CLUSTER_REGISTRY:+${CLUSTER_REGISTRY%/}/}
gpu=${registry}sciflow-gpu
docker=${DOCKER:-docker}

mode=${1:-}
case $mode in ""|--local|--push) ;; *) echo "build.sh: unknown option $mode (--local or --push)" >&2; exit 2;; esac
args=(--build-arg "GIT_COMMIT=$tag" ${TORCH_INDEX_URL:+--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"})
common=()
if [ "$mode" = --local ]; then
  base=$(infra/cluster/base-image.sh)
  common+=(--network host --build-arg "BASE_IMAGE=$base")
  args+=(--build-arg "WORKER_UID=$(id -u)")
  links=${PIP_FIND_LINKS:-}
  if [ -n "$links" ] && [ -d "$links" ]; then  # a folder of wheels: serve it to the build
    # a fixed port: the URL is a build argument of the dependency layer, so a new one would rebuild it
    port=${CLUSTER_WHEEL_PORT:-38471}
    python3 -m http.server --bind 127.0.0.1 --directory "$links" "$port" >/dev/null 2>&1 &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    for _ in $(seq 50); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/', timeout=1)" 2>/dev/null && break; sleep 0.1; done
    kill -0 "$server" 2>/dev/null || { echo "build.sh: cannot serve $links on 127.0.0.1:$port (CLUSTER_WHEEL_PORT)" >&2; exit 1; }
    args+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/")
  fi
fi
# MLflow's server image installs the lock's versions of what it shares with the worker
grep -E '^[A-Za-z0-9]' requirements.lock | sed 's/ *\\$//' > infra/cluster/.constraints.txt
mlflow_version=$(sed -n 's/^mlflow==\([^ ]*\).*/\1/p' infra/cluster/.constraints.txt)
mlflow=${registry}sciflow-mlflow:$tag
# every image carries the commit in its tag and its revision label (the MLflow version: a label)
labels=(--label "org.opencontainers.image.revision=$tag")
t0=$SECONDS
"$docker" build -f infra/cluster/Dockerfile.gpu-worker "${common[@]}" "${args[@]}" -t "$gpu:$tag" . >&2
echo "build.sh: $gpu:$tag in $((SECONDS - t0)) s" >&2
t0=$SECONDS
"$docker" build -f infra/cluster/Dockerfile.mlflow "${common[@]}" "${labels[@]}" \
  --label "org.opencontainers.image.version=$mlflow_version" -t "$mlflow" infra/cluster >&2
echo "build.sh: $mlflow in $((SECONDS - t0)) s" >&2
if [ "$mode" = --local ]; then
  # no registry serves postgres:16 or prefecthq/prefect here: Debian's PostgreSQL, and the worker
  # image (the same Prefect) as the Prefect server; compose.yaml reads both names (printed below)
  postgres=sciflow-postgres:$tag
  t0=$SECONDS
  "$docker" build -f infra/cluster/Dockerfile.postgres "${common[@]}" "${labels[@]}" -t "$postgres" infra/cluster >&2
  echo "build.sh: $postgres in $((SECONDS - t0)) s" >&2
fi
if [ "$mode" = "--push" ]; then
  "$docker" push "$gpu:$tag"
  "$docker" push "$mlflow"
fi

release=${CLUSTER_RELEASE_DIR:-infra/cluster/k8s/release}
mkdir -p "$release"
cat > "$release/kustomization.yaml" <<YAML
# Written by infra/cluster/build.sh for commit $tag: infra/cluster/k8s with the images pinned.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$release" infra/cluster/k8s)
images:
  - name: sciflow-gpu
    newName: $gpu
    newTag: "$tag"
  - name: sciflow-mlflow
    newName: ${mlflow%:*}
    newTag: "${mlflow##*:}"
YAML

echo "export SCIFLOW_GIT_COMMIT=$tag"
echo "export CLUSTER_IMAGE_NAME=$gpu"
echo "export CLUSTER_IMAGE=$gpu:$tag"
echo "export MLFLOW_IMAGE=$mlflow"
if [ "$mode" = --local ]; then
  echo "export POSTGRES_IMAGE=$postgres"
  echo "export PREFECT_SERVER_IMAGE=$gpu:$tag"
fi
