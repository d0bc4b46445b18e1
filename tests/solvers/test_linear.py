"""Linear solvers against direct solves, DCDM's iteration (A-orthogonality, stagnation), bad input."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from operators.dcdm import DCDMNet
from solvers.linear import GridSystem, NotSPDError, ritz_pairs, solve
from solvers.linear.dcdm import dcdm

from methods import LINEAR_SOLVERS


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


@pytest.mark.parametrize("method", [*(m for m in LINEAR_SOLVERS if m != "dcdm"), "dcdm-full"])
@pytest.mark.parametrize("which", [0, 1], ids=["dirichlet-box", "neumann-disks"])
def test_solvers_match_a_direct_solve(method, which, poisson_systems, dcdm_model):
    system = poisson_systems[which]
    b = system.project(np.random.default_rng(1).standard_normal(system.n))
    if method == "dcdm-full":  # A-orthogonalised against every earlier direction: a conjugate
        from solvers.linear import dcdm  # direction method, exact in at most N steps

        res = dcdm(system, b, dcdm_model, tol=1e-10, maxiter=system.n, n_orth=system.n, patience=system.n)
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


def test_dcdm_directions_are_a_orthogonal(poisson_systems, dcdm_model):
    system = poisson_systems[1]
    b = system.project(np.random.default_rng(2).standard_normal(system.n))
    assert "directions" not in solve(system, b, "dcdm", tol=1e-8, maxiter=60, model=dcdm_model).info  # kept on request
    from solvers.linear import dcdm

    res = dcdm(system, b, dcdm_model, tol=1e-8, maxiter=60, n_orth=2, keep_directions=True)
    P = res.info["directions"]
    G = P @ (system.A @ P.T)
    d = np.sqrt(np.abs(np.diag(G)))
    C = G / np.outer(d, d)
    # each direction is A-orthogonal to the 2 before: a float64 projection leaves |cos| ~ N eps sqrt(cond)
    # ~ 2.5e-12 (measured 4e-15); a direction not projected (distance 3) has |cos| ~ 1
    for k in (1, 2):
        assert np.abs(np.diag(C, k)).max() < 1e-8
    assert res.iterations > 3 and res.residuals[-1] < res.residuals[0]


def test_dcdm_reports_stagnation_instead_of_spinning(poisson_systems, dcdm_model):
    system = poisson_systems[1]
    b = system.project(np.random.default_rng(3).standard_normal(system.n))
    res = solve(system, b, "dcdm", tol=1e-14, maxiter=10_000, model=dcdm_model, n_orth=0)
    assert not res.converged and res.info["reason"] in ("stagnated", "maxiter") and res.iterations < 10_000


def _plain_cg_iterations(A, b, tol):
    """Textbook CG stopping on the recursively updated residual (what pcg did before its true-residual check)."""
    x, r = np.zeros_like(b), b.copy()
    p, rr, it = r.copy(), r @ r, 0
    while np.sqrt(rr) > tol * np.linalg.norm(b):
        Ap = A @ p
        alpha = rr / (p @ Ap)
        x, r, it = x + alpha * p, r - alpha * Ap, it + 1
        rr, rr_old = r @ r, rr
        p = r + (rr / rr_old) * p
    return it


@pytest.mark.parametrize("method", ["cg", "dpcg"])
@pytest.mark.parametrize("which", [0, 1], ids=["dirichlet-box", "neumann-disks"])
def test_cg_stops_on_the_true_residual_even_at_tight_tolerances(method, which, poisson_systems):
    """At 1e-15 the recursive residual of CG falls below tol while the true one stays above it
    (measured: 1.4e-15 and 1.5e-15 for cg and dpcg on the Dirichlet system, ~1e-14 on the Neumann
    one, whose attainable accuracy is above 1e-15). Converged must mean the true residual is below
    tol; an unattainable tol ends as "stagnated" well before maxiter."""
    system = poisson_systems[which]
    for seed in range(3):
        b = system.project(np.random.default_rng(seed).standard_normal(system.n))
        bnorm = np.linalg.norm(b)
        for tol in (1e-8, 1e-14, 1e-15):
            res = solve(system, b, method, tol=tol, maxiter=10 * system.n)
            true = np.linalg.norm(b - system.A @ res.x)
            assert res.residuals[-1] == pytest.approx(true, rel=1e-12)  # the last entry is a true-residual check
            if res.converged:
                assert true <= tol * bnorm, (seed, tol)
            else:
                assert res.info["reason"] == "stagnated" and res.iterations < system.n, (seed, tol)
        if method == "cg":  # where the recursive residual is accurate, the iterations are plain CG's
            assert solve(system, b, "cg", tol=1e-8).iterations == _plain_cg_iterations(system.A, b, 1e-8)


class _Identity(torch.nn.Module):
    dim = 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.w


def test_non_convergence_returns_history(poisson_systems):
    system = poisson_systems[0]
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


def test_lowest_eigvecs_are_fluid_pairs_and_past_the_direct_limit_come_from_gamg_solves(monkeypatch):
    """DPCG's deflation space: the lowest eigenpairs of the fluid block (solid cells' identity
    rows once crowded them out), and above DIRECT_EIG_MAX unknowns the shift-invert solves are
    PETSc CG + GAMG (a 3D LU does not fit): the same eigenvalues and subspace."""
    from solvers.linear import krylov

    system = GridSystem.from_poisson(16, 3, "neumann", "disks", seed=3)
    solid = system.mask.ravel()
    assert system.A[~solid][:, solid].nnz == 0  # fluid rows do not see solid cells: the fluid block is exact
    vals, V = krylov.lowest_eigvecs(system, 6)
    # all six asked for, on the fluid (not the solid cells' identity rows), and eigenpairs of A
    assert len(vals) == 6 and np.all(vals > 1.0) and not V[solid].any()
    np.testing.assert_allclose(system.A @ V, V * vals, rtol=0, atol=1e-8 * vals.max())
    monkeypatch.setattr(krylov, "DIRECT_EIG_MAX", 0)
    vals2, V2 = krylov.lowest_eigvecs(system, 6)
    # rtol 1e-12 solves: eigenvalues to ~1e-10 relative (measured 2e-13 at 32^3)
    np.testing.assert_allclose(vals2, vals, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.svd(V.T @ V2, compute_uv=False), 1.0, atol=1e-8)  # same subspace


@pytest.mark.parametrize(
    "A, b, kwargs, err, match",
    [
        (sp.eye(4, 5, format="csr"), np.ones(4), {}, ValueError, "square"),
        (sp.eye(16, format="csr"), np.ones(15), {}, ValueError, "15 entries"),
        (sp.eye(16, format="csr"), np.full(16, np.nan), {}, ValueError, "NaN"),
        (sp.csr_matrix(np.triu(np.ones((4, 4)))), np.ones(4), {}, NotSPDError, "not symmetric"),
        (sp.diags([1.0, -2.0, 3.0, 1.0]).tocsr(), np.ones(4), {}, NotSPDError, "negative diagonal"),
        (
            sp.csr_matrix(np.array([[1.0, 3, 0, 0], [3, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
            np.ones(4),
            {},
            NotSPDError,
            "indefinite",
        ),
        (sp.eye(16, format="csr"), np.ones(16), {"method": "magic"}, ValueError, "unknown method"),
        (sp.eye(16, format="csr"), np.ones(16), {"method": "dcdm"}, ValueError, "needs a trained model"),
        (
            sp.eye(16, format="csr"),
            np.ones(16),
            {"method": "dcdm", "model": DCDMNet(dim=3)},
            ValueError,
            "trained for 3D",
        ),
        (sp.eye(16, format="csr"), np.ones(16), {"tol": 0.0}, ValueError, "tol"),
    ],
)
def test_bad_input_fails_before_iterating(A, b, kwargs, err, match):
    with pytest.raises(err, match=match):
        solve(A, b, **kwargs)


def test_rhs_outside_the_range_of_a_singular_matrix(poisson_systems):
    system = poisson_systems[1]
    with pytest.raises(ValueError, match="not orthogonal to the null space"):
        solve(system, np.ones(system.n), "cg")


def test_linear_methods_come_from_one_registry_and_errors_from_one_family():
    import ast

    import solvers.linear.lanczos as lanczos
    from data.errors import InputError
    from solvers.linear import METHODS, SOLVERS

    assert tuple(SOLVERS) == METHODS and all(callable(s) for s in SOLVERS.values())
    assert issubclass(NotSPDError, InputError) and issubclass(NotSPDError, ValueError)
    with pytest.raises(InputError, match="needs petsc_options"):
        solve(sp.eye(16, format="csr"), np.ones(16), "petsc")
    # lanczos.py imports nothing from system.py (which imports it): no circle
    tree = ast.parse(Path(lanczos.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m and m.endswith("system") for m in imported), imported


class _Direction(torch.nn.Module):
    """A stand-in network: ``f(r) = scale * r + bias`` on a 2D grid."""

    dim = 2

    def __init__(self, scale: float, bias: np.ndarray | None = None):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.bias = None if bias is None else torch.as_tensor(bias, dtype=torch.float32)

    def forward(self, r):
        return self.scale * r + (0 if self.bias is None else self.bias.reshape(r.shape))


def test_dcdm_stops_at_a_fixed_point_not_while_the_a_norm_error_falls(poisson_systems):
    """The stop rule watches the energy (the A-norm error), not the residual 2-norm: f(r) = r makes
    DCDM-k2 the conjugate gradient method, whose residual rises on some steps; with a patience of 3
    it still converges, its A-norm error (against a direct solve) never rising. A network that
    returns almost the same direction whatever the residual (a fixed bias) is stopped as
    'stagnated' soon after ``patience`` steps."""
    system = poisson_systems[1]
    b = system.project(np.random.default_rng(4).standard_normal(system.n))
    fluid = ~system.mask.ravel()
    x_ref = np.zeros(system.n)
    x_ref[fluid] = np.linalg.lstsq(system.A[fluid][:, fluid].toarray(), b[fluid], rcond=None)[0]
    x_ref = system.project(x_ref)
    seen = []
    res = dcdm(
        system, b, _Direction(1.0), tol=1e-8, maxiter=500, patience=3, x_ref=x_ref, callback=lambda *a: seen.append(a)
    )
    assert res.converged and res.info["reason"] == "converged"
    assert np.any(np.diff(res.residuals) > 0), (
        "CG's residual rises somewhere: the old residual rule would have counted it"
    )
    a_err = np.array(res.info["a_error"])
    assert a_err[0] == 1.0 and np.all(np.diff(a_err) <= 1e-12) and a_err[-1] < 1e-6
    assert np.all(np.diff(res.info["energy"]) <= 1e-12)
    assert len(seen) == res.iterations and all(len(v) == system.n for v in seen[0])
    bias = system.project(np.random.default_rng(5).standard_normal(system.n))
    stuck = dcdm(system, b, _Direction(1e-9, bias), tol=1e-8, maxiter=500, patience=20)
    assert stuck.info["reason"] in ("stagnated", "degenerate direction") and stuck.iterations < 60, stuck.info["reason"]
