#!/usr/bin/env bash
# Build the sciflow images tagged with the git commit they contain (never :latest), from the
# repository root, and pin the Kubernetes manifests to that tag.
#
#   infra/cluster/build.sh                                   # local images
#   CLUSTER_REGISTRY=registry.example/team infra/cluster/build.sh --push
#
# sciflow-gpu:<commit> gets the commit as its build argument GIT_COMMIT, so every run inside it
# records that commit (SCIFLOW_GIT_COMMIT, read by flows.tracking.git_commit: the image has no
# .git). A tree with uncommitted changes is refused (the tag would lie); CLUSTER_ALLOW_DIRTY=1
# builds it anyway as <commit>-dirty. Writes $CLUSTER_RELEASE_DIR (default infra/cluster/k8s/release,
# git-ignored): a kustomize overlay of infra/cluster/k8s with the image pinned
# (`kubectl apply -k infra/cluster/k8s/release`). Prints the variables compose and
# infra/cluster/gpu-pool.sh read.
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
mlflow=${registry}sciflow-mlflow:3.17
docker=${DOCKER:-docker}

"$docker" build -f infra/cluster/Dockerfile.gpu-worker --build-arg "GIT_COMMIT=$tag" -t "$gpu:$tag" .
"$docker" build -f infra/cluster/Dockerfile.mlflow -t "$mlflow" infra/cluster
if [ "${1:-}" = "--push" ]; then
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
    newTag: "3.17"
YAML

echo "export SCIFLOW_GIT_COMMIT=$tag"
echo "export CLUSTER_IMAGE_NAME=$gpu"
echo "export CLUSTER_IMAGE=$gpu:$tag"
