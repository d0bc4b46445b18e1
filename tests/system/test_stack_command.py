"""`sciflow stack up|status|down` with the deployed nightly benchmark: real servers on 127.0.0.1,
both deployment files (infra/prefect.yaml by `up`, infra/cluster/prefect.yaml on top),
`prefect deployment run 'nightly-benchmark/nightly' --param scale=smoke` as a user types it, the
result checked through MLflow's and Prefect's REST APIs, then everything stopped by PID."""

import datetime
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers import LOAD_OUTSIDE_REPO

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _rest(base: str, path: str, body: dict | None = None, params: dict | None = None) -> dict:
    """GET (or POST ``body``) ``base + path``; the decoded JSON answer."""
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def _search(mlflow: str, experiment_id: str, filter_string: str) -> list[dict]:
    runs = _rest(
        mlflow,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100},
    ).get("runs", [])
    for run in runs:  # lists of {key, value} -> dicts
        for part in ("tags", "params", "metrics"):
            run["data"][part] = {kv["key"]: kv["value"] for kv in run["data"].get(part, [])}
    return runs


def _when(stamp: str) -> float:
    """Seconds since the epoch of a Prefect API time stamp."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _artifacts(mlflow: str, run_id: str, path: str = "") -> set[str]:
    listing = _rest(mlflow, "/api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": path})
    return {f["path"] for f in listing.get("files", [])}


def test_stack_up_deployed_nightly_smoke_down(tmp_path):
    from flows.generate import spec_label
    from flows.nightly import STAGES, datasets_for

    env = {
        **os.environ,
        "SCIFLOW_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "home" / "prefect"),
        "COLUMNS": "200",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }  # the worker polls every 2 s, not 10 s
    for var in ("MLFLOW_TRACKING_URI", "SCIFLOW_MLFLOW_ARTIFACTS", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        env.pop(var, None)
    sciflow = [str(BIN / "sciflow"), "stack"]
    up = subprocess.run([*sciflow, "up"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Prefect UI: http://127.0.0.1:" in up.stdout and "MLflow UI:  http://127.0.0.1:" in up.stdout
        stack_env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (tmp_path / "home" / "stack" / "stack.env").read_text().splitlines()
        )
        # the cluster file on top of what `up` deployed: its `gpu` pool (Kubernetes type, the
        # committed base job template) and the gpu deployments the nightly dispatches to
        prefect_cli = [str(BIN / "prefect"), "--no-prompt"]
        for args in (
            [
                "work-pool",
                "create",
                "gpu",
                "--type",
                "kubernetes",
                "--base-job-template",
                "infra/cluster/k8s-gpu-job-template.json",
            ],
            ["deploy", "--all", "--prefect-file", "infra/cluster/prefect.yaml"],
            ["deployment", "ls"],
        ):
            done = subprocess.run(
                [*prefect_cli, *args], env={**env, **stack_env}, cwd=ROOT, capture_output=True, text=True, timeout=180
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        for name in [
            "generate-dataset/generate-dataset",
            "nightly-benchmark/nightly",
            "nightly-benchmark/nightly-paper",
            *(f"{stage}/{stage}" for stage in STAGES),
            *(f"{stage}/gpu" for stage in STAGES if stage != "benchmark-optimizers"),
        ]:
            assert name in done.stdout, name
        # bad input: a gpu_count of the wrong type is refused when the run is created, naming the variable
        bad = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "benchmark-operators/gpu", "--job-variable", "gpu_count=two"],
            env={**env, **stack_env, "COLUMNS": "300"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode != 0 and "Validation failed for field 'gpu_count'" in bad.stdout + bad.stderr, bad.stdout
        t0 = time.perf_counter()
        out = subprocess.run(
            [
                str(BIN / "prefect"),
                "deployment",
                "run",
                "nightly-benchmark/nightly",
                "--param",
                "scale=smoke",
                "--watch",
                "--watch-timeout",
                "540",
            ],
            env={**env, **stack_env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        seconds = time.perf_counter() - t0
        assert "Completed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout).group(1)
        print(f"\ndeployed nightly smoke: COMPLETED in {seconds:.0f} s end to end")

        mlflow, prefect = stack_env["MLFLOW_TRACKING_URI"], stack_env["PREFECT_API_URL"]
        # a night and everything nested in it live in the nightly experiment
        exp = _rest(mlflow, "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "sciflow-nightly"})
        exp_id = exp["experiment"]["experiment_id"]
        [parent] = _search(mlflow, exp_id, f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
        tags, metrics = parent["data"]["tags"], parent["data"]["metrics"]
        assert parent["info"]["status"] == "FINISHED" and tags["sciflow.stage"] == "nightly"
        assert tags["prefect.deployment"] == "nightly" and tags["prefect.flow_name"] == "nightly-benchmark"
        assert parent["data"]["params"]["dispatch"] == "deployments" and parent["data"]["params"]["scale"] == "smoke"
        assert {"rows", "seconds_total", "regressions"} <= set(metrics)
        assert _artifacts(mlflow, parent["info"]["run_id"]) >= {"report.md", "results", "comparison.json"}
        # MLflow's Source / Version / User columns; both ways between the Prefect flow run and the MLflow run
        assert (
            tags["mlflow.source.name"] == "flows/nightly.py:nightly_benchmark" and tags["mlflow.source.type"] == "JOB"
        )
        assert tags["mlflow.user"] and tags["mlflow.source.git.commit"]
        assert tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{flow_run_id}")
        links = _rest(
            prefect,
            "/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        )  # (Prefect 3.9 stores a link artifact with type "markdown")
        assert any(f"/#/experiments/{exp_id}/runs/{parent['info']['run_id']})" in a["data"] for a in links)
        # the report's figure inline in the Prefect markdown artifact
        [md] = _rest(
            prefect,
            "/artifacts/filter",
            {"artifacts": {"key": {"any_": ["nightly-smoke-regressions"]}, "flow_run_id": {"any_": [flow_run_id]}}},
        )
        assert "](data:image/png;base64," in md["data"]
        # the night's headline numbers as flat metrics <benchmark>/<method>/<problem>/<field>
        assert metrics["operators/fno/navier-stokes-32/compression_vs_fno"] == 1.0
        assert {"linear/cg/poisson2d-neumann-disks-32/iterations", "data/_/navier_stokes-n32/samples_per_s"} <= set(
            metrics
        )
        assert "results/nightly-smoke.json" in _artifacts(mlflow, parent["info"]["run_id"], "results")

        children = _search(mlflow, exp_id, f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'")
        assert all(c["info"]["status"] == "FINISHED" for c in children)
        generated = [c for c in children if c["data"]["tags"]["sciflow.stage"] == "generate-dataset"]
        assert len(generated) == len(datasets_for("smoke"))  # what the benchmarks read, in the nightly's own flow run
        bench = {
            c["data"]["tags"]["prefect.flow_name"]: c
            for c in children
            if c["data"]["tags"]["sciflow.stage"].startswith("bench-")
        }
        assert set(bench) == set(STAGES)  # each stage: its own flow run of its own deployment
        spans = {}
        for stage, run in bench.items():
            t = run["data"]["tags"]
            assert t["prefect.deployment"] == stage and t["prefect.flow_run_id"] != flow_run_id
            child = _rest(prefect, f"/flow_runs/{t['prefect.flow_run_id']}")
            assert child["state"]["type"] == "COMPLETED" and child["deployment_id"] and child["parent_task_run_id"]
            assert child["name"] == f"bench-{STAGES[stage].name}-smoke"  # flow_run_name templates, not random names
            assert any(p.startswith("results") for p in _artifacts(mlflow, run["info"]["run_id"]))
            spans[stage] = (_when(child["start_time"]), _when(child["end_time"]))
        # dispatched stages run two at a time (stage_concurrency=2)
        edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
        at_once = max(sum(step for _, step in edges[: i + 1]) for i in range(len(edges)))
        wall = max(b for _, b in spans.values()) - min(a for a, _ in spans.values())
        busy = sum(b - a for a, b in spans.values())
        print(f"stages: {wall:.0f} s wall for {busy:.0f} s of stage flow runs, {at_once} at once at most")
        assert at_once == 2 and wall < busy
        night = _rest(prefect, f"/flow_runs/{flow_run_id}")
        assert re.fullmatch(r"nightly-smoke-\d{4}-\d\d-\d\d", night["name"]), night["name"]
        # the automations of infra/automations.yaml, applied by `stack up`
        automations = {a["name"]: a for a in _rest(prefect, "/automations/filter", {}) if "sciflow" in a["tags"]}
        assert set(automations) == {
            a["name"] for a in yaml.safe_load((ROOT / "infra/automations.yaml").read_text())["automations"]
        }
        assert all(a["enabled"] for a in automations.values())
        rows = json.loads(
            urllib.request.urlopen(
                f"{mlflow}/get-artifact?"
                + urllib.parse.urlencode({"path": "results/nightly-smoke.json", "run_uuid": parent["info"]["run_id"]}),
                timeout=30,
            ).read()
        )["rows"]
        assert len(rows) == metrics["rows"] and {r["stage"] for r in rows} == {"generate-dataset", *STAGES}
        assert [r["problem"] for r in rows[: len(generated)]] == [spec_label(s) for s in datasets_for("smoke")]
        by_stage = lambda stage: [r for r in rows if r["stage"] == stage]  # noqa: E731
        linear = by_stage("benchmark-linear-solvers")
        assert {r["method"] for r in linear} == {"dcdm-k2", "dcdm-k0", "cg", "icpcg", "dpcg", "gamg"}
        assert all(r["converged"] for r in linear if not r["method"].startswith("dcdm"))
        ops = by_stage("benchmark-operators")
        assert {r["method"] for r in ops} >= {"fno", "tfno-r0.02", "mg-tfno-r0.02"} and all(
            r["params"] > 0 for r in ops
        )
        assert {r["method"] for r in by_stage("benchmark-optimizers")} >= {
            "al-sketch",
            "newton-sqp",
            "trust-constr",
            "lv-hba",
            "implicit",
        }
        assert {(r["problem"], r["method"]) for r in by_stage("benchmark-hard-constraints")} >= {
            ("diffusion-sorption", "soft-pinn"),
            ("heat-2d", "pi-hc-moe-k4"),
        }
        assert {(r["problem"], r["method"]) for r in by_stage("benchmark-neural-odes")} >= {
            ("digits", "local-unbiased"),
            ("lotka-volterra", "global"),
        }
        assert "residuals.png" in _artifacts(mlflow, bench["benchmark-linear-solvers"]["info"]["run_id"])
        # every compared method is a child run of its benchmark run: params, every row number as a metric
        for stage, run in bench.items():
            assert "comparison.json" in _artifacts(mlflow, run["info"]["run_id"])
            methods = _search(
                mlflow,
                exp_id,
                f"tags.`mlflow.parentRunId` = '{run['info']['run_id']}' and tags.`sciflow.stage` = 'method'",
            )
            assert {m["info"]["run_name"] for m in methods} >= {r["method"] for r in by_stage(stage)}, stage
            for m in methods:
                assert m["info"]["status"] == "FINISHED" and m["data"]["metrics"] and m["data"]["params"]["method"]
        ops = {
            m["info"]["run_name"]: m
            for m in _search(
                mlflow, exp_id, f"tags.`mlflow.parentRunId` = '{bench['benchmark-operators']['info']['run_id']}'"
            )
        }
        assert float(ops["mg-tfno-r0.02"]["data"]["params"]["model.rank"]) == 0.02
        history = _rest(
            mlflow,
            "/api/2.0/mlflow/metrics/get-history",
            params={"run_id": ops["mg-tfno-r0.02"]["info"]["run_id"], "metric_key": "navier-stokes-32/train/loss"},
        )["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2]  # per epoch
        # @nightly moved to what the night trained; the model loads by alias in a fresh process outside the repository
        alias = _rest(
            mlflow,
            "/api/2.0/mlflow/registered-models/alias",
            params={"name": "operator-mg-tfno-r0.02", "alias": "nightly"},
        )["model_version"]
        assert alias["run_id"] == ops["mg-tfno-r0.02"]["info"]["run_id"]
        assert _rest(mlflow, "/api/2.0/mlflow/registered-models/alias", params={"name": "dcdm-2d", "alias": "nightly"})
        loaded = subprocess.run(
            [sys.executable, "-c", LOAD_OUTSIDE_REPO, "models:/operator-mg-tfno-r0.02@nightly", str(ROOT)],
            cwd=tmp_path,
            env={**{k: v for k, v in env.items() if k != "PYTHONPATH"}, "MLFLOW_TRACKING_URI": mlflow},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert json.loads(loaded.stdout.strip().splitlines()[-1])["shape"] == [2, 1, 24, 24]
        # one comparison: the overview figure and every stage's table in report.md, with where the plots are
        assert "nightly-smoke.png" in _artifacts(mlflow, parent["info"]["run_id"])
        report = (
            urllib.request.urlopen(
                f"{mlflow}/get-artifact?"
                + urllib.parse.urlencode({"path": "report.md", "run_uuid": parent["info"]["run_id"]}),
                timeout=30,
            )
            .read()
            .decode()
        )
        assert "![overview" in report and "## benchmark-operators" in report and "`residuals.png`" in report
        pids = [int((tmp_path / "home" / "stack" / f"{n}.pid").read_text()) for n in ("prefect", "mlflow", "worker")]
    finally:
        down = subprocess.run([*sciflow, "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped: worker, mlflow, prefect" in down.stdout, down.stdout + down.stderr
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        )
