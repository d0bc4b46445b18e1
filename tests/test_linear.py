"""Linear solvers against direct solves, DCDM's defining properties, and bad input."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from operators import model_from_checkpoint
from operators.dcdm import DCDMNet, DCDMTrainConfig, dcdm_loss, train, training_rhs
from operators.dcdm.train import sparse_torch
from solvers.linear import GridSystem, NotSPDError, ritz_pairs, solve


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    cfg = DCDMTrainConfig(n=16, ritz_m=60, n_samples=256, epochs=4, batch_size=32)
    ckpt = tmp_path_factory.mktemp("dcdm") / "ckpt.pt"
    trained, history = train(cfg, checkpoint=ckpt)
    assert history[-1]["loss"] < history[0]["loss"]
    return model_from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def systems():
    dirichlet = GridSystem.from_poisson(16, 2, "dirichlet", "box")
    neumann = GridSystem.from_poisson(16, 2, "neumann", "disks", seed=5)
    return dirichlet, neumann


def _condition(system):
    """2-norm condition number of A on its range (the null space of a Neumann system excluded)."""
    ev = np.linalg.eigvalsh(system.A.toarray())
    ev = ev[np.abs(ev) > 1e-9 * ev.max()]
    return ev.max() / ev.min()


def _direct(system, b):
    if system.null is None:
        return spla.spsolve(system.A.tocsc(), b)
    # singular: solve the bordered system [A n; n^T 0] [x; l] = [b; 0]
    N = system.n
    K = sp.bmat([[system.A, system.null[:, None]], [system.null[None, :], None]]).tocsc()
    return spla.spsolve(K, np.append(b, 0.0))[:N]


@pytest.mark.parametrize("method", ["cg", "icpcg", "dpcg", "gamg", "petsc", "dcdm-full"])
@pytest.mark.parametrize("which", [0, 1], ids=["dirichlet-box", "neumann-disks"])
def test_solvers_match_a_direct_solve(method, which, systems, model):
    system = systems[which]
    b = system.project(np.random.default_rng(1).standard_normal(system.n))
    if method == "dcdm-full":  # A-orthogonalised against every earlier direction: a conjugate
        from solvers.linear import dcdm  # direction method, exact in at most N steps

        res = dcdm(system, b, model, tol=1e-10, maxiter=system.n, n_orth=system.n, patience=system.n)
    else:
        res = solve(system, b, method, tol=1e-10, maxiter=2000, petsc_options={"ksp_type": "cg", "pc_type": "jacobi"})
    assert res.converged, (method, res.residuals[-3:], res.info)
    x_ref = _direct(system, b)
    x = system.project(res.x) if system.null is not None else res.x
    # forward error <= cond(A) x relative residual (tol; 1.001: the KSP's ||b|| and the true residual
    # agree with numpy's to far better than that) plus spsolve's ~cond x eps. cond ~ 2.0e3 for both
    # systems, so ~2e-7; measured <= 6.4e-11 over the methods
    assert np.linalg.norm(x - x_ref) <= 1.001 * _condition(system) * 1e-10 * np.linalg.norm(x_ref)
    assert res.residuals[-1] <= 1e-10 * np.linalg.norm(b) * 1.001  # the stopping rule itself
    assert len(res.residuals) == res.iterations + 1


def test_dcdm_directions_are_a_orthogonal(systems, model):
    system = systems[1]
    b = system.project(np.random.default_rng(2).standard_normal(system.n))
    assert "directions" not in solve(system, b, "dcdm", tol=1e-8, maxiter=60, model=model).info  # kept on request
    from solvers.linear import dcdm

    res = dcdm(system, b, model, tol=1e-8, maxiter=60, n_orth=2, keep_directions=True)
    P = res.info["directions"]
    G = P @ (system.A @ P.T)
    d = np.sqrt(np.abs(np.diag(G)))
    C = G / np.outer(d, d)
    # each direction is A-orthogonal to the 2 before: a float64 projection leaves |cos| ~ N eps sqrt(cond)
    # ~ 2.5e-12 (measured 4e-15); a direction not projected (distance 3) has |cos| ~ 1
    for k in (1, 2):
        assert np.abs(np.diag(C, k)).max() < 1e-8
    assert res.iterations > 3 and res.residuals[-1] < res.residuals[0]


def test_training_lowers_the_held_out_loss(model):
    cfg = DCDMTrainConfig(n=16, ritz_m=60)
    system = cfg.system()
    held_out = torch.as_tensor(training_rhs(system, 60, None, 64, seed=123))
    A = sparse_torch(system)
    torch.manual_seed(0)
    untrained = DCDMNet(dim=2)
    with torch.no_grad():
        assert dcdm_loss(model, held_out, A, system.shape) < 0.8 * dcdm_loss(untrained, held_out, A, system.shape)


def test_dcdm_reports_stagnation_instead_of_spinning(systems, model):
    system = systems[1]
    b = system.project(np.random.default_rng(3).standard_normal(system.n))
    res = solve(system, b, "dcdm", tol=1e-14, maxiter=10_000, model=model, n_orth=0)
    assert not res.converged and res.info["reason"] in ("stagnated", "maxiter") and res.iterations < 10_000


class _Identity(torch.nn.Module):
    dim = 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.w


def test_loss_on_a_known_case():
    # A = diag(d); with f(b) = b the loss is || b - (b.b / b.Db) D b ||^2, computed by hand
    d = np.array([1.0, 2.0, 3.0, 4.0])
    system = GridSystem(A=sp.diags(d).tocsr(), shape=(2, 2))
    b = np.array([[1.0, -1.0, 0.5, 2.0], [0.0, 1.0, 0.0, 0.0]])
    loss = dcdm_loss(_Identity(), torch.tensor(b, dtype=torch.float32), sparse_torch(system), (2, 2))
    expected = np.mean([np.sum((bi - (bi @ bi) / (bi @ (d * bi)) * d * bi) ** 2) for bi in b])
    eps32 = float(torch.finfo(torch.float32).eps)
    # float32 evaluation of a few products and 4-term sums of exactly representable inputs: a few eps32
    # relative; 8 eps32 = 4e-7 of the loss 0.44 (measured 1.4e-8 absolute)
    assert loss.item() == pytest.approx(expected, rel=8 * eps32)
    # an exact inverse direction (f = A^-1 b) leaves no residual: loss 0 up to float32 rounding, each
    # residual entry ~eps32 |b| (so the loss ~ 4 (2 eps32)^2 ~ 2e-13; measured 0)
    inv = _Identity()
    inv.forward = lambda x: x / torch.tensor(d, dtype=torch.float32).reshape(1, 1, 2, 2)
    assert dcdm_loss(inv, torch.tensor(b, dtype=torch.float32), sparse_torch(system), (2, 2)).item() < 1e-10


def test_non_convergence_returns_history(systems):
    system = systems[0]
    b = np.ones(system.n)
    b[system.mask.ravel()] = 0
    for method in ("cg", "dpcg", "icpcg", "gamg"):
        res = solve(system, b, method, tol=1e-12, maxiter=2)
        assert not res.converged and res.iterations <= 2 and len(res.residuals) >= 1, method


def test_lanczos_ritz_values_match_eigenvalues():
    A = sp.diags([np.arange(1.0, 41.0)], [0]).tocsr() + sp.diags([0.1 * np.ones(39), 0.1 * np.ones(39)], [-1, 1])
    system = GridSystem(A=A.tocsr(), shape=(40,))
    vals, V = ritz_pairs(system, 40)
    # m = N steps, reorthogonalised twice: Ritz values and vectors are backward stable, errors
    # ~eps ||A|| (||A|| ~ 40) and ~N eps. 100x those (9e-13); measured 4.3e-14 (4.8 eps ||A||) and 1.7e-15
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(vals, np.linalg.eigvalsh(A.toarray()), rtol=0, atol=100 * eps * 40.2)
    np.testing.assert_allclose(V.T @ V, np.eye(40), rtol=0, atol=100 * 40 * eps)


@pytest.mark.parametrize(
    "A, b, kwargs, err, match",
    [
        (sp.eye(4, 5, format="csr"), np.ones(4), {}, ValueError, "square"),
        (sp.eye(16, format="csr"), np.ones(15), {}, ValueError, "15 entries"),
        (sp.eye(16, format="csr"), np.full(16, np.nan), {}, ValueError, "NaN"),
        (sp.csr_matrix(np.triu(np.ones((4, 4)))), np.ones(4), {}, NotSPDError, "not symmetric"),
        (sp.diags([1.0, -2.0, 3.0, 1.0]).tocsr(), np.ones(4), {}, NotSPDError, "negative diagonal"),
        (sp.csr_matrix(np.array([[1.0, 3, 0, 0], [3, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), np.ones(4), {}, NotSPDError, "indefinite"),
        (sp.eye(16, format="csr"), np.ones(16), {"method": "magic"}, ValueError, "unknown method"),
        (sp.eye(16, format="csr"), np.ones(16), {"method": "dcdm"}, ValueError, "needs a trained model"),
        (sp.eye(16, format="csr"), np.ones(16), {"method": "dcdm", "model": DCDMNet(dim=3)}, ValueError, "trained for 3D"),
        (sp.eye(16, format="csr"), np.ones(16), {"tol": 0.0}, ValueError, "tol"),
    ],
)
def test_bad_input_fails_before_iterating(A, b, kwargs, err, match):
    with pytest.raises(err, match=match):
        solve(A, b, **kwargs)


def test_rhs_outside_the_range_of_a_singular_matrix(systems):
    system = systems[1]
    with pytest.raises(ValueError, match="not orthogonal to the null space"):
        solve(system, np.ones(system.n), "cg")


def test_checkpoint_resume_and_bad_checkpoint(tmp_path):
    cfg = DCDMTrainConfig(n=8, ritz_m=20, n_samples=16, epochs=2, batch_size=8)
    ckpt = tmp_path / "c.pt"
    _, h_full = train(cfg, checkpoint=ckpt)
    # interrupted after one epoch, then resumed: same history as the uninterrupted run
    ckpt2 = tmp_path / "c2.pt"

    def crash_after_first_epoch(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, checkpoint=ckpt2, on_epoch=crash_after_first_epoch)
    _, h_resumed = train(cfg, checkpoint=ckpt2)
    # the resumed run repeats the same float32 operations (bit-identical here); rel 1e-6 (~8 float32
    # ulps) admits a reordered reduction. round(., 6) == round(., 6) was no tolerance: two values one
    # ulp apart round differently when they straddle a 6th-decimal boundary.
    assert [h["loss"] for h in h_resumed] == pytest.approx([h["loss"] for h in h_full], rel=1e-6)
    with pytest.raises(ValueError, match="another config"):
        train(cfg.model_copy(update={"lr": 0.5}), checkpoint=ckpt)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        model_from_checkpoint(bad)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = DCDMTrainConfig(n=8, ritz_m=20, n_samples=16, epochs=1, batch_size=8)
    ckpt = tmp_path / "c.pt"
    train(cfg, checkpoint=ckpt)
    good = ckpt.read_bytes()

    def disk_full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(cfg.model_copy(update={"epochs": 2}), checkpoint=tmp_path / "c2.pt")
    assert ckpt.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_linear_methods_come_from_one_registry_and_errors_from_one_family():
    import ast

    import solvers.linear.lanczos as lanczos
    from data.errors import InputError
    from solvers.linear import METHODS, SOLVERS

    assert METHODS == tuple(SOLVERS) and all(callable(s) for s in SOLVERS.values())
    assert issubclass(NotSPDError, InputError) and issubclass(NotSPDError, ValueError)
    with pytest.raises(InputError, match="needs petsc_options"):
        solve(sp.eye(16, format="csr"), np.ones(16), "petsc")
    # lanczos.py imports nothing from system.py (which imports it): no circle
    tree = ast.parse(Path(lanczos.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m and m.endswith("system") for m in imported), imported
