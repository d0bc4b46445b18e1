#!/usr/bin/env bash
# One-shot, idempotent set-up: system packages, virtual environment, PETSc + petsc4py, the project.
# A second run finds everything in place and takes seconds.
#
# Python packages come from the committed lock (requirements.lock, infra/build.lock; `make lock`
# regenerates them from pyproject.toml): exact versions and sha256 hashes, no resolver at install
# time, so two machines install the same files. See infra/lock.py.
#
# PETSc route: Debian's petsc-dev (PETSc 3.18, OpenMPI, hypre) + petsc4py 3.18 built against it.
# The petsc4py build (about 1.5 minutes, one core) runs in a throw-away build environment in the
# background while the locked packages install. See README "Why Debian's PETSc".
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
export PETSC_DIR=${PETSC_DIR:-/usr/lib/petsc}
export PIP_DISABLE_PIP_VERSION_CHECK=1
LOCK=requirements.lock
BUILD_LOCK=infra/build.lock

say() { printf '[setup] %s\n' "$*"; }
need_root() { if [ "$(id -u)" != 0 ]; then echo "sudo"; fi; }
# pip prints a warning per package for index folders it does not find; keep the log readable
pip_q() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
t_start=$SECONDS
trap 'say "failed (exit $?) at infra/setup.sh line $LINENO: $BASH_COMMAND"' ERR

# 1. System packages (Debian). Skipped when already installed.
# openmpi-bin: mpiexec for the scale-out tests; postgresql: stack --backend postgres.
# SETUP_APT_PACKAGES replaces the list (the worker image installs its own, without the database).
read -r -a apt_pkgs <<< "${SETUP_APT_PACKAGES-petsc-dev libopenblas-dev openmpi-bin postgresql}"
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  $(need_root) apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $(need_root) apt-get install -y -qq --no-install-recommends "${missing[@]}"
  say "system packages: $((SECONDS - t_start)) s"
fi
t_py=$SECONDS

# 2. Virtual environment, and the lock checked against pyproject.toml before anything is installed.
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip)
if ! "$PY" infra/lock.py check; then
  exit 1
fi
digest=$("$PY" infra/lock.py digest)
stamp="$VENV/sciflow-lock.json"

# 3. petsc4py against Debian's PETSc, built in the background in its own environment.
changed=0
build_pid=""
wheels="$VENV/.petsc4py-wheel"
if ! "$PY" -c "import petsc4py" >/dev/null 2>&1; then
  say "building petsc4py against $PETSC_DIR in the background (about 1.5 minutes)"
  rm -rf "$wheels" "$VENV/.build-env"
  mkdir -p "$wheels"
  "$PY" infra/lock.py split "$BUILD_LOCK" petsc4py "$wheels/tools.txt" "$wheels/petsc4py.txt"
  (
    set -e
    "$PYTHON" -m venv "$VENV/.build-env"
    pip_q "$VENV/.build-env/bin/python" -m pip install -q --no-deps --require-hashes -r "$wheels/tools.txt"
    # -O1 without debug info: the wrapper is glue around Debian's optimised PETSc, and the 17 MB
    # generated C file compiles in ~1.3 minutes instead of ~3.5 at -O3 -g (2 cores)
    CFLAGS=${PETSC4PY_CFLAGS:--O1 -g0} pip_q "$VENV/.build-env/bin/python" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
      --require-hashes -w "$wheels" -r "$wheels/petsc4py.txt"
  ) > "$VENV/.petsc4py-build.log" 2>&1 &
  build_pid=$!
  changed=1
fi

# 4. The locked packages, then the project itself (editable, no dependency resolution).
if [ ! -f "$stamp" ] || ! grep -q "\"$digest\"" "$stamp"; then
  say "installing the locked packages ($(grep -c '^[a-z0-9]' "$LOCK") from $LOCK)"
  changed=1
  pip_q "${PIP[@]}" install -q --no-deps --require-hashes -r "$LOCK"
  # packages an older lock installed and this one no longer lists
  stale=$({ "$PY" infra/lock.py verify 2>&1 >/dev/null || true; } | sed -n 's/^\[setup\] installed but not locked: //p' | tr -d ',')
  stale=$(for p in $stale; do case $p in petsc4py|nvidia-*|triton) ;; *) echo "$p";; esac; done)
  if [ -n "$stale" ]; then
    say "removing packages the lock no longer lists: $(echo $stale)"
    "${PIP[@]}" uninstall -q -y $stale
  fi
fi
# SETUP_PROJECT=0: dependencies only (the worker image's cached layer; the source comes after it)
if [ "${SETUP_PROJECT:-1}" = 0 ]; then
  :
elif ! "$PY" -c "import importlib.metadata as m; m.version('sciflow')" >/dev/null 2>&1 || [ pyproject.toml -nt "$stamp" ]; then
  changed=1
  PYTHONWARNINGS=ignore pip_q "${PIP[@]}" install -q --no-deps --no-build-isolation -e .
fi

if [ -n "$build_pid" ]; then
  if ! wait "$build_pid"; then
    cat "$VENV/.petsc4py-build.log" >&2
    say "petsc4py build failed (log above, also in $VENV/.petsc4py-build.log)"
    exit 1
  fi
  pip_q "${PIP[@]}" install -q --no-deps "$wheels"/petsc4py-*.whl
  rm -rf "$VENV/.build-env" "$wheels"
fi

# 5. The environment is exactly the lock (names the package otherwise); record which lock it is.
"$PY" infra/lock.py verify
if [ "$changed" = 0 ]; then
  say "environment matches lock ${digest:0:16}"
  exit 0
fi
"${PIP[@]}" check >/dev/null || { "${PIP[@]}" check; exit 1; }
printf '{"lock_sha256": "%s"}\n' "$digest" > "$stamp"
"$PY" -c "import petsc4py, torch, prefect, mlflow; from petsc4py import PETSc; print('[setup] ok: PETSc', '.'.join(map(str, PETSc.Sys.getVersion())), '| torch', torch.__version__, '| prefect', prefect.__version__, '| mlflow', mlflow.__version__, '| lock ${digest:0:16}')"
say "Python environment: $((SECONDS - t_py)) s"
