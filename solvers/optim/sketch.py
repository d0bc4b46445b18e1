"""Randomized iterative sketching solvers for a square linear system ``K z = b``.

Sketch-and-project (Gower & Richtarik, 2015), the solver family of Hong et al. (ICML 2023,
Section 3): each step draws a sketch ``S`` and projects the iterate onto ``{z : S^T K z = S^T b}``,

    z <- z - K^T S (S^T K K^T S)^+ S^T (K z - b).

* ``"kaczmarz"``: ``S = e_i``, one row, drawn with probability ``||K_i||^2 / ||K||_F^2``
  (randomized Kaczmarz, Strohmer & Vershynin 2009). The reference code samples rows uniformly;
  the norm-weighted rule is the one with the linear rate the paper's analysis uses.
* ``"block"``: ``S`` = a block of rows, blocks drawn as a random partition of the rows each sweep.
* ``"gaussian"``: ``S`` an ``N x q`` matrix of independent standard normals, drawn afresh every step
  (the reference's "GV" sketch; ``q`` = ``block_size``). Every step mixes all rows, so its rate does
  not depend on how the rows are scaled; a step costs ``O(nnz(K K^T) q)`` against ``O(nnz(row))``
  for Kaczmarz.
* ``"exact"``: ``S = I``; one step is a direct solve (LU).

Preconditioning (``precondition="ilu"``; :data:`PRECONDITIONERS`): sketch-and-project on the
right-preconditioned system ``(K M^-1) w = b``, ``z = M^-1 w``, with ``M`` an incomplete LU
factorization (SuperLU's ILUTP of ``K^T``, :func:`incomplete_lu`). The residual
``r = K z - b`` is the same as without it, so the accuracy test of AdaSketch-Newton and its descent
guarantee are untouched; only the rate changes, from ``sigma_min(K)^2 / ||K||_F^2`` to that of
``K M^-1``. On the Darcy inverse problem's first KKT system ``||K||_F^2 / sigma_min(K)^2`` is 7e12
(n = 8) and 4e13 (n = 16): plain Kaczmarz would need ~1e13 steps per digit. ``||K M^-1||_F^2 /
sigma_min^2`` measured with ILU(1e-4) / ILU(1e-5): 248 / - (n = 8), 2.4e3 / 863 (n = 16), 2e5 / 4.7e3
(n = 32; N = 3072, so ``K M^-1`` is close to ``I``). The factor's quality falls with n at a fixed
tolerance, so :func:`incomplete_lu` starts at ``drop_tol`` (1e-5) and tightens it tenfold until
the defect ``||K M^-1 v - v|| / ||v||`` for a random ``v`` is at most ``ILU_MAX_DEFECT`` = 1e-4,
with SuperLU's fill cap lifted: under its default cap the n = 64 factor came out useless (defect
4e15). Why 1e-4: a block sweep gains about ``-log10(defect) - 1`` digits (first KKT system, block
sketch, relative residual after each sweep; n = 32: defect 1.4e-2 -> ~0.7 digits a sweep, 4.9e-4
-> ~2, 1.0e-5 -> ~3.5; n = 64: 2.6e-4 (drop tol 1e-9) -> ~2, 1.6e-5 (1e-10) -> ~3, reaching the
rounding floor in 3 sweeps of ~50 s against 5), and Algorithm 1's rounds run to that floor
(``psi`` ~ 1e13), while the fill hardly grows (n = 64: 2.581M nonzeros at 1e-9, 2.585M at 1e-10;
the complete LU 2.602M). That is the cost: ILUTP keeps nearly all of the LU's fill on these 2-D
systems (n = 32: 397k nonzeros at 1e-5 against 426k for the complete LU; at the tolerances chosen
about 1x), so the preconditioned sketch stores about what a sparse direct solve stores; it
converges, it does not save memory, and a sweep costs ``N`` triangular solves where the direct
solve's step costs one (n = 64: ~3 ms each, whatever the block size from 111 to 1024).
Block preconditioners built for Krylov methods (Biros & Ghattas'
reduced-space LNKS) do not help here: they cluster the *eigenvalues* of ``K M^-1`` but leave it
far from normal, and a sketch's rate depends on its *singular values* (measured at n = 16:
``||X||_F^2 / sigma_min(X)^2`` = 6e17 with the ``H_mm`` block, 1.5e12 with the exact reduced
Hessian). A step needs ``q`` triangular solves for ``S^T K M^-1`` (untransposed with the factor of
``K^T``: SuperLU's transposed solve takes about twice as long) and one more for ``z``; rows of
``K M^-1`` are not formed, so Kaczmarz samples them uniformly (as the reference does), which for
``K M^-1 ~ I`` is close to the norm-weighted rule.

Which sketch the accuracy condition needs: AdaSketch-Newton checks the residual itself, so any
sketch that converges does; its analysis (Hong et al., Section 3, after Gower & Richtarik) uses the
linear rate in expectation of sketch-and-project, ``E ||z_j - z*||^2 <= (1 - rho)^j ||z*||^2`` with
``rho = lambda_min(E[K^T S (S^T K K^T S)^+ S^T K]) > 0``, and ``||r|| <= ||K|| ||z - z*||``. Both
families have ``rho > 0`` for a non-singular ``K``: Kaczmarz with row-norm weights has
``rho = sigma_min(K)^2 / ||K||_F^2`` (Strohmer & Vershynin), the Gaussian sketch a ``rho`` bounded
below by a multiple of ``q sigma_min(K)^2 / ||K||_F^2`` (Gower & Richtarik, Section 5); the block
sketch by rows has it when every block is drawn with positive probability.

The residual ``r = K z - b`` is updated incrementally, ``r <- r - K K^T S y``, from a precomputed
Gram matrix ``K K^T`` (dense when small, sparse otherwise), at ``O(nnz(row of K K^T))`` per
Kaczmarz step; the reference implementation recomputes ``K z - b`` each step (``O((n+m)^2)``).
``||r||^2`` is carried along the same way and recomputed exactly once per chunk of steps against drift.
The sketch loops on a dense ``K`` are compiled (numba; Kaczmarz on a sparse ``K`` too): rows,
partitions and Gaussian matrices are drawn here with the run's NumPy generator, a chunk at a time
(Kaczmarz ``max(N, 4096)`` rows; block: whole sweeps, about 4096 steps; Gaussian: at most 4096
steps), and the compiled loop
takes them in order, stopping at the first step that meets the threshold, so the iterates are those
of the step-by-step loop. Measured on a 12 x 12 system: Kaczmarz ~0.05 us per step against ~6 us
for a Python loop, the block and Gaussian sketches ~7 us (a small least-squares solve) against
~53-57 us.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from data.errors import InputError

EPS = float(np.finfo(np.float64).eps)
#: steps per call of a compiled loop: Kaczmarz at least this many (and at least one sweep, ``N``
#: steps), the block sketch about this many (whole sweeps), the Gaussian sketch at most this many
CHUNK_STEPS = 4096
#: most standard normals the Gaussian sketch draws per chunk (``steps x N x q``)
GAUSSIAN_NUMBERS = 2_000_000
#: the incomplete LU (``precondition="ilu"``): most relative defect ``||K M^-1 v - v|| / ||v||``
#: before its drop tolerance is tightened tenfold, the tightest tolerance tried, the fill bound
ILU_MAX_DEFECT, ILU_MIN_DROP_TOL, ILU_FILL_BOUND = 1e-4, 1e-12, 1000.0


def _compiled(fn):
    """``numba.njit`` with its on-disk cache (next to this file, else numba's user cache directory);
    where neither is writable (a read-only image) compiled per process instead of failing at import."""
    try:
        return numba.njit(cache=True)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(fn)


@_compiled
def _kaczmarz_dense(K, G, inv, rows, z, r, thr2):  # pragma: no cover - compiled
    """Kaczmarz steps on dense ``K`` (``G = K K^T``) along ``rows`` until ``||r||^2 <= thr2``;
    updates ``z`` and ``r = K z - b`` in place; returns (steps taken, ``||r||^2``)."""
    N = r.shape[0]
    rr = 0.0
    for j in range(N):
        rr += r[j] * r[j]
    for t in range(rows.shape[0]):
        i = rows[t]
        a = r[i] * inv[i]
        rr = 0.0
        for j in range(N):
            z[j] -= a * K[i, j]
            r[j] -= a * G[i, j]
            rr += r[j] * r[j]
        if rr <= thr2:
            return t + 1, rr
    return rows.shape[0], rr


@_compiled
def _block_dense(K, G, blocks, sizes, z, r, thr2):  # pragma: no cover - compiled
    """Block sketch-and-project steps on dense ``K`` (``G = K K^T``), step ``t`` projecting onto the
    rows ``blocks[t, :sizes[t]]``: ``y = (G_SS)^+ r_S``, ``z -= K_S^T y``, ``r -= G_{:,S} y``, until
    ``||r||^2 <= thr2``; returns (steps taken, ``||r||^2``)."""
    N = r.shape[0]
    rr = 0.0
    for t in range(blocks.shape[0]):
        m = sizes[t]
        S = blocks[t, :m]
        A = np.empty((m, m))
        rS = np.empty(m)
        for a in range(m):
            rS[a] = r[S[a]]
            for c in range(m):
                A[a, c] = G[S[a], S[c]]
        y = np.linalg.lstsq(A, rS)[0]
        for a in range(m):
            i, ya = S[a], y[a]
            for j in range(N):
                z[j] -= ya * K[i, j]
                r[j] -= ya * G[i, j]  # G is symmetric: column i = row i
        rr = 0.0
        for j in range(N):
            rr += r[j] * r[j]
        if rr <= thr2:
            return t + 1, rr
    return blocks.shape[0], rr


@_compiled
def _gaussian_dense(K, G, sketches, z, r, thr2):  # pragma: no cover - compiled
    """Gaussian sketch-and-project steps on dense ``K``, step ``t`` with ``S = sketches[t]`` ``(N, q)``:
    ``y = (S^T G S)^+ S^T r``, ``z -= K^T S y``, ``r -= G S y``, until ``||r||^2 <= thr2``."""
    rr = 0.0
    KT = K.T.copy()
    for t in range(sketches.shape[0]):
        S = sketches[t]
        GS = G @ S
        y = np.linalg.lstsq(S.T @ GS, S.T @ r)[0]
        z -= KT @ (S @ y)
        r -= GS @ y
        rr = r @ r
        if rr <= thr2:
            return t + 1, rr
    return sketches.shape[0], rr


@_compiled
def _kaczmarz_csr(Kp, Ki, Kd, Gp, Gi, Gd, inv, rows, z, r, rr, thr2):  # pragma: no cover - compiled
    """:func:`_kaczmarz_dense` for CSR ``K`` and ``G``; ``||r||^2`` is carried along,
    ``||r - a g||^2 = ||r||^2 - 2 a g.r + a^2 ||g||^2`` with ``g = (K K^T) e_i``."""
    for t in range(rows.shape[0]):
        i = rows[t]
        a = r[i] * inv[i]
        for p in range(Kp[i], Kp[i + 1]):
            z[Ki[p]] -= a * Kd[p]
        gg = 0.0
        gr = 0.0
        for p in range(Gp[i], Gp[i + 1]):
            gg += Gd[p] * Gd[p]
            gr += Gd[p] * r[Gi[p]]
        rr += a * (a * gg - 2.0 * gr)
        for p in range(Gp[i], Gp[i + 1]):
            r[Gi[p]] -= a * Gd[p]
        if rr <= thr2:
            return t + 1, rr
    return rows.shape[0], rr


class SketchSolver:
    """Iterate a sketching method on ``K z = b`` from ``z = 0``; :meth:`run` may be called again to
    continue (the adaptive accuracy loop of AdaSketch-Newton tightens the threshold and resumes).

    Args:
        K: square matrix, dense ``(N, N)`` or ``scipy.sparse``; no zero rows.
        b: right-hand side ``(N,)``.
        kind: one of :data:`SKETCHES` (the keys of :data:`SKETCH_STEPS`).
        rng: NumPy generator (the seed makes the run reproducible).
        deadline: a ``time.perf_counter()`` value after which :meth:`run` stops early (checked after
            every :attr:`chunk` of steps of a compiled loop, after every step otherwise).
        block_size: rows per block for ``"block"``, columns of ``S`` for ``"gaussian"`` (default
            ``ceil(sqrt(N))``); ``1 <= block_size <= N``, else :class:`~data.errors.InputError`.
        precondition: one of :data:`PRECONDITIONERS`: ``"none"``, or ``"ilu"`` (right
            preconditioning by an incomplete LU of ``K``, see the module docstring; ignored by
            ``"exact"``).
        drop_tol: the incomplete LU's first drop tolerance (``"ilu"``; smaller: closer to ``K``, more
            fill); tightened while the factor is poor (:func:`incomplete_lu`; the one used:
            :attr:`drop_tol`, its defect :attr:`ilu_defect`).
    """

    def __init__(
        self,
        K,
        b: np.ndarray,
        kind: str = "kaczmarz",
        rng: np.random.Generator | None = None,
        block_size: int | None = None,
        deadline: float | None = None,
        precondition: str = "none",
        drop_tol: float = 1e-5,
    ):
        if kind not in SKETCHES:
            raise InputError(f"sketch must be one of {SKETCHES}, got {kind!r}")
        if precondition not in PRECONDITIONERS:
            raise InputError(f"precondition must be one of {PRECONDITIONERS}, got {precondition!r}")
        if not 0 < drop_tol < 1:
            raise InputError(f"drop_tol must be in (0, 1), got {drop_tol}")
        self.kind = kind
        self.sparse = sp.issparse(K)
        self.K: Any = K.tocsr() if self.sparse else np.ascontiguousarray(K, dtype=np.float64)
        N = self.K.shape[0]
        if self.K.shape != (N, N) or b.shape != (N,):
            raise InputError(f"K must be square and b match it, got K {self.K.shape}, b {b.shape}")
        self.N, self.b = N, np.asarray(b, dtype=np.float64)
        for name, values in (("K", self.K.data if self.sparse else self.K), ("b", self.b)):
            if not np.all(np.isfinite(values)):
                raise InputError(f"{name} has {int(np.sum(~np.isfinite(values)))} non-finite entries (NaN or inf)")
        self.rng = rng or np.random.default_rng(0)
        self.deadline = deadline
        self.z = np.zeros(N)
        self.r = -self.b.copy()
        self.rr = float(self.r @ self.r)
        self.steps = 0
        self.at_floor = False
        self.b_norm = float(np.linalg.norm(self.b))
        self.K_fro = float(spla.norm(self.K)) if self.sparse else float(np.linalg.norm(self.K))
        if block_size is not None and not 1 <= block_size <= N:
            raise InputError(f"block_size={block_size} must be between 1 and the system's size N = {N}")
        self.block_size = block_size or int(np.ceil(np.sqrt(N)))
        q, blocks = self.block_size, -(-N // self.block_size)
        compiled = not self.sparse and precondition == "none"
        #: steps per call of a compiled loop (Kaczmarz, and the block and Gaussian sketches on a dense
        #: ``K``); one sweep (``ceil(N / q)`` steps, every row once) otherwise. The residual is
        #: recomputed, and the deadline and the floor checked, once per chunk.
        self.chunk = blocks
        if kind == "kaczmarz":
            self.chunk = max(N, CHUNK_STEPS)
        elif compiled and kind == "block":
            self.chunk = blocks * max(1, CHUNK_STEPS // blocks)
        elif compiled and kind == "gaussian":
            self.chunk = max(1, min(CHUNK_STEPS, GAUSSIAN_NUMBERS // (N * q)))
        self.ilu: spla.SuperLU | None = None
        self.drop_tol, self.ilu_defect = drop_tol, float("nan")
        if kind == "exact":
            return
        if precondition == "ilu":
            Kc = sp.csc_matrix(self.K)
            self.ilu, self.drop_tol, self.ilu_defect = incomplete_lu(Kc, drop_tol)
            self.KT = Kc.T.tocsr() if self.sparse else self.K.T
            return
        if self.sparse:
            self.gram = (self.K @ self.K.T).tocsr()
            row_norm2 = np.asarray(self.gram.diagonal()).ravel()
        else:
            self.gram = self.K @ self.K.T
            row_norm2 = np.diag(self.gram).copy()
        if np.any(row_norm2 <= 0):
            raise InputError(f"K has {int(np.sum(row_norm2 <= 0))} zero rows; the system is singular")
        self.inv_row_norm2 = 1.0 / row_norm2
        self.p = row_norm2 / row_norm2.sum()

    @property
    def residual_norm(self) -> float:
        return float(np.sqrt(max(self.rr, 0.0)))

    @property
    def floor(self) -> float:
        """The residual of a solve to working precision: ``eps (||K||_F ||z|| + ||b||)``, a normwise
        backward error of one rounding unit (Rigal & Gaches 1967; Higham, *Accuracy and Stability of
        Numerical Algorithms*, Thm. 7.1), what a backward-stable direct solve delivers. Below it
        the computed residual is rounding noise and more steps cannot lower it."""
        return EPS * (self.K_fro * float(np.linalg.norm(self.z)) + self.b_norm)

    def run(self, threshold: float, max_steps: int) -> bool:
        """Step until ``||K z - b|| <= threshold`` or ``max_steps`` more steps; True when reached.

        A threshold below :attr:`floor` is unreachable in floating point: the run then also stops
        at the floor (checked after every :attr:`chunk` of steps), returns False and sets
        ``at_floor``; ``z`` then solves the system to working precision."""
        if self.residual_norm <= threshold:
            return True
        if self.kind == "exact":  # one direct solve, to working precision
            self._exact(threshold, 1)
            self.at_floor = self.residual_norm <= self.floor
            return self.residual_norm <= threshold
        steps = SKETCH_STEPS[self.kind] if self.ilu is None else SketchSolver._preconditioned
        end = self.steps + max_steps
        while self.steps < end:
            steps(self, max(threshold, self.floor), min(self.chunk, end - self.steps))
            if self.residual_norm <= threshold or self._late():
                break
            if self.residual_norm <= self.floor:
                self.at_floor = True
                break
        return self.residual_norm <= threshold

    def _late(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def _exact(self, threshold: float, max_steps: int) -> None:  # one direct solve: needs neither
        if self.sparse:
            self.z = spla.splu(self.K.tocsc()).solve(self.b)
        else:
            self.z = sla.lu_solve(sla.lu_factor(self.K, check_finite=False), self.b)
        self.r = self.K @ self.z - self.b
        self.rr = float(self.r @ self.r)
        self.steps += 1

    def _resync(self) -> None:
        self.r[:] = self.K @ self.z - self.b
        self.rr = float(self.r @ self.r)

    def _kaczmarz(self, threshold: float, max_steps: int) -> None:
        """Randomized Kaczmarz steps in a compiled loop (:func:`_kaczmarz_dense`,
        :func:`_kaczmarz_csr`) over rows drawn here, a chunk at a time, with the run's generator."""
        thr2, done = threshold * threshold, 0
        while done < max_steps:
            rows = self.rng.choice(self.N, size=min(max_steps - done, self.chunk), p=self.p)
            if self.sparse:
                K, G = self.K, self.gram
                took, self.rr = _kaczmarz_csr(
                    K.indptr, K.indices, K.data, G.indptr, G.indices, G.data,
                    self.inv_row_norm2, rows, self.z, self.r, self.rr, thr2,
                )  # fmt: skip
            else:
                took, self.rr = _kaczmarz_dense(self.K, self.gram, self.inv_row_norm2, rows, self.z, self.r, thr2)
            done += took
            self._resync()  # once per chunk: exact residual, no drift
            if self.rr <= thr2 or self._late():
                break
        self.steps += done

    def _block(self, threshold: float, max_steps: int) -> None:
        """Block steps: on a dense ``K`` in the compiled loop (:func:`_block_dense`) over a random
        partition of the rows per sweep drawn here; on a sparse ``K`` step by step."""
        thr2, done = threshold * threshold, 0
        if not self.sparse:
            q = self.block_size
            blocks_per_sweep = -(-self.N // q)
            sweeps = -(-max_steps // blocks_per_sweep)
            orders = np.zeros((sweeps, blocks_per_sweep * q), dtype=np.int64)  # a partition per sweep
            orders[:, : self.N] = np.stack([self.rng.permutation(self.N) for _ in range(sweeps)])
            blocks = orders.reshape(sweeps * blocks_per_sweep, q)
            sizes = np.tile([q] * (blocks_per_sweep - 1) + [self.N - (blocks_per_sweep - 1) * q], sweeps)
            took, self.rr = _block_dense(self.K, self.gram, blocks[:max_steps], sizes[:max_steps], self.z, self.r, thr2)
            self.steps += took
            self._resync()
            return
        while done < max_steps:
            order = self.rng.permutation(self.N)
            for start in range(0, self.N, self.block_size):
                S = order[start : start + self.block_size]
                if self.sparse:
                    GS = self.gram[:, S].toarray()
                    KS = self.K[S]
                else:
                    GS = self.gram[:, S]
                    KS = self.K[S]
                y = np.linalg.lstsq(GS[S], self.r[S], rcond=None)[0]
                self.z -= KS.T @ y
                self.r -= GS @ y
                self.steps += 1
                done += 1
                self.rr = float(self.r @ self.r)
                if self.rr <= thr2 or done >= max_steps or self._late():
                    break
            self._resync()
            if self.rr <= thr2 or self._late():
                break

    def _gaussian(self, threshold: float, max_steps: int) -> None:
        """Gaussian steps: on a dense ``K`` in the compiled loop (:func:`_gaussian_dense`) with the
        sketches drawn here; on a sparse ``K`` step by step."""
        thr2, q = threshold * threshold, self.block_size
        if not self.sparse:
            sketches = self.rng.standard_normal((max_steps, self.N, q))
            took, self.rr = _gaussian_dense(self.K, self.gram, sketches, self.z, self.r, thr2)
            self.steps += took
            self._resync()
            return
        for done in range(1, max_steps + 1):
            S = self.rng.standard_normal((self.N, q))
            GS = np.asarray(self.gram @ S)  # (N, q): K K^T S
            y = np.linalg.lstsq(S.T @ GS, S.T @ self.r, rcond=None)[0]
            self.z -= self.K.T @ (S @ y)
            self.r -= GS @ y
            self.steps += 1
            self.rr = float(self.r @ self.r)
            if self.rr <= thr2 or done == max_steps or self._late():
                break
            if done % self.N == 0:
                self._resync()
        self._resync()

    def _preconditioned(self, threshold: float, max_steps: int) -> None:
        """Sketch-and-project on ``X w = b``, ``X = K M^-1``, ``z = M^-1 w`` (never forming ``X``):
        ``S^T X = (M^-T K^T S)^T``; the step ``w -= X^T S y`` moves ``z`` by ``M^-1 X^T S y`` and
        ``r`` by ``K`` times that. Kaczmarz: one uniformly drawn row; block: a random partition of
        the rows each sweep; Gaussian: ``S`` standard normal ``(N, q)``."""
        assert self.ilu is not None
        thr2, q, ilu = threshold * threshold, self.block_size, self.ilu
        q = 1 if self.kind == "kaczmarz" else q
        done, order, pos = 0, self.rng.permutation(self.N), 0
        while done < max_steps:
            if self.kind == "gaussian":
                S = self.rng.standard_normal((self.N, q))
                KtS, rS = self.KT @ S, S.T @ self.r
            else:
                if self.kind == "kaczmarz":
                    rows = self.rng.integers(self.N, size=1)
                else:
                    if pos >= self.N:
                        order, pos = self.rng.permutation(self.N), 0
                    rows, pos = order[pos : pos + q], pos + q
                cols: Any = self.KT[:, rows]
                KtS = cols.toarray() if sp.issparse(cols) else cols
                rS = self.r[rows]
            XtS = ilu.solve(np.asarray(KtS)).reshape(self.N, -1)  # (X^T S) = M^-T K^T S: (N, q)
            y = np.linalg.lstsq(XtS.T @ XtS, rS, rcond=None)[0]
            e = ilu.solve(XtS @ y, trans="T")  # M^-1 X^T S y
            self.z -= e
            self.r -= self.K @ e
            self.rr = float(self.r @ self.r)
            self.steps += 1
            done += 1
            if self.rr <= thr2 or self._late():
                break
        self._resync()  # run() calls this one sweep at a time: the residual is recomputed once a sweep


def incomplete_lu(K: sp.csc_matrix, drop_tol: float = 1e-5) -> tuple[spla.SuperLU, float, float]:
    """The preconditioner ``M`` of ``K`` as SuperLU's ILUTP ``F`` of ``K^T`` (``M^-T x = F.solve(x)``,
    ``M^-1 x = F.solve(x, trans="T")``: a step's ``q`` right-hand sides take the untransposed solve,
    about half the time of SuperLU's transposed one), at ``drop_tol``, tightened tenfold until the
    preconditioned system is close to the identity: ``||K M^-1 v - v|| / ||v|| <= ILU_MAX_DEFECT``
    for a fixed random ``v`` (a typical direction, not the worst), down to ``ILU_MIN_DROP_TOL``.
    Returns ``(F, drop_tol used, defect)``. The fill is not capped (``fill_factor``
    :data:`ILU_FILL_BOUND`): SuperLU keeps to its cap by dropping more, and at a cap of 20 the
    n = 64 Darcy KKT factor came out useless (defect 4e15) where the uncapped one has 0.1 at the
    same tolerance.

    Raises:
        InputError: no tolerance gives a non-singular factor (``K`` is singular)."""
    v = np.random.default_rng(0).standard_normal(K.shape[0])  # its own generator: the run's stays untouched
    best, err, KT = None, None, sp.csc_matrix(K.T)
    # drop_tol itself first (even below the floor), then tenfold steps down to the floor
    tols = [drop_tol] + [drop_tol / 10**k for k in range(1, 40) if drop_tol / 10**k >= ILU_MIN_DROP_TOL * 0.999]
    for tol in tols:
        try:
            ilu = spla.spilu(KT, drop_tol=tol, fill_factor=ILU_FILL_BOUND)
        except RuntimeError as e:  # an exactly singular factor at this tolerance
            err = e
            continue
        w = K @ ilu.solve(v, trans="T") - v
        defect = float(np.linalg.norm(w) / np.linalg.norm(v)) if np.all(np.isfinite(w)) else np.inf
        if best is None or defect < best[2]:
            best = (ilu, tol, defect)
        if defect <= ILU_MAX_DEFECT:
            break
    if best is None or not np.isfinite(best[2]):
        raise InputError(f"the incomplete LU of K failed down to drop_tol={tols[-1]:g}: {err or 'non-finite solve'}")
    return best


#: sketch name -> its steps ``(solver, threshold, max_steps)``; the one list of sketches
SKETCH_STEPS: dict[str, Callable[[SketchSolver, float, int], None]] = {
    "kaczmarz": SketchSolver._kaczmarz,
    "block": SketchSolver._block,
    "gaussian": SketchSolver._gaussian,
    "exact": SketchSolver._exact,
}
SKETCHES = tuple(SKETCH_STEPS)
#: preconditioners of the sketched system (right preconditioning; see the module docstring)
PRECONDITIONERS = ("none", "ilu")
