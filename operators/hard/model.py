"""Soft-constraint PINN, single hard constraint (PI-HC) and PI-HC-MoE behind one model class.

The basis network is neuraloperator's FNO on the space-time grid, as in the reference
(``configs/models/fno2d-64-8m-hard-constraint*.yaml``: FNO producing ``N = 16`` basis channels; the
input is the normalized grid coordinates and the initial condition broadcast along time,
``neptune/models/sequential.py::prepare_input``).

* ``mode="soft"``: the FNO outputs ``u`` itself; the PDE, initial and boundary conditions are only
  penalties in the training loss (the PINN-style baseline).
* ``mode="hard"``: the FNO outputs ``N`` basis functions ``phi``; ``u = phi w`` with ``w`` from the
  constraint solve (:mod:`operators.hard.layer`) on points sampled afresh every forward pass.
  ``experts = (1, ..., 1)`` is the single hard constraint (PI-HC); more experts is PI-HC-MoE.
  As in the reference, one network gives the basis for the whole domain and the experts differ in
  their constraint points and coefficients (``SequentialModel`` + ``SpatialTemporalMoE``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from data.errors import InputError

from ..device import (
    assign_experts,
    check_device,
    record,
    run_differentiable,
    run_on_devices,
    same_device,
    visible_devices,
)
from .layer import BACKENDS, LeastSquares, SolveInfo, merge_infos, solve
from .moe import PointsPer, Router
from .pdes import HardPDE

if TYPE_CHECKING:
    BackendChoice = str
else:  # "auto" or a name of the backend registry
    BackendChoice = Literal[("auto", *BACKENDS)]


class HardModelConfig(BaseModel):
    """One model of the benchmark. Shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    mode: Literal["soft", "hard"] = Field(
        default="hard", description="soft: PINN penalties only; hard: constraint layer"
    )
    n_basis: int = Field(
        default=16, ge=1, le=512, description="N, basis functions per expert (reference: 16; 64 for NS)"
    )
    experts: tuple[int, ...] = Field(
        default=(1, 1),
        description="experts per grid axis (time first, then space); "
        "all ones: single hard constraint; e.g. (1, 4): 4 blocks along x",
    )
    assignment: Literal["blocks", "random"] = Field(
        default="blocks", description="blocks (the paper) or random points (ablation)"
    )
    points: int = Field(
        default=1000,
        ge=1,
        le=100_000_000,
        description="constraint (PDE) points drawn per forward pass: per expert or in total (points_per)",
    )
    points_per: PointsPer = Field(
        default="expert",
        description="expert: every expert draws `points` (the paper's accuracy runs, 20k per expert); "
        "total: the experts share `points` (the paper's step-time axis)",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="CPU threads the experts' constraint solves (forward and implicit backward) spread over, "
        "each with the process' torch threads shared out; at most the number of experts",
    )
    backend: BackendChoice = Field(
        default="auto", description="auto: cholesky for linear PDEs, lm (Levenberg-Marquardt) otherwise"
    )
    ridge: float = Field(default=1e-4, ge=0, le=1e3, description="coefficient of w in the residual (reference 1e-4)")
    lm_tol: float = Field(default=1e-4, gt=0, le=1.0, description="LM relative tolerance (reference 1e-4)")
    lm_max_iter: int = Field(default=50, ge=1, le=10_000, description="LM iteration cap (reference 50-100)")
    hidden: int = Field(default=32, ge=1, le=1024, description="FNO width")
    modes: tuple[int, ...] = Field(default=(8, 8), description="Fourier modes per grid axis")
    n_layers: int = Field(default=4, ge=1, le=32, description="FNO layers")
    domain_padding: float = Field(
        default=0.125, ge=0, le=1, description="FNO domain padding fraction (non-periodic grid)"
    )
    loss: Literal["reference", "mse"] = Field(default="reference", description="outer loss weighting (see loss_terms)")

    @property
    def n_experts(self) -> int:
        return math.prod(self.experts)

    def check(self, pde: HardPDE) -> None:
        """Raise :class:`data.errors.InputError` when the config does not fit the PDE's grid."""
        d = len(pde.grid)
        if len(self.modes) != d:
            raise InputError(
                f"modes {self.modes} has {len(self.modes)} entries; the {pde.name} grid {pde.grid} has {d} axes"
            )
        if len(self.experts) != d:
            raise InputError(
                f"experts {self.experts} has {len(self.experts)} entries; the {pde.name} grid "
                f"{pde.grid} has {d} axes (time first)"
            )
        if self.workers > self.n_experts:
            raise InputError(
                f"workers={self.workers} is more than the {self.n_experts} experts of the layout {self.experts}: "
                f"use workers <= {self.n_experts}"
            )
        if self.backend in ("cholesky", "cvxpylayers") and not pde.linear:
            raise InputError(f"backend {self.backend!r} solves linear PDEs only; {pde.name} is nonlinear: use 'lm'")


