"""infra/prefect.yaml (and infra/cluster/prefect.yaml): every deployment points at a real flow, the nightly one
is scheduled, and the benchmark deployments match the registry (flows.benchmarks.BENCHMARKS)."""

import importlib
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


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


def _load(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["deployments"]


def test_deployments_match_the_benchmark_registry():
    """Both deployment files agree with flows.benchmarks.BENCHMARKS: every benchmark flow has its
    `<flow>/<flow>` deployment on `local` (scale small), every `gpu` one has `<flow>/gpu` on the
    `gpu` pool (scale paper), the paper night sends exactly those there, and no deployment names a
    benchmark the registry does not know."""
    from flows.benchmarks import BENCHMARKS

    flows = [b for b in BENCHMARKS.values() if b.flow is not None]
    local = _load(ROOT / "infra" / "prefect.yaml")
    cluster = _load(ROOT / "infra" / "cluster" / "prefect.yaml")

    by_name = {d["name"]: d for d in local}
    assert len(by_name) == len(local), "a deployment name is used twice in infra/prefect.yaml"
    for b in flows:
        dep = by_name.get(b.flow_name)
        assert dep is not None, f"infra/prefect.yaml has no deployment {b.flow_name!r} for benchmark {b.name!r}"
        assert dep["entrypoint"] == b.entrypoint, b.name
        assert dep["parameters"] == {"scale": "small"} and dep["work_pool"]["name"] == "local", b.name
        assert b.load_flow().name == b.flow_name
    known = {b.entrypoint for b in flows}
    for dep in local + cluster:
        if dep["entrypoint"].split(":")[1].startswith("benchmark_") or dep["name"].startswith("benchmark-"):
            assert dep["entrypoint"] in known, f"deployment {dep['name']} ({dep['entrypoint']}) is not in the registry"

    gpu = {d["entrypoint"]: d for d in cluster if d["name"] == "gpu"}
    assert set(gpu) == {b.entrypoint for b in flows if b.gpu}
    for dep in gpu.values():
        assert dep["parameters"] == {"scale": "paper"} and dep["work_pool"]["name"] == "gpu", dep["entrypoint"]
    paper = next(d for d in cluster if d["name"] == "nightly-paper")
    assert paper["parameters"]["gpu_stages"] == [b.flow_name for b in flows if b.gpu]


def test_nightly_deployment_parameters_pass_the_flow_form():
    """The nightly deployments' parameters pass the flow's own parameter model (its `Stage` type
    is derived from the registry, so a renamed stage fails here, not at 02:00)."""
    from flows.nightly import nightly_benchmark

    for path in (ROOT / "infra" / "prefect.yaml", ROOT / "infra" / "cluster" / "prefect.yaml"):
        for dep in _load(path):
            if dep["entrypoint"] == "flows/nightly.py:nightly_benchmark":
                assert nightly_benchmark.validate_parameters(dep["parameters"]), (path, dep["name"])
