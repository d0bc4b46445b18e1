import math
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from data.spec import DarcySpec, HeatSpec, PoissonSpec, parse_spec, spec_hash


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"family": "poisson", "n": -4}, "n"),
        ({"family": "poisson", "n": 0}, "n"),
        ({"family": "poisson", "dim": 4}, "dim"),
        ({"family": "poisson", "bc": "robin"}, "bc"),
        ({"family": "darcy", "a_high": float("nan")}, "a_high"),
        ({"family": "darcy", "f": float("inf")}, "f"),
        ({"family": "darcy", "a_low": -3.0}, "a_low"),
        ({"family": "darcy", "n_train": 0}, "n_train"),
        ({"family": "heat", "kappa": 0.0}, "kappa"),
        ({"family": "heat", "dim": 3}, "dim"),
        ({"family": "heat", "n": "many"}, "n"),
        ({"family": "darcy", "resolution": 64}, "resolution"),  # unknown field
        ({"family": "darcy", "petsc_options": {"ksp type": "cg"}}, "petsc_options"),
    ],
)
def test_invalid_spec_names_the_field(kwargs, field):
    with pytest.raises(ValidationError) as err:
        parse_spec(kwargs)
    assert field in str(err.value)


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="family: unknown PDE family 'navier'"):
        parse_spec({"family": "navier", "n": 8})


def test_spec_hash_is_canonical_and_sensitive():
    a = DarcySpec(n=32, petsc_options={"pc_type": "gamg", "ksp_type": "cg"})
    b = parse_spec({"family": "darcy", "n": 32, "petsc_options": {"-ksp_type": "cg", "pc_type": "gamg"}})
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(a) != spec_hash(DarcySpec(n=32, petsc_options={"pc_type": "hypre"}))
    assert spec_hash(a) != spec_hash(DarcySpec(n=32, seed=1))
    assert spec_hash(PoissonSpec()) != spec_hash(HeatSpec())


def test_solver_options_merge_defaults():
    spec = DarcySpec(petsc_options={"pc_type": "jacobi"})
    assert spec.solver_options()["pc_type"] == "jacobi"
    assert spec.solver_options()["ksp_type"] == "cg"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(-10, 5000), kappa=st.floats(allow_nan=True, allow_infinity=True), dim=st.integers(0, 4))
def test_heat_validator_accepts_exactly_the_documented_ranges(n, kappa, dim):
    valid = 4 <= n <= 4096 and math.isfinite(kappa) and 0 < kappa <= 1e3 and dim in (1, 2)
    try:
        spec = HeatSpec(n=n, kappa=kappa, dim=dim)
    except ValidationError:
        assert not valid
    else:
        assert valid
        assert parse_spec(spec.model_dump(mode="json")) == spec


def test_one_registry_of_families_names_each_spec_and_its_generator_module():
    from data.pdes import family_module
    from data.spec import FAMILIES, AnySpec

    assert tuple(FAMILIES.values()) == typing.get_args(AnySpec)
    for family, cls in FAMILIES.items():
        assert cls().family == family
        module = family_module(family)
        assert module.__name__ == f"data.pdes.{family}"
        assert callable(module.sample_arrays) and callable(module.shared_arrays) and module.AXES
    with pytest.raises(ValueError, match="unknown PDE family 'navier'"):
        family_module("navier")


@pytest.mark.parametrize(
    "family, low, high", [("lotka_volterra", "y0_low", "y0_high"), ("diffusion_sorption", "ic_low", "ic_high")]
)
def test_a_range_whose_ends_are_swapped_names_both_fields(family, low, high):
    from data.spec import FAMILIES

    cls = FAMILIES[family]
    assert cls.ranges == ((low, high),)
    top = cls.model_fields[high].default
    with pytest.raises(ValidationError, match=rf"{low} \({top}\) must be below {high} \({top}\)"):
        parse_spec({"family": family, low: top})
