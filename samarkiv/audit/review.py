"""Reviews: break-glass and flagged records awaiting an auditor (``samarkiv audit review``).

A flagged record (every break-glass) is ``pending`` until an auditor closes
it with a note. Closing updates the record's review columns (which the hash
does not cover) and appends a ``review`` record naming it (which it does),
in one transaction, so ``audit verify`` notices a review closed by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, or_, select, update

from ..access.principal import Principal
from ..index.audit_schema import audit_events
from .events import AuditError, AuditEvent, row_of
from .trail import append_rows


class UnknownRecord(AuditError):
    """No such audit record, or none awaiting review."""


def pending_reviews(conn: Connection, org: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Records awaiting review, oldest first; ``org``: those of its users or of its data."""
    q = select(audit_events).where(audit_events.c.review_status == "pending")
    if org:
        q = q.where(or_(audit_events.c.org_code == org, audit_events.c.owner_org == org))
    return [dict(r._mapping) for r in conn.execute(q.order_by(audit_events.c.seq).limit(limit))]


def close_review(conn: Connection, seq: int, *, note: str, by: Principal, **append: Any) -> int:
    """Close the review of record ``seq`` with ``note``; returns the seq of the ``review`` record."""
    if not note.strip():
        raise AuditError("closing a review needs a note")
    row = conn.execute(select(audit_events.c.review_status).where(audit_events.c.seq == seq)).first()
    if row is None:
        raise UnknownRecord(f"no audit record {seq}")
    if row.review_status != "pending":
        raise UnknownRecord(f"audit record {seq} is not awaiting review")
    event = AuditEvent(
        "review", by, purpose="HCOMPL", reason=note, detail={"closes": seq}, time=datetime.now(UTC)
    )
    (record,) = append_rows(conn, [row_of(event)], **append)
    conn.execute(
        update(audit_events)
        .where(audit_events.c.seq == seq)
        .values(review_status="closed", review_note=note, reviewed_by=by.name, reviewed_at=event.time)
    )
    return int(record["seq"])
