"""PETSc divergence fallbacks (issue #9, "Retries"): a KSP solve that diverges is retried on the
same right-hand side with the spec's ``petsc_fallbacks`` (each merged over the solver options);
without fallbacks, or when every one fails, generation fails at once with PETSc's reason(s) and
writes nothing. Specs without fallbacks keep their exact hash (existing caches stay valid).

Run ``pytest -s`` to see the measured cost of a fallback switch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import data
from data.pdes import darcy, grid, poisson
from data.pdes.grid import fv_operator
from data.petsc import KSPSolver, SolverDivergedError, petsc
from data.spec import FAMILIES, DarcySpec, HeatSpec, PoissonSpec, canonical_json, parse_spec, spec_hash

#: CG without a preconditioner stopped after 2 iterations: KSP_DIVERGED_ITS (petsc4py: DIVERGED_MAX_IT)
DIVERGE = {"ksp_type": "cg", "pc_type": "none", "ksp_max_it": "2"}
LU = {"ksp_type": "preonly", "pc_type": "lu"}
REASON = "DIVERGED_(MAX_IT|ITS) after 2 iterations"


def _h5_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.suffix == ".h5" or ".h5.tmp" in p.name]


@pytest.fixture
def options_db_unchanged():
    """Every test here must leave PETSc's options database as it found it."""
    before = petsc().Options().getAll()
    yield
    assert petsc().Options().getAll() == before


# ---------------------------------------------------------------------------------------------
# the spec field


#: spec_hash of specs without fallbacks, computed before the field existed (commit 5135335)
HASHES_BEFORE = {
    "poisson": "468fd4224e1ee33538bb3fc4450c946062ed93eb3cbeb3884e060e5c86e14504",
    "darcy": "346554e211cb16eeed2879511891d1e7c3b3d2b09c11b2940a307d46ced3539d",
    "heat": "ed83c82735cbaca31e20771a1d39d3e7140b4cbfdc9701fbf981ff50875f93b1",
    "lotka_volterra": "a0ab4c497f2e7c79ff2b4c60e8f2d6171a7661894ebc9cf67d0a9adc9c7cbecb",
    "navier_stokes": "63e60692c04051dfc5c255ae8b39b61abf25da33c3ce1e33e697d78e021c75c4",
    "diffusion_sorption": "9ba91cf258007d319760bf3feffcd97de1bdace49facf2ff9fd7f2221b45bf1d",
}


def test_specs_without_fallbacks_keep_their_exact_hash():
    for family, digest in HASHES_BEFORE.items():
        spec = FAMILIES[family]()
        assert spec_hash(spec) == digest, family
        assert "petsc_fallbacks" not in canonical_json(spec)
        assert spec_hash(parse_spec({"family": family, "petsc_fallbacks": []})) == digest  # empty == absent
    before = "5410f4ef39fc421a28a710f5a422a39c5f2a2627105a20d014aa9cf1cbf51768"
    assert spec_hash(PoissonSpec(n=16, n_train=4, n_test=2, petsc_options=DIVERGE)) == before
    assert spec_hash(DarcySpec(n=16, n_train=3, n_test=0, petsc_options={"pc_type": "none", "ksp_max_it": "1"})) == (
        "bba1dbee2e770011261c26b2d2be9727f54cead0355e68b90bfb3d3cdf797278"
    )


def test_fallbacks_are_part_of_the_hash_in_order_and_canonical():
    plain = PoissonSpec(n=16)
    one = PoissonSpec(n=16, petsc_fallbacks=[{"pc_type": "gamg"}, {"pc_type": "lu"}])
    assert spec_hash(one) != spec_hash(plain)
    assert spec_hash(one) != spec_hash(PoissonSpec(n=16, petsc_fallbacks=[{"pc_type": "lu"}, {"pc_type": "gamg"}]))
    same = parse_spec({"family": "poisson", "n": 16, "petsc_fallbacks": [{"-pc_type": "gamg"}, {"pc_type": "lu"}]})
    assert spec_hash(same) == spec_hash(one)
    assert parse_spec(canonical_json(one)) == one
    assert DarcySpec(petsc_fallbacks=[{"ksp_max_it": 50, "pc_factor_shift_type": None}]).petsc_fallbacks == [
        {"ksp_max_it": "50", "pc_factor_shift_type": ""}
    ]  # stringified like petsc_options


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            {"family": "poisson", "petsc_fallbacks": [{"pc type": "lu"}]},
            "invalid PETSc option name 'pc type' in fallback 0",
        ),
        ({"family": "darcy", "petsc_fallbacks": [LU, {}]}, "fallback 1 is empty"),
        ({"family": "darcy", "petsc_fallbacks": {"pc_type": "lu"}}, "valid list"),
        ({"family": "darcy", "petsc_fallbacks": ["lu"]}, "valid dictionary"),
        ({"family": "heat", "petsc_fallbacks": [LU]}, "not supported by the heat family, which solves with a PETSc TS"),
        ({"family": "navier_stokes", "petsc_fallbacks": [LU]}, "not supported by the navier_stokes family"),
    ],
)
def test_bad_fallbacks_are_refused_naming_the_field(spec, match):
    with pytest.raises(ValidationError, match=match) as err:
        parse_spec(spec)
    assert "petsc_fallbacks" in str(err.value)


