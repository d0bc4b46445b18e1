#!/usr/bin/env bash
# The base image every sciflow image builds FROM, made from nothing but Debian: a minimal bookworm
# root file system (debootstrap --variant=minbase) with Python 3.11, imported as a docker image.
# For machines that reach Debian and PyPI but no image registry; on a cluster with a registry the
# Dockerfiles take any bookworm Python 3.11 image (or a CUDA one) through BASE_IMAGE instead.
#
#   infra/cluster/base-image.sh                  # -> sciflow-base:bookworm-<snapshot date>
#   BASE_TAG=sciflow-base:mine infra/cluster/base-image.sh
#
# The host's CA bundle ($PIP_CERT, else /etc/ssl/certs/ca-certificates.crt) is copied in as
# /etc/ssl/certs/host-ca-bundle.crt and named by PIP_CERT in the image: where HTTPS goes through an
# inspecting proxy, pip inside a container trusts what the host trusts. Needs root, debootstrap
# and a running docker daemon. Prints the tag (last line). Idempotent: an existing tag is kept
# unless REBUILD=1.
set -euo pipefail
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=${BASE_TAG:-sciflow-base:bookworm-$(date -u +%Y%m%d)}
docker=${DOCKER:-docker}
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}

say() { printf '[base-image] %s\n' "$*" >&2; }
if [ "${REBUILD:-0}" != 1 ] && "$docker" image inspect "$tag" >/dev/null 2>&1; then
  say "$tag exists (REBUILD=1 to make it again)"
  echo "$tag"
  exit 0
fi
command -v debootstrap >/dev/null || { say "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
[ "$(id -u)" = 0 ] || { say "debootstrap needs root"; exit 1; }
[ -r "$ca" ] || { say "CA bundle $ca is not readable (set PIP_CERT)"; exit 1; }

t0=$SECONDS
root=$(mktemp -d "${TMPDIR:-/tmp}/sciflow-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
say "debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >&2
cp "$ca" "$root/etc/ssl/certs/host-ca-bundle.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
  "$mirror" "$mirror" > "$root/etc/apt/sources.list"
say "importing as $tag"
tar -C "$root" -c . | "$docker" import \
  --change 'ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt' \
  --change 'CMD ["/bin/bash"]' - "$tag" >&2
"$docker" run --rm "$tag" python3 -c "import sys, ssl, venv; assert sys.version_info[:2] == (3, 11), sys.version" >&2
say "$tag in $((SECONDS - t0)) s"
echo "$tag"
