#!/usr/bin/env python3
"""The locked environment: every Python package pinned, with hashes, in two committed files.

* ``requirements.lock`` -- the project's dependencies and its ``[test]`` extra, direct and
  transitive, resolved by pip from ``pyproject.toml``'s ranges (plus pip, setuptools, wheel).
* ``infra/build.lock`` -- what builds petsc4py against Debian's PETSc: petsc4py itself (the
  version of Debian's PETSc), Cython, ``setuptools<70`` (petsc4py 3.18's build scripts need it),
  wheel, and the locked numpy.

Commands (run with the project's interpreter, Python 3.11):

``lock PYTHON [--upgrade]``
    Resolve (keeping the current pins where they still fit; ``--upgrade`` takes the newest
    releases) with ``PYTHON -m pip install --dry-run --ignore-installed --report`` (pip sees the
    machine's find-links, so the local CPU wheel of torch too; uv and poetry do not) and write both
    files atomically. A range that cannot be satisfied fails with pip's resolver message and the
    old lock stays in place. ``make lock`` calls this.
``check``
    Does the lock still match ``pyproject.toml``? Every requirement must be locked at a version
    inside its range; otherwise the message names the package and says to run ``make lock``.
``verify``
    Does the running environment hold exactly the locked versions? Exits 1 naming the package
    that differs; packages the lock does not list are reported (a CUDA build of torch brings
    its own ``nvidia-*`` packages, for example).
``split LOCK NAME OTHERS CHOSEN``
    Write LOCK's entries other than NAME's, and NAME's, to two requirement files.
``digest``
    SHA-256 over both lock files: the ``sciflow.lock.sha256`` tag of every MLflow run.

Only the standard library is needed, except ``check`` / ``verify`` (``packaging``, which pip
vendors and the lock installs).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "infra" / "build.lock"
PYPROJECT = ROOT / "pyproject.toml"
#: Debian bookworm's PETSc is 3.18.5; petsc4py must match its major.minor (same patch is safest)
PETSC4PY = "3.18.5"
#: the one package whose lock line drops the local version label (+cpu / +cu128): on a GPU machine
#: the CUDA build of the same version, installed first, satisfies the pin (README "GPU install")
LOCAL_LABEL_FREE = {"torch"}
EXTRAS = ("test",)
BOOTSTRAP = ("pip", "setuptools", "wheel")


class LockError(RuntimeError):
    pass


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The direct requirements: ``[project] dependencies`` and the extras that set-up installs."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in EXTRAS:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def requirements_digest() -> str:
    return hashlib.sha256("\n".join(sorted(requirements())).encode()).hexdigest()


def digest() -> str:
    h = hashlib.sha256()
    for path in (LOCK, BUILD_LOCK):
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{normalized name: version}`` of a lock file."""
    if not path.exists():
        raise LockError(f"{path} is missing; run `make lock`")
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if m:
            pins[normalize(m.group(1))] = m.group(2)
    return pins


# ----------------------------------------------------------------------------------- resolve


