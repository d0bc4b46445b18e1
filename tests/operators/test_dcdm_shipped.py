"""The shipped DCDM network (operators/dcdm/weights): it still gives the iteration counts its
manifest recorded, and a changed file or a model for another dimension / filter count is refused."""

import shutil

import pytest

from data.errors import CheckpointError
from operators.dcdm.shipped import WEIGHTS, load_shipped, manifest


@pytest.mark.parametrize("dim", [2, 3])
def test_the_shipped_weights_give_their_recorded_iteration_counts(dim):
    from flows.benchmarks.linear import shipped_counts

    info = manifest(dim)
    assert info["bytes"] <= 2 * 2**20 and info["command"].startswith("sciflow ship-dcdm")
    assert info["config"]["dim"] == dim
    counts = shipped_counts(load_shipped(dim), dim=dim)
    assert set(counts) == set(info["recorded"])
    for key, recorded in info["recorded"].items():
        assert recorded > 0, f"the shipped model did not converge on {key} when it was recorded"
        assert abs(counts[key] - recorded) <= 0.05 * recorded, (key, counts[key], recorded)


def test_a_changed_weights_file_is_refused_naming_both_digests(tmp_path):
    folder = shutil.copytree(WEIGHTS, tmp_path / "weights")
    pt = folder / manifest(2)["file"]
    data = bytearray(pt.read_bytes())
    data[-100] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=rf"SHA-256 [0-9a-f]{{64}} differs from the manifest's {manifest(2)['sha256']}"
    ):
        load_shipped(2, folder=folder)


def test_a_model_for_another_dimension_or_filter_count_is_refused(tmp_path):
    filters = manifest(2)["config"]["filters"]
    with pytest.raises(CheckpointError, match=rf"filters: trained for {filters}, asked for {filters + 1}"):
        load_shipped(2, filters=filters + 1)
    folder = shutil.copytree(WEIGHTS, tmp_path / "weights")
    (folder / "dcdm-2d.json").rename(folder / "dcdm-3d.json")  # a 2D model filed as the 3D one
    with pytest.raises(CheckpointError, match="dim: trained for 2, asked for 3"):
        load_shipped(3, folder=folder)
    (folder / "dcdm-3d.json").unlink()
    with pytest.raises(CheckpointError, match="no shipped 3D DCDM model"):
        load_shipped(3, folder=folder)


def test_write_shipped_round_trips_and_refuses_an_oversized_model_without_touching_the_folder(tmp_path, monkeypatch):
    from operators.dcdm import DCDMTrainConfig, shipped, train

    ckpt = tmp_path / "c.pt"
    train(DCDMTrainConfig(n=8, ritz_m=20, n_samples=16, epochs=1, batch_size=8), checkpoint=ckpt)
    folder = tmp_path / "ship"
    path = shipped.write_shipped(ckpt, command="sciflow ship-dcdm (test)", recorded={"8/grf": 3}, folder=folder)
    info = shipped.manifest(2, folder)
    assert path == folder / "dcdm-2d.json" and info["sha256"] == shipped.sha256(folder / "dcdm-2d.pt")
    assert load_shipped(2, folder=folder).config()["dim"] == 2
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(shipped, "MAX_BYTES", 100)
    with pytest.raises(CheckpointError, match="over the 100 a shipped model may weigh"):
        shipped.write_shipped(ckpt, command="x", recorded={}, folder=folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
