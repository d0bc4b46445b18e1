"""Gaussian random fields, the input distribution of the FNO benchmarks: the one sampler.

Covariance ``C = tau^(2 alpha - 2) (-lap + tau^2 I)^(-alpha)`` (``sigma = tau^(alpha - 1)``), mean
zero, sampled by a Karhunen-Loeve expansion in the eigenbasis of the Laplacian for the boundary
condition ``bc``:

* ``"neumann"`` (homogeneous Neumann on the unit square/cube, the cell-centred grid of
  :mod:`data.pdes.grid`): cosine basis ``cos(pi k x)``, eigenvalues ``pi^2 |k|^2``, evaluated on
  the grid by a DCT-II, as Li et al.'s Darcy data (``GRF.m``). The expansion's coefficients
  (:func:`cosine_coefficients`) can also be truncated to a few modes and evaluated at arbitrary
  points (:func:`cosine_series`), e.g. by each MPI rank on its own cells.
* ``"periodic"`` (the unit torus, nodes ``j / n``): Fourier basis, eigenvalues ``4 pi^2 |k|^2``,
  complex Gaussian coefficients and the real part of an inverse FFT, as ``GaussianRF`` of the
  FNO benchmark's ``ns_2d.py`` (Navier-Stokes initial vorticities).

Deterministic for a given ``numpy.random.Generator``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.fft import idctn

from ..errors import InputError

BoundaryCondition = Literal["neumann", "periodic"]


def cosine_coefficients(
    rng: np.random.Generator, modes: int, dim: int = 2, alpha: float = 2.0, tau: float = 3.0, scale: float = 1.0
) -> np.ndarray:
    """Karhunen-Loeve coefficients of the Neumann field in the cosine basis, shape ``(modes,) * dim``:
    ``scale * tau^(alpha - 1) (pi^2 |k|^2 + tau^2)^(-alpha/2) * xi`` with ``xi`` standard normal
    (drawn from ``rng``), the mean mode ``k = 0`` set to zero."""
    k = np.arange(modes)
    kk = np.meshgrid(*([k] * dim), indexing="ij")
    lam = np.pi**2 * sum(ki.astype(float) ** 2 for ki in kk)
    coef = tau ** (alpha - 1.0) * (lam + tau**2) ** (-alpha / 2.0)
    xi = rng.standard_normal((modes,) * dim)
    c = scale * coef * xi
    c[(0,) * dim] = 0.0  # mean zero
    return c


def cosine_series(c: np.ndarray, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Evaluate the cosine expansion with coefficients ``c`` (from :func:`cosine_coefficients`,
    unscaled) at the tensor grid of ``x`` (shape ``(nx,)``) and, in 2D, ``y`` (``(ny,)``):
    ``sum_k c[k] cos(pi k_y y) cos(pi k_x x)``, shape ``(nx,)`` in 1D and ``(ny, nx)`` in 2D."""
    k = np.arange(c.shape[0])
    if c.ndim == 1 and y is None:
        return c @ np.cos(np.pi * np.outer(k, x))
    if c.ndim == 2 and y is not None:
        return np.cos(np.pi * np.outer(y, k)) @ c @ np.cos(np.pi * np.outer(k, x))
    raise InputError(
        f"c: cosine_series evaluates 1D (x) or 2D (x, y) expansions; got c of shape {c.shape} "
        f"with y {'given' if y is not None else 'missing'}"
    )


def grf(
    rng: np.random.Generator,
    n: int,
    dim: int = 2,
    alpha: float = 2.0,
    tau: float = 3.0,
    bc: BoundaryCondition = "neumann",
) -> np.ndarray:
    """One sample of the field on an ``n``-point grid per dimension, shape ``(n,) * dim``, float64,
    mean zero.

    ``bc="neumann"``: cell centres ``(i + 1/2) / n`` of the unit square/cube, coefficients scaled by
    ``n^(dim/2)`` (``GRF.m`` scales by ``s = n`` in 2D), a DCT-II. ``bc="periodic"``: torus nodes
    ``j / n``, ``GaussianRF(dim, n, alpha, tau)`` of ``ns_2d.py``: the real part of
    ``ifftn(n^dim sqrt(2) sigma (4 pi^2 |k|^2 + tau^2)^(-alpha/2) (xi_1 + i xi_2))``.
    """
    if bc == "neumann":
        return idctn(cosine_coefficients(rng, n, dim, alpha, tau, scale=n ** (dim / 2)), type=2, norm="ortho")
    if bc == "periodic":
        k = np.fft.fftfreq(n, 1.0 / n)
        kk = np.meshgrid(*([k] * dim), indexing="ij")
        sigma = tau ** (alpha - 1.0)
        sqrt_eig = n**dim * np.sqrt(2.0) * sigma * (4 * np.pi**2 * sum(ki**2 for ki in kk) + tau**2) ** (-alpha / 2.0)
        sqrt_eig[(0,) * dim] = 0.0  # mean zero
        xi = rng.standard_normal((n,) * dim + (2,))
        return np.fft.ifftn(sqrt_eig * (xi[..., 0] + 1j * xi[..., 1])).real
    raise InputError(f"bc must be 'neumann' or 'periodic', got {bc!r}")


def threshold(field: np.ndarray, high: float, low: float) -> np.ndarray:
    """Piecewise-constant coefficient: ``high`` where ``field >= 0``, else ``low``."""
    return np.where(field >= 0.0, high, low)


__all__ = ["BoundaryCondition", "cosine_coefficients", "cosine_series", "grf", "threshold"]