@dataclass
class HardOutput:
    """``u``: ``(B, *grid)`` float64; ``w``: ``(B, K, N)`` (hard only); ``points``: ``(K, m)`` sampled flat indices."""

    u: Tensor
    w: Tensor | None = None
    points: Tensor | None = None
    info: SolveInfo | None = None
    phi: Tensor | None = field(default=None, repr=False)


class HardConstraintModel(nn.Module):
    """``forward(u0 (B, *space)) -> HardOutput`` with ``u`` on the PDE's ``(nt, *space)`` grid.

    Devices: ``.to(device)`` moves the basis network and the grid coordinates; inputs must be on
    that device (:class:`~operators.device.DeviceMismatchError` otherwise, never a copy per call).
    The experts' constraint solves run on the model's device, or spread over every visible CUDA
    device when there are several (:meth:`spread`, :meth:`expert_devices`)."""

    def __init__(self, cfg: HardModelConfig, pde: HardPDE, seed: int = 0):
        super().__init__()
        from neuralop.models import FNO

        cfg.check(pde)
        self.cfg, self.pde = cfg, pde
        d = len(pde.grid)
        self.net = FNO(
            n_modes=tuple(cfg.modes),
            in_channels=d + 1,
            out_channels=cfg.n_basis if cfg.mode == "hard" else 1,
            hidden_channels=cfg.hidden,
            n_layers=cfg.n_layers,
            positional_embedding=None,
            domain_padding=cfg.domain_padding or None,
        )
        self.coords: Tensor
        self.register_buffer("coords", pde.coords(), persistent=False)
        self.router = (
            Router(pde.grid, cfg.experts, pde.residual_mask(), cfg.assignment, seed) if cfg.mode == "hard" else None
        )
        if self.router is not None:  # refuse now, not at the first forward: more points than a block holds
            self.router.points_per_expert(cfg.points, cfg.points_per)
        self._expert_devices: list[torch.device] | None = None  # None: visible_devices() of the model's device
        self._parallel: bool | None = None

    def spread(
        self, devices: Sequence[torch.device | str] | None = None, parallel: bool | None = None
    ) -> HardConstraintModel:
        """Put expert ``k``'s constraint solves on ``devices[k % len(devices)]``; ``None`` (the default):
        every visible CUDA device when the model is on one and there are several
        (:func:`operators.device.visible_devices`), else the model's device. The basis network stays
        on the model's device; each expert's rows go to its device, are solved there and ``w``
        comes back (differentiably). ``parallel``: solve the devices' shares in one thread each
        (default: when they are distinct CUDA devices; never for ``cvxpylayers``). Returns the model."""
        self._expert_devices = None if devices is None else [torch.device(d) for d in devices]
        self._parallel = parallel
        return self

    def expert_devices(self, device: torch.device | None = None) -> list[torch.device]:
        """The device of each expert's constraint solve (``[]`` for a soft model), for a model on
        ``device`` (default: where its buffers are)."""
        if self.router is None:
            return []
        device = self.coords.device if device is None else torch.device(device)
        return assign_experts(self.router.K, self._expert_devices or visible_devices(device))

    def _solve(self, system: LeastSquares, backend: str, B: int, K: int, **kw) -> tuple[Tensor, SolveInfo]:
        """:func:`~operators.hard.layer.solve` with each expert's systems (rows ``b * K + k``) on its device."""
        device = system.device
        groups: dict[torch.device, list[int]] = {}
        for k, d in enumerate(self.expert_devices(device)):
            groups.setdefault(d, []).append(k)
        if len(groups) == 1 and same_device(next(iter(groups)), device):
            record("hard constraint solves", device)
            if self.cfg.workers > 1 and device.type == "cpu":
                return self._solve_on_workers(system, backend, B, K, **kw)
            return solve(system, backend, **kw)
        rows, calls = [], []
        for d, ks in groups.items():
            r = (torch.arange(B, device=device)[:, None] * K + torch.tensor(ks, device=device)[None]).reshape(-1)
            rows.append(r)
            calls.append((d, functools.partial(solve, system.select(r, d), backend, **kw)))
        parallel = self._parallel
        if parallel is None:
            parallel = len({str(d) for d in groups}) > 1 and all(d.type == "cuda" for d in groups)
        results = run_on_devices(calls, parallel and backend != "cvxpylayers")
        record("hard constraint solves", list(groups))
        w = torch.cat([w_d.to(device) for w_d, _ in results])[torch.argsort(torch.cat(rows))]
        return w, merge_infos([info for _, info in results])

    def _solve_on_workers(self, system: LeastSquares, backend: str, B: int, K: int, **kw) -> tuple[Tensor, SolveInfo]:
        """The experts' solves over ``cfg.workers`` CPU threads (expert ``k`` on worker ``k % workers``,
        :func:`~operators.device.assign_experts`), forward and implicit backward alike
        (:func:`~operators.device.run_differentiable`)."""
        workers: dict[int, list[int]] = {}
        for k, j in enumerate(assign_experts(K, range(self.cfg.workers))):
            workers.setdefault(j, []).append(k)
        infos: list[SolveInfo] = []
        rows, calls = [], []
        for ks in workers.values():
            r = (torch.arange(B)[:, None] * K + torch.tensor(ks)[None]).reshape(-1)
            part = system.select(r)
            data = part.as_function()[1]  # linear: {"A", "b"}

            def call(*ts: Tensor, names=tuple(data), part=part) -> tuple[Tensor]:
                d = dict(zip(names, ts, strict=True))
                sub = (
                    LeastSquares(A=d["A"], b=d["b"])
                    if part.linear
                    else LeastSquares(residual=part.residual, data=d, n=part.n)
                )
                w, info = solve(sub, backend, **kw)
                infos.append(info)
                return (w,)

            rows.append(r)
            calls.append((call, list(data.values())))
        results = run_differentiable(calls)
        w = torch.cat([w_part for (w_part,) in results])[torch.argsort(torch.cat(rows))]
        return w, merge_infos(infos)

    def backbone(self, u0: Tensor) -> Tensor:
        """Network output ``(B, *grid, C)`` (C = N basis functions, or 1 for soft)."""
        self.pde.check_u0(u0)
        check_device(u0, self.coords.device, "u0 (the initial conditions)")
        B = u0.shape[0]
        grid = self.pde.grid
        ic = u0.to(self.coords).unsqueeze(1).expand(B, grid[0], *grid[1:]).unsqueeze(1)
        x = torch.cat([self.coords.unsqueeze(0).expand(B, *self.coords.shape), ic], dim=1)
        return torch.movedim(self.net(x), 1, -1)

    def forward(self, u0: Tensor, generator: torch.Generator | None = None, points: Tensor | None = None) -> HardOutput:
        """``u0``: ``(B, *space)`` initial conditions. ``points``: optional ``(K, m)`` flat grid indices of
        the constraint points (default: ``cfg.points`` drawn at random, afresh each call).

        PDEs with ``ic_ansatz`` (initial fields that vary in space: heat, Navier-Stokes) use the
        reference's mollifier (``sequential.py::basis_mollifier``): ``u = u0 + (t / T) * net``, so the
        initial condition holds exactly for the soft and the hard models alike and the constraint
        rows are the PDE's only (the reference also subtracts the basis' spatial mean, which keeps a
        torus vorticity's zero mean; not done here)."""
        out = self.backbone(u0)
        if self.pde.ic_ansatz:
            out = out * self.coords[0].unsqueeze(-1)  # t / T, zero at the initial time
        if self.cfg.mode == "soft":
            u = out[..., 0].double()
            return HardOutput(u=u + self._offset(u0) if self.pde.ic_ansatz else u)
        return self.constrain(out.double(), u0.double(), generator, points)

    def _offset(self, u0: Tensor) -> Tensor:
        """``u0`` broadcast over the time axis: ``(B, *grid)`` float64."""
        return u0.double().unsqueeze(1).expand(u0.shape[0], *self.pde.grid)

    def constrain(
        self, phi: Tensor, u0: Tensor, generator: torch.Generator | None = None, points: Tensor | None = None
    ) -> HardOutput:
        """The hard-constraint layer on a basis ``phi (B, *grid, N)`` (float64)."""
        cfg, pde, router = self.cfg, self.pde, self.router
        if router is None:
            raise InputError("constrain() needs a hard model (mode='hard'); a soft model has no constraint layer")
        check_device(phi, self.coords.device, "phi (the basis)")
        check_device(u0, self.coords.device, "u0 (the initial conditions)")
        B, N, K = phi.shape[0], phi.shape[-1], router.K
        terms = pde.terms(phi)
        if pde.ic_ansatz:  # u = u0 + phi w: the offset's terms enter every row, no condition rows
            offset = self._offset(u0)
            off_terms = {k: v[..., 0] for k, v in pde.terms(offset.unsqueeze(-1)).items()}
            Krows, c = phi.new_zeros(B, 0, N), phi.new_zeros(B, 0)
        else:
            offset, off_terms = None, {}
            Krows, c = pde.condition_rows(phi, u0)
            rw = pde.row_weights(u0)  # (B, R): the reference's relative initial rows for diffusion-sorption
            Krows, c = Krows * rw[..., None], c * rw
        scale = 1.0 / pde.t_final  # PDE rows in physical units, as the reference
        pts = (
            router.sample(cfg.points, generator, cfg.points_per) if points is None else router.check_points(points)
        ).to(phi.device)
        cmask = router.condition_mask(pde.condition_points(), phi.device) if not pde.ic_ansatz else phi.new_zeros(K, 0)
        m, R = pts.shape[1], Krows.shape[1]
        sel = {k: v[:, pts].reshape(B * K, m, N) for k, v in terms.items()}
        osel = {k: v[:, pts].reshape(B * K, m) for k, v in off_terms.items()}
        Kr = (Krows.unsqueeze(1) * cmask[None, :, :, None]).reshape(B * K, R, N)
        cr = (c.unsqueeze(1) * cmask[None]).reshape(B * K, R)
        backend = cfg.backend if cfg.backend != "auto" else ("cholesky" if pde.linear else "lm")
        if backend in ("cholesky", "cvxpylayers"):
            A_pde = cast(Tensor, sum(scale * coef * sel[k] for k, coef in pde.coefficients().items()))
            b_pde = (
                -cast(Tensor, sum(scale * coef * osel[k] for k, coef in pde.coefficients().items()))
                if osel
                else (torch.zeros_like(A_pde[..., 0]))
            )
            system = LeastSquares(A=torch.cat([A_pde, Kr], 1), b=torch.cat([b_pde, cr], 1))
        else:
            names = list(sel)
            known = {
                k: v.to(phi).unsqueeze(0).expand(B, K, m).reshape(B * K, m) for k, v in pde.point_data(pts).items()
            }
            offs = {f"offset:{k}": v for k, v in osel.items()}

            def residual(w: Tensor, d: Mapping[str, Tensor]) -> Tensor:
                v = {k: d[k] @ w + d[f"offset:{k}"] if f"offset:{k}" in d else d[k] @ w for k in names}
                r_pde = scale * pde.residual({**v, **{k: d[k] for k in known}})
                return torch.cat([r_pde, d["K"] @ w - d["c"]])

            system = LeastSquares(residual=residual, data={**sel, **offs, **known, "K": Kr, "c": cr}, n=N)
        w, info = self._solve(
            system, backend, B, K, ridge=cfg.ridge, w0=pde.w0, tol=cfg.lm_tol, max_iter=cfg.lm_max_iter
        )
        w = w.reshape(B, K, N)
        phi_flat = phi.reshape(B, -1, N)
        u = router.stitch(phi_flat, w).reshape(B, *pde.grid)
        if offset is not None:
            u = u + offset
        return HardOutput(u=u, w=w, points=pts, info=info, phi=phi_flat)


