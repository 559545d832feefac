"""``samarkiv audit``: verify the chain, review flagged events, a patient's access log, export.

Exit status: 0 done (verify: the chain is intact), 1 the chain is broken or
the record/patient is unknown, 2 bad input or no index.
"""

# No ``from __future__ import annotations``: typer reads the annotations.
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..cli_common import ConfigOpt, DataOpt, IndexOpt, JsonOpt, cli_principal, console, err, index_engine
from ..cli_common import fail as _fail

audit_app = typer.Typer(no_args_is_help=True, help="The audit trail: verify, review, patient access logs, export.")



def _exit_code(exc: ValueError) -> int:
    from ..identity.patients import IdentityError
    from .review import UnknownRecord

    return 1 if isinstance(exc, (UnknownRecord, IdentityError)) else 2


def _engine(config: Optional[Path], data: Optional[Path], index_url: Optional[str]) -> Any:
    """The migrated index's engine (a writer on SQLite); errors become messages."""
    return index_engine(config, data, index_url, _exit_code)


def _cli_principal(by: Optional[str]) -> Any:
    return cli_principal(by, "auditor")


@audit_app.command("verify")
def verify(config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """Walk the hash chain; report the first broken record (exit 1)."""
    from .verify import verify_chain

    with _engine(config, data, index_url) as engine, engine.connect() as conn:
        result = verify_chain(conn)
    if as_json:
        console.print_json(json.dumps({
            "ok": result.ok, "records": result.records, "anchors": result.anchors,
            "first_broken": result.first[0] if result.first else None,
            "problems": [{"seq": s, "problem": p} for s, p in sorted(result.problems)],
        }))  # fmt: skip
    elif result.ok:
        console.print(f"audit trail intact: {result.records} records, {result.anchors} anchors")
    else:
        seq, problem = result.first  # type: ignore[misc]
        console.print(f"audit trail BROKEN at record {seq}: {problem}")
        for s, p in sorted(result.problems)[1:10]:
            console.print(f"  also record {s}: {p}")
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("review")
def review(
    org: Annotated[Optional[str], typer.Option("--org", help="Only events of this organisation's users or data.")] = None,
    close: Annotated[Optional[int], typer.Option("--close", help="Close the review of this record (its seq).")] = None,
    note: Annotated[str, typer.Option("--note", help="The auditor's conclusion (needed with --close).")] = "",
    by: Annotated[Optional[str], typer.Option("--by", help="Who reviews [default: the login name].")] = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List break-glass and flagged events awaiting review, or close one."""
    from ..cli import settings_from
    from .config import audit_settings
    from .review import close_review, pending_reviews

    if close is not None:
        if not note.strip():
            raise _fail("--close needs --note saying what the review found", 2)
        cfg = audit_settings(settings_from(config, data=data, index_url=index_url))
        with _engine(config, data, index_url) as engine, engine.begin() as conn:
            seq = close_review(
                conn, close, note=note, by=_cli_principal(by),
                anchor_every=cfg.anchor_every, anchor_seconds=cfg.anchor_seconds,
            )  # fmt: skip
        console.print(f"review of record {close} closed (audit record {seq})")
        return
    with _engine(config, data, index_url) as engine, engine.connect() as conn:
        rows = pending_reviews(conn, org)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    if not rows:
        console.print("nothing awaits review")
        return
    table = Table(title="awaiting review")
    for column in ("seq", "time", "action", "who", "organisation", "patients", "study", "reason"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["seq"]), str(r["time"])[:19], r["action"], r["user_name"], r["org_code"] or "",
            r["patient_keys"], r["study_uid"] or "", r["reason"],
        )  # fmt: skip
    console.print(table)


@audit_app.command("patient")
def patient(
    who: Annotated[str, typer.Argument(help="National number, VALUE^ISSUER (local ID and issuer), or person number.")],
    since: Annotated[Optional[str], typer.Option("--since", help="Only from this date (YYYY-MM-DD).")] = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The patient's access log in plain words: who accessed their data, when and why."""
    from .access_log import access_log, resolve_patient

    start = None
    if since:
        try:
            start = date.fromisoformat(since)
        except ValueError:
            raise _fail(f"--since {since!r}: write YYYY-MM-DD", 2) from None
    with _engine(config, data, index_url) as engine, engine.connect() as conn:
        person = resolve_patient(conn, who)
        entries = access_log(conn, person, since=start)
    if as_json:
        console.print_json(json.dumps({"patient": person, "entries": [e.as_dict() for e in entries]}))
        return
    if not entries:
        console.print(f"No one has accessed the records of person {person}.")
    for e in entries:
        console.print(e.text, markup=False, highlight=False)


@audit_app.command("export")
def export(
    ndjson: Annotated[bool, typer.Option("--ndjson", help="FHIR R4 AuditEvent resources, one JSON per line.")] = False,
    patient: Annotated[Optional[str], typer.Option("--patient", help="Only this patient's records.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only from this instant or date (ISO 8601).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write [default: stdout].")] = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Export the trail as FHIR AuditEvent NDJSON."""
    from .access_log import resolve_patient
    from .fhir import ndjson as ndjson_lines

    if not ndjson:
        raise _fail("name the format: --ndjson", 2)
    start = None
    if since:
        try:
            start = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise _fail(f"--since {since!r}: write an ISO 8601 date or instant", 2) from None
    out = open(output, "wb") if output else sys.stdout.buffer
    n = 0
    try:
        with _engine(config, data, index_url) as engine, engine.connect() as conn:
            params = [("patient", str(resolve_patient(conn, patient)))] if patient else []
            for line in ndjson_lines(conn, params, since=start):
                out.write(line)
                n += 1
    finally:
        if output:
            out.close()
        else:
            out.flush()
    if output:
        err.print(f"{n} AuditEvent resources written to {output}")
