"""Gaussian random fields on the cell grid, the input distribution of the FNO benchmarks.

Covariance ``C = tau^(2 alpha - 2) (-lap + tau^2 I)^(-alpha)`` with homogeneous Neumann
conditions, sampled by a Karhunen-Loeve expansion in the cosine basis (DCT-II grid),
as in Li et al.'s Darcy data (``GRF.m``). Deterministic for a given ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import idctn


def grf(rng: np.random.Generator, n: int, dim: int = 2, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """One sample of the field, shape ``(n,) * dim``, float64, mean zero."""
    k = np.arange(n)
    kk = np.meshgrid(*([k] * dim), indexing="ij")
    lam = np.pi**2 * sum(ki.astype(float) ** 2 for ki in kk)
    coef = tau ** (alpha - 1.0) * (lam + tau**2) ** (-alpha / 2.0)
    xi = rng.standard_normal((n,) * dim)
    c = n ** (dim / 2) * coef * xi  # GRF.m scales by s = n in 2D
    c[(0,) * dim] = 0.0  # mean zero
    return idctn(c, type=2, norm="ortho")


def threshold(field: np.ndarray, high: float, low: float) -> np.ndarray:
    """Piecewise-constant coefficient: ``high`` where ``field >= 0``, else ``low``."""
    return np.where(field >= 0.0, high, low)
