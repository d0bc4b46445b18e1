"""The cluster recipe (infra/cluster, infra/docker) parses, validates offline and keeps its promises:
loopback-only ports, credentials only by reference, GPU requests where the GPU work runs, one
shared volume for the dataset store and Prefect's result cache.

What needs a Docker daemon or a Kubernetes API server is not exercised here: `docker compose
config` runs only where the compose plugin exists, the manifests go through `kubectl kustomize`
(offline) and a field-by-field check against the Kubernetes API models, not `kubectl apply`."""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "infra" / "cluster"
K8S = CLUSTER / "k8s"
COMPOSE = yaml.safe_load((CLUSTER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
#: the MinIO (S3) override of compose.yaml
S3 = yaml.safe_load((CLUSTER / "compose.s3.yaml").read_text())
COMPOSE_FILES = ("compose.yaml", "compose.s3.yaml")
MANIFESTS = [
    (p.name, doc)
    for p in sorted(K8S.glob("*.yaml"))
    if p.name != "kustomization.yaml"
    for doc in yaml.safe_load_all(p.read_text())
    if doc
]
BY_KIND = {}
for _name, _doc in MANIFESTS:
    BY_KIND.setdefault(_doc["kind"], {})[_doc["metadata"]["name"]] = _doc

SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|ROOT_USER|API_KEY|AUTH", re.IGNORECASE)
VAR_REF = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(?::?[-?][^}]*)?\}$")
URL_USERINFO = re.compile(r"://(?P<user>[^:/@]*):(?P<password>[^@/]*)@")


def _default(text: str) -> str:
    """Compose interpolation with defaults only: ``${X:-d}`` -> ``d``."""
    return re.sub(r"\$\{[A-Z_0-9]+:-([^}]*)\}", r"\1", text)


# ---------------------------------------------------------------------------------------------
# everything parses


def test_every_yaml_file_parses():
    files = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])
    assert {"compose.yaml", "prefect.yaml", "kustomization.yaml"} <= {f.name for f in files}
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f


# ---------------------------------------------------------------------------------------------
# compose


def test_compose_has_the_stack():
    assert {"postgres", "mlflow", "prefect-server", "worker", "gpu-worker"} <= set(SERVICES)
    assert set(S3["services"]) == {"minio", "minio-init", "mlflow"}
    assert SERVICES["gpu-worker"]["profiles"] == ["gpu"]  # no GPU, no gpu-worker: `--profile gpu` adds it


def test_compose_ports_bind_to_loopback():
    published = 0
    for name, svc in [*SERVICES.items(), *S3["services"].items()]:
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                parts = _default(str(port)).split(":")
                assert len(parts) == 3 and parts[0] == "127.0.0.1", (name, port)
    assert published >= 5
    assert "ports" not in SERVICES["postgres"]  # reachable only on the compose network


def _env_items():
    for name, svc in [*SERVICES.items(), *S3["services"].items()]:
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        for key, value in env.items():
            yield name, key, str(value)


def test_compose_credentials_are_variable_references():
    checked = 0
    for name, key, value in _env_items():
        if SECRET_NAME.search(key):
            assert VAR_REF.match(value), f"{name}.{key} must be a ${{VAR}} reference, not {value!r}"
            checked += 1
        for m in URL_USERINFO.finditer(value):
            assert VAR_REF.match(m["user"]) and VAR_REF.match(m["password"]), f"{name}.{key}: credentials in a URL"
            checked += 1
    assert checked >= 8
    for f in COMPOSE_FILES:
        code = "\n".join(line.split("#")[0] for line in (CLUSTER / f).read_text().splitlines())
        assert "change-me" not in code and "minioadmin" not in code  # no placeholder or default credential as a value


