"""Every ``SCIFLOW_*`` setting, in one typed model: :class:`Settings` (pydantic-settings).

A value comes from, in order: the environment (``SCIFLOW_<NAME>``), the settings file (TOML, one
``name = value`` per field, at ``$SCIFLOW_CONFIG`` or ``$XDG_CONFIG_HOME/sciflow/config.toml``,
default ``~/.config/sciflow/config.toml``), the field's default. :func:`current` reads them
afresh on every call (cheap; a changed environment is seen at once) and turns a bad value into an
:class:`~data.errors.InputError` naming the variable, where it came from and what is allowed.

The model lives in ``data`` because ``data`` is the bottom layer: the dataset store
(:func:`data.paths.home`), the device chooser (``operators.device``) and the flows all read the
same object, and none of them imports a layer above its own. Reading settings has no side
effects; ``flows.settings.configure`` is what applies them to Prefect and MLflow at an entry point.
The table in ``docs/configuration.md`` is rendered from these fields (a test checks it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import InputError

#: prefix of every variable: field ``home`` is ``SCIFLOW_HOME``
ENV_PREFIX = "SCIFLOW_"

#: where a value came from (``sciflow config`` prints it)
Source = Literal["env", "file", "default"]

_DEVICE = re.compile(r"^(cpu|mps|meta|(cuda|xpu)(:\d+)?)$")
_DASK = re.compile(r"^([a-z][a-z0-9+.-]*://\S+|[^\s:/]+:\d+)$")


def default_home() -> Path:
    """``$XDG_DATA_HOME/sciflow`` when ``XDG_DATA_HOME`` is an absolute path, else
    ``~/.local/share/sciflow``: absolute, so state does not depend on the working directory."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "sciflow"


