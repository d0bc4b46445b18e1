"""The tracking spool (flows.spool): calls kept in order while MLflow is unreachable, delivered
once, corrupt entries skipped with a warning naming them, unwritable folders named."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.spool import Spool, SpoolError, is_outage, spooled_runs


def test_entries_replay_in_order_once_and_the_spool_is_gone(tmp_path):
    art = tmp_path / "fig.png"
    art.write_bytes(b"png")
    spool = Spool("abc123", tmp_path / "spool")
    spool.append("log_batch", metrics=[["loss", 1.0, 5, 1]])
    spool.append("log_artifact", local_path=str(art), artifact_path="plots")
    art.unlink()  # the original was a temporary: the spool has its own copy
    spool.append("set_terminated", status="FINISHED")
    assert spool.pending() and spooled_runs(tmp_path / "spool") == ["abc123"]
    seen = []

    def deliver(op, args):
        if op == "log_artifact":
            assert Path(args["local_path"]).read_bytes() == b"png"
        seen.append(op)

    assert spool.replay(deliver) == 3 and seen == ["log_batch", "log_artifact", "set_terminated"]
    assert not spool.pending() and not spool.blobs.exists() and spooled_runs(tmp_path / "spool") == []


def test_a_failed_delivery_keeps_the_rest_in_order(tmp_path):
    spool = Spool("r1", tmp_path)
    for step in range(4):
        spool.append("log_batch", metrics=[["loss", float(step), 0, step]])
    delivered = []

    def flaky(op, args):
        if len(delivered) == 2:
            raise ConnectionError("server gone")
        delivered.append(args["metrics"][0][3])

    with pytest.raises(ConnectionError):
        spool.replay(flaky)
    assert delivered == [0, 1] and [e["args"]["metrics"][0][3] for e in spool.entries()] == [2, 3]


def test_a_corrupt_entry_is_skipped_with_a_warning_naming_it(tmp_path):
    spool = Spool("r2", tmp_path)
    spool.append("log_batch", params=[["a", "1"]])
    spool.append("log_batch", params=[["b", "2"]])
    lines = spool.path.read_text().splitlines()
    lines[0] = lines[0].replace('"1"', '"7"')  # edited after its checksum was written
    spool.path.write_text("\n".join(lines) + "\n" + '0123456789abcdef {"op": "log_bat')  # and a torn last line
    with pytest.warns(UserWarning, match=rf"{spool.path}:1: corrupt") as record:
        kept = list(spool.entries())
    assert [e["args"]["params"] for e in kept] == [[["b", "2"]]]
    assert any(f"{spool.path}:3: corrupt" in str(w.message) for w in record)


def test_an_unwritable_spool_path_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpoolError, match=f"cannot create the tracking spool folder {blocker / 'spool'}"):
        Spool("r4", blocker / "spool").append("log_batch", params=[["a", "1"]])
    with pytest.raises(SpoolError, match="not a run id"):
        Spool("../x", tmp_path)


def test_outages_are_told_from_refusals():
    from mlflow.exceptions import MlflowException

    refused = MlflowException(
        "API request to http://127.0.0.1:5999/api/2.0/mlflow/runs/log-batch failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded with url"
    )
    assert is_outage(refused) and is_outage(ConnectionRefusedError(111, "Connection refused"))
    assert not is_outage(MlflowException("INVALID_PARAMETER_VALUE: Changing param values is not allowed"))