def test_env_example_has_placeholders_and_real_env_is_ignored():
    required = {v for f in COMPOSE_FILES for v in re.findall(r"\$\{([A-Z_0-9]+):\?", (CLUSTER / f).read_text())}
    example = dict(
        line.split("=", 1)
        for line in (CLUSTER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= set(example), required - set(example)
    assert all("change-me" in example[k] for k in example if "PASSWORD" in k)
    assert ".env" in (CLUSTER / ".gitignore").read_text().split()
    assert not (CLUSTER / ".env").exists() or ".env" in (CLUSTER / ".gitignore").read_text()


def test_mlflow_on_postgres_with_proxied_artifacts_on_a_volume_or_minio():
    mlflow = SERVICES["mlflow"]
    cmd, env = " ".join(mlflow["command"]), mlflow["environment"]
    assert "--serve-artifacts" in cmd and "--artifacts-destination=/var/lib/mlflow/artifacts" in cmd
    assert (
        "mlflow-artifacts:/var/lib/mlflow/artifacts" in mlflow["volumes"] and "mlflow-artifacts" in COMPOSE["volumes"]
    )
    assert (
        env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
        and "@postgres:5432/mlflow" in env["MLFLOW_BACKEND_STORE_URI"]
    )
    assert "mlflow:*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")  # other containers reach it as mlflow:5000
    assert set(mlflow["depends_on"]) == {"postgres"}
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which MLflow's image does not have
    [k8s] = BY_KIND["Deployment"]["mlflow"]["spec"]["template"]["spec"]["containers"]
    k8s_env = {e["name"]: e.get("value") for e in k8s["env"]}
    assert k8s_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    # the S3 variant: the same server, artifacts in MinIO once its bucket exists
    s3 = S3["services"]["mlflow"]
    assert "--serve-artifacts" in s3["command"] and "--artifacts-destination=s3://" in " ".join(s3["command"])
    assert s3["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mc mb" in " ".join(S3["services"]["minio-init"]["command"])
    assert s3["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    url = SERVICES["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and url.endswith("@postgres:5432/prefect")


def test_compose_gpu_worker_reserves_gpus_and_workers_share_storage():
    gpu = SERVICES["gpu-worker"]
    dev = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and int(dev["count"]) >= 1 and "gpu" in dev["capabilities"]
    assert gpu["command"][:5] == ["prefect", "worker", "start", "--pool", "gpu"]
    assert gpu["build"]["dockerfile"] == "infra/cluster/Dockerfile.gpu-worker"
    for name in ("worker", "gpu-worker", "dask-worker"):
        env = SERVICES[name]["environment"]
        assert "shared:/shared" in SERVICES[name]["volumes"], name
        assert env["SCIFLOW_HOME"].startswith("/shared/") and env["PREFECT_LOCAL_STORAGE_PATH"].startswith("/shared/")
        assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
        assert (
            env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
            and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        )
    assert (
        COMPOSE["volumes"]["shared"]["name"] == "sciflow-shared" and COMPOSE["networks"]["default"]["name"] == "sciflow"
    )


def _docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    exe = shutil.which("docker-compose")
    return [exe] if exe else None


def _compose_v1(cmd: list[str]) -> str | None:
    """The version of a docker-compose 1.x (Debian bookworm's), which predates the Compose Spec
    the file is written in (a top-level `name`, `pull_policy: missing`); None for v2."""
    out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True)
    version = out.stdout.strip().lstrip("v")
    return version if version.startswith("1.") else None


def test_docker_compose_config_accepts_the_file():
    cmd = _docker_compose()
    if cmd is None:
        pytest.skip("docker compose is not installed here")
    if v1 := _compose_v1(cmd):
        pytest.skip(
            f"docker-compose {v1} predates the Compose Spec compose.yaml is written in (needs docker compose v2)"
        )
    base = [*cmd, "-f", str(CLUSTER / "compose.yaml"), "--env-file", str(CLUSTER / ".env.example")]
    args = [*base, "config", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "SCIFLOW_GIT_COMMIT"}
    for extra in ([], ["-f", str(CLUSTER / "compose.s3.yaml")], ["--profile", "gpu", "--profile", "dask"]):
        out = subprocess.run(
            [*base, *extra, "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "SCIFLOW_GIT_COMMIT": "0" * 40},
        )
        assert out.returncode == 0, (extra, out.stderr)
    refused = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)  # no commit: no image tag
    assert refused.returncode != 0 and "SCIFLOW_GIT_COMMIT" in refused.stderr


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files and kust["namespace"] == "sciflow"


def test_objects_are_named_and_namespaced():
    assert MANIFESTS
    for fname, doc in MANIFESTS:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), fname
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "sciflow", (fname, doc["kind"], doc["metadata"]["name"])
    for kind in (
        "Namespace",
        "StatefulSet",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
    ):
        assert kind in BY_KIND, kind
    assert {"postgres", "minio", "mlflow", "prefect-server"} <= set(BY_KIND["Service"])
    assert "postgres" in BY_KIND["StatefulSet"] and {"minio", "mlflow", "prefect-server"} <= set(BY_KIND["Deployment"])


def _containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def test_secrets_are_only_referenced():
    assert "Secret" not in BY_KIND  # created out of band, never committed
    refs = set()
    for fname, doc in MANIFESTS:
        for c in _containers(doc):
            names = [e["name"] for e in c.get("env", [])]
            for i, e in enumerate(c.get("env", [])):
                if SECRET_NAME.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), (fname, e["name"])
                if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]:
                    refs.add(e["valueFrom"]["secretKeyRef"]["name"])
                for m in URL_USERINFO.finditer(e.get("value", "")):  # $(VAR) expansion of secret env only
                    for part in (m["user"], m["password"]):
                        var = re.fullmatch(r"\$\(([A-Z_]+)\)", part)
                        assert var and var[1] in names[:i], (fname, e["name"])
    assert refs == {"sciflow-postgres", "sciflow-minio"}
    for cm in BY_KIND["ConfigMap"].values():
        for key, value in cm["data"].items():
            assert not SECRET_NAME.search(key) and not URL_USERINFO.search(value), key


