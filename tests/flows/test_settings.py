"""Settings that respect the user: one model for every SCIFLOW_* variable (documented in one table
that matches it), values from the environment, the settings file or defaults with clear errors,
`sciflow config`, no side effects at import, and a user's Prefect profile left in charge."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------
# one model, one table


def test_the_settings_table_matches_the_model():
    from flows.docs_tables import SETTINGS_PAGE, rendered
    from flows.settings import settings_table

    text = (ROOT / "docs" / SETTINGS_PAGE).read_text()
    assert rendered(text, "settings", settings_table()) == text, "run `python -m flows.docs_tables --write`"
    assert "docs/configuration.md" in (ROOT / "README.md").read_text()


def _variables_in_code() -> dict[str, str]:
    """Every SCIFLOW_* name in the Python code, shell scripts and Makefile -> one file using it."""
    found = {}
    files = [*ROOT.glob("*/**/*.py"), *ROOT.glob("infra/**/*.sh"), ROOT / "Makefile"]
    for path in files:
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for name in re.findall(r"\bSCIFLOW_[A-Z][A-Z0-9_]*\b", path.read_text(errors="replace")):
            found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_every_sciflow_variable_in_the_code_is_a_setting():
    from data.settings import Settings, env_var

    fields = {env_var(name) for name in Settings.model_fields}
    used = _variables_in_code()
    assert {"SCIFLOW_HOME", "SCIFLOW_DEVICE", "SCIFLOW_DASK_ADDRESS", "SCIFLOW_REPO"} <= set(used)
    unknown = {name: where for name, where in used.items() if name not in fields}
    assert not unknown, f"SCIFLOW_* variables read outside data.settings.Settings: {unknown}"


# ---------------------------------------------------------------------------------------------
# values: environment, then the settings file, then defaults


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No SCIFLOW_* in the environment, a private settings file path, a fake user home."""
    for name in list(os.environ):
        if name.startswith("SCIFLOW_") or name.startswith("XDG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("SCIFLOW_CONFIG", str(tmp_path / "config.toml"))
    return tmp_path


def test_values_come_from_the_environment_then_the_file_then_defaults(clean, monkeypatch):
    from data.settings import current, sources

    s = current()
    assert s.home == clean / "user" / ".local" / "share" / "sciflow" and s.device is None
    assert sources()["home"] == "default" and sources()["config"] == "env"
    (clean / "config.toml").write_text('home = "~/state"\ndevice = "cuda:1"\nexperiment = "from-file"\n')
    s = current()
    assert (s.home, s.device, s.experiment) == (clean / "user" / "state", "cuda:1", "from-file")
    assert sources()["device"] == "file"
    monkeypatch.setenv("SCIFLOW_DEVICE", "cpu")
    monkeypatch.setenv("SCIFLOW_DASK_ADDRESS", "")  # empty: unset (the k8s config map writes "")
    assert (current().device, current().dask_address) == ("cpu", None)
    assert sources()["device"] == "env"


@pytest.mark.parametrize(
    "env, file, message",
    [
        (
            {"SCIFLOW_DEVICE": "gpu"},
            "",
            r"SCIFLOW_DEVICE='gpu' \(from the environment\):.*must be cpu, cuda, cuda:N or mps",
        ),
        ({"SCIFLOW_DASK_ADDRESS": "not an address"}, "", r"SCIFLOW_DASK_ADDRESS='not an address' .*tcp://host:8786"),
        ({}, 'device = "tpu"\n', r"SCIFLOW_DEVICE='tpu' \(from the settings file .*config.toml\)"),
        ({}, "devise = 'cpu'\n", r"devise='cpu' \(in the settings file .*\): not a sciflow setting; known: home, "),
        ({}, "home = [1, 2]\n", r"SCIFLOW_HOME=\[1, 2\] \(from the settings file"),
        ({}, 'config = "/other.toml"\n', r"'config' cannot be set in the settings file \(use \$SCIFLOW_CONFIG\)"),
        ({}, "home = \n", r"settings file .*config.toml: "),
    ],
)
def test_a_bad_setting_names_the_variable_its_source_and_what_is_allowed(clean, monkeypatch, env, file, message):
    from data.settings import current

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if file:
        (clean / "config.toml").write_text(file)
    with pytest.raises(InputError, match=message):
        current()


def test_the_library_reads_the_same_settings(clean, monkeypatch):
    """data.home() and operators.default_device() (the library layer: no flows import) read the model."""
    import data
    from operators import default_device

    monkeypatch.setenv("SCIFLOW_HOME", "relative/state")
    monkeypatch.chdir(clean)
    assert data.home() == clean / "relative" / "state"  # absolute, taken from where it was set
    monkeypatch.setenv("SCIFLOW_DEVICE", "cpu")
    assert str(default_device()) == "cpu"
    monkeypatch.setenv("SCIFLOW_DEVICE", "cuda:x")
    with pytest.raises(InputError, match="SCIFLOW_DEVICE"):
        default_device()


# ---------------------------------------------------------------------------------------------
# Prefect: sciflow's defaults only where the user configured nothing


def test_prefect_defaults_fill_only_what_the_user_left_unset(clean):
    from data.settings import current
    from flows.settings import prefect_defaults

    home = current().home
    nothing = prefect_defaults(current(), set())
    assert nothing["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{home}/prefect/prefect.db"
    assert nothing["PREFECT_LOCAL_STORAGE_PATH"] == str(home / "prefect" / "storage")
    assert nothing["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_HOME" not in nothing and "PREFECT_PROFILE" not in nothing
    for configured in ({"api.url"}, {"server.database.connection_url"}, {"home"}):
        assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in prefect_defaults(current(), configured), configured
    assert "PREFECT_LOCAL_STORAGE_PATH" not in prefect_defaults(current(), {"results.local_storage_path"})
    everything = {"api.url", "home", "results.local_storage_path", "server.analytics_enabled"}
    assert nothing["PREFECT_CLIENT_MAX_RETRIES"] == "8"  # rides out an API restart (tests/system/test_outages.py)
    assert nothing["PREFECT_CLIENT_RETRY_EXTRA_CODES"] == "500"
    everything |= {"server.ephemeral.startup_timeout_seconds", "client.max_retries", "client.retry_extra_codes"}
    assert set(prefect_defaults(current(), everything)) == set()


def _sciflow(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "python"), "-c", "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _bare_env(tmp_path: Path, **extra: str) -> dict:
    """The environment of a user who configured nothing: no PREFECT_*, MLFLOW_*, SCIFLOW_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SCIFLOW_", "XDG_"))}
    return {**env, "HOME": str(tmp_path / "user"), "PYTHONPATH": str(ROOT), "COLUMNS": "200", **extra}


@pytest.mark.slow
def test_a_prefect_profile_with_an_api_url_is_kept(tmp_path):
    """`prefect profile use` on a profile that sets PREFECT_API_URL: sciflow's config shows that URL
    from that profile, and a flow run goes there (nothing listens: the run fails naming it)."""
    prefect_home = tmp_path / "prefect-home"
    prefect_home.mkdir()
    url = "http://127.0.0.1:9/api"  # discard port: refused at once
    (prefect_home / "profiles.toml").write_text(
        f'active = "ephemeral"\n\n[profiles.ephemeral]\n\n[profiles.mine]\nPREFECT_API_URL = "{url}"\n'
    )
    env = _bare_env(tmp_path, PREFECT_HOME=str(prefect_home), SCIFLOW_HOME=str(tmp_path / "home"))
    subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "profile", "use", "mine"], env=env, capture_output=True, timeout=120
    )  # exits 1: it cannot reach the server, but it switches the profile
    assert 'active = "mine"' in (prefect_home / "profiles.toml").read_text()

    config = _sciflow(["config", "--json"], env)
    assert config.returncode == 0, config.stderr
    endpoints = {e["name"]: e for e in json.loads(config.stdout)["endpoints"]}
    assert endpoints["Prefect API"]["value"] == url and endpoints["Prefect API"]["source"] == "profile mine"
    assert "Prefect database" not in endpoints  # no ephemeral server, no database of ours
    assert endpoints["Prefect profile"]["value"].startswith("mine ")

    run = _sciflow(["run", "optimize", "--set", "config.problem=bt2", "--set", "config.method=newton-sqp"], env)
    assert run.returncode != 0 and "127.0.0.1:9/api" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "home" / "prefect" / "prefect.db").exists()


@pytest.mark.slow
def test_importing_the_flows_has_no_side_effects(tmp_path):
    """Importing every flows module creates no folder and sets no environment variable."""
    env = _bare_env(tmp_path, SCIFLOW_HOME=str(tmp_path / "home"))
    code = (
        "import os, pkgutil, importlib, json, flows; before = dict(os.environ)\n"
        "for m in pkgutil.walk_packages(flows.__path__, 'flows.'): importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    )
    out = subprocess.run(
        [str(BIN / "python"), "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert not (tmp_path / "home").exists()


# ---------------------------------------------------------------------------------------------
# `sciflow config`


def test_sciflow_config_prints_every_setting_its_source_and_the_endpoints(clean, monkeypatch, capsys):
    from data.settings import Settings
    from flows.cli import main

    monkeypatch.setenv("SCIFLOW_HOME", str(clean / "state"))
    (clean / "config.toml").write_text('experiment = "from-file"\n')
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in shown["settings"]}
    assert list(by_name) == list(Settings.model_fields)
    assert by_name["home"] == {
        "name": "home",
        "variable": "SCIFLOW_HOME",
        "value": str(clean / "state"),
        "source": "env",
    }
    assert (by_name["experiment"]["value"], by_name["experiment"]["source"]) == ("from-file", "file")
    assert (by_name["pg_user"]["value"], by_name["pg_user"]["source"]) == ("postgres", "default")
    endpoints = {e["name"]: e["value"] for e in shown["endpoints"]}
    assert {"Prefect profile", "Prefect API", "Prefect results", "MLflow tracking", "MLflow artifacts"} <= set(
        endpoints
    )
    assert endpoints["MLflow tracking"] == os.environ["MLFLOW_TRACKING_URI"]  # the session's, set by conftest
    assert not (clean / "state").exists(), "`sciflow config` only looks"

    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"SCIFLOW_HOME\s+\S+/state  \[env\]", text) and "endpoints" in text
    assert main(["config", "--get", "SCIFLOW_EXPERIMENT"]) == 0 and capsys.readouterr().out == "from-file\n"
    assert main(["config", "--get", "colour"]) == 2 and "is not a setting" in capsys.readouterr().err
    monkeypatch.setenv("SCIFLOW_DEVICE", "gpu")
    assert main(["config"]) == 2
    assert "sciflow config: error: invalid sciflow settings\n  SCIFLOW_DEVICE='gpu'" in capsys.readouterr().err
