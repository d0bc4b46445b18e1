"""Hard-constraint layers: backends agree, implicit gradients match finite differences, the
constraint PDEs are consistent with the PETSc data, the MoE router, training and bad input."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from operators.hard import (
    ConstraintSolveError,
    DiffusionSorption,
    ExpertLayoutError,
    HardConstraintModel,
    HardModelConfig,
    HardTrainConfig,
    Heat2D,
    LeastSquares,
    Router,
    evaluate,
    expert_index,
    from_dataset,
    layout_for,
    loss_terms,
    solve,
    train,
)
from operators.hard.layer import SCS_EPS
from operators.hard.pdes import along, along_stencil, derivative_matrix, lagrange_weights

torch.set_default_dtype(torch.float32)
SMALL_NET = dict(hidden=8, n_layers=2, n_basis=6)


def _heat(n=6, nt=5, kappa=0.05):
    return Heat2D(t=np.linspace(0.0, 0.5, nt), t_final=0.5, n=n, kappa=kappa)


def _ds(nx=12, nt=6):
    return DiffusionSorption(t=np.linspace(0.0, 50.0, nt), t_final=50.0, x=(np.arange(nx) + 0.5) / nx)


def _linear_system(seed=0, E=3, N=5, pde=None):
    """A linear constraint system as the model builds it: heat rows from a random smooth basis."""
    g = torch.Generator().manual_seed(seed)
    pde = pde or _heat()
    phi = torch.randn(E, *pde.grid, N, generator=g, dtype=torch.float64)
    terms = pde.terms(phi)
    mask = torch.as_tensor(pde.residual_mask())
    pts = torch.nonzero(mask).squeeze(1)[torch.randperm(int(mask.sum()), generator=g)[:20]]
    A_pde = sum(c * terms[k][:, pts] for k, c in pde.coefficients().items())
    K, c = pde.condition_rows(phi, torch.randn(E, *pde.grid[1:], generator=g, dtype=torch.float64))
    return torch.cat([A_pde, K], 1), torch.cat([torch.zeros(E, len(pts), dtype=torch.float64), c], 1)


# ----------------------------------------------------------------------------- the layer


def test_backends_agree_in_value_and_gradient_on_a_linear_problem():
    A0, b0 = _linear_system()
    results = {}
    for backend in ("cholesky", "cvxpylayers", "lm"):
        A, b = A0.clone().requires_grad_(), b0.clone().requires_grad_()
        w, info = solve(LeastSquares(A=A, b=b), backend, ridge=1e-3, w0=0.0, tol=1e-13, max_iter=200)
        weights = torch.linspace(-1, 1, w.numel(), dtype=torch.float64).reshape(w.shape)
        gA, gb = torch.autograd.grad((weights * w).sum() + 0.5 * (w**2).sum(), (A, b))
        results[backend] = (w.detach(), gA, gb)
        assert info.converged and math.isfinite(info.condition)
    ref = results["cholesky"]
    # A solver that pins w* to a relative accuracy e leaves errors ~cond x e in w and in the implicit
    # derivatives (cond = 13 here); 10x that. SCS stops at residual eps: e = SCS_EPS (bound 1.3e-8). LM's tol
    # 1e-13 is not what limits it: it accepts steps by comparing float64 costs, which resolve w* only to
    # e ~ sqrt(eps) = 1.5e-8 (bound 1.9e-6; over 40 random systems and the gradcheck perturbations LM's
    # error reached 1.4e-8 at cond 14). Measured here: SCS <= 1.2e-12, LM <= 5.6e-13 (values and
    # gradients). Was 1e-6 for both.
    cond = max(info.condition, 1.0)
    for backend, e in (("cvxpylayers", SCS_EPS), ("lm", math.sqrt(np.finfo(np.float64).eps))):
        for got, want in zip(results[backend], ref, strict=False):
            scale = want.abs().max()
            assert (got - want).abs().max() <= 10 * cond * e * scale, backend


def test_closed_form_and_lm_pass_gradcheck():
    A, b = _linear_system(E=2, N=3, pde=_heat(n=4, nt=4))
    # The first 20 rows are PDE rows with b = 0: on those alone w* = 0 and dw*/dA = 0, so the A half of
    # a gradcheck compares zeros. The closed form is checked on 6 PDE rows and 6 condition rows (b != 0):
    # central differences at eps 1e-6 carry truncation ~eps^2 and rounding ~1e-16 / eps, so atol 1e-6
    # and rtol 1e-5 leave a 4e4 margin (measured 2.5e-5 of the allowance).
    rows = torch.cat([torch.arange(6), torch.arange(A.shape[1] - 6, A.shape[1])])
    fn = lambda A, b: solve(LeastSquares(A=A, b=b), "cholesky", ridge=1e-2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(
        fn, (A[:, rows].clone().requires_grad_(), b[:, rows].clone().requires_grad_()), eps=1e-6, atol=1e-6, rtol=1e-5
    )
    # LM only where b = 0 (w0 = 0 is then the exact solution, so only the b half means anything). At a
    # generic point the difference quotient of two LM re-solves measures LM's stopping point, pinned by
    # float64 cost comparisons to ~4e-10: errors up to 4e-4 at eps 1e-6 (400x the allowance). LM's
    # implicit gradient is compared with the closed form's in test_backends_agree_in_value_and_gradient.
    fn = lambda A, b: solve(LeastSquares(A=A, b=b), "lm", ridge=1e-2, w0=0.0, tol=1e-14, max_iter=100)[0]  # noqa: E731
    assert torch.autograd.gradcheck(
        fn, (A[:, :12].clone().requires_grad_(), b[:, :12].clone().requires_grad_()), eps=1e-6, atol=1e-6, rtol=1e-5
    )


def test_implicit_gradient_of_the_nonlinear_solve_matches_finite_differences():
    """Diffusion-sorption rows (nonlinear in w through R(u)); d(sum w*)/d(phi) by the IFT vs central FD
    of full re-solves."""
    pde = _ds()
    g = torch.Generator().manual_seed(3)
    N = 4
    phi0 = 0.3 + 0.1 * torch.randn(1, *pde.grid, N, generator=g, dtype=torch.float64)
    u0 = torch.full((1, pde.grid[1]), 0.1, dtype=torch.float64)
    model = HardConstraintModel(
        HardModelConfig(points=30, n_basis=N, hidden=4, n_layers=1, modes=(2, 2), lm_tol=1e-14, lm_max_iter=200), pde
    )
    pts = model.router.sample(30, torch.Generator().manual_seed(0))

    def value(phi):
        out = model.constrain(phi, u0, points=pts)
        return (out.w * torch.arange(1, N + 1, dtype=torch.float64)).sum()

    phi = phi0.clone().requires_grad_()
    grad = torch.autograd.grad(value(phi), phi)[0]
    # Central differences of full re-solves. LM accepts steps by comparing float64 costs, so a re-solve
    # pins w* down to ~1e-11 (not to machine precision): the difference quotient carries noise
    # ~1e-11 / eps plus truncation ~eps^2. eps = 1e-4 balances them (measured: <= 1e-7 of the largest
    # gradient entry); the bound is taken against the largest entry, since entries ~1e-5 of it are
    # dominated by that noise. eps = 1e-6 measured LM's stopping noise, not the gradient.
    eps = 1e-4
    scale = float(grad.abs().max())
    for idx in [(0, 2, 3, 1), (0, 4, 7, 0), (0, 0, 0, 2), (0, 5, 11, 3)]:
        hi, lo = phi0.clone(), phi0.clone()
        hi[idx] += eps
        lo[idx] -= eps
        fd = (value(hi) - value(lo)) / (2 * eps)
        assert abs(float(grad[idx]) - float(fd)) <= 1e-5 * scale, idx


def test_singular_system_falls_back_to_damping_and_reports_the_condition():
    A, b = _linear_system(N=4)
    A = torch.cat([A, A[..., :1]], -1)  # a repeated column: A^T A singular
    with pytest.warns(RuntimeWarning, match="Cholesky failed"):
        w, info = solve(LeastSquares(A=A, b=b), "cholesky", ridge=0.0)
    assert torch.isfinite(w).all() and info.damping > 0 and info.notes
    assert info.condition > 1e6  # ~||G|| / damping, the damping 1e-12 of the mean diagonal: 2.7e12 measured


@pytest.mark.parametrize("bad", ["nan_A", "inf_b", "shape", "backend", "nonlinear_closed_form", "ridge", "w0"])
def test_bad_systems_raise_clear_errors(bad):
    A, b = _linear_system()
    if bad == "nan_A":
        A[0, 0, 0] = float("nan")
        with pytest.raises(ConstraintSolveError, match="NaN or inf"):
            solve(LeastSquares(A=A, b=b))
    elif bad == "inf_b":
        b[1, 2] = float("inf")
        with pytest.raises(ConstraintSolveError, match="'b' has NaN or inf"):
            solve(LeastSquares(A=A, b=b))
    elif bad == "shape":
        with pytest.raises(ConstraintSolveError, match="A \\(E, M, N\\)"):
            LeastSquares(A=A, b=b[:, :-1])
    elif bad == "backend":
        with pytest.raises(ConstraintSolveError, match="backend must be one of"):
            solve(LeastSquares(A=A, b=b), "qr")
    elif bad == "nonlinear_closed_form":
        sys_ = LeastSquares(residual=lambda w, d: d["A"] @ w, data={"A": A}, n=A.shape[-1])
        with pytest.raises(ConstraintSolveError, match="linear systems only"):
            solve(sys_, "cholesky")
    elif bad == "ridge":
        with pytest.raises(ConstraintSolveError, match="ridge"):
            solve(LeastSquares(A=A, b=b), ridge=float("nan"))
    else:
        with pytest.raises(ConstraintSolveError, match="w0 must have shape"):
            solve(LeastSquares(A=A, b=b), "lm", w0=torch.zeros(2, 2))


# ----------------------------------------------------------------------------- PDE rows


def test_stencils_are_exact_for_quadratics():
    z = np.sort(np.random.default_rng(0).uniform(0, 1, 9))
    f, df, d2f = 3 * z**2 - z + 2, 6 * z - 1, np.full_like(z, 6.0)
    eps = np.finfo(np.float64).eps
    # exact in exact arithmetic; rounding in D @ f is ~eps ||D||_inf ||f||_inf (7e-14 for D1, 1.7e-12 for
    # D2 on these nodes): 16x that (measured 5.8e-15 and 2.3e-13; was allclose's default 1e-8 + 1e-5 rel)
    for order, exact in ((1, df), (2, d2f)):
        D = derivative_matrix(z, order)
        assert np.abs(D @ f - exact).max() <= 16 * eps * np.abs(D).sum(1).max() * np.abs(f).max(), order
    w = lagrange_weights(z[:3], 0.0, 0)
    assert abs(w @ f[:3] - 2.0) <= 16 * eps * np.abs(w).sum() * np.abs(f).max()  # measured 0


def test_banded_stencil_equals_the_dense_matrix_along_every_axis():
    """The 3-point stencils applied banded (O(n), what the PDE terms use) equal the dense matrix."""
    pde = DiffusionSorption(
        t=np.linspace(0.0, 5.0, 7), t_final=5.0, x=np.sort(np.random.default_rng(1).uniform(0, 1, 11))
    )
    phi = torch.randn(2, 7, 11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for axis, z, order in ((0, pde.t, 1), (1, pde.x, 2), (1, pde.x, 1)):
        dense = along(torch.as_tensor(derivative_matrix(z, order)), phi, axis)
        banded = along_stencil(pde.stencil_on(f"test{axis}{order}", z, order, phi), phi, axis)
        # same three products per entry, summed in another order: a few ulps of the largest term
        tol = 8 * np.finfo(np.float64).eps * np.abs(derivative_matrix(z, order)).sum(1).max() * float(phi.abs().max())
        assert float((dense - banded).abs().max()) <= tol, (axis, order)


def _dataset(spec):
    import data

    ref = data.generate(spec, progress=False)
    return data.load(ref, "train")


def test_constraint_rows_are_consistent_with_the_petsc_solutions(store, monkeypatch):
    """The PDE as the layer sees it holds on the data: the PETSc trajectories have a small
    residual and satisfy the initial/boundary rows (to the discretization error)."""
    from data.spec import DiffusionSorptionSpec, HeatSpec

    monkeypatch.setenv("SCIFLOW_HOME", str(store))
    ds = _dataset(DiffusionSorptionSpec(n=64, n_times=40, n_train=2, n_test=0))
    pde = from_dataset("diffusion_sorption", ds.spec, ds.arrays)
    u = torch.as_tensor(ds["u"], dtype=torch.float64)
    late = slice(4 * 62, None)  # after the first tenth of the time: the initial layer is unresolved by
    r = pde.full_residual(u)[:, late]  # time differences over 12.5 s outputs (RMS ~0.2 with it)
    v = pde.condition_violation(u, u[:, 0])
    wrong = DiffusionSorption(t=pde.t, t_final=pde.t_final, x=pde.x, params=replace(pde.params, D=-pde.params.D))
    # discretisation errors of the layer's stencils on the data (measured RMS 2.1e-3, wrong sign 0.62,
    # conditions 3.5e-3); the data's own error (ts_rtol 1e-8) is 1e-5 of them, so they are machine-independent
    assert r.pow(2).mean().sqrt() < 5e-3 and wrong.full_residual(u)[:, late].pow(2).mean().sqrt() > 0.3
    assert v.abs().max() < 1e-2

    heat = _dataset(HeatSpec(n=16, dim=2, kappa=0.01, t_final=1.0, n_times=10, steps_per_output=4, n_train=2, n_test=0))
    hp = from_dataset("heat", heat.spec, heat.arrays)
    uh = torch.as_tensor(heat["u"], dtype=torch.float64)
    scale = hp.t_final * hp.kappa * uh.abs().max() * 16**2
    rel = hp.full_residual(uh).pow(2).mean().sqrt() / scale  # time differences over 0.1 vs Crank-Nicolson
    wrong = Heat2D(t=hp.t, t_final=hp.t_final, n=hp.n, kappa=2 * hp.kappa).full_residual(uh).pow(2).mean().sqrt()
    assert rel < 1e-2 and wrong / scale > 5 * rel  # measured 3.9e-3 and 20x
    assert hp.condition_violation(uh, uh[:, 0]).abs().max() == 0


def test_navier_stokes_rows_hold_on_the_petsc_data_and_the_moe_layer_trains(store, monkeypatch):
    from data.spec import NavierStokesSpec
    from operators.hard import NavierStokes2D

    monkeypatch.setenv("SCIFLOW_HOME", str(store))
    ds = _dataset(NavierStokesSpec(n=16, viscosity=1e-3, horizon=0.5, n_times=25, n_train=2, n_test=0))
    pde = from_dataset("navier_stokes", ds.spec, ds.arrays)
    w = torch.as_tensor(ds["w"], dtype=torch.float64)
    r = pde.full_residual(w).pow(2).mean().sqrt()
    unforced = NavierStokes2D(t=pde.t, t_final=pde.t_final, n=pde.n, viscosity=pde.viscosity, f=0 * pde.f)
    # the layer's stencils on PETSc data: RMS 7.1e-3 (discretisation; the data's ts_rtol 1e-6 moves it by
    # <~ 1e-6 / dt_out = 5e-5), unforced 5.1e-2
    assert r < 0.01 < unforced.full_residual(w).pow(2).mean().sqrt()
    torch.manual_seed(0)  # the network's initial weights
    model = HardConstraintModel(
        HardModelConfig(points=16, experts=layout_for(4, pde.grid), modes=(4, 4, 4), **SMALL_NET), pde
    )
    out = model(w[:, 0].float())
    assert out.w.shape == (2, 4, 6) and out.info.backend == "lm"
    loss = sum(loss_terms(pde, out.u, w[:, 0]).values())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------- experts


def test_block_and_random_layouts():
    ids = expert_index((4, 8), (1, 4)).reshape(4, 8)
    assert (ids == np.repeat(np.arange(4), 2)[None, :]).all()
    r = expert_index((4, 8), (1, 4), "random", seed=1)
    assert np.bincount(r).tolist() == [8, 8, 8, 8] and not (r == ids.reshape(-1)).all()
    assert layout_for(4, (41, 64)) == (1, 4) and layout_for(4, (11, 16, 16)) == (1, 2, 2)


def test_stitching_and_interface_jumps():
    router = Router((3, 8), (1, 2), np.ones(24, bool))
    g = torch.Generator().manual_seed(0)  # not the global RNG: training elsewhere reseeds it
    phi = torch.randn(2, 24, 3, dtype=torch.float64, generator=g)
    same = torch.randn(2, 1, 3, dtype=torch.float64, generator=g).expand(2, 2, 3)
    assert torch.allclose(router.stitch(phi, same), (phi * same[:, :1]).sum(-1))
    assert router.interface_jump(phi, same) == (0.0, 0.0)
    w = same.clone()
    w[:, 1] += 1.0
    u = router.stitch(phi, w).reshape(2, 3, 8)
    assert torch.allclose(u[..., 4:], (phi.reshape(2, 3, 8, 3)[..., 4:, :] * w[:, 1, None, None]).sum(-1))
    mean, mx = router.interface_jump(phi, w)
    assert mean > 0 and mx >= mean


@pytest.mark.parametrize("k, assignment", [(1, "blocks"), (2, "blocks"), (4, "blocks"), (4, "random")])
def test_expert_assignment_pins_points_and_condition_rows(k, assignment, monkeypatch):
    """Which residual points and which condition rows each expert's solve receives: its own block's
    PDE points, ``points`` of them (per expert), and every global initial/boundary row of
    diffusion-sorption (the reference replicates them to every expert)."""
    nx, nt, m, B = 16, 6, 8, 2
    pde = _ds(nx=nx, nt=nt)
    cfg = HardModelConfig(points=m, experts=layout_for(k, pde.grid), assignment=assignment, modes=(2, 2), **SMALL_NET)
    torch.manual_seed(0)
    model = HardConstraintModel(cfg, pde)
    router, mask = model.router, pde.residual_mask()
    owner = router.expert.reshape(pde.grid)
    if assignment == "blocks":  # expert e: the x columns [e nx / k, (e + 1) nx / k), all times
        assert (owner == (np.arange(nx) // (nx // k))[None, :]).all()
    else:
        assert np.bincount(router.expert).tolist() == [nx * nt // k] * k
        assert k == 1 or not (owner == (np.arange(nx) // (nx // k))[None, :]).all()
    # candidates: the residual points (t > 0, interior x) split without overlap by owner
    assert sorted(np.concatenate(router.candidates)) == np.flatnonzero(mask).tolist()
    assert all((router.expert[c] == e).all() for e, c in enumerate(router.candidates))
    seen = {}
    solve_ = model._solve

    def spy(system, backend, B_, K_, **kw):
        seen["system"] = system
        return solve_(system, backend, B_, K_, **kw)

    monkeypatch.setattr(model, "_solve", spy)
    u0 = torch.tensor([[0.1] * nx, [0.05] * nx])
    out = model(u0, generator=torch.Generator().manual_seed(3))
    pts = out.points.numpy()
    assert pts.shape == (k, m)  # points per expert, not shared
    assert (router.expert[pts] == np.arange(k)[:, None]).all() and mask[pts].all()
    assert all(len(set(row)) == m for row in pts.tolist())
    d = seen["system"].data
    N = cfg.n_basis
    assert torch.equal(d["u"].reshape(B, k, m, N), out.phi[:, torch.as_tensor(pts)])
    # every expert: all nx initial rows (relative to u0) and the 2 (nt - 1) boundary rows, the same ones
    phi = out.phi.reshape(B, *pde.grid, N)
    Kfull, cfull = pde.condition_rows(phi, u0.double())
    rw = pde.row_weights(u0.double())
    R = nx + 2 * (nt - 1)
    assert Kfull.shape[1] == R and d["K"].shape == (B * k, R, N)
    for e in range(k):
        assert torch.allclose(d["K"].reshape(B, k, R, N)[:, e], Kfull * rw[..., None])
        assert torch.allclose(d["c"].reshape(B, k, R)[:, e], cfull * rw)
    # rows located at a grid point go to the expert owning it (the t = 0 slice here), global rows to all
    rows = np.concatenate([np.arange(nx), [-1, -1]])
    cm = router.condition_mask(rows).numpy()
    assert (cm[:, -2:] == 1).all() and (cm[:, :nx] == (router.expert[:nx][None, :] == np.arange(k)[:, None])).all()


def test_points_per_expert_or_in_total_and_the_block_cap():
    pde = _ds(nx=16, nt=6)  # K = 4 blocks of 4 columns: the edge blocks hold 3 x 5 = 15 residual points
    net = dict(experts=(1, 4), modes=(2, 2), **SMALL_NET)
    model = HardConstraintModel(HardModelConfig(points=8, **net), pde)
    assert model.router.capacity == 15 and model.router.sample(8).shape == (4, 8)
    total = HardConstraintModel(HardModelConfig(points=8, points_per="total", **net), pde)
    assert total(torch.full((1, 16), 0.1)).points.shape == (4, 2)
    with pytest.raises(ExpertLayoutError, match=r"points=16 per expert.*only 15 residual points.*points <= 15"):
        HardConstraintModel(HardModelConfig(points=16, **net), pde)
    with pytest.raises(ExpertLayoutError, match=r"points=64 in total over 4 experts is 16 per expert.*points <= 60"):
        HardConstraintModel(HardModelConfig(points=64, points_per="total", **net), pde)
    with pytest.raises(ValueError, match="points_per"):
        HardModelConfig(points_per="block")


@pytest.mark.parametrize("workers", [2, 4])
def test_experts_on_cpu_workers_give_the_one_thread_values_and_gradients(workers):
    """K = 4 experts over 2 or 4 CPU threads (forward and implicit backward in the threads): the same
    w, u and network gradients as one thread, bit for bit (LM on diffusion-sorption, Cholesky on heat)."""
    cases = [
        (_ds(nx=16, nt=6), torch.tensor([[0.1] * 16, [0.05] * 16]), (1, 4), dict(modes=(2, 2))),
        (
            _heat(n=8),
            torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(0)),
            (1, 2, 2),
            dict(modes=(2, 2, 2)),
        ),
    ]
    for pde, u0, experts, net in cases:
        got = []
        for w in (1, workers):
            torch.manual_seed(0)
            model = HardConstraintModel(HardModelConfig(points=8, experts=experts, workers=w, **net, **SMALL_NET), pde)
            out = model(u0, generator=torch.Generator().manual_seed(1))
            sum(loss_terms(pde, out.u, u0.double()).values()).backward()
            got.append((out.w.detach(), out.u.detach(), [p.grad for p in model.parameters() if p.grad is not None]))
            with torch.no_grad():  # evaluation: no graph, the threads just run
                assert torch.equal(model(u0, generator=torch.Generator().manual_seed(1)).w, out.w.detach())
        (w1, u1, g1), (wk, uk, gk) = got
        assert torch.equal(w1, wk) and torch.equal(u1, uk) and len(g1) == len(gk) > 0
        assert all(torch.equal(a, b) for a, b in zip(g1, gk, strict=True))


def test_run_differentiable_spreads_forward_and_backward_over_threads():
    from operators.device import run_differentiable

    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 30, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, 30, dtype=torch.float64, generator=g, requires_grad=True)

    def lstsq(a, y):
        return (torch.linalg.solve(a.mT @ a, (a.mT @ y.unsqueeze(-1))).squeeze(-1), a.sum())

    whole = lstsq(A, b)[0]
    parts = run_differentiable([(lstsq, (A[:2], b[:2])), (lstsq, (A[2:], b[2:]))], intra_op_threads=1)
    got = torch.cat([p[0] for p in parts])
    assert torch.equal(got, whole)
    assert torch.autograd.gradcheck(
        lambda a, y: torch.cat([p[0] for p in run_differentiable([(lstsq, (a[:1], y[:1])), (lstsq, (a[1:], y[1:]))])]),
        (A[:2].detach().requires_grad_(), b[:2].detach().requires_grad_()),
    )
    assert torch.get_num_threads() == threads  # restored after the threads


@pytest.mark.parametrize(
    "case",
    [
        "not_dividing",
        "too_many",
        "axes",
        "points_outside",
        "points_boundary",
        "points_wrong_expert",
        "too_many_points",
        "u0_shape",
        "backend_nonlinear",
        "workers",
        "heat_1d",
        "family",
    ],
)
def test_bad_layouts_points_and_parameters(case):
    pde = _ds()
    if case == "not_dividing":
        with pytest.raises(ExpertLayoutError, match="do not divide"):
            HardConstraintModel(HardModelConfig(experts=(1, 5), modes=(2, 2), **SMALL_NET), pde)
    elif case == "too_many":
        with pytest.raises(ExpertLayoutError, match="cannot split"):
            layout_for(7, pde.grid)
    elif case == "axes":
        with pytest.raises(ValueError, match="experts .* has 3 entries"):
            HardConstraintModel(HardModelConfig(experts=(1, 2, 2), modes=(2, 2), **SMALL_NET), pde)
    elif case.startswith("points") or case == "too_many_points":
        model = HardConstraintModel(HardModelConfig(experts=(1, 2), modes=(2, 2), points=10, **SMALL_NET), pde)
        u0 = torch.full((1, 12), 0.1)
        pts = {
            "points_outside": torch.tensor([[13, 14], [10**6, 20]]),
            "points_boundary": torch.tensor([[0, 14], [20, 22]]),  # 0: t = 0
            "points_wrong_expert": torch.tensor([[20, 14], [13, 15]]),
        }.get(case)
        if case == "too_many_points":
            with pytest.raises(ExpertLayoutError, match="has only"):
                model.router.sample(10**4)
            return
        match = {
            "points_outside": "outside the domain",
            "points_boundary": "not an interior",
            "points_wrong_expert": "subdomain",
        }[case]
        with pytest.raises(ExpertLayoutError, match=match):
            model(u0, points=pts)
    elif case == "u0_shape":
        model = HardConstraintModel(HardModelConfig(modes=(2, 2), points=10, **SMALL_NET), pde)
        with pytest.raises(ValueError, match="mismatched dataset and PDE"):
            model(torch.zeros(1, 13))
    elif case == "backend_nonlinear":
        with pytest.raises(ValueError, match="linear PDEs only"):
            HardConstraintModel(HardModelConfig(backend="cholesky", modes=(2, 2), **SMALL_NET), pde)
    elif case == "workers":
        with pytest.raises(ValueError, match=r"workers=3 is more than the 2 experts of the layout \(1, 2\)"):
            HardConstraintModel(HardModelConfig(experts=(1, 2), workers=3, modes=(2, 2), **SMALL_NET), pde)
    elif case == "heat_1d":
        from data.spec import HeatSpec

        with pytest.raises(ValueError, match="2D one"):
            from_dataset("heat", HeatSpec(dim=1), {"t": np.linspace(0, 1, 11)})
    else:
        from data.spec import PoissonSpec

        with pytest.raises(ValueError, match="no hard-constraint PDE"):
            from_dataset("poisson", PoissonSpec(), {"t": np.zeros(2)})


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="points"):
        HardModelConfig(points=0)
    with pytest.raises(ValueError, match="ridge"):
        HardModelConfig(ridge=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        HardModelConfig(backend="qr")


# ----------------------------------------------------------------------------- models and training


@pytest.mark.parametrize(
    "mc",
    [
        dict(mode="soft"),
        dict(points=40),
        dict(points=20, experts=(1, 2)),
        dict(points=20, experts=(1, 2), assignment="random"),
    ],
)
def test_every_model_trains_and_evaluates_on_diffusion_sorption(mc):
    pde = _ds()
    g = torch.Generator().manual_seed(0)  # inputs independent of the tests run before
    u0 = torch.rand(6, 1, generator=g).expand(6, 12).contiguous() * 0.2
    cfg = HardTrainConfig(model=HardModelConfig(modes=(3, 4), **SMALL_NET, **mc), steps=3, batch_size=2)
    model, hist = train(cfg, pde, u0, log_every=1)
    assert len(hist) == 3 and all(math.isfinite(h["loss"]) for h in hist)
    u_true = torch.rand(2, *pde.grid, generator=g)
    row = evaluate(model, u0[:2], u_true)
    assert {"rel_l2", "residual", "conditions", "infer_seconds"} <= set(row)
    assert ("jump_mean" in row) == (mc.get("mode") != "soft")
    if mc.get("experts") == (1, 2):
        assert row["jump_max"] > 0


def test_evaluate_reports_a_finite_residual_when_the_constraints_cover_every_point():
    """Each expert at its block's capacity: no residual point is held out, so the residual is the
    solve's own over every point (was NaN, the mean of an empty selection), flagged by
    residual_held_out = 0; with fewer points it is over held-out points only."""
    pde = _ds()
    g = torch.Generator().manual_seed(0)
    u0 = torch.rand(2, 1, generator=g).expand(2, 12).contiguous() * 0.2
    u_true = torch.rand(2, *pde.grid, generator=g)
    full = HardConstraintModel(HardModelConfig(modes=(3, 4), experts=(1, 2), points=1, **SMALL_NET), pde)
    cap = full.router.capacity
    for points, held_out in ((cap, 0.0), (cap // 2, 0.5)):
        torch.manual_seed(0)
        model = HardConstraintModel(HardModelConfig(modes=(3, 4), experts=(1, 2), points=points, **SMALL_NET), pde)
        row = evaluate(model, u0, u_true)
        assert math.isfinite(row["residual"]), points
        assert row["residual_held_out"] == pytest.approx(held_out, abs=1.0 / cap), points


def test_heat_with_the_cvxpylayers_backend_matches_cholesky():
    pde = _heat()
    u0 = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(0))
    models = {}
    for backend in ("cholesky", "cvxpylayers"):
        torch.manual_seed(0)
        models[backend] = HardConstraintModel(
            HardModelConfig(backend=backend, points=36, experts=(1, 2, 1), ridge=0.1, modes=(2, 3, 3), **SMALL_NET), pde
        )
    pts = models["cholesky"].router.sample(36, torch.Generator().manual_seed(0))
    outs = {k: m(u0, points=pts) for k, m in models.items()}
    info = outs["cvxpylayers"].info
    assert info.converged, info.notes  # SCS met its tolerance (no "Solved/Inaccurate")
    # a first-order cone solver stopped at residual eps leaves a solution error up to ~cond * eps
    # (condition of the damped normal matrix, ~8e3 here): 10x that as the bound
    bound = 10 * info.condition * SCS_EPS
    assert torch.allclose(
        outs["cvxpylayers"].u, outs["cholesky"].u, atol=bound * float(outs["cholesky"].u.detach().abs().max())
    )
    losses = {k: sum(loss_terms(pde, o.u, u0.double()).values()) for k, o in outs.items()}
    grads = {}
    for k, m in models.items():
        losses[k].backward()
        grads[k] = torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.grad is not None])
    # float32 network gradients, SCS at eps 1e-10: agreement to 1e-4 of the largest entry
    assert (grads["cvxpylayers"] - grads["cholesky"]).abs().max() <= 1e-4 * grads["cholesky"].abs().max()


def test_checkpoint_resume_and_refusals(tmp_path):
    from operators import model_from_checkpoint
    from operators.checkpoint import weights
    from operators.fno import CheckpointMismatchError

    pde = _ds()
    u0 = torch.rand(4, 1, generator=torch.Generator().manual_seed(0)).expand(4, 12).contiguous() * 0.2
    cfg = HardTrainConfig(
        model=HardModelConfig(modes=(3, 4), points=40, **SMALL_NET), steps=4, batch_size=2, checkpoint_every=2
    )
    full, hist_full = train(cfg, pde, u0, log_every=1)
    ckpt = tmp_path / "hc.pt"
    train(cfg.model_copy(update={"steps": 2}), pde, u0, checkpoint=ckpt, log_every=1)
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        train(cfg, pde, u0, checkpoint=ckpt)  # steps differ from the checkpoint's config
    # resuming the same configuration reproduces an uninterrupted run
    ckpt2 = tmp_path / "hc2.pt"
    half = cfg.model_copy(update={"steps": 4})
    train(half, pde, u0, checkpoint=ckpt2, log_every=1)
    resumed, hist = train(half, pde, u0, checkpoint=ckpt2, log_every=1)
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in hist_full])
    for m in (model_from_checkpoint(ckpt2, pde=pde), model_from_checkpoint(ckpt2)):  # given or stored PDE
        for a, b in zip(weights(m).values(), weights(full).values(), strict=True):
            assert torch.allclose(a, b)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"config": __import__("os").system}))
    with pytest.raises(CheckpointMismatchError, match="unreadable checkpoint"):
        model_from_checkpoint(evil, pde=pde)


def test_interrupted_hard_training_resumes_to_the_uninterrupted_run(tmp_path):
    """Killed after a checkpoint mid-budget, the resumed run draws the same batches and constraint
    points (both generators are checkpointed) and ends with the uninterrupted run's rows."""
    pde = _ds()
    u0 = torch.rand(4, 1, generator=torch.Generator().manual_seed(1)).expand(4, 12).contiguous() * 0.2
    cfg = HardTrainConfig(
        model=HardModelConfig(modes=(3, 4), points=40, **SMALL_NET), steps=4, batch_size=2, checkpoint_every=2
    )
    _, full = train(cfg, pde, u0, log_every=1)
    ckpt = tmp_path / "hc.pt"

    def crash(step, row):
        if step == 2:
            raise KeyboardInterrupt  # dies after the checkpoint at step 2

    with pytest.raises(KeyboardInterrupt):
        train(cfg, pde, u0, checkpoint=ckpt, on_epoch=crash, log_every=1)
    seen = []
    _, resumed = train(cfg, pde, u0, checkpoint=ckpt, on_epoch=lambda s, r: seen.append(s), log_every=1)
    assert seen == [3, 4]
    keys = ("step", "loss", "pde", "conditions", "lm_iterations", "condition")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]


