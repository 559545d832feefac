"""Queries resolve identity: one Patient ID finds the person's studies everywhere.

C-FIND and QIDO-RS name a patient by Patient ID and, optionally, Issuer of
Patient ID. The catalogue files patients under canonical (Patient ID, issuer)
keys (patients.py), so before the query runs its patient keys are resolved
through the master patient index (IHE PIX-style cross-referencing):

* a key the MPI knows (a national number with its OID as issuer, or a local ID
  with its issuer) matches every identifier of that person, at every
  organisation;
* a Patient ID without issuer from a configured organisation means that
  organisation's own ID (colliding local IDs of other hospitals stay apart);
  from the embedded default organisation it matches any issuer, as before;
* wildcards and lists are matched as written (no cross-referencing).

Each answer then carries the identifier the querying organisation knows for
the person, where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Connection, Engine, and_, select, tuple_

from ..config import Settings
from ..index.query import Query
from ..index.schema import patients
from ..index.identity_schema import patient_identifiers
from .national import Issuer
from .organisations import Organisation, default_code
from .patients import IdentityError, canonicalise, persons_matching


@dataclass(frozen=True)
class PatientScope:
    """How a query's patient keys were resolved."""

    query: Query  # the query with the resolved keys made universal
    condition: ColumnElement[bool] | None  # the SQL that replaces them
    # the requester's own (Patient ID, issuer) for the person, to answer with
    local_key: tuple[str, str] | None = None

    def relabel(self, answer: Dataset) -> Dataset:
        """Show the requester's own identifier for the person (PS3.4 C.6.1.1.2.1)."""
        if self.local_key is not None and "PatientID" in answer:
            answer.PatientID, issuer = self.local_key
            if "IssuerOfPatientID" in answer:
                answer.IssuerOfPatientID = issuer
        return answer


def _single(value: str) -> bool:
    return bool(value) and not any(c in value for c in "*?\\")


def scope_patient_keys(
    engine: Engine, query: Query, requester: Organisation | None, settings: Settings
) -> PatientScope:
    """Resolve ``query``'s PatientID / IssuerOfPatientID keys (module docstring)."""
    patient_id = str(query.keys.get("PatientID") or "").strip()
    issuer_key = str(query.keys.get("IssuerOfPatientID") or "").strip()
    if not _single(patient_id) or (issuer_key and not _single(issuer_key)):
        return PatientScope(query, None)
    configured = requester is not None and requester.code != default_code(settings)
    if not issuer_key and not configured:
        return PatientScope(query, None)  # embedded defaults: any issuer, as written
    with engine.connect() as conn:
        return _resolved(conn, query, patient_id, issuer_key, requester)


def _resolved(
    conn: Connection, query: Query, patient_id: str, issuer_key: str, requester: Organisation | None
) -> PatientScope:
    try:
        canonical = canonicalise(conn, patient_id, Issuer(issuer_key), requester)
    except IdentityError:
        return PatientScope(query, None)
    if canonical.national is not None and not canonical.national.valid:
        return PatientScope(query, None)
    keys = dict(query.keys)
    keys["PatientID"] = ""
    if "IssuerOfPatientID" in keys:
        keys["IssuerOfPatientID"] = ""
    scoped = replace(query, keys=keys)
    key = tuple_(patients.c.patient_id, patients.c.issuer_of_patient_id)
    person_pks = list(conn.execute(persons_matching(canonical)).scalars())
    if not person_pks:
        exact = and_(
            patients.c.patient_id == canonical.identifier.value,
            patients.c.issuer_of_patient_id == canonical.identifier.issuer,
        )
        return PatientScope(scoped, exact)
    pi = patient_identifiers
    local = None
    if requester is not None:  # the requester's own identifier for the person, to answer with
        row = conn.execute(
            select(pi.c.value, pi.c.issuer)
            .where(pi.c.person_pk.in_(person_pks), pi.c.organisation_pk == requester.pk)
            .order_by(pi.c.pk)
            .limit(1)
        ).first()
        local = (row.value, row.issuer) if row is not None else None
    same_person = select(pi.c.value, pi.c.issuer).where(pi.c.person_pk.in_(person_pks))
    return PatientScope(scoped, key.in_(same_person), local)
