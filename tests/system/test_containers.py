"""The cluster recipe run for real: images built from Debian and PyPI alone, flows in containers
through a Prefect docker work pool, results in the same MLflow and state folder as in-process runs.

Needs a container runtime: a docker daemon this user can reach (`make containers-runtime` installs
Debian's docker.io and debootstrap and starts the daemon when run as root). Without one the test is
skipped and says why. Cold (no image yet) it builds the base, worker and MLflow images first
(infra/cluster/build.sh --local, about 8 minutes on 2 cores); warm it reuses them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import free_port, stop
from procs import get_json as _get
from procs import post_json as _post

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "infra" / "cluster"


def _runtime() -> str | None:
    """Why containers cannot run here, or None when a daemon answers."""
    if not shutil.which("docker"):
        return "no docker CLI (make containers-runtime installs Debian's docker.io)"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no docker daemon answers: {(info.stderr or info.stdout).strip()[:200]} (make containers-runtime starts one)"
    if not shutil.which("debootstrap") and not _images("sciflow-base"):
        return "no debootstrap to make the base image (apt-get install debootstrap)"
    return None


def _images(repo: str) -> list[str]:
    out = subprocess.run(
        ["docker", "images", repo, "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True
    )
    return out.stdout.split()


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _runs(mlflow: str, experiment: str, filter_string: str) -> list[tuple[dict, dict]]:
    """(run, its tags as a dict) for every run of ``experiment`` matching ``filter_string``."""
    exp = _get(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment)["experiment"]
    found = _post(
        f"{mlflow}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp["experiment_id"]], "filter": filter_string, "max_results": 100},
    ).get("runs", [])
    return [(r, {t["key"]: t["value"] for t in r["data"]["tags"]}) for r in found]


def _mlflow_run(mlflow: str, experiment: str, flow_run_id: str) -> dict:
    # a benchmark has one child run per method under its parent; the parent is the flow run's
    found = _runs(mlflow, experiment, f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    [run] = [r for r, tags in found if "mlflow.parentRunId" not in tags]
    return run


def _in_process_digest(spec, home: Path) -> str:
    """SHA-256 of ``spec`` generated in a process of this checkout (chunks of 8) under ``home``."""
    code = (
        "import data; from data.spec import parse_spec; "
        f"print(data.generate(parse_spec({spec.model_dump_json()!r}), chunk_size=8, progress=False).digest)"
    )
    here = _run([sys.executable, "-c", code], {**os.environ, "SCIFLOW_HOME": str(home)}, 600)
    assert here.returncode == 0, here.stderr
    return here.stdout.strip()


def _deployment_run(env: dict, name: str, *args: str) -> tuple[str, dict]:
    """`prefect deployment run NAME ARGS... --watch`; (flow run id, its final state from the API)."""
    started = _run([str(BIN / "prefect"), "deployment", "run", name, *args, "--watch"], env, 900)
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout)
    assert m, started.stdout + started.stderr
    state = _get(f"{env['PREFECT_API_URL']}/flow_runs/{m.group(1)}")["state"]
    return m.group(1), state


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    """The images of infra/cluster/build.sh --local (built cold, reused warm); its exports and the
    build's wall time under ``"seconds"``. Skips, saying why, without a container runtime."""
    why = _runtime()
    if why:
        pytest.skip(f"container runtime unavailable: {why}")
    t0 = time.time()
    build = subprocess.run(
        [str(CLUSTER / "build.sh"), "--local"],
        env={
            **os.environ,
            "CLUSTER_ALLOW_DIRTY": "1",
            "CLUSTER_RELEASE_DIR": str(tmp_path_factory.mktemp("release")),
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-6000:]
    exports = dict(line.removeprefix("export ").split("=", 1) for line in build.stdout.split("\n") if "=" in line)
    assert exports["CLUSTER_IMAGE"].endswith(":" + exports["SCIFLOW_GIT_COMMIT"])
    assert ":latest" not in exports["CLUSTER_IMAGE"]
    return {**exports, "seconds": f"{time.time() - t0:.0f}"}


def test_flows_run_in_containers_through_a_docker_pool(images, tmp_path):
    timings = {"images": float(images["seconds"])}
    image, commit = images["CLUSTER_IMAGE"], images["SCIFLOW_GIT_COMMIT"]

    home = tmp_path / "home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))},
        "SCIFLOW_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "COLUMNS": "200",
    }
    # the test session's own settings point experiments' artifacts at a folder the containers do not mount
    for var in ("PREFECT_LOCAL_STORAGE_PATH", "SCIFLOW_MLFLOW_ARTIFACTS"):
        env.pop(var, None)
    sciflow = str(BIN / "sciflow")
    worker = None
    t0 = time.time()
    up = _run([sciflow, "stack", "up"], env, 600)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        stack = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (home / "stack" / "stack.env").read_text().splitlines()
            if line.startswith("export ")
        )
        env = {**env, **stack}
        # the `gpu` pool, docker type, the committed template less its GPU request; flow-run containers
        # share the host's network (the stack listens on 127.0.0.1) and the state folder, at the same path
        variables = {
            "network_mode": "host",
            "networks": [],  # the template's default is compose's `sciflow` network
            "volumes": [f"{home}:{home}"],
            "env": {"SCIFLOW_HOME": str(home), "MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]},
            "auto_remove": True,
            "image_pull_policy": "Never",  # images are built here; no registry to pull from
        }
        pool = _run(
            [str(CLUSTER / "gpu-pool.sh"), "docker"],
            {
                **env,
                "PREFECT": str(BIN / "prefect"),
                "CLUSTER_IMAGE": image,
                "GPU_POOL_DEVICES": "none",
                "GPU_POOL_JOB_VARIABLES": json.dumps(variables),
            },
            120,
        )
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = _run(
            [
                str(BIN / "prefect"),
                "--no-prompt",
                "deploy",
                "--prefect-file",
                str(CLUSTER / "prefect.yaml"),
                "-n",
                "generate-dataset/container",
                "-n",
                "benchmark-operators/gpu",
            ],
            # `prefect deploy` fills {{ $SCIFLOW_REPO }} from its own environment when the variable is
            # set there (stack.env sets the checkout's path): the image's path is the one that counts
            {**env, "SCIFLOW_REPO": "/opt/sciflow"},
            300,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        dep = _get(f"{env['PREFECT_API_URL']}/deployments/name/generate-dataset/container")
        assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/sciflow"}}]
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--type", "docker"],
            env=env,
            cwd=ROOT,
            stdout=open(tmp_path / "docker-worker.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timings["stack"] = time.time() - t0

        from data.spec import DarcySpec

        spec = DarcySpec(n=32, n_train=24, n_test=8)
        t0 = time.time()
        fid, state = _deployment_run(
            env, "generate-dataset/container", "--param", f"spec={spec.model_dump_json()}", "--param", "chunk_size=8"
        )
        timings["generate-dataset"] = time.time() - t0
        log = (tmp_path / "docker-worker.log").read_text()
        assert state["type"] == "COMPLETED", f"{state}\n{log[-4000:]}"
        run = _mlflow_run(env["MLFLOW_TRACKING_URI"], "sciflow-data", fid)
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run["info"]["status"] == "FINISHED"
        assert tags["git.commit"] == commit  # the image's commit (SCIFLOW_GIT_COMMIT), it has no .git
        lock = _run([sys.executable, "infra/lock.py", "digest"], env, 60).stdout.strip()
        assert tags["sciflow.lock.sha256"] == lock  # the image's environment is the lock's

        # the nightly smoke with benchmark-operators as a GPU stage: dispatched to its `gpu`
        # deployment, i.e. to this docker pool standing in for the GPU pool; the other stages run
        # on `local` (the stack's process worker)
        t0 = time.time()
        nid, nstate = _deployment_run(
            env, "nightly-benchmark/nightly", "--param", "scale=smoke", "--param", 'gpu_stages=["benchmark-operators"]'
        )
        timings["nightly smoke, operators stage in a container"] = time.time() - t0
        log = (tmp_path / "docker-worker.log").read_text()
        assert nstate["type"] == "COMPLETED", f"{nstate}\n{log[-4000:]}"
        [staged] = _post(
            f"{env['PREFECT_API_URL']}/flow_runs/filter",
            {
                "flows": {"name": {"any_": ["benchmark-operators"]}},
                "work_pools": {"name": {"any_": ["gpu"]}},
            },
        )
        assert staged["state_type"] == "COMPLETED" and f"submitting flow run '{staged['id']}'" in log
        # the stage's run and its methods' runs nested under it
        found = _runs(env["MLFLOW_TRACKING_URI"], "sciflow-nightly", f"tags.`prefect.flow_run_id` = '{staged['id']}'")
        [(stage_run, stage_tags)] = [(r, t) for r, t in found if t.get("sciflow.stage", "").startswith("bench-")]
        assert stage_run["info"]["status"] == "FINISHED" and stage_run["data"].get("metrics")
        assert stage_tags["git.commit"] == commit  # ran in the image

        # bad input: an image that does not exist fails the flow run, and the message names it
        missing = image.rsplit(":", 1)[0] + ":no-such-commit"
        t0 = time.time()
        _, mstate = _deployment_run(env, "generate-dataset/container", "--job-variable", f"image={missing}")
        timings["missing image"] = time.time() - t0
        assert mstate["type"] in ("CRASHED", "FAILED"), mstate
        assert "no-such-commit" in (mstate.get("message") or "") + (tmp_path / "docker-worker.log").read_text()
        # bad input: a flow-run container that cannot reach the Prefect API ends, and says which URL
        unreachable = "http://127.0.0.1:9/api"
        t0 = time.time()
        _, ustate = _deployment_run(
            env, "generate-dataset/container", "--job-variable", f"env={json.dumps({'PREFECT_API_URL': unreachable})}"
        )
        timings["unreachable API"] = time.time() - t0
        assert ustate["type"] in ("CRASHED", "FAILED"), ustate
        assert "127.0.0.1:9" in (ustate.get("message") or "") + (tmp_path / "docker-worker.log").read_text()
    finally:
        stop(worker)
        _run([sciflow, "stack", "down"], env, 120)
    # the same spec and chunks in-process, in another state folder: bit-identical
    assert tags["sciflow.dataset.sha256"] == _in_process_digest(spec, tmp_path / "other")
    left = subprocess.run(["docker", "ps", "-q", "--filter", f"ancestor={image}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "flow-run containers left running"
    print("\ncontainers: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def _compose_env_file(path: Path, images: dict[str, str], ports: dict[str, int]) -> None:
    """infra/cluster/.env as a user makes it from .env.example: the passwords replaced, the images
    this machine built, no GPU profile (no GPU here), free ports."""
    import secrets

    values = {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "MINIO_ROOT_PASSWORD": secrets.token_hex(16),
        "COMPOSE_PROFILES": "",
        "SCIFLOW_GIT_COMMIT": images["SCIFLOW_GIT_COMMIT"],
        "CLUSTER_IMAGE_NAME": images["CLUSTER_IMAGE_NAME"],
        "POSTGRES_IMAGE": images["POSTGRES_IMAGE"],
        "PREFECT_SERVER_IMAGE": images["PREFECT_SERVER_IMAGE"],
        "MLFLOW_IMAGE": images["MLFLOW_IMAGE"],
        **{k: str(v) for k, v in ports.items()},
    }
    lines = []
    for line in (CLUSTER / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={values.pop(key)}" if "=" in line and not line.startswith("#") and key in values else line)
    assert not values, f".env.example lacks {sorted(values)}"
    path.write_text("\n".join(lines) + "\n")


def _compose_left(project: str) -> list[str]:
    """Containers, volumes and networks of the compose ``project`` still on this machine."""
    label = f"label=com.docker.compose.project={project}"
    left = []
    for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
        out = subprocess.run(["docker", *kind, "-q", "--filter", label], capture_output=True, text=True)
        left += [f"{kind[0]} {x}" for x in out.stdout.split()]
    return left


def test_compose_stack_up_nightly_smoke_down(images, tmp_path):
    """infra/cluster/compose.yaml up for real (PostgreSQL, Prefect server, MLflow on PostgreSQL
    with proxied artifacts on a volume, a process worker on pool `local`), the flows deployed from
    infra/prefect.yaml, the nightly smoke run through it, `down -v` leaving nothing behind."""
    from flows.nightly import STAGES

    ports = {"PREFECT_PORT": free_port(), "MLFLOW_PORT": free_port()}
    env_file = tmp_path / "cluster.env"
    _compose_env_file(env_file, images, ports)
    project = "sciflow"  # compose.yaml's `name`
    if left := _compose_left(project):
        pytest.fail(f"a compose project {project!r} already exists here: {left}")
    compose = ["docker", "compose", "-f", str(CLUSTER / "compose.yaml"), "--env-file", str(env_file)]
    # compose reads the shell's variables before the env file: keep only what docker needs
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG")}
    prefect = f"http://127.0.0.1:{ports['PREFECT_PORT']}/api"
    mlflow = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    client = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SCIFLOW_"))},
        "PREFECT_API_URL": prefect,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "MLFLOW_TRACKING_URI": mlflow,
        "SCIFLOW_REPO": "/opt/sciflow",  # where the worker container finds the code (the pull step)
        "COLUMNS": "200",
    }
    timings = {}
    t0 = time.time()
    up = _run([*compose, "up", "-d", "--wait"], base, 600)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        timings["compose up"] = time.time() - t0
        ps = json.loads(
            "[" + ",".join(_run([*compose, "ps", "--format", "json"], base, 60).stdout.split("\n")[:-1]) + "]"
        )
        assert {p["Service"] for p in ps} == {"postgres", "prefect-server", "mlflow", "worker"}, ps
        t0 = time.time()
        deploy = _run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml"],
            client,
            600,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        timings["deploy"] = time.time() - t0
        # one flow in the worker container: its dataset equals an in-process run's, bit for bit
        from data.spec import DarcySpec

        spec = DarcySpec(n=32, n_train=24, n_test=8)
        t0 = time.time()
        gid, gstate = _deployment_run(
            client,
            "generate-dataset/generate-dataset",
            "--param",
            f"spec={spec.model_dump_json()}",
            "--param",
            "chunk_size=8",
        )
        timings["generate-dataset"] = time.time() - t0
        assert gstate["type"] == "COMPLETED", gstate
        gtags = {t["key"]: t["value"] for t in _mlflow_run(mlflow, "sciflow-data", gid)["data"]["tags"]}
        assert gtags["sciflow.dataset.sha256"] == _in_process_digest(spec, tmp_path / "other")
        t0 = time.time()
        fid, state = _deployment_run(client, "nightly-benchmark/nightly", "--param", "scale=smoke")
        timings["nightly smoke"] = time.time() - t0
        logs = _run([*compose, "logs", "--no-color", "--tail", "80", "worker"], base, 60).stdout
        assert state["type"] == "COMPLETED", f"{state}\n{logs[-4000:]}"

        [(night, tags)] = _runs(mlflow, "sciflow-nightly", f"tags.`prefect.flow_run_id` = '{fid}'")
        assert night["info"]["status"] == "FINISHED" and tags["sciflow.stage"] == "nightly"
        assert tags["git.commit"] == images["SCIFLOW_GIT_COMMIT"]  # run in the worker image
        assert night["info"]["artifact_uri"].startswith("mlflow-artifacts:/sciflow")  # through the server's proxy
        listed = _get(f"{mlflow}/api/2.0/mlflow/artifacts/list", run_id=night["info"]["run_id"])
        assert {"report.md", "results"} <= {f["path"] for f in listed.get("files", [])}
        stored = _run(
            [*compose, "exec", "-T", "mlflow", "find", "/var/lib/mlflow/artifacts", "-name", "report.md"], base, 60
        )
        assert night["info"]["run_id"] in stored.stdout  # on the server's volume
        children = _runs(mlflow, "sciflow-nightly", f"tags.`mlflow.parentRunId` = '{night['info']['run_id']}'")
        stages = {t.get("prefect.flow_name") for c, t in children if c["info"]["status"] == "FINISHED"}
        assert set(STAGES) <= stages  # each benchmark stage: a flow run of its deployment, in the worker
    finally:
        t0 = time.time()
        down = _run([*compose, "down", "-v", "--timeout", "20"], base, 300)
        timings["compose down -v"] = time.time() - t0
        print("\ncompose: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    assert down.returncode == 0, down.stderr[-3000:]
    assert _compose_left(project) == [], "compose down -v left these behind"
