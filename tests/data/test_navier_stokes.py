"""2D Navier-Stokes (vorticity form, periodic torus): exact solutions, the FNO random field,
spec validation and dataset generation. Tiny grids: the whole file runs in a few seconds."""

import numpy as np
import pytest
from pydantic import ValidationError

import data
from data.pdes import family_module
from data.pdes import navier_stokes as ns
from data.pdes.random_fields import grf
from data.petsc import SolverDivergedError
from data.spec import FAMILIES, NavierStokesSpec, parse_spec, spec_hash

RK4 = {"ts_rk_type": "4", "ts_adapt_type": "none"}


def _taylor_green(n):
    """Two modes of the |k|^2 = 2 shell: -lap w = 8 pi^2 w, so u . grad w = 0 and, unforced,
    w(t) = w(0) exp(-8 pi^2 nu t) exactly (the Taylor-Green vortex, w = 2k cos kx cos ky, k = 2 pi)."""
    X, Y = ns.grid(n)
    return 4 * np.pi * np.cos(2 * np.pi * X) * np.cos(2 * np.pi * Y) + 0.7 * np.sin(2 * np.pi * X) * np.cos(
        2 * np.pi * Y
    )


def test_taylor_green_decay_is_exact():
    nu, n = 1e-2, 16
    w0 = _taylor_green(n)
    t = np.linspace(0.0, 1.0, 5)
    W = ns.simulate(w0, nu, t, petsc_options={"ts_rtol": "1e-10", "ts_atol": "1e-10"})
    exact = np.exp(-8 * np.pi**2 * nu * t)[:, None, None] * w0
    # the spatial discretisation is exact for this mode, so the error is the integrator's: <= 100 x ts tol
    assert np.abs(W - exact).max() / np.abs(w0).max() < 1e-8  # measured 9.7e-12
    # the default options (adaptive Dormand-Prince, tolerances 1e-6): 10 x tol
    W = ns.simulate(w0, nu, t)
    assert np.abs(W - exact).max() / np.abs(w0).max() < 1e-5  # measured 2.0e-7


def test_fixed_step_rk4_is_fourth_order():
    nu, n, T = 0.02, 8, 1.0  # n = 8: the largest step stays inside RK4's stability region at the Nyquist mode
    w0 = _taylor_green(n)
    exact = np.exp(-8 * np.pi**2 * nu * T) * w0
    errs = [np.abs(ns.simulate(w0, nu, [0.0, T], dt=T / m, petsc_options=RK4)[-1] - exact).max() for m in (12, 24, 48)]
    rates = [errs[i] / errs[i + 1] for i in range(2)]
    assert all(14 < r < 18 for r in rates), rates  # 2^4 = 16 per halving of dt (measured 16.9, 16.4)


def test_rhs_advection_and_forcing_are_exact():
    n = 32
    X, Y = ns.grid(n)
    # w = sin 2pi x + cos 4pi y: psi = sin(2pi x)/(4pi^2) + cos(4pi y)/(16pi^2), u = psi_y, v = -psi_x,
    # so u w_x + v w_y = 1.5 cos(2pi x) sin(4pi y) (hand-derived); lap w = -4pi^2 sin 2pi x - 16pi^2 cos 4pi y
    w = np.sin(2 * np.pi * X) + np.cos(4 * np.pi * Y)
    nu = 0.01
    f = ns.forcing(n, 0.1)
    rhs = ns.VorticityRHS(n, nu, f)(w)
    lap_w = -4 * np.pi**2 * np.sin(2 * np.pi * X) - 16 * np.pi**2 * np.cos(4 * np.pi * Y)
    expected = -1.5 * np.cos(2 * np.pi * X) * np.sin(4 * np.pi * Y) + nu * lap_w + f
    # spectrally exact for these modes: FFT rounding only, ~eps log2(n^2) |k|max |w| ~ 4e-13 at worst
    # (measured 5.3e-14); velocities ~eps log2(n^2) |u| ~ 2e-16 (measured 7.6e-17)
    np.testing.assert_allclose(rhs, expected, atol=1e-12)
    u, v = ns.VorticityRHS(n, nu).velocity(w)
    np.testing.assert_allclose(u, -np.sin(4 * np.pi * Y) / (4 * np.pi), atol=1e-14)
    np.testing.assert_allclose(v, -np.cos(2 * np.pi * X) / (2 * np.pi), atol=1e-14)
    np.testing.assert_allclose(f, 0.1 * (np.sin(2 * np.pi * (X + Y)) + np.cos(2 * np.pi * (X + Y))))