def test_training_data_that_does_not_fit_is_refused():
    pde = _ds()
    cfg = HardTrainConfig(model=HardModelConfig(modes=(3, 4), points=40, **SMALL_NET), steps=1)
    with pytest.raises(ValueError, match="initial conditions must be"):
        train(cfg, pde, torch.zeros(4, 13))
    with pytest.raises(ValueError, match="NaN or inf"):
        train(cfg, pde, torch.full((4, 12), float("nan")))
    with pytest.raises(ValueError, match="no samples"):
        train(cfg, pde, torch.zeros(0, 12))


def test_benchmark_accuracy_runs_draw_points_per_expert_capped_at_the_block():
    from flows.benchmarks.hard_constraints import PROBLEMS, model_configs

    spec = PROBLEMS["small"]["diffusion-sorption"]  # 101 levels x 64 cells
    pde = _ds(nx=spec.n, nt=spec.n_times + 1)
    by_label = {
        (math.prod(mc["experts"]), mc.get("assignment")): mc
        for mc in model_configs("small", pde.grid, "diffusion-sorption", pde.residual_mask())
    }
    assert by_label[(1, "blocks")]["points"] == 1024 and by_label[(1, "blocks")]["points_per"] == "expert"
    assert by_label[(4, "blocks")]["points"] == 1024 and by_label[(4, "random")]["points"] == 1024
    assert by_label[(8, "blocks")]["points"] == 100 * 7  # an edge block: 8 cells, 7 interior, t > 0
    ns = model_configs("small", (11, 24, 24), "navier-stokes-2d")
    assert [math.prod(mc["experts"]) for mc in ns] == [1, 1, 2, 4]  # soft, K = 1, 2, 4; no ablation
