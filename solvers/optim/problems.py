"""Equality-constrained test problems with published optima.

Every problem here is ``min f(x)  s.t.  c(x) = 0`` with no bounds and no inequalities, written
with torch ops so autograd gives gradients, Jacobians and Hessians of ``f`` and ``c``.

Sources
-------
- W. Hock, K. Schittkowski, *Test Examples for Nonlinear Programming Codes*, Lecture Notes in
  Economics and Mathematical Systems 187, Springer, 1981 ("HS"): problems 6, 7, 8, 9, 26, 27,
  28, 39, 40, 42, 46, 47, 48, 49, 50, 51, 52, 56, 61, 77, 78, 79 (every HS problem whose only
  constraints are equalities). Definitions and start points were checked against the CUTEst SIF
  files (``HS*.SIF``). Where the book prints a rounded optimum, ``x_star``/``f_star`` carry the
  16-digit values of S.K.H. Seidl, *Revised Hock & Schittkowski models for automatable test
  scenarios* (stfmc.de/fmc/rhs), or the exact closed form where one exists.
- P.T. Boggs, J.W. Tolle, "A strategy for global convergence in a sequential quadratic
  programming algorithm", SIAM J. Numer. Anal. 26(3), 600-623, 1989 ("BT"), in the form of the
  CUTEst SIF files ``BT1.SIF`` .. ``BT12.SIF`` (Ph. Toint, 1993), which fix typos of the paper
  (see the per-problem notes). ``f_star`` is the SIF ``SOLTN`` value, except BT3 and BT7, where
  that value is off in the sixth digit and the exact optimum is used (see their notes). BT13 is
  left out: CUTEst adds the bound ``x5 >= 0`` to make it bounded below.

The problems use 0-based indexing in code (``x[0]`` is the papers' ``x1``).

    get("hs006").f(torch.tensor(get("hs006").x0, dtype=torch.float64))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from data.errors import InputError

__all__ = ["PROBLEMS", "EqProblem", "get", "hs_set"]

Tensor = torch.Tensor
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class EqProblem:
    """One test problem ``min f(x) s.t. c(x) = 0``, x in R^n, c in R^m."""

    name: str
    n: int
    m: int
    f: Callable[[Tensor], Tensor]  # (n,) float64 -> 0-dim tensor
    c: Callable[[Tensor], Tensor]  # (n,) float64 -> (m,) tensor
    x0: tuple[float, ...]
    f_star: float
    x_star: tuple[float, ...] | None
    source: str


PROBLEMS: dict[str, EqProblem] = {}


def _add(name: str, n: int, m: int, f, c, x0, f_star, x_star, source: str) -> None:
    x0 = tuple(float(v) for v in x0)
    x_star = None if x_star is None else tuple(float(v) for v in x_star)
    assert len(x0) == n and (x_star is None or len(x_star) == n), name
    PROBLEMS[name] = EqProblem(name, n, m, f, c, x0, float(f_star), x_star, source)


def _hs(k: int) -> str:
    return f"Hock & Schittkowski (1981), problem {k}"


def _bt(k: int) -> str:
    return f"Boggs & Tolle (1989), problem {k}; CUTEst BT{k}.SIF"


def _c(*terms: Tensor) -> Tensor:
    return torch.stack(terms)


# --------------------------------------------------------------------------- Hock & Schittkowski

_add(
    "hs006",
    2,
    1,
    lambda x: (1 - x[0]) ** 2,
    lambda x: _c(10 * (x[1] - x[0] ** 2)),
    (-1.2, 1.0),
    0.0,
    (1.0, 1.0),
    _hs(6),
)

_add(
    "hs007",
    2,
    1,
    lambda x: torch.log(1 + x[0] ** 2) - x[1],
    lambda x: _c((1 + x[0] ** 2) ** 2 + x[1] ** 2 - 4),
    (2.0, 2.0),
    -math.sqrt(3.0),
    (0.0, math.sqrt(3.0)),
    _hs(7),
)

# f is constant: every feasible point (four of them) is optimal; x* is the one HS prints.
_add(
    "hs008",
    2,
    2,
    lambda x: 0.0 * x.sum() - 1.0,
    lambda x: _c(x[0] ** 2 + x[1] ** 2 - 25, x[0] * x[1] - 9),
    (2.0, 1.0),
    -1.0,
    (math.sqrt((25 + math.sqrt(301)) / 2), math.sqrt((25 - math.sqrt(301)) / 2)),
    _hs(8),
)

# Minima at x = (12k - 3, 16k - 4), k integer; x* is the one nearest x0.
_add(
    "hs009",
    2,
    1,
    lambda x: torch.sin(math.pi * x[0] / 12) * torch.cos(math.pi * x[1] / 16),
    lambda x: _c(4 * x[0] - 3 * x[1]),
    (0.0, 0.0),
    -0.5,
    (-3.0, -4.0),
    _hs(9),
)

_add(
    "hs026",
    3,
    1,
    lambda x: (x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 4,
    lambda x: _c((1 + x[1] ** 2) * x[0] + x[2] ** 4 - 3),
    (-2.6, 2.0, 2.0),
    0.0,
    (1.0, 1.0, 1.0),
    _hs(26),
)

_add(
    "hs027",
    3,
    1,
    lambda x: 0.01 * (x[0] - 1) ** 2 + (x[1] - x[0] ** 2) ** 2,
    lambda x: _c(x[0] + x[2] ** 2 + 1),
    (2.0, 2.0, 2.0),
    0.04,
    (-1.0, 1.0, 0.0),
    _hs(27),
)

_add(
    "hs028",
    3,
    1,
    lambda x: (x[0] + x[1]) ** 2 + (x[1] + x[2]) ** 2,
    lambda x: _c(x[0] + 2 * x[1] + 3 * x[2] - 1),
    (-4.0, 1.0, 1.0),
    0.0,
    (0.5, -0.5, 0.5),
    _hs(28),
)

_add(
    "hs039",
    4,
    2,
    lambda x: -x[0],
    lambda x: _c(x[1] - x[0] ** 3 - x[2] ** 2, x[0] ** 2 - x[1] - x[3] ** 2),
    (2.0, 2.0, 2.0, 2.0),
    -1.0,
    (1.0, 1.0, 0.0, 0.0),
    _hs(39),
)

_add(
    "hs040",
    4,
    3,
    lambda x: -x[0] * x[1] * x[2] * x[3],
    lambda x: _c(x[0] ** 3 + x[1] ** 2 - 1, x[0] ** 2 * x[3] - x[2], x[3] ** 2 - x[1]),
    (0.8, 0.8, 0.8, 0.8),
    -0.25,
    (2 ** (-1 / 3), 2 ** (-1 / 2), 2 ** (-11 / 12), 2 ** (-1 / 4)),
    _hs(40),
)

_add(
    "hs042",
    4,
    2,
    lambda x: (x[0] - 1) ** 2 + (x[1] - 2) ** 2 + (x[2] - 3) ** 2 + (x[3] - 4) ** 2,
    lambda x: _c(x[0] - 2, x[2] ** 2 + x[3] ** 2 - 2),
    (1.0, 1.0, 1.0, 1.0),
    28 - 10 * _SQRT2,
    (2.0, 2.0, 0.6 * _SQRT2, 0.8 * _SQRT2),
    _hs(42),
)

_add(
    "hs046",
    5,
    2,
    lambda x: (x[0] - x[1]) ** 2 + (x[2] - 1) ** 2 + (x[3] - 1) ** 4 + (x[4] - 1) ** 6,
    lambda x: _c(
        x[0] ** 2 * x[3] + torch.sin(x[3] - x[4]) - 1,
        x[1] + x[2] ** 4 * x[3] ** 2 - 2,
    ),
    (_SQRT2 / 2, 1.75, 0.5, 2.0, 2.0),
    0.0,
    (1.0,) * 5,
    _hs(46),
)

# HS (1981) prints x* = (1, 1, 1, 1, 1), f* = 0, a local minimum; the cubic term makes lower
# feasible points exist (Seidl's revision finds f = -0.0267142 with x5 > 1.2), but the local
# minimum reached from x0 is the published one.
_add(
    "hs047",
    5,
    3,
    lambda x: (x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 3 + (x[2] - x[3]) ** 4 + (x[3] - x[4]) ** 4,
    lambda x: _c(
        x[0] + x[1] ** 2 + x[2] ** 3 - 3,
        x[1] - x[2] ** 2 + x[3] - 1,
        x[0] * x[4] - 1,
    ),
    (2.0, _SQRT2, -1.0, 2 - _SQRT2, 0.5),
    0.0,
    (1.0,) * 5,
    _hs(47),
)

_add(
    "hs048",
    5,
    2,
    lambda x: (x[0] - 1) ** 2 + (x[1] - x[2]) ** 2 + (x[3] - x[4]) ** 2,
    lambda x: _c(x.sum() - 5, x[2] - 2 * (x[3] + x[4]) + 3),
    (3.0, 5.0, -3.0, 2.0, -2.0),
    0.0,
    (1.0,) * 5,
    _hs(48),
)

_add(
    "hs049",
    5,
    2,
    lambda x: (x[0] - x[1]) ** 2 + (x[2] - 1) ** 2 + (x[3] - 1) ** 4 + (x[4] - 1) ** 6,
    lambda x: _c(x[0] + x[1] + x[2] + 4 * x[3] - 7, x[2] + 5 * x[4] - 6),
    (10.0, 7.0, 2.0, -3.0, 0.8),
    0.0,
    (1.0,) * 5,
    _hs(49),
)

_add(
    "hs050",
    5,
    3,
    lambda x: (x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 2 + (x[2] - x[3]) ** 4 + (x[3] - x[4]) ** 2,
    lambda x: _c(*(x[i] + 2 * x[i + 1] + 3 * x[i + 2] - 6 for i in range(3))),
    (35.0, -31.0, 11.0, 5.0, -5.0),
    0.0,
    (1.0,) * 5,
    _hs(50),
)

_add(
    "hs051",
    5,
    3,
    lambda x: (x[0] - x[1]) ** 2 + (x[1] + x[2] - 2) ** 2 + (x[3] - 1) ** 2 + (x[4] - 1) ** 2,
    lambda x: _c(x[0] + 3 * x[1] - 4, x[2] + x[3] - 2 * x[4], x[1] - x[4]),
    (2.5, 0.5, 2.0, -1.0, 0.5),
    0.0,
    (1.0,) * 5,
    _hs(51),
)

# A convex QP; the exact optimum is rational (HS prints f* = 5.326647564).
_add(
    "hs052",
    5,
    3,
    lambda x: (4 * x[0] - x[1]) ** 2 + (x[1] + x[2] - 2) ** 2 + (x[3] - 1) ** 2 + (x[4] - 1) ** 2,
    lambda x: _c(x[0] + 3 * x[1], x[2] + x[3] - 2 * x[4], x[1] - x[4]),
    (2.0,) * 5,
    1859 / 349,
    (-33 / 349, 11 / 349, 180 / 349, -158 / 349, 11 / 349),
    _hs(52),
)

# HS misprints the start angles with a wrong leading decimal point (noted in CUTEst HS56.SIF);
# x0[3:] = asin(sqrt(1/4.2)) (three times) and asin(sqrt(5/7.2)).
_add(
    "hs056",
    7,
    4,
    lambda x: -x[0] * x[1] * x[2],
    lambda x: _c(
        x[0] - 4.2 * torch.sin(x[3]) ** 2,
        x[1] - 4.2 * torch.sin(x[4]) ** 2,
        x[2] - 4.2 * torch.sin(x[5]) ** 2,
        x[0] + 2 * x[1] + 2 * x[2] - 7.2 * torch.sin(x[6]) ** 2,
    ),
    (1.0, 1.0, 1.0) + (math.asin(math.sqrt(1 / 4.2)),) * 3 + (math.asin(math.sqrt(5 / 7.2)),),
    -3.456,
    (2.4, 1.2, 1.2, math.asin(math.sqrt(4 / 7)), math.asin(math.sqrt(2 / 7)), math.asin(math.sqrt(2 / 7)), math.pi / 2),
    _hs(56),
)

_add(
    "hs061",
    3,
    2,
    lambda x: 4 * x[0] ** 2 + 2 * x[1] ** 2 + 2 * x[2] ** 2 - 33 * x[0] + 16 * x[1] - 24 * x[2],
    lambda x: _c(3 * x[0] - 2 * x[1] ** 2 - 7, 4 * x[0] - x[2] ** 2 - 11),
    (0.0, 0.0, 0.0),
    -143.6461421977803,
    (5.326770135563928, -2.118998632218976, 3.210464225350551),
    _hs(61),
)

_add(
    "hs077",
    5,
    2,
    lambda x: (x[0] - 1) ** 2 + (x[0] - x[1]) ** 2 + (x[2] - 1) ** 2 + (x[3] - 1) ** 4 + (x[4] - 1) ** 6,
    lambda x: _c(
        x[0] ** 2 * x[3] + torch.sin(x[3] - x[4]) - 2 * _SQRT2,
        x[1] + x[2] ** 4 * x[3] ** 2 - 8 - _SQRT2,
    ),
    (2.0,) * 5,
    0.2415051287901787,
    (1.166172189709298, 1.182111388802704, 1.38025704314546, 1.506036273623046, 0.6109201960430908),
    _hs(77),
)

_add(
    "hs078",
    5,
    3,
    lambda x: x[0] * x[1] * x[2] * x[3] * x[4],
    lambda x: _c(
        (x**2).sum() - 10,
        x[1] * x[2] - 5 * x[3] * x[4],
        x[0] ** 3 + x[1] ** 3 + 1,
    ),
    (-2.0, 1.5, 2.0, -1.0, -1.0),
    -2.919700408963679,
    (-1.717143570394382, 1.595709690183554, 1.827245752927195, -0.7636430781841304, -0.7636430781841304),
    _hs(78),
)

_add(
    "hs079",
    5,
    3,
    lambda x: (x[0] - 1) ** 2 + (x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 2 + (x[2] - x[3]) ** 4 + (x[3] - x[4]) ** 4,
    lambda x: _c(
        x[0] + x[1] ** 2 + x[2] ** 3 - 2 - 3 * _SQRT2,
        x[1] - x[2] ** 2 + x[3] + 2 - 2 * _SQRT2,
        x[0] * x[4] - 2,
    ),
    (2.0,) * 5,
    0.0787768208710569,
    (1.191127456311051, 1.362603164961742, 1.472817931512088, 1.635016619167993, 1.679081436166408),
    _hs(79),
)

# ----------------------------------------------------------------------------------- Boggs & Tolle

_add(
    "bt1",
    2,
    1,
    lambda x: 100 * x[0] ** 2 + 100 * x[1] ** 2 - x[0] - 100,
    lambda x: _c(x[0] ** 2 + x[1] ** 2 - 1),
    (0.08, 0.06),
    -1.0,
    (1.0, 0.0),
    _bt(1),
)

# HS60 without its bounds (-10 <= x <= 10, inactive at x*), from another start.
_add(
    "bt2",
    3,
    1,
    lambda x: (x[0] - 1) ** 2 + (x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 4,
    lambda x: _c(x[0] * (1 + x[1] ** 2) + x[2] ** 4 - 8.2426407),
    (10.0, 10.0, 10.0),
    0.032568200,
    (1.104859019733317, 1.196674182288257, 1.535262260325326),
    _bt(2) + "; x* of HS60, whose constant 4 + 3*sqrt(2) the SIF rounds to 8.2426407",
)

# HS53 without its bounds (-10 <= x <= 10, inactive at x*). A convex QP with the exact optimum
# 176/43 = 4.0930233 (the SIF's SOLTN 4.09301056 is off in the sixth digit).
_add(
    "bt3",
    5,
    3,
    lambda x: (x[0] - x[1]) ** 2 + (x[1] + x[2] - 2) ** 2 + (x[3] - 1) ** 2 + (x[4] - 1) ** 2,
    lambda x: _c(x[0] + 3 * x[1], x[2] + x[3] - 2 * x[4], x[1] - x[4]),
    (20.0,) * 5,
    176 / 43,
    (-33 / 43, 11 / 43, 27 / 43, -5 / 43, 11 / 43),
    _bt(3) + "; exact x* of HS53",
)

# CUTEst's variant: the paper's problem is unbounded, so x3 enters the first constraint squared
# instead of cubed. x0 is the solution the paper proposes for the original problem. The SIF lists
# two SOLTN values, 3.28903771 (a local minimum) and -45.510551 (the global one, reached from x0).
_add(
    "bt4",
    3,
    2,
    lambda x: x[0] - x[1] + x[1] ** 3,
    lambda x: _c(x[0] ** 2 + x[1] ** 2 + x[2] ** 2 - 25, x[0] + x[1] + x[2] - 1),
    (4.0382, -2.9470, -0.09115),
    -45.510551,
    None,
    _bt(4),
)

# HS63 without its bounds (x >= 0, inactive at x*). The SIF corrects the sign of x3^2 in the
# paper's first constraint.
_add(
    "bt5",
    3,
    2,
    lambda x: 1000 - x[0] ** 2 - 2 * x[1] ** 2 - x[2] ** 2 - x[0] * x[1] - x[0] * x[2],
    lambda x: _c(x[0] ** 2 + x[1] ** 2 + x[2] ** 2 - 25, 8 * x[0] + 14 * x[1] + 7 * x[2] - 56),
    (2.0, 2.0, 2.0),
    961.71517219,
    (3.51212134187472, 0.2169879415152231, 3.552171154827017),
    _bt(5) + "; x* of HS63",
)

# Like HS77 but with x3^4 * x2^2 (not x3^4 * x4^2) in the second constraint.
_add(
    "bt6",
    5,
    2,
    lambda x: (x[0] - 1) ** 2 + (x[0] - x[1]) ** 2 + (x[2] - 1) ** 2 + (x[3] - 1) ** 4 + (x[4] - 1) ** 6,
    lambda x: _c(
        x[3] * x[0] ** 2 + torch.sin(x[3] - x[4]) - 2 * _SQRT2,
        x[2] ** 4 * x[1] ** 2 + x[1] - 8 - _SQRT2,
    ),
    (2.0,) * 5,
    0.277044924,
    None,
    _bt(6),
)

# The paper's solution (-0.79212, -1.2624, 0, -0.89532, 1.1367), f = 360.38, is a local minimum.
# The SIF's SOLTN 306.49640688 marks a lower one but sits slightly below it: the global minimum is
# exactly 306.5 at x = (0.5, 2, 0, +-3/sqrt(2), 0). (x1 = 0.5 - x5^2 <= 0.5 and x2 >= 1/x1 give
# f >= 100 (1/x1 - x1^2)^2 + (x1 - 1)^2, decreasing on (0, 0.5]; x1 < 0 gives f > 357.)
_add(
    "bt7",
    5,
    3,
    lambda x: 100 * (x[1] - x[0] ** 2) ** 2 + (x[0] - 1) ** 2,
    lambda x: _c(
        x[0] * x[1] - x[2] ** 2 - 1,
        x[1] ** 2 - x[3] ** 2 + x[0],
        x[4] ** 2 + x[0] - 0.5,
    ),
    (-2.0, 1.0, 1.0, 1.0, 1.0),
    306.5,
    None,
    _bt(7),
)

_add(
    "bt8",
    5,
    2,
    lambda x: x[0] ** 2 + x[1] ** 2 + x[2] ** 2,
    lambda x: _c(x[0] - 1 - x[3] ** 2 + x[1] ** 2, x[0] ** 2 + x[1] ** 2 - x[4] ** 2 - 1),
    (1.0, 1.0, 1.0, 0.0, 0.0),
    1.0,
    (1.0, 0.0, 0.0, 0.0, 0.0),
    _bt(8),
)

# The SIF flips the sign of x2 in the paper's second constraint; the result is HS39.
_add(
    "bt9",
    4,
    2,
    PROBLEMS["hs039"].f,
    PROBLEMS["hs039"].c,
    (2.0, 2.0, 2.0, 2.0),
    -1.0,
    (1.0, 1.0, 0.0, 0.0),
    _bt(9),
)

# The SIF flips the sign of x2 in the paper's second constraint.
_add(
    "bt10",
    2,
    2,
    lambda x: -x[0],
    lambda x: _c(x[1] - x[0] ** 3, x[0] ** 2 - x[1]),
    (2.0, 2.0),
    -1.0,
    (1.0, 1.0),
    _bt(10),
)

# Like HS79 but with x1 - x5 = 2 as the third constraint.
_add(
    "bt11",
    5,
    3,
    lambda x: (x[0] - 1) ** 2 + (x[0] - x[1]) ** 2 + (x[1] - x[2]) ** 2 + (x[2] - x[3]) ** 4 + (x[3] - x[4]) ** 4,
    lambda x: _c(
        x[0] + x[1] ** 2 + x[2] ** 3 - (-2 + math.sqrt(18.0)),
        x[1] + x[3] - x[2] ** 2 - (-2 + math.sqrt(8.0)),
        x[0] - x[4] - 2,
    ),
    (2.0,) * 5,
    0.824891647,
    None,
    _bt(11),
)

# x0 is the (infeasible) solution proposed in the paper; it overrides the SIF's default 2.0.
_add(
    "bt12",
    5,
    3,
    lambda x: 0.01 * x[0] ** 2 + x[1] ** 2,
    lambda x: _c(
        x[0] + x[1] - x[2] ** 2 - 25,
        x[0] ** 2 + x[1] ** 2 - x[3] ** 2 - 25,
        x[0] - x[4] ** 2 - 2,
    ),
    (15.811, 1.5811, 0.0, 15.083, 3.7164),
    6.18811881,
    None,
    _bt(12),
)


def get(name: str) -> EqProblem:
    """The problem called ``name`` (e.g. ``"hs006"``, ``"bt1"``)."""
    try:
        return PROBLEMS[name]
    except KeyError:
        raise InputError(f"unknown problem {name!r}; known problems: {', '.join(sorted(PROBLEMS))}") from None


def hs_set() -> list[EqProblem]:
    """All problems (HS and BT), ordered by name."""
    return [PROBLEMS[k] for k in sorted(PROBLEMS)]
