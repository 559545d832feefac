"""A legacy archive that refuses associations (dcmqrscp with MaxAssociations=1):
the migration retries with backoff and ends complete; when the retries run
out, the report names each failed instance with the reason."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from _dcmqrscp import LEGACY_AET, legacy_storage, start_legacy  # noqa: F401 - fixtures


def _status(server, name: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(server.cli("migrate", "status", name, "--json").stdout)


def _add(server, name: str, legacy, *extra: str) -> None:  # type: ignore[no-untyped-def]
    server.cli(
        "migrate", "add", name, "--source", "dimse", "--host", "127.0.0.1", "--port", str(legacy.port),
        "--called-aet", LEGACY_AET, "--mode", "get", *extra,
    )  # fmt: skip


def test_refused_associations_are_retried_to_a_complete_migration(make_archive, start_legacy) -> None:  # type: ignore[no-untyped-def]
    server = make_archive(start=False)
    legacy = start_legacy(max_associations=1)  # forks, and refuses a second association (A-ASSOCIATE-RJ)
    _add(server, "busy", legacy, "--associations", "4", "--retries", "10", "--backoff", "0.05")
    run = server.cli("migrate", "run", "busy", "--no-progress")
    # the job log shows the refusals and the retries
    assert "rejected; retry 1/10" in run.stderr
    assert "retried with backoff" in run.stdout
    status = _status(server, "busy")
    assert status["studies"] == {"done": 18}
    assert status["instances"] == {"migrated": len(legacy.files)}
    verified = server.cli("migrate", "verify", "busy", "--sample", "1")
    assert "verified 18/18 studies" in verified.stdout and "0 missing, 0 mismatched" in verified.stdout


def test_retries_that_run_out_leave_failed_rows_with_the_reason(make_archive, start_legacy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_archive(start=False)
    legacy = start_legacy(max_associations=1)
    # a second left to dcmqrscp's previous child to exit between associations, even on a loaded machine
    _add(server, "held", legacy, "--associations", "1", "--retries", "1", "--backoff", "1.0")
    server.cli("migrate", "plan", "held")  # the plan is known: 18 studies, every instance listed
    assert _status(server, "held")["instances"] == {"pending": len(legacy.files)}

    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    assoc = holder.associate("127.0.0.1", legacy.port, ae_title=LEGACY_AET)  # takes the only association
    assert assoc.is_established
    try:
        run = server.cli("migrate", "run", "held", "--no-progress", check=False)
    finally:
        assoc.release()
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "retry 1/1" in run.stderr
    status = _status(server, "held")
    assert status["studies"] == {"failed": 18} and status["instances"] == {"failed": len(legacy.files)}
    server.cli("migrate", "report", "held", "--out", str(tmp_path))
    rows = list(csv.DictReader((tmp_path / "held.csv").open()))
    assert len(rows) == len(legacy.files)
    # refused (A-ASSOCIATE-RJ) or, when dcmqrscp's fork had already begun, aborted
    assert all(r["state"] == "failed" and re.fullmatch(r"association with LEGACY@\S+ (rejected|aborted)", r["reason"]) for r in rows)
    assert "association with LEGACY" in (tmp_path / "held.html").read_text()

    # the source is free again: a rerun completes the job
    server.cli("migrate", "run", "held", "--no-progress")
    assert _status(server, "held")["instances"] == {"migrated": len(legacy.files)}