def default_config_file() -> Path:
    """``$XDG_CONFIG_HOME/sciflow/config.toml``, else ``~/.config/sciflow/config.toml``."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "sciflow" / "config.toml"


def config_file() -> Path:
    """The settings file in use: ``$SCIFLOW_CONFIG``, else :func:`default_config_file` (it may not exist)."""
    named = os.environ.get(f"{ENV_PREFIX}CONFIG", "")
    return Path(named).expanduser() if named else default_config_file()


class Settings(BaseSettings):
    """sciflow's settings. Field ``name`` is the environment variable ``SCIFLOW_<NAME>`` and the key
    ``name`` of the settings file; the description of each is the documentation's table row."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", validate_default=True, frozen=True
    )

    home: Path = Field(
        default_factory=default_home,
        description="State folder: the dataset store (`datasets/`, `chunks/`), model checkpoints (`models/`), "
        "the local Prefect database and results (`prefect/`), the MLflow store (`mlflow.db`, `mlartifacts/`) "
        "and the local stack (`stack/`). Default `$XDG_DATA_HOME/sciflow`, else `~/.local/share/sciflow`.",
    )
    config: Path = Field(
        default_factory=default_config_file,
        description="The settings file (TOML, `name = value` for the other fields). Environment only. "
        "Default `$XDG_CONFIG_HOME/sciflow/config.toml`, else `~/.config/sciflow/config.toml`.",
    )
    device: str | None = Field(
        default=None,
        description="Torch device for training and inference: `cpu`, `cuda`, `cuda:N`, `mps`. "
        "Default: `cuda` when available, else `cpu`.",
    )
    experiment: str = Field(
        default="sciflow",
        min_length=1,
        max_length=256,
        description="Prefix of the MLflow experiments: runs go to `<prefix>-data`, `-training`, `-benchmarks` and `-nightly`.",
    )
    mlflow_artifacts: str | None = Field(
        default=None,
        description="Artifact location of a newly created MLflow experiment (a URI, e.g. "
        "`mlflow-artifacts:/sciflow` behind a tracking server, `s3://bucket/path`). Default "
        "`<home>/mlartifacts` with the local store; the server's default with a tracking server.",
    )
    tracking_outage_s: float = Field(
        default=600.0,
        ge=0,
        le=7 * 86400,
        description="Seconds a run rides out an unreachable MLflow server (its tracking calls kept in "
        "`<home>/spool/` and delivered when it answers) before it fails naming the spool; "
        "`sciflow tracking flush` delivers a spool left on disk.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Dask scheduler (`tcp://host:8786`) for `generate-dataset` with `runner=dask`; "
        "default: a LocalCluster started for the flow run.",
    )
    repo: Path | None = Field(
        default=None,
        description="The sciflow checkout that Prefect workers run code from (`infra/prefect.yaml` pulls "
        "`{{ $SCIFLOW_REPO }}`); `sciflow stack up` sets it for its worker.",
    )
    pg_bin: Path | None = Field(
        default=None,
        description="Folder of the PostgreSQL server binaries for `sciflow stack up --backend postgres`; "
        "default: the newest `/usr/lib/postgresql/<version>/bin`.",
    )
    pg_user: str = Field(
        default="postgres",
        min_length=1,
        description="System user that runs that PostgreSQL server when sciflow runs as root.",
    )

    git_commit: str | None = Field(
        default=None,
        description="The git commit the code was built from, for where there is no git work tree (an image: "
        "`infra/cluster/build.sh` bakes it in); runs record it as `mlflow.source.git.commit`.",
    )
    alerts_block: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$",
        description="`<block-type-slug>/<block-name>` of a Prefect notification block (e.g. "
        "`slack-webhook/sciflow-alerts`) that the alerting automations of `infra/automations.yaml` also "
        "send through; `sciflow stack up` applies them.",
    )

    @field_validator("home", "config", "repo", "pg_bin")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        """``~`` expanded and made absolute (a relative value is taken from the working directory)."""
        return None if value is None else Path(os.path.abspath(Path(value).expanduser()))

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        if value is not None and not _DEVICE.match(value):
            raise ValueError(f"must be cpu, cuda, cuda:N or mps, got {value!r}")
        return value

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value is not None and not _DASK.match(value):
            raise ValueError(f"must be a scheduler address such as tcp://host:8786, got {value!r}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)


class _FileSource(TomlConfigSettingsSource):
    """The settings file; ``config`` cannot name another file from inside one."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        self.path = config_file()
        super().__init__(settings_cls, toml_file=self.path)
        if "config" in self.toml_data:
            raise InputError(f"{self.path}: 'config' cannot be set in the settings file (use ${ENV_PREFIX}CONFIG)")


def env_var(name: str) -> str:
    """The environment variable of field ``name``: ``home`` -> ``SCIFLOW_HOME``."""
    return f"{ENV_PREFIX}{name.upper()}"


def sources() -> dict[str, Source]:
    """Where each field's value comes from now: ``env``, ``file`` or ``default``."""
    env = EnvSettingsSource(Settings, env_prefix=ENV_PREFIX, env_ignore_empty=True)()
    file = _FileSource(Settings)()
    return {name: "env" if name in env else "file" if name in file else "default" for name in Settings.model_fields}


def current() -> Settings:
    """The settings now (environment, then the settings file, then defaults); a bad value is an
    :class:`~data.errors.InputError` that names the variable, its source and what is allowed."""
    try:
        return Settings()
    except ValidationError as exc:
        raise InputError(_message(exc)) from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed settings file (tomllib's error is a ValueError)
        if isinstance(exc, InputError):
            raise
        raise InputError(f"settings file {config_file()}: {exc}") from None


def _message(exc: ValidationError) -> str:
    origin = sources_safe()
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "settings"
        where = {"env": "the environment", "file": f"the settings file {config_file()}"}.get(
            origin.get(name, "default"), "its default"
        )
        value = f"={err['input']!r}" if err["type"] != "missing" else ""
        if err["type"] == "extra_forbidden":  # only the file can hold a name that is not a field
            lines.append(
                f"  {name}{value} (in the settings file {config_file()}): not a sciflow setting; "
                f"known: {', '.join(Settings.model_fields)}"
            )
        else:
            lines.append(f"  {env_var(name)}{value} (from {where}): {err['msg']}")
    return "invalid sciflow settings\n" + "\n".join(lines)


def sources_safe() -> dict[str, Source]:
    """:func:`sources`, or an empty mapping when the file itself cannot be read."""
    try:
        return sources()
    except Exception:
        return {}


def describe(values: Settings | None = None) -> list[dict[str, Any]]:
    """One row per field: ``name``, ``variable``, ``value``, ``source`` (``sciflow config``)."""
    values = values or current()
    origin = sources()
    return [
        {"name": name, "variable": env_var(name), "value": getattr(values, name), "source": origin[name]}
        for name in Settings.model_fields
    ]


__all__ = ["ENV_PREFIX", "Settings", "config_file", "current", "default_home", "describe", "env_var", "sources"]