def _resolve(python: str, args: list[str]) -> list[dict]:
    """pip's resolution of ``args`` as a list of report items (name, version, hashes)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            python,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            str(report),
            *args,
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            noise = re.compile(r"^WARNING: Location '.*' is ignored")
            msg = "\n".join(line for line in proc.stderr.splitlines() if not noise.match(line))
            raise LockError(f"pip could not resolve the requirements; the lock is unchanged.\n{msg.strip()}")
        items = json.loads(report.read_text())["install"]
    out = []
    for item in items:
        meta, info = item["metadata"], item.get("download_info", {})
        hashes = dict(info.get("archive_info", {}).get("hashes", {}))
        if not hashes and "hash" in info.get("archive_info", {}):
            algo, _, value = info["archive_info"]["hash"].partition("=")
            hashes = {algo: value}
        out.append(
            {
                "name": meta["name"],
                "version": meta["version"],
                "hashes": hashes,
                "editable": bool(info.get("dir_info", {}).get("editable")),
            }
        )
    return out


def _format(items: list[dict], header: list[str]) -> str:
    lines = [f"# {h}" if h else "#" for h in header] + [""]
    for it in sorted(items, key=lambda i: normalize(i["name"])):
        version = it["version"]
        if normalize(it["name"]) in LOCAL_LABEL_FREE:
            version = version.split("+", 1)[0]
        hashes = [f"--hash={algo}:{value}" for algo, value in sorted(it["hashes"].items()) if algo == "sha256"]
        if not hashes:
            raise LockError(f"pip reported no sha256 for {it['name']} {it['version']}; cannot lock it")
        lines.append(" \\\n    ".join([f"{normalize(it['name'])}=={version}", *hashes]))
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sdist_hash(python: str, spec: str) -> str:
    """sha256 of a package's source archive (petsc4py has no wheels)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                python,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--no-build-isolation",
                "--quiet",
                "-d",
                tmp,
                spec,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PETSC_DIR": os.environ.get("PETSC_DIR", "/usr/lib/petsc")},
        )
        files = list(Path(tmp).iterdir())
        if proc.returncode != 0 or len(files) != 1:
            raise LockError(f"could not download {spec}: {proc.stderr.strip()[-2000:]}")
        return hashlib.sha256(files[0].read_bytes()).hexdigest()


def _preferring(python: str, args: list[str], upgrade: bool) -> list[dict]:
    """Resolve ``args``, keeping the current lock's versions where they still fit (as pip-compile
    does): first with the current pins as constraints, and only if that cannot be satisfied (a new
    requirement needs another version) without them. ``upgrade`` resolves afresh (newest releases)."""
    if upgrade or not LOCK.exists():
        return _resolve(python, args)
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "current.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in read_lock(LOCK).items()))
        try:
            return _resolve(python, ["-c", str(constraints), *args])
        except LockError:
            print("[lock] the current pins cannot satisfy pyproject.toml; resolving afresh", file=sys.stderr)
            return _resolve(python, args)


def lock(python: str, upgrade: bool = False) -> None:
    """Resolve and write ``requirements.lock`` and ``infra/build.lock`` (both or neither)."""
    where = f"python {platform.python_version()}, {sys.platform} {platform.machine()}"
    before = read_lock(LOCK) if LOCK.exists() else {}
    items = _preferring(python, ["-e", f".[{','.join(EXTRAS)}]", *BOOTSTRAP], upgrade)
    items = [it for it in items if not it["editable"]]
    numpy = next(it["version"] for it in items if normalize(it["name"]) == "numpy")
    build = _resolve(python, ["--only-binary", ":all:", f"numpy=={numpy}", "cython", "setuptools<70", "wheel"])
    build.append(
        {
            "name": "petsc4py",
            "version": PETSC4PY,
            "editable": False,
            "hashes": {"sha256": _sdist_hash(python, f"petsc4py=={PETSC4PY}")},
        }
    )
    main_text = _format(
        items,
        [
            "requirements.lock: every Python package of the sciflow environment, pinned with hashes.",
            "Generated by `make lock` (infra/lock.py) from pyproject.toml's dependencies and its [test] extra;",
            "do not edit by hand. infra/setup.sh installs exactly this (pip --require-hashes --no-deps).",
            f"Resolved with pip on {where}.",
            f"pyproject requirements sha256: {requirements_digest()}",
            "torch is pinned without its local label (+cpu): a CUDA build of 2.13.0 installed first is kept.",
        ],
    )
    build_text = _format(
        build,
        [
            "infra/build.lock: what builds petsc4py against Debian's PETSc 3.18 (infra/setup.sh).",
            "Generated by `make lock` (infra/lock.py); petsc4py matches Debian bookworm's PETSc, and",
            "petsc4py 3.18's build scripts need setuptools<70. numpy is requirements.lock's.",
        ],
    )
    _write_atomic(BUILD_LOCK, build_text)
    _write_atomic(LOCK, main_text)
    after = read_lock(LOCK)
    changed = [
        f"\n  {n} {before.get(n, '-')} -> {after.get(n, '-')}"
        for n in sorted(set(before) | set(after))
        if before and before.get(n) != after.get(n)
    ]
    print(
        f"[lock] {LOCK.relative_to(ROOT)}: {len(items)} packages; {BUILD_LOCK.relative_to(ROOT)}: "
        f"{len(build)}; digest {digest()[:16]}" + "".join(changed)
    )


