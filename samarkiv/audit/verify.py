"""``samarkiv audit verify``: walk the hash chain and name the first broken record.

Checks, in seq order (streamed, constant memory):

- seqs are dense from 1: a gap is a deleted record;
- each record's ``prev_hash`` is the previous record's hash: otherwise the
  records were reordered (or one was inserted);
- each record's hash is SHA-256 over its canonical encoding and
  ``prev_hash``: otherwise it was edited;
- its ``audit_patients`` rows are the patient keys inside the record;
- every anchor names an existing record with that record's hash, and the
  head row names the last record: otherwise records were deleted from the end
  or an anchor was altered;
- a closed review has the ``review`` record that closed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, select

from ..index.audit_schema import GENESIS_HASH, audit_anchors, audit_events, audit_head, audit_patients
from .events import chain_hash, patient_keys_of


@dataclass
class VerifyResult:
    records: int = 0
    anchors: int = 0
    head_seq: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (seq, what)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> tuple[int, str] | None:
        return min(self.problems) if self.problems else None


def verify_chain(conn: Connection, *, batch: int = 5000) -> VerifyResult:
    """Verify the whole trail (see the module docstring)."""
    result = VerifyResult()
    anchors = {int(a.seq): a.hash for a in conn.execute(select(audit_anchors.c.seq, audit_anchors.c.hash))}
    result.anchors = len(anchors)
    closed_reviews = {
        int(s) for s in conn.execute(select(audit_events.c.seq).where(audit_events.c.review_status == "closed")).scalars()
    }
    closing: set[int] = set()
    expected_seq, prev = 1, GENESIS_HASH
    last_seq, last_hash = 0, GENESIS_HASH
    patients = select(audit_patients.c.seq, audit_patients.c.patient_key).order_by(
        audit_patients.c.seq, audit_patients.c.patient_key
    )
    patient_rows = iter(conn.execution_options(yield_per=batch).execute(patients))
    pending_patient = next(patient_rows, None)
    for row in conn.execution_options(yield_per=batch).execute(select(audit_events).order_by(audit_events.c.seq)):
        record = row._mapping
        seq = int(record["seq"])
        result.records += 1
        if seq != expected_seq and not result.problems:
            if seq > expected_seq:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq} to {seq - 1}"
                result.problems.append((expected_seq, f"record {missing} missing (deleted)"))
            else:
                result.problems.append((seq, f"record {seq} out of sequence"))
        if record["prev_hash"] != prev:
            result.problems.append(
                (seq, f"record {seq} does not follow record {last_seq} (reordered, inserted or deleted records)")
            )
        if chain_hash(record["prev_hash"], record) != record["hash"]:
            result.problems.append((seq, f"record {seq} does not match its hash (edited)"))
        keys: list[int] = []
        while pending_patient is not None and int(pending_patient.seq) <= seq:
            if int(pending_patient.seq) == seq:
                keys.append(int(pending_patient.patient_key))
            else:
                result.problems.append((int(pending_patient.seq), f"patient index row of missing record {pending_patient.seq}"))
            pending_patient = next(patient_rows, None)
        if keys != patient_keys_of(record):
            result.problems.append((seq, f"record {seq}: patient index rows do not match the record (edited)"))
        if seq in anchors and anchors.pop(seq) != record["hash"]:
            result.problems.append((seq, f"anchor at record {seq} does not match the record (broken anchor)"))
        if record["action"] == "review" and record["detail"]:
            import json

            closes = json.loads(record["detail"]).get("closes")
            if isinstance(closes, int):
                closing.add(closes)
        expected_seq, prev, last_seq, last_hash = seq + 1, record["hash"], seq, record["hash"]
        if len(result.problems) > 100:
            break
    for seq in sorted(anchors):
        result.problems.append((seq, f"anchor at record {seq} names no record (records deleted from the end?)"))
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).first()
    if head is not None:
        result.head_seq = int(head.seq)
        if int(head.seq) > last_seq:
            result.problems.append((last_seq + 1, f"records {last_seq + 1} to {head.seq} missing (deleted from the end)"))
        elif int(head.seq) == last_seq and head.hash != last_hash:
            result.problems.append((last_seq, f"record {last_seq} does not match the chain head (edited)"))
    for seq in sorted(closed_reviews - closing):
        result.problems.append((seq, f"record {seq}: review closed without a review record (edited)"))
    return result
