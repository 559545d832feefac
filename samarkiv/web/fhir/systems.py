"""Patient identifier systems: the MPI's (value, issuer) keys as FHIR Identifiers and back.

FHIR R4 datatypes.html#Identifier names the namespace of a value by a URI
``system``. samarkiv writes:

- a national identity number: ``urn:oid:<issuer OID>`` (e.g.
  ``urn:oid:1.2.752.129.2.1.3.1`` for a Swedish personnummer), use official;
- a local Patient ID whose issuer is an organisation with an ISO universal
  entity ID (an OID), or is itself an OID: ``urn:oid:<that OID>``;
- any other local Patient ID: ``urn:samarkiv:issuer:<Issuer of Patient ID>``,
  the issuer percent-encoded (RFC 3986 2.1), so each organisation's local
  IDs have a namespace of their own even without an OID.

Reading a ``system|value`` token back goes through the identity module's
``canonicalise``, so an organisation's OID finds the IDs it keyed under its
Issuer of Patient ID, and a national number matches in any written form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import Connection, select

from ...identity.national import Issuer, national_kind_of_issuer
from ...identity.patients import Canonical, IdentityError, canonicalise
from ...index.identity_schema import organisations

OID_PREFIX = "urn:oid:"
LOCAL_PREFIX = "urn:samarkiv:issuer:"
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@dataclass(frozen=True)
class IssuerOrganisation:
    name: str
    oid: str | None  # its ISO universal entity ID


def issuer_organisations(conn: Connection) -> dict[str, IssuerOrganisation]:
    """Each organisation by every issuer text its Patient IDs are keyed under
    (Issuer of Patient ID, universal entity ID, code: see
    ``Organisation.patient_id_issuer``)."""
    found: dict[str, IssuerOrganisation] = {}
    rows = conn.execute(
        select(
            organisations.c.code,
            organisations.c.name,
            organisations.c.issuer_of_patient_id,
            organisations.c.issuer_ueid,
            organisations.c.issuer_ueid_type,
        ).order_by(organisations.c.pk.desc())  # the lowest pk wins, as in organisation_for_issuer
    )
    for r in rows:
        oid = r.issuer_ueid if r.issuer_ueid and (r.issuer_ueid_type or "ISO") == "ISO" else None
        org = IssuerOrganisation(r.name, oid)
        for key in (r.code, r.issuer_ueid, r.issuer_of_patient_id):
            if key:
                found[key] = org
    return found


def system_of(issuer: str, orgs: dict[str, IssuerOrganisation]) -> str:
    """The FHIR system URI of a canonical MPI issuer."""
    if national_kind_of_issuer(issuer) is not None:
        return OID_PREFIX + issuer
    org = orgs.get(issuer)
    if org is not None and org.oid:
        return OID_PREFIX + org.oid
    if _OID.fullmatch(issuer):
        return OID_PREFIX + issuer
    return LOCAL_PREFIX + quote(issuer, safe="")


def identifier_json(value: str, issuer: str, orgs: dict[str, IssuerOrganisation]) -> dict[str, Any]:
    """A Patient.identifier: national numbers official with type NI, local
    IDs usual with type MR and their organisation as assigner."""
    national = national_kind_of_issuer(issuer) is not None
    identifier: dict[str, Any] = {
        "use": "official" if national else "usual",
        "type": {"coding": [{"system": _V2_0203, "code": "NI" if national else "MR"}]},
        "system": system_of(issuer, orgs),
        "value": value,
    }
    org = orgs.get(issuer)
    if org is not None and not national:
        identifier["assigner"] = {"display": org.name}
    return identifier


def canonical_of(conn: Connection, system: str, value: str) -> Canonical | None:
    """The MPI key a ``system|value`` token names, or None for a system that
    names no issuer samarkiv knows of."""
    if not value:
        return None
    if system.lower().startswith(OID_PREFIX):
        oid = system[len(OID_PREFIX) :]
        if not _OID.fullmatch(oid):
            return None
        issuer = Issuer(universal=oid, universal_type="ISO")
    elif system.startswith(LOCAL_PREFIX):
        local = unquote(system[len(LOCAL_PREFIX) :])
        if not local:
            return None
        issuer = Issuer(local=local)
    else:
        return None
    try:
        return canonicalise(conn, value, issuer, None)
    except IdentityError:
        return None
