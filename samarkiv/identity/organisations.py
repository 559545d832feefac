"""Organisations: who sends to the archive, by which AE titles, and under which
Issuer of Patient ID their Patient IDs are keyed (PS3.3 C.7.1.1, 10.14).

Functions take a SQLAlchemy ``Connection`` inside the caller's transaction
(use the writer engine for writes on SQLite), except :func:`sync_from_settings`,
which runs its own.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, delete, insert, select, update

from ..config import OrganisationConfig, OrganisationKind, Settings
from ..index.engine import lock_startup
from ..index.identity_schema import organisation_aets, organisations
from .national import Issuer

log = logging.getLogger(__name__)

DEFAULT_CODE = "default"
# PS3.3 Table 10-17, Universal Entity ID Type defined terms.
UEID_TYPES = ("DNS", "EUI64", "ISO", "URI", "UUID", "X400", "X500")
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


class OrganisationError(ValueError):
    """Bad organisation data (exit status 2 on the command line)."""


class UnknownOrganisation(OrganisationError):
    """No organisation has this code."""


class OrganisationConflict(OrganisationError):
    """The code or an AE title is already taken."""


@dataclass(frozen=True)
class Organisation:
    pk: int
    code: str
    name: str
    kind: OrganisationKind
    issuer_of_patient_id: str | None
    issuer_ueid: str | None
    issuer_ueid_type: str | None
    aets: tuple[str, ...]
    source: str

    @property
    def patient_id_issuer(self) -> str:
        """The issuer its Patient IDs are keyed under when a dataset names
        none: its Issuer of Patient ID, else its universal entity ID, else its code."""
        return self.issuer_of_patient_id or self.issuer_ueid or self.code

    @property
    def issuer(self) -> Issuer:
        return Issuer(self.issuer_of_patient_id or "", self.issuer_ueid or "", self.issuer_ueid_type or "")

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "name": self.name,
            "kind": self.kind.value,
            "issuer_of_patient_id": self.issuer_of_patient_id,
            "issuer_ueid": self.issuer_ueid,
            "issuer_ueid_type": self.issuer_ueid_type,
            "aets": list(self.aets),
            "source": self.source,
        }


def _now() -> datetime:
    return datetime.now(UTC)


# --- validation -----------------------------------------------------------------


def normalise_aet(aet: str) -> str:
    """An AE title without its insignificant spaces; ValueError when it is not
    one (PS3.5 Table 6.2-1: 16 characters, no backslash or control characters)."""
    text = aet.strip()
    if not 1 <= len(text) <= 16 or "\\" in text or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise OrganisationError(f"{aet!r} is not an AE title (1-16 characters, no backslash)")
    return text


def _check_lo(what: str, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > 64 or "\\" in value:
        raise OrganisationError(f"{what} must be at most 64 characters without backslash")
    return value


def _validated(
    code: str,
    name: str,
    kind: str | OrganisationKind,
    issuer_of_patient_id: str | None,
    issuer_ueid: str | None,
    issuer_ueid_type: str | None,
) -> dict[str, object]:
    if not _CODE.fullmatch(code):
        raise OrganisationError(f"organisation code {code!r}: letters, digits, '_', '.', '-', at most 64")
    if not name.strip() or len(name) > 255:
        raise OrganisationError("organisation name must be 1-255 characters")
    try:
        kind = OrganisationKind(kind)
    except ValueError:
        raise OrganisationError(
            f"organisation kind {kind!r}: one of {', '.join(k.value for k in OrganisationKind)}"
        ) from None
    issuer_ueid = _check_lo("issuer universal entity ID", issuer_ueid)
    if issuer_ueid is None:
        issuer_ueid_type = None
    else:
        issuer_ueid_type = (issuer_ueid_type or "ISO").strip().upper()
        if issuer_ueid_type not in UEID_TYPES:
            raise OrganisationError(f"issuer universal entity ID type: one of {', '.join(UEID_TYPES)}")
        if issuer_ueid_type == "ISO" and not _OID.fullmatch(issuer_ueid):
            raise OrganisationError(f"{issuer_ueid!r} is not an OID (type ISO)")
    return {
        "code": code,
        "name": name.strip(),
        "kind": kind.value,
        "issuer_of_patient_id": _check_lo("issuer of patient ID", issuer_of_patient_id),
        "issuer_ueid": issuer_ueid,
        "issuer_ueid_type": issuer_ueid_type,
    }


# --- reads --------------------------------------------------------------------


def _load(conn: Connection, where) -> list[Organisation]:  # type: ignore[no-untyped-def]
    rows = conn.execute(select(organisations).where(where).order_by(organisations.c.code)).all()
    if not rows:
        return []
    aets: dict[int, list[str]] = {}
    pks = [r.pk for r in rows]
    for aet, org_pk in conn.execute(
        select(organisation_aets.c.aet, organisation_aets.c.organisation_pk)
        .where(organisation_aets.c.organisation_pk.in_(pks))
        .order_by(organisation_aets.c.aet)
    ):
        aets.setdefault(org_pk, []).append(aet)
    return [
        Organisation(
            r.pk,
            r.code,
            r.name,
            OrganisationKind(r.kind),
            r.issuer_of_patient_id,
            r.issuer_ueid,
            r.issuer_ueid_type,
            tuple(aets.get(r.pk, ())),
            r.source,
        )
        for r in rows
    ]


def list_organisations(conn: Connection) -> list[Organisation]:
    return _load(conn, organisations.c.pk.isnot(None))


def get_organisation(conn: Connection, code: str) -> Organisation | None:
    found = _load(conn, organisations.c.code == code)
    return found[0] if found else None


def organisation_by_pk(conn: Connection, pk: int) -> Organisation | None:
    found = _load(conn, organisations.c.pk == pk)
    return found[0] if found else None


def require_organisation(conn: Connection, code: str) -> Organisation:
    org = get_organisation(conn, code)
    if org is None:
        raise UnknownOrganisation(f"no organisation {code!r}")
    return org


def default_code(settings: Settings) -> str:
    return settings.default_organisation or DEFAULT_CODE


def default_organisation(conn: Connection, settings: Settings) -> Organisation | None:
    """The organisation owning stores that name none (HTTP without one, and
    unknown calling AEs when ``accept_unknown_aets``)."""
    return get_organisation(conn, default_code(settings))


def organisation_for_aet(conn: Connection, aet: str, settings: Settings) -> Organisation | None:
    """The organisation a calling AE title belongs to; an unknown AE gets the
    default organisation when ``settings.accept_unknown_aets``, else None
    (the store is to be rejected)."""
    pk = conn.execute(
        select(organisation_aets.c.organisation_pk).where(organisation_aets.c.aet == aet.strip())
    ).scalar()
    if pk is not None:
        return organisation_by_pk(conn, pk)
    return default_organisation(conn, settings) if settings.accept_unknown_aets else None


def organisation_for_issuer(conn: Connection, issuer: Issuer) -> Organisation | None:
    """The organisation whose issuer this is: by universal entity ID first,
    then by Issuer of Patient ID (the lowest pk wins if several share it)."""
    for column, value in (
        (organisations.c.issuer_ueid, issuer.universal),
        (organisations.c.issuer_of_patient_id, issuer.local),
    ):
        if value:
            pk = conn.execute(
                select(organisations.c.pk).where(column == value).order_by(organisations.c.pk).limit(1)
            ).scalar()
            if pk is not None:
                return organisation_by_pk(conn, pk)
    return None


# --- writes -------------------------------------------------------------------


def _set_aets(conn: Connection, org_pk: int, aets: list[str], *, take: bool) -> None:
    """Give ``aets`` to the organisation; one held by another organisation is
    moved when ``take`` (the config file wins), else refused."""
    for aet in aets:
        holder = conn.execute(
            select(organisation_aets.c.organisation_pk, organisations.c.code)
            .join(organisations, organisations.c.pk == organisation_aets.c.organisation_pk)
            .where(organisation_aets.c.aet == aet)
        ).first()
        if holder is not None and holder.organisation_pk == org_pk:
            continue
        if holder is not None:
            if not take:
                raise OrganisationConflict(f"AE title {aet!r} belongs to organisation {holder.code!r}")
            log.warning("AE title %s moved from organisation %s (config file)", aet, holder.code)
            conn.execute(delete(organisation_aets).where(organisation_aets.c.aet == aet))
        conn.execute(insert(organisation_aets).values(aet=aet, organisation_pk=org_pk))


def create_organisation(
    conn: Connection,
    code: str,
    name: str,
    kind: str | OrganisationKind = OrganisationKind.HOSPITAL,
    *,
    issuer_of_patient_id: str | None = None,
    issuer_ueid: str | None = None,
    issuer_ueid_type: str | None = None,
    aets: tuple[str, ...] | list[str] = (),
    source: str = "cli",
) -> Organisation:
    values = _validated(code, name, kind, issuer_of_patient_id, issuer_ueid, issuer_ueid_type)
    wanted = [normalise_aet(a) for a in aets]
    if get_organisation(conn, code) is not None:
        raise OrganisationConflict(f"organisation {code!r} exists (use update)")
    now = _now()
    pk = conn.execute(
        insert(organisations)
        .values(**values, source=source, created_at=now, updated_at=now)
        .returning(organisations.c.pk)
    ).scalar_one()
    _set_aets(conn, pk, wanted, take=False)
    return require_organisation(conn, code)


_UNSET: object = object()


def update_organisation(
    conn: Connection,
    code: str,
    *,
    name: str | None = None,
    kind: str | OrganisationKind | None = None,
    issuer_of_patient_id: object = _UNSET,
    issuer_ueid: object = _UNSET,
    issuer_ueid_type: object = _UNSET,
    add_aets: tuple[str, ...] | list[str] = (),
    remove_aets: tuple[str, ...] | list[str] = (),
    aets: tuple[str, ...] | list[str] | None = None,
    take_aets: bool = False,
    source: str | None = None,
) -> Organisation:
    """Change the given fields (an issuer given as '' or None is cleared).
    ``aets`` replaces the AE titles; ``add_aets``/``remove_aets`` edit them."""
    org = require_organisation(conn, code)
    pick = lambda new, old: old if new is _UNSET else new  # noqa: E731
    values = _validated(
        code,
        name if name is not None else org.name,
        kind if kind is not None else org.kind,
        pick(issuer_of_patient_id, org.issuer_of_patient_id),  # type: ignore[arg-type]
        pick(issuer_ueid, org.issuer_ueid),  # type: ignore[arg-type]
        pick(issuer_ueid_type, org.issuer_ueid_type),  # type: ignore[arg-type]
    )
    if source is not None:
        values["source"] = source
    conn.execute(update(organisations).where(organisations.c.pk == org.pk).values(**values, updated_at=_now()))
    if aets is not None:
        wanted = [normalise_aet(a) for a in aets]
        conn.execute(
            delete(organisation_aets).where(
                organisation_aets.c.organisation_pk == org.pk, organisation_aets.c.aet.notin_(wanted)
            )
        )
        _set_aets(conn, org.pk, wanted, take=take_aets)
    removed = [normalise_aet(a) for a in remove_aets]
    unknown = sorted(set(removed) - set(org.aets) - set(aets or ()))
    if unknown:
        raise OrganisationError(f"organisation {code!r} has no AE title {', '.join(unknown)}")
    if removed:
        conn.execute(
            delete(organisation_aets).where(
                organisation_aets.c.organisation_pk == org.pk, organisation_aets.c.aet.in_(removed)
            )
        )
    _set_aets(conn, org.pk, [normalise_aet(a) for a in add_aets], take=take_aets)
    return require_organisation(conn, code)


def _sync_one(conn: Connection, item: OrganisationConfig) -> None:
    fields = {
        "name": item.name,
        "kind": item.kind,
        "issuer_of_patient_id": item.issuer_of_patient_id,
        "issuer_ueid": item.issuer_ueid,
        "issuer_ueid_type": item.issuer_ueid_type,
    }
    if get_organisation(conn, item.code) is None:
        create_organisation(conn, item.code, source="config", **fields)  # type: ignore[arg-type]
    update_organisation(conn, item.code, aets=item.aets, take_aets=True, source="config", **fields)  # type: ignore[arg-type]


def sync_from_settings(engine: Engine, settings: Settings) -> None:
    """Bring the index's organisations in line with the settings, at start:
    config-file organisations are created or updated (the file wins, AE
    titles included); on the embedded defaults (unknown AEs accepted, no
    default named) the ``default`` organisation is created.

    Raises OrganisationError for a bad organisation or a ``default_organisation``
    that names none.
    """
    with engine.begin() as conn:
        lock_startup(conn)  # nodes starting together: one creates, the others then find
        for item in settings.organisations:
            try:
                _sync_one(conn, item)
            except OrganisationError as exc:
                raise OrganisationError(f"organisation {item.code!r} in the config file: {exc}") from None
        code = default_code(settings)
        if get_organisation(conn, code) is not None:
            return
        if settings.default_organisation is not None:
            raise OrganisationError(f"default_organisation {code!r} is not an organisation")
        if settings.accept_unknown_aets:
            create_organisation(
                conn, DEFAULT_CODE, "Default organisation", OrganisationKind.HOSPITAL, source="default"
            )
