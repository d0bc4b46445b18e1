#!/usr/bin/env bash
# A container runtime for the container test and local image builds: Debian's docker.io daemon,
# debootstrap (infra/cluster/base-image.sh) and `docker compose` v2 (infra/cluster/compose-v2.sh:
# bookworm has only compose 1.29). Installs them when missing (root only) and starts dockerd when
# no daemon answers (its log: ${DOCKERD_LOG:-/var/log/sciflow-dockerd.log}).
# Idempotent; exits non-zero with the reason when the runtime cannot be had here.
set -euo pipefail
say() { printf '[runtime] %s\n' "$*" >&2; }
here=$(dirname "$0")
if docker info >/dev/null 2>&1 && command -v debootstrap >/dev/null && docker compose version >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "the container runtime (a docker daemon, debootstrap, docker compose v2) is incomplete and completing it needs root; see infra/CLUSTER.md"
  exit 1
fi
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log=${DOCKERD_LOG:-/var/log/sciflow-dockerd.log}
  say "starting dockerd (log: $log)"
  nohup dockerd >"$log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  if ! docker info >/dev/null 2>&1; then
    say "dockerd did not come up; last lines of $log:"
    tail -5 "$log" >&2
    exit 1
  fi
fi
say "docker $(docker info --format '{{.ServerVersion}}') answers"
bash "$here/compose-v2.sh"
