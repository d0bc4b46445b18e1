"""Typed PDE dataset specifications.

One pydantic model per PDE family; :data:`PDESpec` is their union, discriminated by ``family``.
A spec fully determines a dataset: its canonical JSON (sorted keys) is hashed into
:func:`spec_hash`, which names the dataset folder and keys every cache. Bad values fail at
construction with a message naming the field and the allowed range. Optional fields whose
empty value is left out of the canonical JSON (``petsc_fallbacks``) keep the hashes of specs
written before they existed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from .errors import InputError

#: Version of the on-disk layout and of the generators; part of every spec hash, so a change
#: in how samples are produced never reuses stale caches.
GENERATOR_VERSION = 1

PetscOptions = dict[str, str]

#: PDE families whose generator solves with :class:`data.petsc.KSPSolver`, the ones that accept
#: ``petsc_fallbacks``; the others run their KSP inside a PETSc TS (see :class:`_KSPSpec`).
KSP_FAMILIES = ("poisson", "darcy")


def _stringify_petsc_options(v: object, where: str = "") -> object:
    """A PETSc options mapping with names stripped of leading '-' and values as strings (None: a
    flag, ''); other input is returned unchanged for pydantic to refuse with its own message."""
    if isinstance(v, dict):
        out = {}
        for k, val in v.items():
            key = str(k).lstrip("-")
            if not key or any(c.isspace() for c in key):
                raise ValueError(f"invalid PETSc option name {k!r}{where}")
            out[key] = "" if val is None else str(val)
        return out
    return v


class _SpecBase(BaseModel):
    """Fields shared by every family."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN/inf: a clear error

    n_train: int = Field(8, ge=1, le=1_000_000, description="samples in the train split")
    n_test: int = Field(2, ge=0, le=1_000_000, description="samples in the test split (0: none)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="root seed; sample i of a split is seeded by (seed, split, i)")
    petsc_options: PetscOptions = Field(
        default_factory=dict,
        description="PETSc options database entries for the solver, without leading '-', "
        "e.g. {'ksp_type': 'cg', 'pc_type': 'gamg'}; merged over the family defaults",
    )

    #: pairs of fields ``(low, high)`` of a range, checked ``low < high``
    ranges: ClassVar[tuple[tuple[str, str], ...]] = ()

    @field_validator("petsc_options", mode="before")
    @classmethod
    def _stringify_options(cls, v: object) -> object:
        return _stringify_petsc_options(v)

    @model_validator(mode="after")
    def _check_ranges(self) -> Self:
        for low, high in self.ranges:
            lo, hi = getattr(self, low), getattr(self, high)
            if not lo < hi:
                raise ValueError(f"{low} ({lo}) must be below {high} ({hi})")
        return self

    @model_validator(mode="before")
    @classmethod
    def _fallbacks_only_for_ksp_families(cls, data: object) -> object:
        """``petsc_fallbacks`` on a family without it: empty is dropped, anything else refused."""
        if isinstance(data, dict) and "petsc_fallbacks" in data and "petsc_fallbacks" not in cls.model_fields:
            if data["petsc_fallbacks"] in ([], (), None):
                return {k: v for k, v in data.items() if k != "petsc_fallbacks"}
            family = cls.model_fields["family"].default if "family" in cls.model_fields else cls.__name__
            raise ValueError(
                f"petsc_fallbacks: not supported by the {family} family, which solves with a PETSc TS "
                f"(its KSP runs inside the time stepper); fallbacks apply to {', '.join(KSP_FAMILIES)}. "
                "Choose this family's solver with petsc_options"
            )
        return data

    @property
    def splits(self) -> dict[str, int]:
        """Split name -> number of samples (empty splits omitted)."""
        return {name: n for name, n in (("train", self.n_train), ("test", self.n_test)) if n > 0}

    def default_petsc_options(self) -> PetscOptions:
        return {}

    def solver_options(self) -> PetscOptions:
        """Family defaults overridden by :attr:`petsc_options`."""
        return {**self.default_petsc_options(), **self.petsc_options}


def _no_fallbacks(v: list) -> bool:
    return not v


class _KSPSpec(_SpecBase):
    """Families solved by one reused PETSc KSP (:class:`data.petsc.KSPSolver`): they accept
    ``petsc_fallbacks``. An empty list is left out of the canonical JSON, so a spec without
    fallbacks hashes exactly as it did before the field existed."""

    petsc_fallbacks: list[PetscOptions] = Field(
        default_factory=list,
        exclude_if=_no_fallbacks,
        description="PETSc options mappings tried in order when a KSP solve diverges or fails "
        "(a negative KSPConvergedReason such as KSP_DIVERGED_ITS, or a PETSc error): each is merged "
        "over the solver options (family defaults + petsc_options) and the same right-hand side is "
        "solved again; the first that works is kept for the rest of the chunk. E.g. "
        "[{'pc_type': 'lu', 'ksp_type': 'preonly'}] or [{'pc_type': 'gamg'}, {'pc_type': 'lu'}]. "
        "Empty (the default): a divergence fails at once. Part of the spec hash when not empty",
    )

    @field_validator("petsc_fallbacks", mode="before")
    @classmethod
    def _stringify_fallbacks(cls, v: object) -> object:
        if isinstance(v, (list, tuple)):
            out = []
            for i, item in enumerate(v):
                if isinstance(item, dict) and not item:
                    raise ValueError(f"fallback {i} is empty: it would retry the same options")
                out.append(_stringify_petsc_options(item, where=f" in fallback {i}"))
            return out
        return v


class PoissonSpec(_KSPSpec):
    """-lap u = b on the unit square/cube, cell-centred 5-point (2D) / 7-point (3D) stencil.

    One matrix per dataset (fixed grid and obstacle mask); samples are right-hand sides ``b``
    drawn from a smooth Gaussian random field and their PETSc solutions ``x``.
    """

    family: Literal["poisson"] = "poisson"
    n: int = Field(32, ge=3, le=4096, description="cells per dimension")
    dim: Literal[2, 3] = 2
    bc: Literal["dirichlet", "neumann"] = "dirichlet"
    obstacle: Literal["none", "box", "disks"] = Field(
        "none", description="solid cells excluded from the domain (fluid pressure projection)"
    )

    @model_validator(mode="after")
    def _check_size(self) -> PoissonSpec:
        if self.n**self.dim > 64_000_000:
            raise ValueError(f"n={self.n} in {self.dim}D gives {self.n**self.dim} unknowns; the limit is 64e6")
        return self

    def default_petsc_options(self) -> PetscOptions:
        return {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": "1e-10", "ksp_norm_type": "unpreconditioned"}


class DarcySpec(_KSPSpec):
    """-div(a grad u) = f on the unit square, u = 0 on the boundary (the FNO Darcy benchmark).

    ``a`` is piecewise constant: ``a_high`` where a Gaussian random field with covariance
    ``tau^(2 alpha - 2) (-lap + tau^2)^(-alpha)`` is >= 0, ``a_low`` elsewhere.
    """

    family: Literal["darcy"] = "darcy"
    n: int = Field(64, ge=4, le=4096, description="cells per dimension (resolution)")
    f: float = Field(1.0, description="constant forcing")
    a_high: float = Field(12.0, gt=0, description="coefficient where the field is >= 0")
    a_low: float = Field(3.0, gt=0, description="coefficient where the field is < 0")
    alpha: float = Field(2.0, gt=1.0, le=10.0, description="GRF smoothness exponent")
    tau: float = Field(3.0, gt=0, le=100.0, description="GRF inverse length scale")

    def default_petsc_options(self) -> PetscOptions:
        return {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": "1e-10", "ksp_norm_type": "unpreconditioned"}


class HeatSpec(_SpecBase):
    """u_t = kappa lap u on the unit interval/square, u = 0 on the boundary, implicit PETSc TS.

    Initial conditions from a smooth Gaussian random field; trajectories stored at
    ``n_times + 1`` equally spaced times in [0, t_final].
    """

    family: Literal["heat"] = "heat"
    n: int = Field(64, ge=4, le=4096, description="cells per dimension")
    dim: Literal[1, 2] = 1
    kappa: float = Field(0.01, gt=0, le=1e3, description="diffusivity")
    t_final: float = Field(1.0, gt=0, le=1e6, description="final time")
    n_times: int = Field(10, ge=1, le=10_000, description="output intervals")
    steps_per_output: int = Field(4, ge=1, le=10_000, description="TS steps between outputs")

    def default_petsc_options(self) -> PetscOptions:
        return {"ts_type": "cn", "ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": "1e-12"}


class LotkaVolterraSpec(_SpecBase):
    """Lotka-Volterra predator-prey trajectories (an ODE system) integrated by PETSc TS."""

    family: Literal["lotka_volterra"] = "lotka_volterra"
    alpha: float = Field(1.5, gt=0, le=100)
    beta: float = Field(1.0, gt=0, le=100)
    gamma: float = Field(3.0, gt=0, le=100)
    delta: float = Field(1.0, gt=0, le=100)
    y0_low: float = Field(0.5, gt=0, description="initial populations are uniform in [y0_low, y0_high]^2")
    y0_high: float = Field(2.5, gt=0)
    t_final: float = Field(2.0, gt=0, le=1e4)
    n_times: int = Field(20, ge=1, le=100_000)
    ranges = (("y0_low", "y0_high"),)

    def default_petsc_options(self) -> PetscOptions:
        return {"ts_type": "rk", "ts_rk_type": "5dp", "ts_adapt_type": "basic", "ts_rtol": "1e-10", "ts_atol": "1e-10"}


class NavierStokesSpec(_SpecBase):
    """2D incompressible Navier-Stokes in vorticity form on the periodic unit torus (the FNO
    benchmark, Li et al. 2021, ``ns_2d.py``)::

        w_t + u . grad w = viscosity lap w + f,   u = (psi_y, -psi_x),   -lap psi = w,
        f = forcing (sin 2 pi (x + y) + cos 2 pi (x + y))

    Pseudo-spectral in space (2/3 dealiasing), explicit PETSc TS in time. The initial vorticity
    (t = 0) is the FNO benchmark's periodic Gaussian random field (``alpha``, ``tau``). Samples
    store ``w`` at ``t0 + horizon * k / n_times``, k = 0..n_times: input ``w(t0)``, target
    ``w(t0 + horizon)``. ``t0 = 0`` gives the FNO generator's own pairs (GRF -> w(T)); a
    larger ``t0`` (e.g. 10) lets the forced flow spin up first, at the cost of integrating to it.
    """

    family: Literal["navier_stokes"] = "navier_stokes"
    n: int = Field(64, ge=8, le=4096, description="grid points per dimension (even; nodes x_j = j / n)")
    viscosity: float = Field(1e-3, gt=0, le=10.0, description="kinematic viscosity nu (1e-4, 1e-5: harder)")
    t0: float = Field(0.0, ge=0, le=1e4, description="time of the input state w(t0); the GRF is drawn at t = 0")
    horizon: float = Field(1.0, gt=0, le=1e4, description="T: the target is w(t0 + T)")
    n_times: int = Field(1, ge=1, le=10_000, description="output intervals in [t0, t0 + T] (1: input and target only)")
    dt: float = Field(1e-3, gt=0, le=1.0, description="initial TS step (the step itself when ts_adapt_type is none)")
    forcing: float = Field(0.1, ge=0, le=1e3, description="amplitude A of f (0: unforced)")
    alpha: float = Field(2.5, gt=1.0, le=10.0, description="GRF smoothness exponent")
    tau: float = Field(7.0, gt=0, le=100.0, description="GRF inverse length scale")

    @field_validator("n")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"n must be even (FFT grid with a Nyquist mode), got {v}")
        return v

    def default_petsc_options(self) -> PetscOptions:
        return {"ts_type": "rk", "ts_rk_type": "5dp", "ts_adapt_type": "basic", "ts_rtol": "1e-6", "ts_atol": "1e-6"}


class DiffusionSorptionSpec(_SpecBase):
    """1D diffusion-sorption (PDEBench, Takamoto et al. 2022; the PI-HC-MoE benchmark of
    Chalapathi et al., ICLR 2024): a contaminant diffusing through soil with Freundlich sorption::

        u_t = D / R(u) u_xx,   R(u) = 1 + ((1 - phi) / phi) rho_s k n_f u^(n_f - 1),   x in [0, 1]
        u(0, t) = 1,   u(1, t) = -D u_x(1, t)   (Cauchy outflow: the flux -D u_x leaving at x = 1 is u)

    The right condition is the one PDEBench's generator (``sim_diff_sorp.py``) imposes: its paper
    prints ``u(1, t) = D u_x(1, t)``, which would make the steady state ``1 - x/(1 - D)`` negative at
    x = 1; the generator's ghost value is ``-D u_x``, giving the steady state ``1 - x/(1 + D)`` in
    [0, 1]. The initial condition is PDEBench's: one level ``c ~ U(ic_low, ic_high)`` per sample,
    the same in every cell (``u0 = ones(n) * uniform(0, 0.2)``). Since ``n_f - 1 < 0`` the power is
    singular at u = 0; like PDEBench (``(c + 1e-6)^(n_f - 1)``) it is evaluated at
    ``max(u, 0) + u_floor``.

    Cell-centred finite volumes (n cells, centres ``(i + 1/2)/n``), ghost-cell boundary conditions,
    second order in space; stored at ``n_times + 1`` equally spaced times in [0, t_final].

    Time: PETSc TS ``arkimex`` type ``4`` made fully implicit (ARK4(3)6L: an L-stable, stiffly
    accurate ESDIRK of order 4 with an embedded order-3 error estimate), adaptive steps at
    ``ts_rtol = ts_atol = 1e-8`` (absolute error ~1e-7 against a 1e-11 reference at n = 128 to
    1024, far below the spatial error, ~3e-5 at n = 128, t = 500), Newton with the analytic
    tridiagonal Jacobian and a direct (LU) solve; a failed Newton solve shrinks the step instead of
    aborting (``ts_max_snes_failures -1``, a safeguard near the kink of ``max(u, 0)``: type 5 from
    u0 = 0 at n = 256 needs it). The problem is
    stiff (largest eigenvalue ~ 4 D / (R h^2): ~10 at n = 128, ~700 at PDEBench's n = 1024, against
    t_final = 500) and starts with a boundary layer (u0 < 1 next to the Dirichlet face), so an
    explicit scheme (PDEBench's RK45) is step-limited by stability, a first-order implicit one
    (beuler) by accuracy, and BDF2 at the same cost errs ~100x more; the L-stable one-step
    method damps the layer and then steps at the output interval. ``ts_type bdf, ts_bdf_order 4``
    is ~2.5x faster at similar error (not A-stable, but the spectrum here is real), and any other
    TS can be chosen through ``petsc_options``.
    """

    family: Literal["diffusion_sorption"] = "diffusion_sorption"
    n: int = Field(128, ge=8, le=16_384, description="cells on [0, 1] (PDEBench stores 1024)")
    t_final: float = Field(500.0, gt=0, le=1e7, description="final time (PDEBench: 500)")
    n_times: int = Field(100, ge=1, le=100_000, description="output intervals in [0, t_final] (PDEBench: 100)")
    D: float = Field(5e-4, gt=0, le=1e3, description="effective diffusion coefficient D (PDEBench: 5e-4)")
    phi: float = Field(0.29, gt=0, lt=1, description="porosity phi, in (0, 1) (PDEBench: 0.29)")
    rho_s: float = Field(2880.0, ge=0, le=1e5, description="dry bulk density rho_s (PDEBench: 2880)")
    k: float = Field(
        3.5e-4,
        ge=0,
        le=1e3,
        description="Freundlich parameter k_f (0: no sorption, linear diffusion; PDEBench: 3.5e-4)",
    )
    n_f: float = Field(0.874, gt=0, le=10, description="Freundlich exponent n_f (PDEBench: 0.874)")
    ic_low: float = Field(
        0.0, ge=0, le=1, description="initial level c ~ U(ic_low, ic_high), u(x, 0) = c in every cell (PDEBench: 0)"
    )
    ic_high: float = Field(
        0.2, ge=0, le=1, description="upper end of the initial level's range, above ic_low (PDEBench: 0.2)"
    )
    u_floor: float = Field(
        1e-6,
        gt=0,
        le=1e-2,
        description="regularisation of the singular power: u^(n_f - 1) is evaluated as "
        "(max(u, 0) + u_floor)^(n_f - 1) (PDEBench: 1e-6)",
    )
    ranges = (("ic_low", "ic_high"),)

    def default_petsc_options(self) -> PetscOptions:
        return {
            "ts_type": "arkimex",
            "ts_arkimex_type": "4",
            "ts_arkimex_fully_implicit": "1",
            "ts_adapt_type": "basic",
            "ts_rtol": "1e-8",
            "ts_atol": "1e-8",
            "ts_max_snes_failures": "-1",
            "ksp_type": "preonly",
            "pc_type": "lu",
        }


#: any one family's spec (for annotations); :data:`PDESpec` is the same union, discriminated by ``family``
AnySpec = PoissonSpec | DarcySpec | HeatSpec | LotkaVolterraSpec | NavierStokesSpec | DiffusionSorptionSpec
PDESpec = Annotated[AnySpec, Field(discriminator="family")]
#: family name -> spec model, the one registry of PDE families (derived from :data:`AnySpec`); the
#: generator of family ``name`` is the module ``data.pdes.<name>`` (:func:`data.pdes.family_module`)
FAMILIES: dict[str, type[_SpecBase]] = {cls.model_fields["family"].default: cls for cls in get_args(AnySpec)}

_ADAPTER: TypeAdapter = TypeAdapter(PDESpec)


def parse_spec(obj: Mapping[str, Any] | str | _SpecBase) -> AnySpec:
    """Validate a dict / JSON string / spec into a spec model (unknown family: clear error)."""
    if isinstance(obj, _SpecBase):
        return cast(AnySpec, obj)
    if isinstance(obj, str):
        obj = json.loads(obj)
    if isinstance(obj, dict) and obj.get("family") not in FAMILIES:
        raise InputError(f"family: unknown PDE family {obj.get('family')!r}; choose one of {sorted(FAMILIES)}")
    return _ADAPTER.validate_python(obj)


def canonical_json(spec: _SpecBase) -> str:
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def spec_hash(spec: _SpecBase) -> str:
    """SHA-256 (hex) of the canonical spec JSON and the generator version."""
    payload = f"v{GENERATOR_VERSION}:{canonical_json(spec)}"
    return hashlib.sha256(payload.encode()).hexdigest()