def test_services_select_running_pods():
    workloads = [d for k in ("Deployment", "StatefulSet") for d in BY_KIND[k].values()]
    for name, svc in BY_KIND["Service"].items():
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads), name
    for w in workloads:
        assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()


def test_gpu_worker_deployment_polls_the_gpu_pool_with_rbac_for_jobs():
    worker = BY_KIND["Deployment"]["prefect-worker-gpu"]
    pod = worker["spec"]["template"]["spec"]
    cmd = pod["containers"][0]["command"]
    assert cmd[cmd.index("--pool") + 1] == "gpu" and cmd[cmd.index("--type") + 1] == "kubernetes"
    assert {"configMapRef": {"name": "sciflow-env"}} in pod["containers"][0]["envFrom"]
    sa = pod["serviceAccountName"]
    assert sa in BY_KIND["ServiceAccount"]
    binding = next(b for b in BY_KIND["RoleBinding"].values() if any(s["name"] == sa for s in b["subjects"]))
    role = BY_KIND["Role"][binding["roleRef"]["name"]]
    jobs = next(r for r in role["rules"] if "jobs" in r["resources"])
    assert jobs["apiGroups"] == ["batch"] and {"create", "get", "list", "watch", "delete"} <= set(jobs["verbs"])
    assert any("pods" in r["resources"] and "list" in r["verbs"] for r in role["rules"])
    env = BY_KIND["ConfigMap"]["sciflow-env"]["data"]
    assert env["SCIFLOW_HOME"].startswith("/shared/") and env["PREFECT_LOCAL_STORAGE_PATH"].startswith("/shared/")
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert set(env) == set(COMPOSE["x-sciflow-env"]), "compose and k8s workers get the same settings"
    assert "ReadWriteMany" in BY_KIND["PersistentVolumeClaim"]["sciflow-shared"]["spec"]["accessModes"]