def loss_terms(pde: HardPDE, u: Tensor, u0: Tensor, weighting: str = "reference") -> dict[str, Tensor]:
    """The outer training loss's terms, PDE + initial/boundary with weights 1 (reference
    ``configs/training/ds.yaml``), each a scalar tensor, from the stitched solution ``u (B, *grid)``:

    * ``"reference"`` (``trainers/train_utils.py::gen_compute_loss``, ``losses/pde_loss.py``): the
      2-norm over the grid of the residual in physical units (not squared), averaged over the
      batch; the violations of the conditions as a relative mean square. The reference's right
      boundary term compares with the *true* solution there; ours uses the boundary condition
      itself, so no solution data enters training.
    * ``"mse"``: mean squares of the non-dimensional residual and of the violations.
    """
    r = pde.full_residual(u)
    v = pde.condition_violation(u, u0)
    if weighting == "mse":
        return {"pde": r.pow(2).mean(), "conditions": v.pow(2).mean()}
    if weighting != "reference":
        raise InputError(f"loss weighting must be 'reference' or 'mse', got {weighting!r}")
    _, c = pde.condition_rows(u.unsqueeze(-1)[:1], u0[:1])
    scale = c.pow(2).mean().clamp_min(1e-12)
    return {"pde": (r / pde.t_final).norm(dim=1).mean(), "conditions": v.pow(2).mean() / scale}
