"""Settings: embedded defaults, overridden by a TOML file, then ``SAMARKIV_*``
environment variables, then command-line options (in that order)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is missing, unknown or malformed."""


class DuplicatePolicy(StrEnum):
    """What to do when a *different* object arrives with a known SOP Instance UID."""

    REJECT = "reject"
    KEEP_NEW = "keep-new"
    KEEP_BOTH = "keep-both"


class ConflictPolicy(StrEnum):
    """What to do when a study arrives under a different patient than it has."""

    REJECT = "reject"
    ACCEPT = "accept"  # index under the existing study's patient and report it


@dataclass(frozen=True)
class RemoteNode:
    """A DICOM peer that may be a C-MOVE destination (PS3.4 C.4.2)."""

    aet: str
    host: str
    port: int
    description: str = ""


@dataclass(frozen=True)
class Settings:
    data: Path = Path("samarkiv-data")
    host: str = "127.0.0.1"
    dicom_port: int = 11112
    http_port: int = 8080
    aet: str = "SAMARKIV"
    index_url: str | None = None
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REJECT
    conflict_policy: ConflictPolicy = ConflictPolicy.REJECT
    max_associations: int = 32
    store_workers: int = 4
    orphan_grace_seconds: int = 900
    log_level: str = "INFO"
    nodes: tuple[RemoteNode, ...] = field(default_factory=tuple)
    dicomweb_root: str = "/dicomweb"
    # Origins allowed to call the HTTP APIs from a browser (CORS); empty: none.
    cors_origins: tuple[str, ...] = field(default_factory=tuple)

    @property
    def resolved_index_url(self) -> str:
        if self.index_url:
            return self.index_url
        return f"sqlite:///{(self.data / 'index.sqlite').absolute()}"


_ENUMS = {"duplicate_policy": DuplicatePolicy, "conflict_policy": ConflictPolicy}


def _coerce(name: str, value: Any) -> Any:
    """Turn a raw value (TOML, env or CLI) into the type the field declares."""
    default = getattr(Settings(), name)
    try:
        if name == "data":
            return Path(value)
        if name in _ENUMS:
            return _ENUMS[name](value)
        if name == "nodes":
            return tuple(
                node if isinstance(node, RemoteNode) else RemoteNode(**node) for node in value
            )
        if name == "cors_origins":
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(item).strip() for item in items if str(item).strip())
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}
        if isinstance(default, int):
            return int(value)
        return None if value is None else str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {name!r}: {value!r} ({exc})") from None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, ``config_file``, the environment and ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so CLI options left unset
    do not mask the file or the environment.
    """
    names = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        unknown = set(raw) - names
        if unknown:
            raise ConfigError(f"unknown setting(s) in {config_file}: {', '.join(sorted(unknown))}")
        values.update({k.replace("-", "_"): v for k, v in raw.items()})
    for name in names - {"nodes"}:
        env = os.environ.get(f"SAMARKIV_{name.upper()}")
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})
