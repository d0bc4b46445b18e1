"""1D diffusion-sorption (PDEBench): the linear limit against its eigenfunction series, discrete
mass balance, second-order spatial convergence, the maximum principle, the analytic Jacobian,
spec validation and dataset generation. Small grids: the whole file runs in a few seconds."""

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.optimize import brentq

import data
from data.pdes import diffusion_sorption as ds
from data.pdes import family_module
from data.spec import FAMILIES, DiffusionSorptionSpec, parse_spec, spec_hash

D = 5e-4
LINEAR = ds.SorptionParams(k=0.0)  # R = 1: u_t = D u_xx


def _linear_series(x: np.ndarray, t: np.ndarray, c0: float, modes: int = 300) -> np.ndarray:
    """Exact solution of u_t = D u_xx, u(0) = 1, u(1) = -D u_x(1), u(x, 0) = c0, shape (T, n).

    u = 1 - x / (1 + D) + sum_m a_m exp(-D mu_m^2 t) sin(mu_m x), with tan(mu_m) = -D mu_m (the
    Robin eigenvalues, one in ((m - 1/2) pi, m pi)); the sin(mu_m x) are orthogonal on [0, 1], so
    a_m = <v0, sin mu_m x> / <sin mu_m x, sin mu_m x> for v0 = c0 - 1 + x / (1 + D), in closed form."""
    mu = np.array(
        [
            brentq(lambda s: np.sin(s) + D * s * np.cos(s), (m - 0.5) * np.pi + 1e-12, m * np.pi)
            for m in range(1, modes + 1)
        ]
    )
    int_sin = (1 - np.cos(mu)) / mu  # int_0^1 sin(mu x) dx
    int_x_sin = np.sin(mu) / mu**2 - np.cos(mu) / mu  # int_0^1 x sin(mu x) dx
    norm = 0.5 - np.sin(2 * mu) / (4 * mu)  # int_0^1 sin^2(mu x) dx
    a = ((c0 - 1) * int_sin + int_x_sin / (1 + D)) / norm
    return 1 - x / (1 + D) + (np.exp(-D * np.outer(t, mu**2)) * a) @ np.sin(np.outer(mu, x))


def _rates(errs):
    return [errs[i] / errs[i + 1] for i in range(len(errs) - 1)]


def test_linear_limit_steady_state_is_exact():
    # both ghost rules are exact for linear functions: the discrete steady state is 1 - x/(1 + D)
    for n in (16, 64):
        x = ds.cell_centres(n)
        _, U = ds.simulate(np.full(n, 0.1), LINEAR, times=[0.0, 1e4, 1e5])
        # the transient is exp(-D pi^2 1e5) = 1e-214 gone; what is left is the implicit stepper's LU solves,
        # ~eps cond (cond ~4 n^2 / pi^2 <= 1.7e3: 4e-13). Measured 1.2e-13.
        np.testing.assert_allclose(U[-1], ds.linear_steady_state(x, D), rtol=0, atol=1e-12)
        assert abs(U[-1, -1] - D / (1 + D)) < 0.5 / n  # u(1) = D / (1 + D) > 0: the outflow sign


def test_linear_limit_matches_eigenfunction_series_to_second_order():
    c0, times = 0.1, np.array([0.0, 10.0, 100.0, 500.0])
    errs = []
    for n in (32, 64, 128, 256):
        x = ds.cell_centres(n)
        _, U = ds.simulate(np.full(n, c0), LINEAR, times=times)
        errs.append(np.abs(U[1:] - _linear_series(x, times[1:], c0)).max())
    # n = 256: 8.9e-5 at t = 10 (the boundary layer), 2e-6 at t = 500. The time integration (ts_rtol 1e-8)
    # and the 300-term series (tail < 1e-12) add ~1e-7: the margins are discretisation error, the same on
    # any machine. Rates 4.14, 4.00, 4.00.
    assert errs[-1] < 1e-4, errs
    assert all(3.7 < r < 4.3 for r in _rates(errs)), _rates(errs)


def test_nonlinear_spatial_convergence_is_second_order():
    spec = DiffusionSorptionSpec()
    times = [0.0, 25.0, 50.0]
    _, fine = ds.simulate(0.1, spec, times=times, n=1024)
    errs = []
    for n in (32, 64, 128):
        _, U = ds.simulate(0.1, spec, times=times, n=n)
        ref = fine[1:].reshape(2, n, -1).mean(-1)  # fine cells averaged onto the coarse ones (O(h^2))
        errs.append(np.abs(U[1:] - ref).max())
    assert errs[-1] < 1e-3, errs  # measured 6.3e-4; rates 4.06, 4.07
    assert all(3.7 < r < 4.3 for r in _rates(errs)), _rates(errs)


