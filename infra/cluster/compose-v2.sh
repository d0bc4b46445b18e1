#!/usr/bin/env bash
# `docker compose` (v2) where the distribution ships only v1: Debian bookworm's docker-compose is
# 1.29, older than the Compose Spec infra/cluster/compose.yaml is written in (top-level `name`,
# `pull_policy`, `depends_on.required`). Takes Debian trixie's `docker-compose` package (compose
# 2.x, a static Go binary needing only libc6 >= 2.34), verifies it down the archive's chain of
# trust (InRelease signed by a key of /usr/share/keyrings/debian-archive-keyring.gpg -> SHA-256 of
# Packages.xz -> SHA-256 of the .deb) and installs only its binary, as the docker CLI plugin
# /usr/local/lib/docker/cli-plugins/docker-compose. Nothing else from trixie goes in; apt is not
# touched. Idempotent (exits at once when `docker compose version` answers); root only.
#
#   infra/cluster/compose-v2.sh          # COMPOSE_SUITE=trixie, DEBIAN_MIRROR=https://deb.debian.org/debian
set -euo pipefail
say() { printf '[compose-v2] %s\n' "$*" >&2; }
if docker compose version >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "docker compose v2 is missing and installing it needs root"
  exit 1
fi
mirror=${DEBIAN_MIRROR:-https://deb.debian.org/debian}
suite=${COMPOSE_SUITE:-trixie}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
arch=$(dpkg --print-architecture)
plugins=/usr/local/lib/docker/cli-plugins
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

fetch() { curl -fsSL --retry 3 -o "$2" "$1" || { say "cannot download $1"; exit 1; }; }
check() {  # check FILE SHA256
  echo "$2  $1" | sha256sum -c --quiet - || { say "$1: SHA-256 mismatch (expected $2): refused"; exit 1; }
}
fetch "$mirror/dists/$suite/InRelease" InRelease
gpgv --quiet --keyring "$keyring" --output Release InRelease 2>/dev/null \
  || { say "$mirror/dists/$suite/InRelease: bad or unknown signature (keyring $keyring): refused"; exit 1; }
index=main/binary-$arch/Packages.xz
sum=$(awk -v f="$index" '/^SHA256:/ {s = 1; next} /^[^ ]/ {s = 0} s && $3 == f {print $1}' Release)
[ -n "$sum" ] || { say "$index is not listed in $suite's Release"; exit 1; }
fetch "$mirror/dists/$suite/$index" Packages.xz
check Packages.xz "$sum"
read -r filename debsum version < <(xz -dc Packages.xz | awk '
  /^Package: / {p = ($2 == "docker-compose")}
  p && /^Version: / {v = $2}
  p && /^Filename: / {f = $2}
  p && /^SHA256: / {s = $2}
  /^$/ && p && f {print f, s, v; exit}') || true
[ -n "${filename:-}" ] || { say "no docker-compose package in $suite/$arch"; exit 1; }
case $version in 2.*) ;; *) say "$suite's docker-compose is $version, not 2.x"; exit 1;; esac
fetch "$mirror/$filename" compose.deb
check compose.deb "$debsum"
dpkg-deb -x compose.deb root
bin=$(find root -type f -name docker-compose -perm -u+x | head -1)
[ -n "$bin" ] || { say "no docker-compose binary in $filename"; exit 1; }
install -D -m 0755 "$bin" "$plugins/docker-compose"
docker compose version >/dev/null 2>&1 \
  || { say "installed $plugins/docker-compose, but \`docker compose version\` fails"; exit 1; }
say "docker compose $version from $suite ($plugins/docker-compose)"
