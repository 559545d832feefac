"""The gate every door passes: the access policy applied and the access audited.

Doors (DIMSE C-FIND/C-GET/C-MOVE, DICOMweb, WADO-URI, FHIR, the CLI) hold a
:class:`~samarkiv.access.principal.Principal` and call the gate, never the
policy or the audit trail directly:

* :meth:`Gate.query_condition` — the SQL condition a query ANDs in
  (``policy.visible_condition``) and one ``query`` audit record.
* :meth:`Gate.authorise` — one decision per study for a retrieve, view,
  download or store (``policy.decide``, the facts of all studies read in one
  query), one audit record per study, allowed or denied.
* :meth:`Gate.audit` — any other audited access.
* :class:`StoreAudit` — the ``store`` records of one sender's stores (a DIMSE
  association, an import, a migration run): one per study, at its first
  stored instance (PS3.15 A.5.3.2 "DICOM Instances Transferred" is per study).

The archive's own jobs act as :data:`~samarkiv.access.principal.SYSTEM` and
are neither filtered nor audited here. ``Archive.gate`` is the process's gate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Result, and_, bindparam, select

from ..audit import AuditEvent
from ..index.identity_schema import organisations, patient_identifiers
from ..index.schema import instances, patients, series, studies
from .policy import Decision, decide, visible_condition
from .principal import Principal

if TYPE_CHECKING:
    from ..core.archive import Archive


@dataclass
class StudyFacts:
    """What the policy needs to know about one study."""

    person_pks: set[int] = field(default_factory=set)
    owner_org_pks: set[int] = field(default_factory=set)
    owner_codes: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Authorised:
    """The studies a principal may act on, and why the others were refused."""

    allowed: dict[str, Decision]
    denied: dict[str, Decision]

    @property
    def all_denied(self) -> bool:
        return bool(self.denied) and not self.allowed


# built once: building it cost three times what running it did (measured, a migration's per-study audit)
_STUDY_PERSONS = (
    select(studies.c.study_instance_uid, patient_identifiers.c.person_pk)
    .join(patients, patients.c.pk == studies.c.patient_pk)
    .join(patient_identifiers, and_(patient_identifiers.c.value == patients.c.patient_id,
                                    patient_identifiers.c.issuer == patients.c.issuer_of_patient_id))
    .where(studies.c.study_instance_uid.in_(bindparam("uids", expanding=True)), patient_identifiers.c.person_pk.isnot(None))
)  # fmt: skip


def study_persons(conn: Connection, study_uids: Sequence[str]) -> Result[tuple[str, int]]:
    """(Study Instance UID, person pk) of each study's patient, one indexed query."""
    return conn.execute(_STUDY_PERSONS, {"uids": list(study_uids)})  # type: ignore[return-value]


def study_facts(conn: Connection, study_uids: Iterable[str]) -> dict[str, StudyFacts]:
    """Persons and owning organisations of each study, in two indexed queries."""
    uids = sorted(set(study_uids))
    facts: dict[str, StudyFacts] = {uid: StudyFacts() for uid in uids}
    if not uids:
        return facts
    for uid, person in study_persons(conn, uids):
        facts[uid].person_pks.add(person)
    for uid, org_pk, code in conn.execute(
        select(studies.c.study_instance_uid, instances.c.org_pk, organisations.c.code)
        .distinct()
        .join(series, series.c.study_pk == studies.c.pk)
        .join(instances, instances.c.series_pk == series.c.pk)
        .outerjoin(organisations, organisations.c.pk == instances.c.org_pk)
        .where(studies.c.study_instance_uid.in_(uids), instances.c.org_pk.isnot(None))
    ):
        facts[uid].owner_org_pks.add(org_pk)
        if code:
            facts[uid].owner_codes.add(code)
    return facts


class Gate:
    """Policy and audit for one archive (see the module docstring)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def audit(self, event: AuditEvent) -> None:
        if event.principal is None or event.principal.kind != "system":
            self.archive.audit.record(event)

    def query_condition(
        self, principal: Principal, level: str, *, detail: dict[str, Any] | None = None
    ) -> ColumnElement[bool] | None:
        """The condition keeping only what ``principal`` may see at ``level``; the
        query is audited (its keys in ``detail``)."""
        if principal.kind == "system":
            return None
        with self.archive.engine.connect() as conn:
            condition = visible_condition(conn, principal, level)
        self.audit(AuditEvent("query", principal, detail=detail or {}))
        return condition

    def authorise(
        self, principal: Principal, action: str, study_uids: Iterable[str], *, counts: dict[str, int] | None = None
    ) -> Authorised:
        """One decision per study for ``action``; each audited (``counts``: the
        number of objects concerned per study, for the record)."""
        uids = sorted(set(study_uids))
        allowed: dict[str, Decision] = {}
        denied: dict[str, Decision] = {}
        if principal.kind == "system":
            return Authorised({uid: Decision(True, "system") for uid in uids}, {})
        with self.archive.engine.connect() as conn:
            facts = study_facts(conn, uids)
            for uid in uids:
                f = facts[uid]
                d = decide(conn, principal, action, person_pks=f.person_pks, study_uid=uid, owner_org_pks=f.owner_org_pks)
                (allowed if d.allowed else denied)[uid] = d
                self.audit(
                    AuditEvent(
                        action, principal, outcome="allowed" if d.allowed else "denied",
                        patient_keys=sorted(f.person_pks), owner_org=",".join(sorted(f.owner_codes)) or None,
                        study_uid=uid, count=(counts or {}).get(uid), **d.audit_fields(),
                    )  # fmt: skip
                )
        return Authorised(allowed, denied)


class StoreAudit:
    """The ``store`` audit records of one sender's stores (module docstring)."""

    def __init__(self, archive: Archive, principal: Principal | None, door: str) -> None:
        self.archive, self.principal, self.door = archive, principal, door
        self._studies: set[str] = set()

    def note(self, study_uid: str | None, count: int | None = None) -> None:
        """Instances of ``study_uid`` stored (or already stored; ``count`` of them, where
        known): audited the first time the study is named."""
        if study_uid is None or study_uid in self._studies:
            return
        self._studies.add(study_uid)
        with self.archive.engine.connect() as conn:
            persons = sorted({person for _uid, person in study_persons(conn, [study_uid])})
        self.archive.gate.audit(AuditEvent(
            "store", self.principal, study_uid=study_uid, patient_keys=persons, count=count,
            owner_org=self.principal.org_code if self.principal else None, purpose="TREAT", detail={"door": self.door},
        ))  # fmt: skip
