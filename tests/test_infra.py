"""infra/prefect.yaml: every deployment points at a real flow, and the nightly one is scheduled."""

import importlib
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_is_a_flow():
    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        path, attr = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, attr), Flow), dep["entrypoint"]
        names.add(getattr(module, attr).name)
    assert {"generate-dataset", "nightly-benchmark", "train-dcdm", "benchmark-linear-solvers"} <= names
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["schedules"][0]["timezone"] == "UTC"