def test_mass_changes_only_through_boundary_fluxes():
    """d/dt int (u + C u^n_f) dx = D u_x(1) - D u_x(0): the discrete total changes exactly by the
    discrete face fluxes, so what remains is the trapezoid rule's O(dt^2) error in time."""
    spec = DiffusionSorptionSpec()
    t, U = ds.simulate(0.1, spec, times=np.linspace(0.0, 100.0, 2001), n=64)
    mass = ds.total_mass(U, spec)
    left, right = ds.boundary_fluxes(U, spec)
    assert np.all(left < 0) and np.all(right < 0)  # the flux -D u_x > 0: in at x = 0, out at x = 1

    def imbalance(step):
        tt, f, m = t[::step], (right - left)[::step], mass[::step]
        inflow = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(tt))])
        return np.abs((m - m[0]) - inflow).max() / (m[-1] - m[0])

    fine, coarse = imbalance(1), imbalance(2)
    assert fine < 5e-5, fine  # 3.1e-5 with 2000 output intervals
    assert 3.5 < coarse / fine < 4.5, (coarse, fine)  # trapezoid error only: quarters as dt halves
    # the sorbed mass dominates: ignoring it would break the balance by far more
    dissolved = U.mean(axis=1)
    assert abs((dissolved[-1] - dissolved[0]) - (mass[-1] - mass[0])) > 0.1


@pytest.mark.parametrize("c0", [0.0, 1e-4, 0.2])
def test_values_stay_in_unit_interval(c0):
    spec = DiffusionSorptionSpec()  # the PDEBench setting: n = 128, t in [0, 500], 100 intervals
    t, U = ds.simulate(c0, spec)
    assert U.shape == (101, 128) and t[-1] == 500.0
    # no undershoot: ahead of the front u decays super-exponentially (smallest value 1.5e-129 for c0 = 0);
    # -1e-12 only admits rounding
    assert U.min() >= -1e-12 and U.max() <= 1.0
    assert np.all(np.diff(U[-1]) < 0)  # the front: from the Dirichlet value 1 down to the outflow


def test_ts_options_agree():
    spec = DiffusionSorptionSpec(n=64)
    _, U = ds.simulate(0.05, spec)
    bdf4 = {"ts_type": "bdf", "ts_bdf_order": "4", "ts_rtol": "1e-10", "ts_atol": "1e-10"}
    _, V = ds.simulate(0.05, spec, petsc_options=bdf4)
    assert np.abs(U - V).max() < 1e-6  # 100 x the default ts tol 1e-8 (BDF4 at 1e-10 is the reference); measured 9.6e-8


def test_jacobian_and_helpers():
    spec = DiffusionSorptionSpec()
    u = np.random.default_rng(0).uniform(0.0, 1.0, 24)
    J = ds.jacobian(u, spec)
    assert J.shape == (24, 24) and J.nnz == 3 * 24 - 2
    eps = 1e-7
    fd = np.stack([(ds.rhs(u + eps * e, spec) - ds.rhs(u - eps * e, spec)) / (2 * eps) for e in np.eye(24)], axis=1)
    # truncation ~eps^2 (4e-6 of the largest entry at eps 1e-5, so 4e-10 here) and rounding ~1e-16 |rhs| / eps
    # (1e-10): measured 3.8e-10 of the largest entry against 1e-6
    np.testing.assert_allclose(J.toarray(), fd, rtol=0, atol=1e-6 * np.abs(fd).max())
    # S'(u) = R(u); R(0) is finite thanks to the u_floor shift (PDEBench's (c + 1e-6)^(n_f - 1))
    v = np.linspace(1e-3, 1.0, 50)
    dS = (ds.storage(v + 1e-7, spec) - ds.storage(v - 1e-7, spec)) / 2e-7
    np.testing.assert_allclose(dS, ds.retardation(v, spec), rtol=1e-6)  # same FD budget; measured 1.2e-9
    C = 0.71 / 0.29 * 2880 * 3.5e-4
    expected = [1 + C * 0.874 * 1e-6**-0.126] * 2 + [1 + C * 0.874 * (1 + 1e-6) ** -0.126]
    np.testing.assert_allclose(ds.retardation(np.array([0.0, -1.0, 1.0]), spec), expected)
    # the linear limit: rhs = D u_xx exactly for a quadratic with the boundary values built in
    x = ds.cell_centres(64)
    np.testing.assert_allclose(ds.rhs(ds.linear_steady_state(x, D), LINEAR), 0.0, atol=1e-12)
    # batch axes, and a small PDE residual for a finely sampled trajectory
    assert ds.rhs(np.ones((3, 2, 16)) * 0.5, spec).shape == (3, 2, 16)
    t, U = ds.simulate(0.1, spec, times=np.concatenate([[0.0], np.linspace(200.0, 210.0, 41)]), n=64)
    t, U = t[1:], U[1:]
    res = ds.residual(t, U, spec)
    assert res.shape == (39, 64)
    # time-difference truncation of 0.25 s outputs against the diffusion term: measured 6.3e-7 of it
    assert np.abs(res).max() < 1e-3 * np.abs(D * 64**2 * np.diff(U[1:-1], 2, axis=1)).max()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"phi": 0.0}, "phi"),
        ({"phi": 1.0}, "phi"),
        ({"phi": 1.5}, "phi"),
        ({"D": -5e-4}, "D"),
        ({"D": 0.0}, "D"),
        ({"n_f": 0.0}, "n_f"),
        ({"k": -1.0}, "k"),
        ({"rho_s": -1.0}, "rho_s"),
        ({"u_floor": 0.0}, "u_floor"),
        ({"n": 4}, "n"),
        ({"t_final": 0.0}, "t_final"),
        ({"ic_low": -0.1}, "ic_low"),
        ({"ic_high": 2.0}, "ic_high"),
        ({"D": float("nan")}, "D"),
    ],
)
def test_invalid_field_is_named(kwargs, field):
    with pytest.raises(ValidationError) as err:
        parse_spec({"family": "diffusion_sorption", **kwargs})
    assert any(e["loc"][-1] == field for e in err.value.errors()), err.value.errors()