# ------------------------------------------------------------------------------------- check


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # a bare venv: pip vendors packaging
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import Version
    return Requirement, Version


def check(pyproject: Path = PYPROJECT, lock_file: Path = LOCK) -> list[str]:
    """Problems between pyproject.toml and the lock (empty when they agree)."""
    Requirement, Version = _packaging()
    pins, problems = read_lock(lock_file), []
    for line in requirements(pyproject):
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = normalize(req.name)
        if name not in pins:
            problems.append(f"{req.name}: required by pyproject.toml ({line}) but not in requirements.lock")
        elif not req.specifier.contains(Version(pins[name]), prereleases=True):
            problems.append(f"{req.name}: pyproject.toml wants {req.specifier}, requirements.lock pins {pins[name]}")
    return problems


def verify() -> tuple[list[str], list[str]]:
    """``(mismatches, extras)`` between the running environment and both locks."""
    from importlib import metadata

    _, Version = _packaging()
    installed = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions()}
    pins = {**read_lock(BUILD_LOCK), **read_lock(LOCK)}
    build_only = set(read_lock(BUILD_LOCK)) - set(read_lock(LOCK)) - {"petsc4py"}
    mismatches = []
    for name, version in sorted(read_lock(LOCK).items()) + [("petsc4py", pins["petsc4py"])]:
        have = installed.get(name)
        if have is None:
            mismatches.append(f"{name}: locked {version}, not installed")
        elif Version(have).public != Version(version).public or (
            name not in LOCAL_LABEL_FREE and Version(have) != Version(version)
        ):
            mismatches.append(f"{name}: locked {version}, installed {have}")
    extras = sorted(n for n in installed if n not in pins and n != "sciflow" and n not in build_only)
    return mismatches, extras


def split(path: Path, name: str, others: Path, chosen: Path) -> None:
    """Write the entries of lock ``path`` other than ``name`` to ``others`` and ``name``'s to ``chosen``
    (set-up installs the build tools, then builds petsc4py from its hash-checked source)."""
    entries, current = [], []
    for line in path.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            current = [line]
            entries.append(current)
        elif line.startswith(" ") and current:
            current.append(line)
    pick = [e for e in entries if normalize(e[0].split("==")[0]) == normalize(name)]
    if len(pick) != 1:
        raise LockError(f"{path} pins {name} {len(pick)} times; expected once (run `make lock`)")
    others.write_text("".join("\n".join(e) + "\n" for e in entries if e is not pick[0]))
    chosen.write_text("\n".join(pick[0]) + "\n")


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else ""
    try:
        if cmd == "lock" and len(argv) in (3, 4) and argv[3:] in ([], ["--upgrade"]):
            lock(argv[2], upgrade=argv[3:] == ["--upgrade"])
        elif cmd == "check":
            problems = check()
            if problems:
                print(
                    "requirements.lock does not match pyproject.toml:\n  "
                    + "\n  ".join(problems)
                    + "\nRun `make lock` to re-resolve, then commit requirements.lock and infra/build.lock.",
                    file=sys.stderr,
                )
                return 1
        elif cmd == "verify":
            mismatches, extras = verify()
            if extras:
                print(f"[setup] installed but not locked: {', '.join(extras)}", file=sys.stderr)
            if mismatches:
                print("the environment differs from the lock:\n  " + "\n  ".join(mismatches), file=sys.stderr)
                return 1
        elif cmd == "split" and len(argv) == 6:
            split(Path(argv[2]), argv[3], Path(argv[4]), Path(argv[5]))
        elif cmd == "digest":
            print(digest())
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except LockError as exc:
        print(f"[lock] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