def test_periodic_grf_matches_the_fno_covariance():
    n, alpha, tau = 16, 2.5, 7.0
    rng = np.random.default_rng(0)
    samples = np.stack([grf(rng, n, 2, alpha, tau, bc="periodic") for _ in range(400)])
    assert np.abs(samples.mean(axis=(1, 2))).max() < 1e-12  # mean zero, exactly
    k = np.fft.fftfreq(n, 1.0 / n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    lam = (4 * np.pi**2 * k2 + tau**2) ** (-alpha)
    lam[0, 0] = 0.0
    expected_var = 2 * tau ** (2 * alpha - 2) * lam.sum()  # sigma = tau^(alpha - 1), sqrt(2) on each mode
    # a statistical check on seeded draws: the mean of 400 sample variances has a relative standard error
    # of 1.9 % (their spread), so 0.1 is > 5 standard errors (measured -2.8 %)
    assert abs(samples.var(axis=(1, 2)).mean() / expected_var - 1) < 0.1
    a, b = (grf(np.random.default_rng(5), n, 2, 2.5, 7.0, bc="periodic") for _ in range(2))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n": 33}, "n"),
        ({"n": 4}, "n"),
        ({"viscosity": -1e-3}, "viscosity"),
        ({"viscosity": 0.0}, "viscosity"),
        ({"horizon": 0.0}, "horizon"),
        ({"t0": -1.0}, "t0"),
        ({"dt": float("nan")}, "dt"),
        ({"n_times": 0}, "n_times"),
    ],
)
def test_invalid_spec_names_the_field(kwargs, field):
    with pytest.raises(ValidationError) as err:
        parse_spec({"family": "navier_stokes", **kwargs})
    assert field in str(err.value)
    if kwargs == {"n": 33}:
        assert "even" in str(err.value)


def test_spec_defaults_registry_and_options():
    spec = parse_spec({"family": "navier_stokes"})
    assert isinstance(spec, NavierStokesSpec) and FAMILIES["navier_stokes"] is NavierStokesSpec
    assert (spec.n, spec.viscosity, spec.t0, spec.horizon, spec.n_times, spec.forcing) == (64, 1e-3, 0.0, 1.0, 1, 0.1)
    assert (spec.alpha, spec.tau) == (2.5, 7.0)
    assert spec.solver_options()["ts_type"] == "rk"
    assert NavierStokesSpec(petsc_options=RK4).solver_options()["ts_adapt_type"] == "none"
    assert family_module("navier_stokes") is ns
    assert spec_hash(spec) != spec_hash(NavierStokesSpec(viscosity=1e-4))


def test_generate_round_trip_and_reproducibility(tmp_path):
    spec = NavierStokesSpec(n=32, n_train=3, n_test=1, n_times=2, horizon=0.5)
    ref = data.generate(spec, root=tmp_path / "a", chunk_size=1, progress=False)
    train = data.load(ref)
    assert set(train.arrays) == {"w", "t", "f"} and train.spec == spec
    w = train["w"]
    assert w.shape == (3, 3, 32, 32) and w.dtype == np.float64 and np.all(np.isfinite(w))
    np.testing.assert_allclose(train["t"], [0.0, 0.25, 0.5])
    assert np.abs(w.mean(axis=(2, 3))).max() < 1e-12  # mean vorticity conserved (zero)
    assert np.abs(w[:, -1] - w[:, 0]).max() > 1e-2  # the flow moved
    # the input is the GRF drawn from the sample's seed; the target is its trajectory
    rng = data.store.sample_rngs(spec, "train", 1, 2)[0]
    w0 = grf(rng, 32, 2, 2.5, 7.0, bc="periodic")
    np.testing.assert_array_equal(w[1, 0], w0)
    np.testing.assert_allclose(
        w[1], ns.simulate(w0, spec.viscosity, train["t"], train["f"], dt=1e-3), rtol=0, atol=1e-12
    )
    assert data.load(ref, split="test")["w"].shape == (1, 3, 32, 32)
    # same seed, different chunking: identical bits
    again = data.load(data.generate(spec, root=tmp_path / "b", chunk_size=2, progress=False))
    np.testing.assert_array_equal(again["w"], w)
    # an independent time integrator (fixed-step RK4, from petsc_options) agrees to its accuracy
    rk4 = data.load(data.generate(spec.model_copy(update={"petsc_options": RK4}), root=tmp_path / "c", progress=False))
    assert np.abs(rk4["w"] - w).max() < 1e-5 * np.abs(w).max()  # 10 x the default ts tol 1e-6 (measured 7.1e-7)


def test_spin_up_to_t0():
    spec = NavierStokesSpec(n=16, n_train=1, n_test=0, t0=0.5, horizon=0.25)
    w = ns.sample_arrays(spec, data.store.sample_rngs(spec, "train", 0, 1))["w"]
    np.testing.assert_allclose(ns.shared_arrays(spec)["t"], [0.5, 0.75])
    w0 = grf(data.store.sample_rngs(spec, "train", 0, 1)[0], 16, 2, 2.5, 7.0, bc="periodic")
    full = ns.simulate(w0, spec.viscosity, [0.0, 0.5, 0.75], ns.forcing(16, 0.1))
    np.testing.assert_allclose(w[0], full[1:], rtol=0, atol=1e-12)


def test_blow_up_is_a_clear_error():
    w0 = grf(np.random.default_rng(0), 16, 2, 2.5, 7.0, bc="periodic")
    with pytest.raises(SolverDivergedError, match="stability limit"):
        ns.simulate(w0, 1.0, [0.0, 0.5, 1.0], dt=0.01, petsc_options=RK4)
