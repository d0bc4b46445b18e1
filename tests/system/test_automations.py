"""infra/automations.yaml against a real Prefect server (started here on 127.0.0.1, stopped by PID):
`apply_automations` creates them, applying again changes nothing, a notification block named in
$SCIFLOW_ALERTS_BLOCK adds its action, and the stuck-RUNNING automation (with its window shortened)
really cancels a run that stays RUNNING. `sciflow stack up` applies the same file
(tests/system/test_stack_command.py checks they are on its server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from procs import free_port, stop

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def _api(base: str, method: str, path: str, body=None):
    from flows.stack import prefect_api  # retries the server's 503s (SQLite busy under load)

    return prefect_api(base, method, path, body)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = open(home / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError((home / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        stop(proc)
        log.close()


def _ours(url: str) -> dict[str, dict]:
    return {a["name"]: a for a in _api(url, "POST", "/automations/filter", {}) if "sciflow" in a["tags"]}


def test_applied_automations_are_on_the_server_and_reapplying_changes_nothing(server, monkeypatch):
    from flows.stack import AUTOMATIONS, apply_automations

    monkeypatch.delenv("SCIFLOW_ALERTS_BLOCK", raising=False)
    expected = [a["name"] for a in yaml.safe_load(AUTOMATIONS.read_text())["automations"]]
    assert apply_automations(server) == expected
    first = _ours(server)
    assert sorted(first) == sorted(expected)
    assert all(a["enabled"] for a in first.values())

    crashed = first["sciflow: flow run crashed"]["trigger"]
    assert crashed["expect"] == ["prefect.flow-run.Crashed"] and crashed["posture"] == "Reactive"
    night = first["sciflow: nightly did not complete"]["trigger"]
    assert set(night["expect"]) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert night["match_related"]["prefect.resource.name"] == "nightly-benchmark"
    stuck = first["sciflow: cancel runs stuck RUNNING"]
    assert stuck["trigger"]["posture"] == "Proactive" and stuck["trigger"]["after"] == ["prefect.flow-run.Running"]
    assert stuck["trigger"]["within"] == 86400 and stuck["actions"] == [{"type": "cancel-flow-run"}]
    pending = first["sciflow: cancel runs stuck PENDING"]
    assert pending["trigger"]["after"] == ["prefect.flow-run.Pending"] and pending["trigger"]["within"] == 1800

    # idempotent: same ids, nothing added; a stale `sciflow` automation is removed, a user's own is kept
    _api(server, "POST", "/automations/", {**_spec("sciflow: retired"), "tags": ["sciflow"]})
    _api(server, "POST", "/automations/", {**_spec("someone else's"), "tags": []})
    apply_automations(server)
    again = _ours(server)
    assert {k: v["id"] for k, v in again.items()} == {k: v["id"] for k, v in first.items()}
    assert "someone else's" in {a["name"] for a in _api(server, "POST", "/automations/filter", {})}


def _spec(name: str) -> dict:
    return {
        "name": name,
        "trigger": {"type": "event", "posture": "Reactive", "expect": ["x.y"], "threshold": 1, "within": 0},
        "actions": [{"type": "do-nothing"}],
    }


def test_an_alerts_block_adds_a_notification_to_the_notify_automations(server, monkeypatch):
    from flows.stack import AUTOMATIONS, apply_automations

    deadline = time.time() + 120  # a new server registers its block types in the background after it answers
    while True:
        try:
            block_type = _api(server, "GET", "/block_types/slug/slack-webhook")
            break
        except urllib.error.HTTPError as err:
            if err.code != 404 or time.time() > deadline:
                raise
            time.sleep(1)
    schema = _api(
        server, "POST", "/block_schemas/filter", {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}}
    )[0]
    block = _api(
        server,
        "POST",
        "/block_documents/",
        {
            "name": "sciflow-alerts",
            "block_type_id": block_type["id"],
            "block_schema_id": schema["id"],
            "data": {"url": "https://hooks.slack.invalid/services/T/B/X"},
        },
    )
    monkeypatch.setenv("SCIFLOW_ALERTS_BLOCK", "slack-webhook/sciflow-alerts")
    apply_automations(server)
    notify = set(yaml.safe_load(AUTOMATIONS.read_text())["notify"])
    for name, a in _ours(server).items():
        sends = [x for x in a["actions"] if x["type"] == "send-notification"]
        assert len(sends) == (name in notify), name
        assert all(x["block_document_id"] == block["id"] and "flow_run.state.name" in x["body"] for x in sends)

    monkeypatch.setenv("SCIFLOW_ALERTS_BLOCK", "slack-webhook/no-such-block")
    with pytest.raises(RuntimeError, match="no block 'no-such-block' of type 'slack-webhook'"):
        apply_automations(server)
    monkeypatch.delenv("SCIFLOW_ALERTS_BLOCK")
    apply_automations(server)  # back to the file alone
    assert not any(x["type"] == "send-notification" for a in _ours(server).values() for x in a["actions"])


def test_stuck_running_automation_cancels_a_run_that_stays_running(server, tmp_path):
    """The file's stuck-RUNNING trigger with its 24 h window cut to 10 s (the least Prefect accepts): a flow run set RUNNING
    and left there is cancelled by the server, one that completes in time is not."""
    from flows.stack import AUTOMATIONS, apply_automations

    doc = yaml.safe_load(AUTOMATIONS.read_text())
    [stuck] = [a for a in doc["automations"] if a["name"] == "sciflow: cancel runs stuck RUNNING"]
    quick = {**stuck, "name": "sciflow-test: stuck 10 s", "trigger": {**stuck["trigger"], "within": 10}}
    path = tmp_path / "automations.yaml"
    path.write_text(yaml.safe_dump({"automations": [quick]}))
    apply_automations(server, path)  # (replaces the file's automations on this server: only this one)

    flow = _api(server, "POST", "/flows/", {"name": "stuck-test"})
    runs = [_api(server, "POST", "/flow_runs/", {"flow_id": flow["id"], "name": f"run-{i}"}) for i in range(2)]
    for run in runs:
        for state in ("PENDING", "RUNNING"):
            _api(server, "POST", f"/flow_runs/{run['id']}/set_state", {"state": {"type": state}, "force": True})
    time.sleep(1)
    _api(server, "POST", f"/flow_runs/{runs[1]['id']}/set_state", {"state": {"type": "COMPLETED"}, "force": True})
    deadline = time.time() + 90
    while time.time() < deadline:
        state = _api(server, "GET", f"/flow_runs/{runs[0]['id']}")["state"]["type"]
        if state in ("CANCELLING", "CANCELLED"):
            break
        time.sleep(1)
    assert state in ("CANCELLING", "CANCELLED"), f"the stuck run is still {state}"
    assert _api(server, "GET", f"/flow_runs/{runs[1]['id']}")["state"]["type"] == "COMPLETED"
