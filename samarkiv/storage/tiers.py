"""Named storage tiers: each a name and a blob store (a filesystem folder or an S3 bucket).

In the config file, in order; the first tier receives new objects::

    [[tiers]]
    name = "short"            # a local SSD
    path = "/ssd/samarkiv"    # holds blobs/ and tmp/; relative paths are under --data

    [[tiers]]
    name = "long"
    kind = "s3"
    endpoint = "https://s3.example.org"
    bucket = "samarkiv"
    prefix = "long"
    addressing = "virtual"    # or "path" (the default; SeaweedFS, MinIO)

With no tiers configured there is one, ``short``, in the data folder.

S3 credentials come only from the environment, never from the file: for a tier
named ``long``, ``SAMARKIV_S3_LONG_ACCESS_KEY_ID`` and ``..._SECRET_ACCESS_KEY``
(``..._SESSION_TOKEN`` optional), else ``SAMARKIV_S3_ACCESS_KEY_ID`` and
``SAMARKIV_S3_SECRET_ACCESS_KEY``, else ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .blobstore import BlobStore
    from .s3 import S3Credentials, S3Options

MiB = 1 << 20
DEFAULT_TIER_NAME = "short"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_FILESYSTEM_KEYS = {"name", "kind", "path"}
# TOML key -> (S3Options field, converter)
_S3_KEYS: dict[str, tuple[str, Any]] = {
    "bucket": ("bucket", str),
    "endpoint": ("endpoint_url", str),
    "prefix": ("prefix", str),
    "region": ("region", str),
    "addressing": ("addressing_style", str),
    "part_size_mib": ("part_size", lambda v: int(v) * MiB),
    "multipart_threshold_mib": ("multipart_threshold", lambda v: int(v) * MiB),
    "upload_concurrency": ("upload_concurrency", int),
    "page_size": ("page_size", int),
    "storage_class": ("storage_class", str),
    "verify_tls": ("verify_tls", lambda v: v if isinstance(v, bool) else str(v)),
    "connect_timeout": ("connect_timeout", float),
    "read_timeout": ("read_timeout", float),
    "max_attempts": ("max_attempts", int),
}
_SECRET_KEYS = re.compile(r"(access|secret|password|token|credential)", re.IGNORECASE)


def _config_error(message: str) -> Exception:
    from ..config import ConfigError  # config imports this module lazily, and so back

    return ConfigError(message)


@dataclass(frozen=True)
class TierSpec:
    """One tier as configured: a filesystem folder (``path``) or an S3 bucket (``s3``)."""

    name: str
    path: Path | None = None  # filesystem; None: the data folder itself
    s3: S3Options | None = None

    @property
    def kind(self) -> str:
        return "s3" if self.s3 is not None else "filesystem"


DEFAULT_TIERS = (TierSpec(DEFAULT_TIER_NAME),)


def parse_tiers(value: Any) -> tuple[TierSpec, ...]:
    """The ``[[tiers]]`` tables of the config file, checked; ConfigError on any mistake."""
    if isinstance(value, TierSpec):
        value = [value]
    if not isinstance(value, list | tuple):
        raise _config_error("tiers must be a list of [[tiers]] tables")
    specs = tuple(item if isinstance(item, TierSpec) else _parse_tier(item) for item in value)
    names = [spec.name for spec in specs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise _config_error(f"tier name(s) used twice: {', '.join(duplicated)}")
    return specs


def _parse_tier(table: Any) -> TierSpec:
    if not isinstance(table, Mapping):
        raise _config_error(f"a tier must be a table, not {type(table).__name__}")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _config_error(
            f"tier name {name!r}: give each tier a name of lower-case letters, digits, - or _"
        )
    secrets = sorted(key for key in table if _SECRET_KEYS.search(key))
    if secrets:
        raise _config_error(
            f"tier {name!r}: {', '.join(secrets)} must not be in the config file; S3 credentials "
            f"are read from the environment only ({credential_variables(name)[0]} and the like)"
        )
    kind = table.get("kind", "filesystem")
    if kind == "filesystem":
        unknown = sorted(set(table) - _FILESYSTEM_KEYS)
        if unknown:
            raise _config_error(f"tier {name!r}: unknown setting(s) {', '.join(unknown)}")
        path = table.get("path")
        return TierSpec(name, path=None if path is None else Path(str(path)))
    if kind == "s3":
        from .s3 import S3Options

        unknown = sorted(set(table) - set(_S3_KEYS) - {"name", "kind"})
        if unknown:
            raise _config_error(f"tier {name!r}: unknown setting(s) {', '.join(unknown)}")
        if "bucket" not in table:
            raise _config_error(f"tier {name!r}: an S3 tier needs a bucket")
        try:
            options = {
                field: convert(table[key]) for key, (field, convert) in _S3_KEYS.items() if key in table
            }
            return TierSpec(name, s3=S3Options(**options))
        except (TypeError, ValueError) as exc:
            raise _config_error(f"tier {name!r}: {exc}") from None
    raise _config_error(f"tier {name!r}: kind must be 'filesystem' or 's3', not {kind!r}")


def credential_variables(tier: str) -> list[tuple[str, str, str]]:
    """Environment variable names (key id, secret, token) tried for ``tier``, in order."""
    specific = "SAMARKIV_S3_" + re.sub(r"[^A-Z0-9]", "_", tier.upper()) + "_"
    return [
        (f"{base}ACCESS_KEY_ID", f"{base}SECRET_ACCESS_KEY", f"{base}SESSION_TOKEN")
        for base in (specific, "SAMARKIV_S3_", "AWS_")
    ]


def s3_credentials(tier: str, env: Mapping[str, str] | None = None) -> S3Credentials:
    """The first complete key pair in the environment for ``tier`` (see the module text)."""
    from .s3 import S3Credentials

    env = os.environ if env is None else env
    for key_var, secret_var, token_var in credential_variables(tier):
        key, secret = env.get(key_var), env.get(secret_var)
        if key and secret:
            return S3Credentials(key, secret, env.get(token_var) or None)
        if key or secret:
            present, missing = (key_var, secret_var) if key else (secret_var, key_var)
            raise _config_error(f"tier {tier!r}: {present} is set but {missing} is not")
    first = credential_variables(tier)[0]
    raise _config_error(
        f"tier {tier!r}: no S3 credentials in the environment; set {first[0]} and {first[1]} "
        "(or SAMARKIV_S3_ACCESS_KEY_ID/SAMARKIV_S3_SECRET_ACCESS_KEY, or AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY)"
    )


def tier_folder(spec: TierSpec, data: Path) -> Path:
    """A filesystem tier's folder (holding blobs/ and tmp/), relative paths under ``data``."""
    if spec.path is None:
        return Path(data)
    return spec.path if spec.path.is_absolute() else Path(data) / spec.path


def open_tier(spec: TierSpec, data: Path, env: Mapping[str, str] | None = None) -> BlobStore:
    """The blob store of one tier. S3 tiers spool large streams to ``<data>/tmp``."""
    if spec.s3 is not None:
        from .s3 import S3BlobStore

        return S3BlobStore(spec.s3, s3_credentials(spec.name, env), staging=Path(data) / "tmp")
    from .filesystem import FilesystemBlobStore

    folder = tier_folder(spec, data)
    # Staging beside the blobs, on the same filesystem, so installing is a rename.
    return FilesystemBlobStore(folder / "blobs", folder / "tmp")


def open_tiers(
    specs: tuple[TierSpec, ...], data: Path, env: Mapping[str, str] | None = None
) -> dict[str, BlobStore]:
    """Every configured tier's store by name, in configured order (the first
    receives new objects); the default tier when none is configured."""
    return {spec.name: open_tier(spec, data, env) for spec in specs or DEFAULT_TIERS}