@pytest.mark.parametrize("low, high", [(0.2, 0.2), (0.3, 0.1)])
def test_empty_ic_range_names_both_fields(low, high):
    with pytest.raises(ValidationError, match=r"ic_low \(.*\) must be below ic_high"):
        DiffusionSorptionSpec(ic_low=low, ic_high=high)


def test_spec_defaults_registry_and_options():
    spec = parse_spec({"family": "diffusion_sorption"})
    assert isinstance(spec, DiffusionSorptionSpec) and FAMILIES["diffusion_sorption"] is DiffusionSorptionSpec
    assert (spec.D, spec.phi, spec.rho_s, spec.k, spec.n_f) == (5e-4, 0.29, 2880.0, 3.5e-4, 0.874)
    assert (spec.t_final, spec.n_times, spec.ic_low, spec.ic_high, spec.u_floor) == (500.0, 100, 0.0, 0.2, 1e-6)
    assert spec.solver_options()["ts_type"] == "arkimex"
    assert DiffusionSorptionSpec(petsc_options={"ts_type": "bdf"}).solver_options()["ts_type"] == "bdf"
    assert family_module("diffusion_sorption") is ds
    assert spec_hash(spec) != spec_hash(DiffusionSorptionSpec(k=0.0))


def test_generate_round_trip_and_reproducibility(tmp_path):
    spec = DiffusionSorptionSpec(n=16, n_train=3, n_test=1, n_times=4, t_final=50.0)
    ref = data.generate(spec, root=tmp_path / "a", chunk_size=2, progress=False)
    train = data.load(ref)
    assert set(train.arrays) == {"u", "t", "x"} and train.spec == spec
    u = train["u"]
    assert u.shape == (3, 5, 16) and u.dtype == np.float64 and np.all(np.isfinite(u))
    np.testing.assert_allclose(train["t"], [0.0, 12.5, 25.0, 37.5, 50.0])
    np.testing.assert_allclose(train["x"], (np.arange(16) + 0.5) / 16)
    # PDEBench's initial condition: one level per sample, U(ic_low, ic_high), the same in every cell
    assert np.all(u[:, 0] == u[:, 0, :1]) and np.all((u[:, 0, 0] >= 0.0) & (u[:, 0, 0] < 0.2))
    assert len(set(u[:, 0, 0])) == 3
    rng = data.store.sample_rngs(spec, "train", 1, 2)[0]
    _, U1 = ds.simulate(ds.initial_level(spec, rng), spec)
    np.testing.assert_allclose(u[1], U1, rtol=0, atol=1e-13)
    assert data.load(ref, split="test")["u"].shape == (1, 5, 16)
    again = data.load(data.generate(spec, root=tmp_path / "b", chunk_size=3, progress=False))
    np.testing.assert_array_equal(again["u"], u)
