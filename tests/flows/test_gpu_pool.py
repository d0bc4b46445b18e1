"""The committed Kubernetes GPU work-pool template renders a Job with the requested GPU limit."""

import asyncio
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = json.loads((ROOT / "infra" / "k8s" / "gpu-base-job-template.json").read_text())


def _render(values):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    return asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(TEMPLATE, values))


@pytest.mark.parametrize("gpus", [1, 4])
def test_gpu_count_reaches_the_container_limits(gpus):
    cfg = _render(
        {"gpu_count": gpus, "image": "registry.example/sciflow-gpu:1", "cpu_limit": "8", "memory_limit": "32Gi"}
    )
    pod = cfg.job_manifest["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == gpus and limits["cpu"] == "8" and limits["memory"] == "32Gi"
    assert pod["containers"][0]["image"] == "registry.example/sciflow-gpu:1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_gpu_count_is_a_typed_variable_with_a_default():
    var = TEMPLATE["variables"]["properties"]["gpu_count"]
    assert var["type"] == "integer" and var["minimum"] == 0 and var["default"] == 1
    assert (
        int(
            _render({}).job_manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
                "nvidia.com/gpu"
            ]
        )
        == 1
    )