def _check_model(obj, type_name: str, path: str, allow: frozenset = frozenset()) -> None:
    """``obj`` fits the Kubernetes API model ``type_name``: every key is a field of the model
    (a typo such as ``contianers`` fails), recursively, with the scalar types it declares."""
    import kubernetes_asyncio.client as k8s

    if obj is None or type_name == "object":  # None: the field is left out
        return
    if type_name.startswith("list["):
        assert isinstance(obj, list), path
        for i, item in enumerate(obj):
            _check_model(item, type_name[5:-1], f"{path}[{i}]", allow)
        return
    if type_name.startswith("dict("):
        assert isinstance(obj, dict), path
        for key, item in obj.items():
            _check_model(item, type_name[type_name.index(",") + 1 : -1].strip(), f"{path}.{key}", allow)
        return
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str}
    if ".resources." in path and type_name == "str":  # quantities: "500m", "2Gi" or a plain number
        scalars["str"] = (str, int, float)
    if type_name in scalars:
        assert isinstance(obj, scalars[type_name]) and not (type_name == "int" and isinstance(obj, bool)), (
            f"{path}: expected {type_name}, got {obj!r}"
        )
        return
    model = getattr(k8s, type_name)
    assert isinstance(obj, dict), f"{path}: expected a {type_name} mapping"
    fields = {v: k for k, v in model.attribute_map.items()}
    for key, value in obj.items():
        if f"{path}.{key}" in allow:
            continue
        assert key in fields, f"{path}.{key}: not a field of {type_name}"
        _check_model(value, model.openapi_types[fields[key]], f"{path}.{key}", allow)


def _model_name(doc) -> str:
    group, _, version = doc["apiVersion"].rpartition("/")
    return f"{version.capitalize()}{doc['kind']}"


def test_manifests_fit_the_kubernetes_api_models():
    pytest.importorskip("kubernetes_asyncio")
    for fname, doc in MANIFESTS:
        _check_model(doc, _model_name(doc), f"{fname}:{doc['kind']}/{doc['metadata']['name']}")


def test_model_check_catches_a_typo():
    pytest.importorskip("kubernetes_asyncio")
    bad = copy.deepcopy(BY_KIND["Deployment"]["mlflow"])
    bad["spec"]["template"]["spec"]["contianers"] = bad["spec"]["template"]["spec"].pop("containers")
    with pytest.raises(AssertionError, match="contianers"):
        _check_model(bad, "V1Deployment", "mlflow")


def test_kubectl_kustomize_builds_offline():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(built) == len(MANIFESTS)
    assert all(d["metadata"].get("namespace") == "sciflow" for d in built if d["kind"] != "Namespace")


# ---------------------------------------------------------------------------------------------
# GPU work-pool job templates


BASE_K8S = json.loads((ROOT / "infra" / "k8s" / "gpu-base-job-template.json").read_text())
CLUSTER_K8S = json.loads((CLUSTER / "k8s-gpu-job-template.json").read_text())
DOCKER = json.loads((ROOT / "infra" / "docker" / "gpu-base-job-template.json").read_text())


def test_cluster_k8s_template_is_the_base_plus_shared_storage():
    """infra/cluster/k8s-gpu-job-template.json = infra/k8s/gpu-base-job-template.json + volume,
    envFrom and namespace; nothing else may drift."""
    t = copy.deepcopy(CLUSTER_K8S)
    pod = t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod.pop("volumes") == [
        {"name": "shared", "persistentVolumeClaim": {"claimName": "{{ shared_volume_claim }}"}}
    ]
    assert pod.pop("securityContext") == {"fsGroup": 1000}
    c = pod["containers"][0]
    assert c.pop("volumeMounts") == [{"name": "shared", "mountPath": "/shared"}]
    assert c.pop("envFrom") == [{"configMapRef": {"name": "{{ env_config_map }}"}}]
    props = t["variables"]["properties"]
    assert props.pop("shared_volume_claim")["default"] == "sciflow-shared"
    assert props.pop("env_config_map")["default"] == "sciflow-env"
    assert props["namespace"].pop("default") == "sciflow"
    base = copy.deepcopy(BASE_K8S)
    base["variables"]["properties"]["namespace"].pop("default")
    assert t == base