def test_ts_families_refuse_fallbacks_also_when_built_directly():
    with pytest.raises(ValidationError, match="petsc_fallbacks: not supported by the heat family"):
        HeatSpec(petsc_fallbacks=[LU])
    assert HeatSpec(petsc_fallbacks=[]) == HeatSpec()


# ---------------------------------------------------------------------------------------------
# the solver


def _condition(A) -> float:
    """2-norm condition number of a small sparse SPD matrix."""
    ev = np.linalg.eigvalsh(A.toarray())
    return ev.max() / ev.min()


def _lu_residual_bound(A, x) -> float:
    """LU is backward stable: ||A x - b||_inf <~ N eps ||A||_inf ||x||_inf (~5e-13 for Poisson n = 16)."""
    return A.shape[0] * np.finfo(np.float64).eps * abs(A).sum(axis=1).max() * np.abs(x).max()


def _poisson_system(n: int = 16):
    A = poisson.assemble(n)
    M, da = grid.dmda_matrix(A, n, 2)
    return A, M, da


def test_a_diverged_solve_is_retried_with_the_fallback_which_is_kept(caplog, options_db_unchanged):
    A, M, da = _poisson_system()
    rhs = [np.random.default_rng(i).standard_normal(A.shape[0]) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="data.petsc"):
        with KSPSolver(M, {**DIVERGE, "ksp_rtol": "1e-10"}, dm=da, fallbacks=[{"pc_type": "jacobi"}, LU]) as ksp:
            xs = [ksp.solve(b) for b in rhs]
            assert ksp.attempt == 2 and ksp.fallbacks_used == 2  # jacobi also diverges in 2 iterations; LU is kept
            assert ksp.options == {**DIVERGE, "ksp_rtol": "1e-10", **LU}
            assert len(ksp.failures) == 2  # both on the first right-hand side; later ones start with LU
    for b, x in zip(rhs, xs, strict=True):  # solved by LU (measured 1.6e-15 |b|, bound ~5e-13 |b|)
        assert np.abs(A @ x - b).max() <= _lu_residual_bound(A, x)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "cg/none did not converge: DIVERGED_" in warnings[0] and "fallback 1/2 {'pc_type': 'jacobi'}" in warnings[0]
    assert (
        "cg/jacobi did not converge" in warnings[1]
        and "fallback 2/2 {'ksp_type': 'preonly', 'pc_type': 'lu'}" in warnings[1]
    )


def test_options_that_cannot_be_set_up_fall_back_too(options_db_unchanged):
    A, M, da = _poisson_system()
    b = np.ones(A.shape[0])
    with KSPSolver(M, {"pc_type": "no_such_pc"}, dm=da, fallbacks=[LU]) as ksp:  # e.g. hypre missing
        assert ksp.attempt == 1 and "pc_type=no_such_pc: unknown PC type (PETSc error 86" in ksp.failures[0]
        x = ksp.solve(b)
        assert np.abs(A @ x - b).max() <= _lu_residual_bound(A, x)  # measured 3.9e-14, bound 2e-11
    with pytest.raises(data.PetscOptionError, match="pc_type=no_such_pc"):  # no fallbacks: the option named,
        KSPSolver(M, {"pc_type": "no_such_pc"}, dm=da)  # and no options left behind


def test_when_every_attempt_fails_on_a_refused_option_the_error_is_an_option_error(options_db_unchanged):
    A, M, da = _poisson_system()
    with pytest.raises(data.PetscOptionError) as err:
        KSPSolver(M, {"ksp_rtol": "abc"}, dm=da, fallbacks=[{"ksp_type": "no_such_ksp"}])
    msg = str(err.value)
    assert "all 1 fallbacks (2 attempts)" in msg
    first, second = msg.split("; [")
    assert "ksp_rtol=abc: PETSc cannot use this value (PETSc error 63: Input string abc has no numeric value)" in first
    assert "ksp_type=no_such_ksp: unknown KSP type (PETSc error 86" in second


def test_darcy_fallback_matches_the_default_solution(options_db_unchanged):
    spec = DarcySpec(n=16)
    coeffs = [darcy.coefficient(spec, np.random.default_rng(i)) for i in range(3)]
    with darcy.DarcySolver(16, DIVERGE, petsc_fallbacks=[{"pc_type": "gamg", "ksp_max_it": "1000"}]) as solver:
        u = [solver.solve(a) for a in coeffs]
        assert solver.fallbacks_used == 1  # switched on the first sample, kept for the other two
    # both CG + GAMG at the default rtol 1e-10 (unpreconditioned residual): each within cond rtol of
    # the discrete solution, so 2 cond rtol apart; cond ~2e2 (4e-8). Measured <= 3.3e-12.
    rtol = float(DarcySpec().solver_options()["ksp_rtol"])
    for a, ui in zip(coeffs, u, strict=True):
        ref = darcy.solve(a)
        assert np.linalg.norm(ui - ref) <= 2 * _condition(fv_operator(a)) * rtol * np.linalg.norm(ref)
    with pytest.raises(SolverDivergedError, match=REASON):
        darcy.solve(coeffs[0], petsc_options=DIVERGE)


