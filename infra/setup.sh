#!/usr/bin/env bash
# One-shot, idempotent set-up: system packages, virtual environment, PETSc + petsc4py, the project.
# A second run finds everything in place and takes seconds.
#
# PETSc route: Debian's petsc-dev (PETSc 3.18, OpenMPI, hypre) + petsc4py 3.18 built against it.
# It installs in ~3 minutes instead of ~8-9 for a from-source PETSc build, comes with MPI for the
# scale-out work, and is a distribution-maintained, tested build. See README "Why Debian's PETSc".
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
export PETSC_DIR=${PETSC_DIR:-/usr/lib/petsc}
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[setup] %s\n' "$*"; }
need_root() { if [ "$(id -u)" != 0 ]; then echo "sudo"; fi; }

# 1. System packages (Debian). Skipped when already installed.
apt_pkgs=(petsc-dev libopenblas-dev openmpi-bin postgresql)  # openmpi-bin: mpiexec for the scale-out tests; postgresql: stack --backend postgres
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  $(need_root) apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $(need_root) apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip setuptools wheel
fi
PIP="$VENV/bin/pip"
PY="$VENV/bin/python"

# 3. petsc4py against Debian's PETSc (built once; pip caches the wheel).
if ! "$PY" -c "import petsc4py" >/dev/null 2>&1; then
  say "building petsc4py 3.18 against $PETSC_DIR (about 2-3 minutes the first time)"
  # petsc4py 3.18's build scripts predate setuptools 70's distutils changes (rpath options
  # became lists): build with an older setuptools, then restore the one torch requires.
  "$PIP" install -q numpy cython 'setuptools<70' wheel
  "$PIP" install -q --no-build-isolation 'petsc4py==3.18.*'
  "$PIP" install -q 'setuptools>=77.0.3'
fi

# 4. The project and its Python dependencies (torch 2.13.0 is the CPU wheel on this machine).
stamp="$VENV/.sciflow-deps"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing sciflow and its dependencies"
  "$PIP" install -q torch==2.13.0
  "$PIP" install -q -e '.[test]'
  touch "$stamp"
fi
"$PY" -c "import petsc4py, torch, prefect, mlflow; from petsc4py import PETSc; print('[setup] ok: PETSc', '.'.join(map(str, PETSc.Sys.getVersion())), '| torch', torch.__version__, '| prefect', prefect.__version__, '| mlflow', mlflow.__version__)"
