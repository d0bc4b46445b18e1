"""A table-driven bad-input suite over the typed configs, the flows' parameter models and the public entry points: each case names the problem and leaves no partial output."""

from __future__ import annotations

import errno
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pydantic import ValidationError

import data
from data import hdf5, store
from data.spec import DarcySpec

from helpers import files, fno_config, fno_pairs

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# 3. bad input, systematically


def _cfg(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


# (id, config class, kwargs, text the message must contain)
CONFIG_CASES = [
    ("poisson-3d-too-many-unknowns", "data.spec", "PoissonSpec", dict(n=500, dim=3), "limit is 64e6"),
    ("navier_stokes-odd-n", "data.spec", "NavierStokesSpec", dict(n=33), "n must be even"),
    ("navier_stokes-viscosity-inf", "data.spec", "NavierStokesSpec", dict(viscosity=float("inf")), "viscosity"),
    (
        "lotka_volterra-y0-order",
        "data.spec",
        "LotkaVolterraSpec",
        dict(y0_low=3.0, y0_high=1.0),
        "must be below y0_high",
    ),
    ("diffusion_sorption-phi-1", "data.spec", "DiffusionSorptionSpec", dict(phi=1.0), "phi"),
    (
        "diffusion_sorption-ic-order",
        "data.spec",
        "DiffusionSorptionSpec",
        dict(ic_low=0.5, ic_high=0.1),
        "ic_low (0.5) must be below ic_high",
    ),
    ("heat-n_times-wrong-type", "data.spec", "HeatSpec", dict(n_times="ten"), "n_times"),
    ("darcy-seed-negative", "data.spec", "DarcySpec", dict(seed=-1), "seed"),
    ("darcy-n_test-negative", "data.spec", "DarcySpec", dict(n_test=-2), "n_test"),
    (
        "darcy-petsc_options-not-a-mapping",
        "data.spec",
        "DarcySpec",
        dict(petsc_options=["ksp_type", "cg"]),
        "petsc_options",
    ),
    ("operator-unknown-model", "operators.fno", "OperatorModelConfig", dict(name="unet"), "name"),
    ("operator-n_modes-0", "operators.fno", "OperatorModelConfig", dict(n_modes=0), "n_modes"),
    ("operator-rank-nan", "operators.fno", "OperatorModelConfig", dict(rank=float("nan")), "rank"),
    (
        "operator-hidden-wrong-type",
        "operators.fno",
        "OperatorModelConfig",
        dict(hidden_channels="wide"),
        "hidden_channels",
    ),
    ("operator-train-epochs-negative", "operators.fno", "OperatorTrainConfig", dict(epochs=-1), "epochs"),
    ("operator-train-lr-inf", "operators.fno", "OperatorTrainConfig", dict(lr=float("inf")), "lr"),
    ("operator-train-unknown-loss", "operators.fno", "OperatorTrainConfig", dict(loss="l3"), "loss"),
    ("operator-train-batch-fractional", "operators.fno", "OperatorTrainConfig", dict(batch_size=2.5), "batch_size"),
    ("operator-train-unknown-field", "operators.fno", "OperatorTrainConfig", dict(learning_rate=0.1), "learning_rate"),
    ("hard-unknown-backend", "operators.hard", "HardModelConfig", dict(backend="qr"), "backend"),
    ("hard-points-negative", "operators.hard", "HardModelConfig", dict(points=-5), "points"),
    ("hard-ridge-nan", "operators.hard", "HardModelConfig", dict(ridge=float("nan")), "ridge"),
    ("hard-unknown-mode", "operators.hard", "HardModelConfig", dict(mode="medium"), "mode"),
    ("hard-points-per-block", "operators.hard", "HardModelConfig", dict(points_per="block"), "points_per"),
    ("hard-workers-0", "operators.hard", "HardModelConfig", dict(workers=0), "workers"),
    ("hard-train-steps-0", "operators.hard.train", "HardTrainConfig", dict(steps=0), "steps"),
    ("hard-train-clip-inf", "operators.hard.train", "HardTrainConfig", dict(clip=float("inf")), "clip"),
    (
        "hard-train-checkpoint_every-negative",
        "operators.hard.train",
        "HardTrainConfig",
        dict(checkpoint_every=-1),
        "checkpoint_every",
    ),
    ("dcdm-n-negative", "operators.dcdm", "DCDMTrainConfig", dict(n=-8), "n"),
    ("dcdm-dim-4", "operators.dcdm", "DCDMTrainConfig", dict(dim=4), "dim"),
    ("dcdm-unknown-bc", "operators.dcdm", "DCDMTrainConfig", dict(bc="robin"), "bc"),
    ("dcdm-filters-wrong-type", "operators.dcdm", "DCDMTrainConfig", dict(filters="many"), "filters"),
    ("dcdm-lr-nan", "operators.dcdm", "DCDMTrainConfig", dict(lr=float("nan")), "lr"),
    (
        "optimize-unknown-problem",
        "solvers.optim.config",
        "OptimizeConfig",
        dict(problem="hs999"),
        "unknown problem 'hs999'",
    ),
    ("optimize-unknown-method", "solvers.optim.config", "OptimizeConfig", dict(method="newton"), "method"),
    ("optimize-unknown-sketch", "solvers.optim.config", "OptimizeConfig", dict(sketch="countsketch"), "sketch"),
    ("optimize-tol-nan", "solvers.optim.config", "OptimizeConfig", dict(tol=float("nan")), "tol"),
    ("optimize-max_iter-negative", "solvers.optim.config", "OptimizeConfig", dict(max_iter=-1), "max_iter"),
    ("optimize-n-too-small", "solvers.optim.config", "OptimizeConfig", dict(n=2), "n"),
    ("optimize-max_seconds-0", "solvers.optim.config", "OptimizeConfig", dict(max_seconds=0), "max_seconds"),
]


@pytest.mark.parametrize("module, name, kwargs, text", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_typed_configs_refuse_bad_values_naming_the_field(module, name, kwargs, text):
    with pytest.raises(ValidationError) as err:
        _cfg(module, name)(**kwargs)
    assert text in str(err.value)
    if text in kwargs:
        assert any(text in e["loc"] for e in err.value.errors())


@pytest.mark.parametrize("scale", ["huge", "", "SMOKE", None])
def test_unknown_scale_is_refused(scale):
    from flows.scales import check_scale

    with pytest.raises(ValueError, match=f"scale must be one of .*got {scale!r}"):
        check_scale(scale)


# (id, flow module, flow name, parameters, text the message must contain)
FLOW_CASES = [
    (
        "generate-negative-n",
        "flows.generate",
        "generate_dataset",
        {"spec": {"family": "darcy", "n": -3}},
        "spec.darcy.n: Input should be greater than or equal to 4",
    ),
    (
        "generate-unknown-family",
        "flows.generate",
        "generate_dataset",
        {"spec": {"family": "burgers"}},
        "spec: Input tag 'burgers' found using 'family' does not match",
    ),
    (
        "generate-chunk_size-0",
        "flows.generate",
        "generate_dataset",
        {"chunk_size": 0},
        "chunk_size: Input should be greater than or equal to 1",
    ),
    (
        "nightly-unknown-scale",
        "flows.nightly",
        "nightly_benchmark",
        {"scale": "huge"},
        "scale: Input should be 'smoke', 'small' or 'paper'",
    ),
    (
        "bench-linear-unknown-scale",
        "flows.linear",
        "benchmark_linear_solvers",
        {"scale": "paper!"},
        "scale: Input should be 'smoke', 'small' or 'paper'",
    ),
    (
        "operator-epochs-negative",
        "flows.operator",
        "train_operator",
        {"config": {"epochs": -1}},
        "config.epochs: Input should be greater than or equal to 1",
    ),
    (
        "operator-dataset-of-another-family",
        "flows.operator",
        "train_operator",
        {"dataset": {"family": "poisson"}},
        "dataset: Input tag 'poisson' found using 'family' does not match any of the expected tags: 'navier_stokes', 'darcy'",
    ),
    (
        "hard-unknown-backend",
        "flows.hard_constraint",
        "train_hard_constraint",
        {"config": {"model": {"backend": "qr"}}},
        "config.model.backend: Input should be 'auto', 'cholesky', 'cvxpylayers' or 'lm'",
    ),
    (
        "optimize-unknown-problem",
        "flows.optimize",
        "optimize",
        {"config": {"problem": "hs999"}},
        "config.problem: Value error, unknown problem 'hs999'",
    ),
    (
        "dcdm-n-negative",
        "flows.dcdm",
        "train_dcdm",
        {"config": {"n": -8}},
        "config.n: Input should be greater than or equal to 8",
    ),
    (
        "neural-ode-unknown-task",
        "flows.neural_ode",
        "train_neural_ode",
        {"config": {"task": "mnist"}},
        "config.task: Input should be 'digits'",
    ),
]


@pytest.mark.parametrize("module, name, params, text", [c[1:] for c in FLOW_CASES], ids=[c[0] for c in FLOW_CASES])
def test_flow_parameters_are_validated_at_the_boundary(module, name, params, text):
    """What Prefect checks before a flow run starts (also for a deployment run from the UI)."""
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError) as err:
        _cfg(module, name).validate_parameters(params)
    assert text in str(err.value)


def _stored(tmp: Path):
    return data.generate(DarcySpec(n=8, n_train=2, n_test=1), root=tmp / "store", chunk_size=1, progress=False)


def _ckpt(tmp: Path) -> Path:
    from operators.fno import train

    train(fno_config(1), fno_pairs(N=4), checkpoint=tmp / "ck.pt")
    return tmp / "ck.pt"


def _setup_tampered_chunk(tmp):
    spec = DarcySpec(n=8, n_train=2, n_test=0)
    chunks = [data.generate_chunk(spec, "train", i, i + 1, tmp / "store") for i in range(2)]
    with h5py.File(chunks[1].path, "r+") as fh:
        fh["u"][0, 0, 0] += 1.0
    return lambda: data.assemble(spec, chunks, tmp / "store")


def _setup_truncated_split(tmp):
    ref = _stored(tmp)
    f = Path(ref.path) / "train.h5"
    f.write_bytes(f.read_bytes()[:700])
    return lambda: store.head(ref)


def _setup_bad_manifest(tmp):
    ref = _stored(tmp)
    (Path(ref.path) / "manifest.json").write_text("{ not json")
    return lambda: data.load(ref.path)


def _setup_truncated_checkpoint(tmp):
    from operators.fno import train

    ck = _ckpt(tmp)
    ck.write_bytes(ck.read_bytes()[:300])
    return lambda: train(fno_config(2), fno_pairs(N=4), checkpoint=ck)


def _setup_foreign_checkpoint(tmp):
    from operators import model_from_checkpoint

    torch.save({"weights": torch.zeros(3)}, tmp / "other.pt")
    return lambda: model_from_checkpoint(tmp / "other.pt")


def _setup_operator_checkpoint_into_hard(tmp):
    from operators import model_from_checkpoint

    ck = _ckpt(tmp)
    pde = __import__("operators.hard.pdes", fromlist=["DiffusionSorption"]).DiffusionSorption(
        t=np.linspace(0.0, 50.0, 6), t_final=50.0, x=(np.arange(12) + 0.5) / 12
    )
    return lambda: model_from_checkpoint(ck, kind="hard", pde=pde)


def _setup_empty_split(tmp):
    from operators.fno import pairs

    ds = data.Dataset(
        arrays={"a": np.zeros((0, 8, 8), np.float32), "u": np.zeros((0, 8, 8))},
        spec=DarcySpec(n=8),
        split="test",
        digest="",
        path=tmp,
    )
    return lambda: pairs(ds)


def _empty_dcdm_checkpoint(tmp):
    (tmp / "empty.pt").write_bytes(b"")
    return lambda: _cfg("operators", "load_checkpoint")(tmp / "empty.pt")


def _fno_train(x, y, **kw):
    from operators.fno import train

    return lambda tmp: lambda: train(fno_config(1), (x, y), checkpoint=tmp / "new.pt", **kw)


_nan = fno_pairs(N=4)[0].clone()
_nan[1, 0, 3, 3] = float("nan")

# (id, setup(tmp) -> call, exception, regex the message must match)
ENTRY_CASES = [
    (
        "generate-chunk_size-0",
        lambda t: lambda: data.generate(DarcySpec(n=8, n_train=2), root=t / "s", chunk_size=0, progress=False),
        ValueError,
        "chunk_size must be >= 1",
    ),
    (
        "generate-negative-size",
        lambda t: lambda: data.generate({"family": "darcy", "n": -1}, root=t / "s"),
        ValidationError,
        "n\n.*greater than or equal to 4",
    ),
    (
        "generate-unknown-family",
        lambda t: lambda: data.generate({"family": "burgers"}, root=t / "s"),
        ValueError,
        "unknown PDE family 'burgers'",
    ),
    (
        "chunk-unknown-split",
        lambda t: lambda: data.generate_chunk(DarcySpec(n=8, n_train=2), "validation", 0, 1, t / "s"),
        ValueError,
        "validation.*outside the spec's splits",
    ),
    ("assemble-chunk-digest-mismatch", _setup_tampered_chunk, data.DatasetError, "does not match its digest"),
    ("load-truncated-hdf5-preview", _setup_truncated_split, data.DatasetError, "unreadable"),
    ("load-manifest-not-json", _setup_bad_manifest, data.DatasetError, "is not valid JSON"),
    ("load-missing-dataset", lambda t: lambda: data.load(t / "nowhere"), data.DatasetError, "manifest.json is missing"),
    ("operator-pairs-empty-split", _setup_empty_split, ValueError, "'test' split is empty"),
    (
        "operator-train-empty-data",
        _fno_train(torch.zeros(0, 1, 16, 16), torch.zeros(0, 1, 16, 16)),
        ValueError,
        "train data are empty",
    ),
    (
        "operator-train-empty-test-data",
        _fno_train(*fno_pairs(N=4), test_xy=(torch.zeros(0, 1, 16, 16),) * 2),
        ValueError,
        "test data are empty",
    ),
    (
        "operator-train-mismatched-N",
        _fno_train(torch.zeros(4, 1, 16, 16), torch.zeros(3, 1, 16, 16)),
        ValueError,
        "equal N",
    ),
    (
        "operator-train-missing-channel-axis",
        _fno_train(torch.zeros(4, 16, 16), torch.zeros(4, 16, 16)),
        ValueError,
        r"\(N, C, n, n\)",
    ),
    (
        "operator-train-nan-input",
        _fno_train(_nan, fno_pairs(N=4)[1]),
        "TrainingDivergedError",
        "non-finite training loss.*epoch 1",
    ),
    (
        "operator-resume-truncated-checkpoint",
        _setup_truncated_checkpoint,
        "CheckpointMismatchError",
        "unreadable checkpoint",
    ),
    (
        "operator-foreign-checkpoint",
        _setup_foreign_checkpoint,
        "CheckpointMismatchError",
        r"not a sciflow training checkpoint \(missing \['kind', 'config', 'model'\]\)",
    ),
    (
        "hard-model-from-operator-checkpoint",
        _setup_operator_checkpoint_into_hard,
        "CheckpointMismatchError",
        "holds a 'operator' model, not a 'hard' one",
    ),
    (
        "dcdm-missing-checkpoint",
        lambda t: lambda: _cfg("operators", "load_checkpoint")(t / "none.pt"),
        FileNotFoundError,
        "no checkpoint at",
    ),
    ("dcdm-empty-checkpoint", lambda t: _empty_dcdm_checkpoint(t), ValueError, "unreadable"),
    (
        "dcdm-odd-grid",
        lambda t: (
            lambda: _cfg("operators.dcdm", "train")(
                _cfg("operators.dcdm", "DCDMTrainConfig")(n=9, ritz_m=8, n_samples=8, epochs=1), checkpoint=t / "d.pt"
            )
        ),
        ValueError,
        "n must be even",
    ),
    ("linear-rhs-inf", lambda t: lambda: _solve(np.r_[1.0, np.inf, 1.0, 1.0]), ValueError, "b contains NaN or inf"),
    ("linear-rhs-strings", lambda t: lambda: _solve(np.array(list("abcd"))), ValueError, "could not convert string"),
    ("linear-rhs-wrong-size", lambda t: lambda: _solve(np.ones(5)), ValueError, "b has 5 entries"),
    (
        "linear-matrix-nan",
        lambda t: lambda: _solve(np.ones(4), A=np.diag([np.nan, 1.0, 1.0, 1.0])),
        ValueError,
        "the matrix A contains NaN",
    ),
    ("linear-tol-nan", lambda t: lambda: _solve(np.ones(4), tol=float("nan")), ValueError, "tol must be in"),
    (
        "linear-unknown-method",
        lambda t: lambda: _solve(np.ones(4), method="gmres"),
        ValueError,
        "unknown method 'gmres'",
    ),
]


def _solve(b, A=None, **kw):
    import scipy.sparse as sp

    from solvers.linear import solve

    return solve(sp.csr_matrix(A) if A is not None else sp.eye(4, format="csr"), b, **kw)


@pytest.mark.parametrize("setup, exc, match", [c[1:] for c in ENTRY_CASES], ids=[c[0] for c in ENTRY_CASES])
def test_entry_points_refuse_bad_input_clearly_and_write_nothing(tmp_path, setup, exc, match):
    if isinstance(exc, str):
        exc = _cfg("operators.fno", exc)
    call = setup(tmp_path)
    before = files(tmp_path)
    with pytest.raises(exc, match=match):
        call()
    assert files(tmp_path) == before, "a bad input left (partial) output behind or altered an existing file"


def test_a_truncated_chunk_is_regenerated_not_trusted(tmp_path):
    spec = DarcySpec(n=8, n_train=2, n_test=0)
    ref = data.generate_chunk(spec, "train", 0, 2, tmp_path)
    Path(ref.path).write_bytes(Path(ref.path).read_bytes()[:400])
    again = data.generate_chunk(spec, "train", 0, 2, tmp_path)
    assert again.digest == ref.digest and store_digest_ok(Path(again.path))


def store_digest_ok(path: Path) -> bool:
    arrays, attrs = hdf5.read_h5(path)
    return hdf5.array_digest(arrays) == attrs["sha256"]


def test_retry_policy_retries_transient_errors_and_fails_fast_on_permanent_ones():
    """The generate-chunk task's retry classification (the flow-level proof that a diverged solve
    runs once is tests/flows/test_flows.py::test_failed_solve_fails_the_run_and_writes_nothing)."""
    from types import SimpleNamespace

    from flows.generate import _transient, generate_chunk
    from flows.tracking import TrackingUnavailableError

    assert generate_chunk.retries == 2 and generate_chunk.retry_delay_seconds == [2, 10]  # backoff
    transient = [
        OSError(errno.EIO, "Input/output error"),
        ConnectionResetError(),
        TimeoutError(),
        TrackingUnavailableError("MLflow tracking server at http://127.0.0.1:5000 is not reachable"),
    ]
    permanent = [
        data.SolverDivergedError("KSP DIVERGED_ITS"),
        data.DatasetError("corrupted"),
        ValueError("bad n"),
        TypeError("wrong type"),
    ]
    for exc in transient:
        assert _transient(None, None, SimpleNamespace(data=exc)), exc
    for exc in permanent:
        assert not _transient(None, None, SimpleNamespace(data=exc)), exc


def test_gaps_found_by_the_suite_are_closed():
    from types import SimpleNamespace

    import scipy.sparse as sp

    from flows.generate import _transient
    from operators.dcdm.train import DCDMTrainConfig
    from operators.node.train import ODETrainConfig
    from solvers.linear import solve

    A = sp.diags([2.0] * 5).tocsr()
    with pytest.raises(ValueError, match="maxiter must be >= 1"):
        solve(A, np.ones(5), maxiter=-1)
    with pytest.raises(ValueError, match="x0 .* NaN or inf"):
        solve(A, np.ones(5), x0=np.full(5, np.nan))
    with pytest.raises(ValueError, match="n must be even"):
        DCDMTrainConfig(n=33)
    with pytest.raises(ValueError, match="w_start"):
        ODETrainConfig(w_start=float("inf"))
    assert not _transient(None, None, SimpleNamespace(data=OSError(errno.ENOSPC, "No space left on device")))
