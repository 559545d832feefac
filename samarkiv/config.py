"""Settings: embedded defaults, overridden by a TOML file, then ``SAMARKIV_*``
environment variables, then command-line options (in that order)."""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .audit.config import AuditSettings
    from .lifecycle.rules import LifecycleRule
    from .storage.tiers import TierSpec


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


class OrganisationKind(StrEnum):
    HOSPITAL = "hospital"
    TRUST = "trust"
    PRIVATE = "private"
    RESEARCH = "research"


@dataclass(frozen=True)
class OrganisationConfig:
    """An organisation declared in the config file (``[[organisations]]``);
    synced into the index at start (samarkiv/identity/organisations.py)."""

    code: str
    name: str
    kind: OrganisationKind = OrganisationKind.HOSPITAL
    issuer_of_patient_id: str | None = None
    issuer_ueid: str | None = None  # Universal Entity ID of the issuer (PS3.3 10.14)
    issuer_ueid_type: str | None = None  # Universal Entity ID Type, e.g. ISO
    aets: tuple[str, ...] = ()


def _organisations(value: Any) -> tuple[OrganisationConfig, ...]:
    orgs: list[OrganisationConfig] = []
    for item in value:
        if not isinstance(item, OrganisationConfig):
            item = dict(item)
            item["kind"] = OrganisationKind(item.get("kind", "hospital"))
            item["aets"] = tuple(str(a).strip() for a in item.get("aets", ()))
            if item.get("issuer_ueid") and not item.get("issuer_ueid_type"):
                item["issuer_ueid_type"] = "ISO"
            item = OrganisationConfig(**item)
        orgs.append(item)
    codes = [o.code for o in orgs]
    aets = [a for o in orgs for a in o.aets]
    for what, values in (("organisation code", codes), ("AE title", aets)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{what} listed twice: {', '.join(twice)}")
    return tuple(orgs)


class UserIdentityMode(StrEnum):
    """DICOM User Identity Negotiation (PS3.7 D.3.3.7) on DIMSE associations."""

    OFF = "off"  # ignored: the calling AE title alone binds the association
    OPTIONAL = "optional"  # checked when offered (a wrong one is rejected)
    REQUIRED = "required"  # every association must offer a valid one


@dataclass(frozen=True)
class AuthSettings:
    """``[auth]``: authentication (samarkiv/access/). OIDC is on when
    ``oidc_issuer`` is set; claim names may be dotted paths into the JWT."""

    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None  # default: from the issuer's discovery document
    oidc_audience: str | None = None
    oidc_algorithms: tuple[str, ...] = ("RS256",)
    oidc_user_claim: str = "preferred_username"
    oidc_org_claim: str = "organisation"  # its value is an organisation code
    oidc_default_org: str | None = None  # when the token has no organisation claim
    oidc_roles_claim: str = "realm_access.roles"
    # IdP role name -> samarkiv role; roles not mapped and not samarkiv roles are dropped.
    oidc_role_map: tuple[tuple[str, str], ...] = ()
    # A patient's national identity number (e.g. "personnummer"); unset: OIDC patients see nothing.
    oidc_patient_id_claim: str | None = None
    oidc_patient_id_issuer: str = "1.2.752.129.2.1.3.1"  # its issuer: the Swedish personnummer OID
    oidc_leeway_seconds: int = 30
    oidc_jwks_cache_seconds: int = 300
    session_hours: int = 8
    basic_auth: bool = True  # HTTP Basic with a local user's password (scripts, older EPRs)
    dimse_user_identity: UserIdentityMode = UserIdentityMode.OPTIONAL


def _auth(value: Any) -> AuthSettings:
    if isinstance(value, AuthSettings):
        return value
    if not isinstance(value, dict):
        raise ValueError("[auth] must be a table")
    names = {f.name for f in dataclasses.fields(AuthSettings)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"unknown [auth] setting(s): {', '.join(sorted(unknown))}")
    items: dict[str, Any] = dict(value)
    if "oidc_algorithms" in items:
        algs = items["oidc_algorithms"]
        items["oidc_algorithms"] = tuple(algs.split(",") if isinstance(algs, str) else algs)
    if "oidc_role_map" in items:
        items["oidc_role_map"] = tuple((str(k), str(v)) for k, v in dict(items["oidc_role_map"]).items())
    if "dimse_user_identity" in items:
        items["dimse_user_identity"] = UserIdentityMode(items["dimse_user_identity"])
    for name in ("oidc_leeway_seconds", "oidc_jwks_cache_seconds", "session_hours"):
        if name in items:
            items[name] = int(items[name])
    if "basic_auth" in items and not isinstance(items["basic_auth"], bool):
        items["basic_auth"] = str(items["basic_auth"]).lower() in {"1", "true", "yes"}
    return AuthSettings(**items)


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
    # Objects up to this size are made durable in the index transaction and
    # moved to the blob store when the archive is idle (0: always blob files).
    inline_max_bytes: int = 1 << 20
    # Move journalled objects once no store came for this long, or when the
    # journal holds more than journal_max_bytes.
    journal_idle_seconds: int = 2
    journal_max_bytes: int = 256 << 20
    log_level: str = "INFO"
    nodes: tuple[RemoteNode, ...] = field(default_factory=tuple)
    # Storage tiers ([[tiers]] tables, see storage/tiers.py); empty: one
    # filesystem tier "short" in the data folder. The first receives new objects.
    tiers: tuple[TierSpec, ...] = field(default_factory=tuple)
    # Lifecycle rules ([[lifecycle]] tables, see lifecycle/rules.py): run by
    # `samarkiv lifecycle run` and by serve every lifecycle_interval_minutes.
    lifecycle: tuple[LifecycleRule, ...] = field(default_factory=tuple)
    lifecycle_interval_minutes: int = 60
    lifecycle_mib_per_second: int = 50  # copy throttle per process; 0: none
    lifecycle_lease_seconds: int = 600  # a claimed job not finished by then is retried
    # Fixity: serve re-reads every object once per fixity_interval_days (0: off).
    fixity_interval_days: int = 0
    fixity_mib_per_second: int = 16
    # [tier_capacity] short = "2 TB": tier sizes for `samarkiv capacity`
    # (filesystem tiers without one: the free space of their filesystem).
    tier_capacity: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    organisations: tuple[OrganisationConfig, ...] = field(default_factory=tuple)
    # The organisation that owns stores from unknown calling AEs (when accepted)
    # and HTTP stores without one [default: an organisation "default"].
    default_organisation: str | None = None
    # false in a regional setup: a calling AE no organisation lists is rejected.
    accept_unknown_aets: bool = True
    dicomweb_root: str = "/dicomweb"
    # QIDO-RS answers at most this many matches per request (PS3.18 8.3.4.4: a
    # Warning header says more exist; the client pages with offset).
    qido_max_results: int = 10_000
    # HL7 v2 ADT over MLLP (samarkiv/hl7/): the listener's port, 0 = off.
    hl7_port: int = 0
    # The organisation whose issuer keys PID-3 identifiers without an assigning
    # authority, when MSH-4 names none [default: the default organisation].
    hl7_organisation: str | None = None
    # Origins allowed to call the HTTP APIs from a browser (CORS); empty: none.
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    # The OHIF viewer served at /viewer (filled by scripts/install-viewer).
    viewer_dir: Path = field(default_factory=lambda: Path(sys.prefix) / "share" / "samarkiv" / "viewer")
    # [auth]: users, tokens, OIDC, sessions, DIMSE user identity (samarkiv/access/).
    auth: AuthSettings = field(default_factory=AuthSettings)
    # [audit]: the audit trail's anchors and syslog collector (samarkiv/audit/config.py); None: defaults.
    audit: AuditSettings | None = None

    @property
    def resolved_index_url(self) -> str:
        if self.index_url:
            return self.index_url
        return f"sqlite:///{(self.data / 'index.sqlite').absolute()}"


_ENUMS = {"duplicate_policy": DuplicatePolicy, "conflict_policy": ConflictPolicy}


def _coerce(name: str, value: Any) -> Any:
    """Turn a raw value (TOML, env or CLI) into the type the field declares."""
    default = getattr(Settings(), name)
    if name == "tiers":  # its own errors: never echo the tables (they may hold a secret by mistake)
        from .storage.tiers import parse_tiers

        return parse_tiers(value)
    try:
        if name == "auth":
            return _auth(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid [auth] section: {exc}") from None
    if name == "audit":
        from .audit.config import parse_audit

        try:
            return parse_audit(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid [audit] section: {exc}") from None
    if name in ("lifecycle", "tier_capacity"):
        from .lifecycle.rules import parse_capacity, parse_rules

        return parse_rules(value) if name == "lifecycle" else parse_capacity(value)
    try:
        if name in ("data", "viewer_dir"):
            return Path(value)
        if name in _ENUMS:
            return _ENUMS[name](value)
        if name == "nodes":
            return tuple(
                node if isinstance(node, RemoteNode) else RemoteNode(**node) for node in value
            )
        if name == "organisations":
            return _organisations(value)
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
    for name in names - {"nodes", "organisations", "tiers", "lifecycle", "tier_capacity", "auth", "audit"}:
        env = os.environ.get(f"SAMARKIV_{name.upper()}")
        if env is not None:
            values[name] = env
    auth_env = {  # SAMARKIV_AUTH_<NAME>, e.g. SAMARKIV_AUTH_OIDC_ISSUER
        f.name: os.environ[f"SAMARKIV_AUTH_{f.name.upper()}"]
        for f in dataclasses.fields(AuthSettings)
        if f.name != "oidc_role_map" and f"SAMARKIV_AUTH_{f.name.upper()}" in os.environ
    }
    if auth_env:
        values["auth"] = {**dict(values.get("auth") or {}), **auth_env}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})