@pytest.mark.parametrize("gpus", [1, 4])
def test_cluster_k8s_template_renders_a_gpu_job_on_the_shared_volume(gpus):
    pytest.importorskip("prefect_kubernetes")
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    cfg = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(
            CLUSTER_K8S, {"gpu_count": gpus, "image": "registry.example/sciflow-gpu:1"}
        )
    )
    job = cfg.job_manifest
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == gpus
    assert c["volumeMounts"] == [{"name": "shared", "mountPath": "/shared"}]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sciflow-shared"
    assert c["envFrom"] == [{"configMapRef": {"name": "sciflow-env"}}]
    assert job["metadata"]["namespace"] == "sciflow"
    # Prefect's own default template puts completions/parallelism in the pod spec; the API ignores them
    quirks = frozenset({"job.spec.template.spec.completions", "job.spec.template.spec.parallelism"})
    rendered = copy.deepcopy(job)
    rendered["spec"]["template"]["spec"]["containers"][0]["env"] = []
    _check_model(rendered, "V1Job", "job", quirks)


def _render_core(template: dict, values: dict) -> dict:
    """Prefect's own templating (what every worker type does first), defaults + values."""
    from prefect.utilities.templating import apply_values

    props = template["variables"]["properties"]
    merged = {k: v["default"] for k, v in props.items() if "default" in v}
    merged.update(values)
    return apply_values(template["job_configuration"], merged)


@pytest.mark.parametrize("gpus", [1, 2, -1])
def test_docker_template_wires_gpu_count_into_a_device_request(gpus):
    cfg = _render_core(DOCKER, {"gpu_count": gpus})
    req = cfg["container_create_kwargs"]["device_requests"]
    assert req == [{"driver": "nvidia", "count": gpus, "capabilities": [["gpu"]]}]
    assert isinstance(req[0]["count"], int)
    assert cfg["volumes"] == ["sciflow-shared:/shared"] and cfg["networks"] == ["sciflow"]
    assert (
        cfg["env"]["SCIFLOW_HOME"].startswith("/shared/") and cfg["env"]["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    )


def test_docker_template_rejects_zero_gpus():
    import jsonschema

    schema = DOCKER["variables"]
    jsonschema.validate({"gpu_count": 2}, schema)
    jsonschema.validate({"gpu_count": -1}, schema)
    for bad in (0, -2, "two"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"gpu_count": bad}, schema)


def test_docker_worker_builds_the_device_request():
    """With prefect-docker: the worker's job configuration and the container settings it passes
    to docker-py, down to the HostConfig the Docker API receives."""
    pytest.importorskip("prefect_docker")
    from docker.types import HostConfig
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    cfg = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(DOCKER, {"gpu_count": 2}))
    assert cfg.image == "sciflow-gpu:set-by-infra-cluster-gpu-pool-sh"  # the pool gets the release's tag

    class FakeDocker:  # only asked for its version (host.docker.internal mapping)
        def version(self):
            return {"Version": "27.0.0"}

    settings = DockerWorker._build_container_settings(None, FakeDocker(), cfg)
    host = HostConfig(version="1.44", device_requests=settings["device_requests"], shm_size=settings["shm_size"])
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host["ShmSize"] == 8 * 1024**3


# ---------------------------------------------------------------------------------------------
# image and deployments


def test_gpu_worker_dockerfile():
    text = (CLUSTER / "Dockerfile.gpu-worker").read_text()
    assert re.search(r"^FROM ", text, re.M)
    assert "petsc-dev" in text and "petsc4py" in text
    assert (
        "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text
    )  # Debian's python, a CUDA base, or base-image.sh's
    # a GPU build puts the CUDA wheel of the locked torch version in first; the lock then keeps it
    assert re.search(r'pip"? install "torch==\$\(sed .*requirements\.lock\)" --index-url "\$TORCH_INDEX_URL"', text)
    assert "download.pytorch.org/whl/cu" in text
    # the dependencies are the lock's, through the set-up every machine runs, before the source
    setup = text.index("SETUP_PROJECT=0")
    assert text.index("COPY pyproject.toml requirements.lock") < setup < text.index("COPY . /opt/sciflow")
    assert "pip install -q --no-deps --no-build-isolation -e ." in text and "infra/lock.py verify" in text
    assert 'CMD ["prefect", "worker", "start", "--pool", "gpu"]' in text
    assert not re.search(r"^ENTRYPOINT", text, re.M)  # Jobs / containers replace CMD with the flow run's command
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()


