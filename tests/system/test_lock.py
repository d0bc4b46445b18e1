"""The locked environment (infra/lock.py, infra/setup.sh): the lock matches pyproject.toml and the
running environment; a stale lock or an unsatisfiable range is refused naming the package."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lock_module():
    spec = importlib.util.spec_from_file_location("sciflow_lock", ROOT / "infra" / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lock = _lock_module()


def test_the_committed_lock_matches_pyproject_and_this_environment():
    assert lock.check() == []
    mismatches, _ = lock.verify()
    assert mismatches == []
    pins = lock.read_lock()
    assert pins["torch"] == "2.13.0"  # no local label: a CUDA build of the same version satisfies it
    assert len(pins) > 100  # transitive dependencies are pinned too
    text = lock.LOCK.read_text()
    assert text.count("--hash=sha256:") >= len(pins)


def test_the_lock_digest_is_in_the_environment_and_in_mlflow_tags():
    from data.provenance import lock_digest
    from flows.tracking import standard_tags

    assert lock_digest() == lock.digest()
    assert standard_tags()["sciflow.lock.sha256"] == lock.digest()


def _project_copy(tmp_path: Path, edit) -> Path:
    """A copy of pyproject.toml, the locks and infra/ with pyproject's dependencies edited."""
    (tmp_path / "infra").mkdir()
    for rel in ("pyproject.toml", "requirements.lock", "infra/build.lock", "infra/lock.py", "infra/setup.sh"):
        shutil.copy(ROOT / rel, tmp_path / rel)
    py = tmp_path / "pyproject.toml"
    py.write_text(edit(py.read_text()))
    return tmp_path


def test_a_stale_lock_is_named_package_by_package(tmp_path):
    root = _project_copy(
        tmp_path,
        lambda t: t.replace('"mlflow>=3.1,<4"', '"mlflow>=4"').replace(
            '"tqdm>=4.66",', '"tqdm>=4.66",\n    "left-pad-sciflow-test>=1",'
        ),
    )
    problems = lock.check(root / "pyproject.toml", root / "requirements.lock")
    assert any(p.startswith("mlflow: pyproject.toml wants >=4, requirements.lock pins 3.") for p in problems), problems
    assert any(p.startswith("left-pad-sciflow-test: required by pyproject.toml") for p in problems), problems


def test_setup_refuses_a_lock_that_does_not_match_pyproject(tmp_path):
    root = _project_copy(tmp_path, lambda t: t.replace('"scipy>=1.11"', '"scipy>=99"'))
    env = {**os.environ, "VENV": str(Path(sys.prefix))}
    proc = subprocess.run(["bash", "infra/setup.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "requirements.lock does not match pyproject.toml" in proc.stderr
    assert "scipy: pyproject.toml wants >=99, requirements.lock pins" in proc.stderr
    assert "make lock" in proc.stderr


@pytest.mark.slow
def test_make_lock_with_an_unsatisfiable_range_keeps_the_old_lock(tmp_path):
    root = _project_copy(tmp_path, lambda t: t.replace('"scipy>=1.11"', '"scipy>=99"'))
    before = (root / "requirements.lock").read_bytes(), (root / "infra/build.lock").read_bytes()
    proc = subprocess.run(
        [sys.executable, "infra/lock.py", "lock", sys.executable], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    assert "the lock is unchanged" in proc.stderr
    assert "scipy>=99" in proc.stderr  # pip's resolver message names the requirement
    after = (root / "requirements.lock").read_bytes(), (root / "infra/build.lock").read_bytes()
    assert after == before
    assert not [p for p in root.rglob("*.tmp")]
