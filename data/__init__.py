"""PDE datasets generated with PETSc (petsc4py), stored as verified HDF5.

Public API (stable names, other tools call them)::

    generate(spec) -> DatasetRef        # path + SHA-256 digest; cached by spec hash
    load(path_or_ref, split="train")    # arrays + spec, digest verified
    pdes.poisson.assemble(n, dim=2, bc="dirichlet", mask=None) -> scipy.sparse.csr_matrix
    pdes.darcy.solve(a, f=1.0, petsc_options=None) -> numpy.ndarray
"""

from . import pdes
from .errors import DatasetError, InputError, PetscOptionError, SciflowError, SolverDivergedError
from .paths import home
from .pdes import darcy, heat, poisson  # noqa: F401  (data.pdes.poisson etc. importable as attributes)
from .spec import (
    FAMILIES,
    DarcySpec,
    HeatSpec,
    LotkaVolterraSpec,
    NavierStokesSpec,
    PDESpec,
    PoissonSpec,
    parse_spec,
    spec_hash,
)
from .store import (
    ChunkRef,
    Dataset,
    DatasetRef,
    assemble,
    find,
    generate,
    generate_chunk,
    load,
    plan_chunks,
)

__all__ = [
    "FAMILIES",
    "ChunkRef",
    "DarcySpec",
    "Dataset",
    "DatasetError",
    "DatasetRef",
    "HeatSpec",
    "InputError",
    "LotkaVolterraSpec",
    "NavierStokesSpec",
    "PDESpec",
    "PetscOptionError",
    "PoissonSpec",
    "SciflowError",
    "SolverDivergedError",
    "assemble",
    "find",
    "generate",
    "generate_chunk",
    "home",
    "load",
    "parse_spec",
    "pdes",
    "plan_chunks",
    "spec_hash",
]