def _deployments(path: Path) -> dict[tuple[str, str], dict]:
    """(flow name, deployment name) -> the deployment's entry, checking each entrypoint is a flow."""
    out = {}
    for dep in yaml.safe_load(path.read_text())["deployments"]:
        module, attr = dep["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        assert isinstance(flow, Flow), dep["entrypoint"]
        assert set(dep.get("parameters", {})) <= set(flow.parameters.properties), dep["name"]
        key = (flow.name, dep["name"])
        assert key not in out, f"{key} deployed twice"
        out[key] = {**dep, "flow": flow}
    return out


def test_cluster_deployments_point_at_flows_on_known_pools():
    from flows.nightly import STAGES, deployment_for

    cluster = _deployments(CLUSTER / "prefect.yaml")
    local = _deployments(ROOT / "infra" / "prefect.yaml")
    assert all(dep["work_pool"]["name"] in {"local", "gpu"} for dep in cluster.values())
    assert not set(cluster) & set(local)  # no clash with infra/prefect.yaml
    paper = cluster["nightly-benchmark", "nightly-paper"]
    params = paper["parameters"]
    assert paper["work_pool"]["name"] == "local" and params["scale"] == "paper" and params["dispatch"] == "deployments"
    assert paper["flow"].validate_parameters(params)  # the values pass the flow's own parameter model
    # every stage the nightly dispatches has a deployment of that name, on the right pool
    for stage in STAGES:
        flow, name = deployment_for(stage, params["gpu_stages"]).split("/")
        dep = {**local, **cluster}[flow, name]
        assert dep["work_pool"]["name"] == ("gpu" if stage in params["gpu_stages"] else "local"), stage
        assert dep["flow"].name == stage
        assert local[flow, flow]["work_pool"]["name"] == "local"  # and a CPU deployment for the local nights
    assert local["nightly-benchmark", "nightly"]["parameters"]["dispatch"] == "deployments"


def test_nightly_deployments_never_overlap_themselves():
    """Every nightly deployment has a deployment concurrency limit of 1 that cancels a new run while
    one is running (a long night never overlaps the next), in the form Prefect's deployment model
    accepts; the other deployments are unbounded (the pools bound them)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    for path in (ROOT / "infra" / "prefect.yaml", CLUSTER / "prefect.yaml"):
        for (flow, name), dep in _deployments(path).items():
            if flow != "nightly-benchmark":
                assert "concurrency_limit" not in dep, (path.name, name)
                continue
            limit = ConcurrencyLimitConfig.model_validate(dep["concurrency_limit"])
            assert limit.limit == 1 and limit.collision_strategy.value == "CANCEL_NEW", (path.name, name)


# ---------------------------------------------------------------------------------------------
# images tagged with the commit they carry (infra/cluster/build.sh), never :latest


def _images() -> list[tuple[str, str]]:
    """(where, image reference) for every image a worker, a flow run or a service of the recipe uses."""
    commit = re.compile(r"\$\{SCIFLOW_GIT_COMMIT:\?[^}]*\}")  # required by compose: the commit
    out = [
        (f"compose:{name}", _default(commit.sub("0" * 40, svc["image"])))
        for name, svc in SERVICES.items()
        if "image" in svc
    ]
    out += [
        (f"{fname}:{doc['metadata']['name']}/{c['name']}", c["image"])
        for fname, doc in MANIFESTS
        for c in _containers(doc)
    ]
    for path in (
        CLUSTER / "k8s-gpu-job-template.json",
        ROOT / "infra/k8s/gpu-base-job-template.json",
        ROOT / "infra/docker/gpu-base-job-template.json",
    ):
        out.append((path.name, json.loads(path.read_text())["variables"]["properties"]["image"]["default"]))
    return out


def test_no_image_is_latest_or_untagged():
    images = _images()
    assert len(images) >= 10
    for where, image in images:
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest" and not tag.startswith("${"), f"{where}: {image} (tag it, never :latest)"


def test_sciflow_images_carry_the_commit():
    """compose tags and builds the worker image with $SCIFLOW_GIT_COMMIT (required); the k8s manifests
    and job templates hold a placeholder that build.sh's overlay / gpu-pool.sh replace; the
    Dockerfile turns the GIT_COMMIT build argument into SCIFLOW_GIT_COMMIT and a label."""
    text = (CLUSTER / "compose.yaml").read_text()
    anchor = COMPOSE["x-sciflow-image"]
    assert anchor["image"].startswith("${CLUSTER_IMAGE_NAME:-sciflow-gpu}:${SCIFLOW_GIT_COMMIT:?")
    assert anchor["build"]["args"]["GIT_COMMIT"].startswith("${SCIFLOW_GIT_COMMIT:?")
    assert "sciflow-gpu:latest" not in text
    for name in ("worker", "gpu-worker", "dask-worker"):
        assert SERVICES[name]["image"] == anchor["image"], name
    assert SERVICES["mlflow"]["image"].startswith("${MLFLOW_IMAGE:-sciflow-mlflow:${SCIFLOW_GIT_COMMIT:?")
    for fname, doc in MANIFESTS:
        for c in _containers(doc):
            if c["image"].startswith(("sciflow-gpu:", "sciflow-mlflow:")):
                placeholder = c["image"].split(":")[0] + ":set-by-infra-cluster-build-sh"
                assert c["image"] == placeholder, (fname, c["name"])
                assert c["imagePullPolicy"] == "IfNotPresent", (fname, c["name"])  # commit tags never move
    docker = (CLUSTER / "Dockerfile.gpu-worker").read_text()
    arg, env = docker.index("ARG GIT_COMMIT"), docker.index('ENV SCIFLOW_GIT_COMMIT="${GIT_COMMIT}"')
    assert arg < env < docker.index("COPY . /opt/sciflow")
    assert 'org.opencontainers.image.revision="${GIT_COMMIT}"' in docker
    assert "k8s/release/" in (CLUSTER / ".gitignore").read_text().split()


def test_git_commit_comes_from_the_image_without_a_work_tree():
    code = "from flows.tracking import git_commit; print(git_commit())"
    env = {**os.environ, "GIT_DIR": "/nonexistent", "SCIFLOW_GIT_COMMIT": "abc123def"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "abc123def", out.stderr[-2000:]
    env.pop("SCIFLOW_GIT_COMMIT")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "unknown", out.stderr[-2000:]


def _fake(tmp_path: Path, name: str) -> Path:
    """An executable that appends its arguments (one JSON list a line) to <name>.calls and copies
    a --base-job-template file to <name>.template.json."""
    exe = tmp_path / name
    exe.write_text(
        "#!/usr/bin/env python3\nimport json, shutil, sys\n"
        f"open({str(tmp_path / (name + '.calls'))!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if '--base-job-template' in sys.argv:\n"
        f"    shutil.copy(sys.argv[sys.argv.index('--base-job-template') + 1], {str(tmp_path / (name + '.template.json'))!r})\n"
    )
    exe.chmod(0o755)
    return exe


def _calls(tmp_path: Path, name: str) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / f"{name}.calls").read_text().splitlines()]


def test_build_script_tags_with_the_commit_and_refuses_a_dirty_tree(tmp_path):
    """infra/cluster/build.sh in a scratch repository (its own commit), with a stand-in docker."""
    repo = tmp_path / "repo"
    for rel in (
        "infra/cluster/build.sh",
        "infra/cluster/Dockerfile.gpu-worker",
        "infra/cluster/Dockerfile.mlflow",
        "infra/cluster/k8s/kustomization.yaml",
        "requirements.lock",
    ):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "release"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "DOCKER": str(_fake(tmp_path, "docker")), "CLUSTER_REGISTRY": "registry.example/team/"}
    env.pop("CLUSTER_ALLOW_DIRTY", None)
    out = subprocess.run([str(repo / "infra/cluster/build.sh"), "--push"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    build, build_mlflow, push, _ = _calls(tmp_path, "docker")
    assert build[:3] == ["build", "-f", "infra/cluster/Dockerfile.gpu-worker"]
    assert f"GIT_COMMIT={commit}" in build and f"registry.example/team/sciflow-gpu:{commit}" in build
    assert push == ["push", f"registry.example/team/sciflow-gpu:{commit}"]
    assert f"registry.example/team/sciflow-mlflow:{commit}" in build_mlflow
    assert f"org.opencontainers.image.revision={commit}" in build_mlflow
    assert f"export SCIFLOW_GIT_COMMIT={commit}" in out.stdout
    overlay = yaml.safe_load((repo / "infra/cluster/k8s/release/kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    assert {"name": "sciflow-gpu", "newName": "registry.example/team/sciflow-gpu", "newTag": commit} in overlay[
        "images"
    ]

    (repo / "infra/cluster/Dockerfile.mlflow").write_text("FROM scratch\n")  # uncommitted change
    dirty = subprocess.run([str(repo / "infra/cluster/build.sh")], env=env, capture_output=True, text=True)
    assert dirty.returncode == 1 and "uncommitted changes" in dirty.stderr
    forced = subprocess.run(
        [str(repo / "infra/cluster/build.sh")], env={**env, "CLUSTER_ALLOW_DIRTY": "1"}, capture_output=True, text=True
    )
    assert forced.returncode == 0 and f"export SCIFLOW_GIT_COMMIT={commit}-dirty" in forced.stdout


def test_gpu_pool_script_sets_the_image_and_the_concurrency_limit(tmp_path):
    """infra/cluster/gpu-pool.sh with a stand-in prefect (tests/system/test_stack_command.py runs it
    against a real server)."""
    script = str(CLUSTER / "gpu-pool.sh")
    env = {**os.environ, "PREFECT": str(_fake(tmp_path, "prefect")), "CLUSTER_IMAGE": "reg.example/sciflow-gpu:abc123"}
    env.pop("GPU_POOL_LIMIT", None)
    out = subprocess.run([script, "kubernetes"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    create, limit = _calls(tmp_path, "prefect")
    assert (
        create[:6] == ["--no-prompt", "work-pool", "create", "gpu", "--type", "kubernetes"] and "--overwrite" in create
    )
    assert limit == ["--no-prompt", "work-pool", "set-concurrency-limit", "gpu", "2"]
    rendered = json.loads((tmp_path / "prefect.template.json").read_text())
    props = rendered["variables"]["properties"]
    assert props["image"]["default"] == "reg.example/sciflow-gpu:abc123"
    assert props["image_pull_policy"]["default"] == "IfNotPresent"
    props["image"]["default"] = CLUSTER_K8S["variables"]["properties"]["image"]["default"]
    assert rendered == CLUSTER_K8S  # nothing else changed

    (tmp_path / "prefect.calls").unlink()
    out = subprocess.run([script, "process"], env={**env, "GPU_POOL_LIMIT": "1"}, capture_output=True, text=True)
    assert out.returncode == 0 and _calls(tmp_path, "prefect")[-1][-2:] == ["gpu", "1"]
    for bad in ("sciflow-gpu:latest", "sciflow-gpu:set-by-infra-cluster-gpu-pool-sh"):
        refused = subprocess.run([script], env={**env, "CLUSTER_IMAGE": bad}, capture_output=True, text=True)
        assert refused.returncode == 2 and "is not a commit tag" in refused.stderr