# ---------------------------------------------------------------------------------------------
# generation through the store


def test_generated_dataset_with_a_fallback_matches_the_default_one(store, caplog, options_db_unchanged):
    spec = PoissonSpec(n=16, n_train=4, n_test=2, petsc_options=DIVERGE, petsc_fallbacks=[LU])
    with caplog.at_level(logging.WARNING, logger="data.petsc"):
        ref = data.generate(spec, root=store, chunk_size=3, progress=False)
    default = data.generate(PoissonSpec(n=16, n_train=4, n_test=2), root=store, chunk_size=3, progress=False)
    # CG + GAMG at rtol 1e-10 (unpreconditioned) is within cond rtol of the discrete solution, LU within
    # ~cond N eps: 2 cond rtol, cond(A) = 1.04e2 (2e-8). Measured 1e-11 (max norm).
    bound = 2 * _condition(poisson.assemble(16)) * float(PoissonSpec().solver_options()["ksp_rtol"])
    for split in ("train", "test"):
        got, want = data.load(ref, split), data.load(default, split)
        np.testing.assert_array_equal(got["b"], want["b"])
        assert np.linalg.norm(got["x"] - want["x"]) <= bound * np.linalg.norm(want["x"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # once per chunk (train 0:3, 3:4, test 0:2): the fallback is kept within a chunk
    assert all("DIVERGED_" in w and "fallback 1/1 {'ksp_type': 'preonly', 'pc_type': 'lu'}" in w for w in warnings)


def test_without_fallbacks_divergence_fails_with_the_reason_and_writes_nothing(store, options_db_unchanged):
    spec = PoissonSpec(n=16, n_train=4, n_test=0, petsc_options=DIVERGE)
    with pytest.raises(SolverDivergedError, match=f"cg/none did not converge: {REASON}") as err:
        data.generate(spec, root=store, chunk_size=2, progress=False)
    assert "fallback" not in str(err.value)
    assert data.find(spec, root=store) is None
    assert not _h5_files(store)


def test_when_every_fallback_fails_the_error_lists_each_attempt(store, options_db_unchanged):
    spec = PoissonSpec(
        n=16,
        n_train=4,
        n_test=0,
        petsc_options=DIVERGE,
        petsc_fallbacks=[{"pc_type": "jacobi"}, {"pc_type": "no_such_pc"}],
    )
    with pytest.raises(SolverDivergedError) as err:
        data.generate(spec, root=store, chunk_size=2, progress=False)
    msg = str(err.value)
    assert "failed with the options and all 2 fallbacks (3 attempts)" in msg
    first, second, third = msg.split("; [")
    assert "options {" in first and "cg/none did not converge: DIVERGED_" in first
    assert "fallback 1/2 {'pc_type': 'jacobi'}] PETSc KSP cg/jacobi did not converge: DIVERGED_" in second
    assert "fallback 2/2 {'pc_type': 'no_such_pc'}] KSP setup failed: pc_type=no_such_pc: unknown PC type" in third
    assert "Unable to find requested PC type no_such_pc" in third  # PETSc's own words
    assert data.find(spec, root=store) is None
    assert not _h5_files(store)


def test_fallback_switch_cost(capsys, options_db_unchanged):
    """The measured figure for docs/reliability.md: what one switch (a diverged solve, the rebuild,
    the retry) costs against solving with the fallback from the start (Poisson n = 64)."""
    n, samples = 64, 8
    A, M, da = _poisson_system(n)
    rhs = [np.random.default_rng(i).standard_normal(n * n) for i in range(samples)]

    def chunk(options, fallbacks):
        best = np.inf
        for _ in range(3):  # best of 3: the machine is shared
            t0 = time.perf_counter()
            with KSPSolver(M, options, dm=da, fallbacks=fallbacks) as ksp:
                xs = [ksp.solve(b) for b in rhs]
                used = ksp.fallbacks_used
            best = min(best, time.perf_counter() - t0)
        return best, xs, used

    direct, x_direct, _ = chunk(LU, [])
    switched, x_switched, used = chunk(DIVERGE, [LU])
    assert used == 1
    assert all(
        np.array_equal(a, b) for a, b in zip(x_direct, x_switched, strict=True)
    )  # the same LU solve, bit for bit
    with capsys.disabled():
        print(
            f"\n[reliability] fallback switch (Poisson n={n}, {samples} right-hand sides): LU from the start "
            f"{direct * 1e3:.1f} ms, CG diverging on the first then LU {switched * 1e3:.1f} ms "
            f"(+{(switched - direct) * 1e3:.1f} ms, one switch)"
        )
