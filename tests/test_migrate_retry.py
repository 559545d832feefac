"""A legacy archive that refuses associations (dcmqrscp with MaxAssociations=1)
or stops answering (dcmqrscp frozen with SIGSTOP: connections still land in
the listen backlog, but no association is answered and a transfer in progress
stalls): the migration retries with backoff and ends complete; when the
retries run out, the report names each failed instance with the reason."""

from __future__ import annotations

import csv
import json
import re
import threading
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from _dcmqrscp import LEGACY_AET, legacy_storage, start_legacy  # noqa: F401 - fixtures
from samarkiv.migrate.job import JobStore
from test_migrate_dimse import _open


def _status(server, name: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(server.cli("migrate", "status", name, "--json").stdout)


def _add(server, name: str, legacy, *extra: str) -> None:  # type: ignore[no-untyped-def]
    server.cli(
        "migrate", "add", name, "--source", "dimse", "--host", "127.0.0.1", "--port", str(legacy.port),
        "--called-aet", LEGACY_AET, "--mode", "get", *extra,
    )  # fmt: skip


def test_refused_associations_are_retried_to_a_complete_migration(make_archive, start_legacy) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
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


def test_retries_that_run_out_leave_failed_rows_with_the_reason(make_archive, start_legacy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = make_archive(start=False)
    legacy = start_legacy(max_associations=1)
    # dcmqrscp forgets a finished association's child about once a second: back off longer than that
    _add(server, "held", legacy, "--associations", "1", "--retries", "1", "--backoff", "2.0")
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


TIMED_OUT = "timed out: no answer within 2s"  # the requestor's wording, for --timeout 2


def _written(pid: int) -> int:
    """Bytes a process has written (sockets included), 0 once it is gone."""
    try:
        return int(next(line for line in open(f"/proc/{pid}/io") if line.startswith("wchar:")).split()[1])
    except (OSError, StopIteration):
        return 0


def _answering_again(legacy) -> None:  # type: ignore[no-untyped-def]
    """After a thaw: wait until dcmqrscp has worked through the connections left in its backlog
    (each forks a child that finds the requestor gone) and takes an association again."""
    probe = AE(ae_title="PROBE")
    probe.add_requested_context(Verification)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assoc = probe.associate("127.0.0.1", legacy.port, ae_title=LEGACY_AET)
        if assoc.is_established:
            assoc.release()
            break
        time.sleep(0.2)
    while legacy.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not legacy.children()


def test_a_source_frozen_mid_transfer_times_out_and_the_retries_complete_the_migration(make_archive, start_legacy) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = make_archive(start=False)
    legacy = start_legacy()
    _add(server, "frozen", legacy, "--associations", "2", "--timeout", "2", "--retries", "5", "--backoff", "0.5")
    server.cli("migrate", "plan", "frozen")  # the listing is done: the run only pulls (one C-GET association per study)

    done, frozen = threading.Event(), threading.Event()

    def freeze_mid_transfer() -> None:
        # once an association has sent some C-STORE sub-operations, freeze the source for 3x the timeout
        while not done.is_set():
            if any(_written(child) > 16384 for child in legacy.children()):
                legacy.freeze()
                frozen.set()
                done.wait(6.0)
                legacy.thaw()
                return
            time.sleep(0.0005)

    freezer = threading.Thread(target=freeze_mid_transfer, daemon=True)
    freezer.start()
    started = time.monotonic()
    try:
        run = server.cli("migrate", "run", "frozen", "--no-progress", check=False)
    finally:
        done.set()
        freezer.join()
        legacy.thaw()
    assert frozen.is_set(), "the run ended before an association was caught mid-transfer"
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert time.monotonic() - started > 6  # the run waited the freeze out
    # the job log: the C-GET that stalled mid-transfer, the associations asked for while frozen, the retries
    assert re.search(rf"C-GET with LEGACY@127\.0\.0\.1:\d+ {TIMED_OUT}; retry 1/5", run.stderr), run.stderr
    assert re.search(rf"association with LEGACY@127\.0\.0\.1:\d+ {TIMED_OUT}; retry [2-5]/5", run.stderr), run.stderr
    assert "retried with backoff" in run.stdout and "migration frozen (dimse): done" in run.stdout
    status = _status(server, "frozen")
    assert status["state"] == "done" and status["studies"] == {"done": 18}
    assert status["instances"] == {"migrated": len(legacy.files)}
    verified = server.cli("migrate", "verify", "frozen", "--sample", "1")
    assert "verified 18/18 studies" in verified.stdout and "0 missing, 0 mismatched" in verified.stdout


def test_a_source_frozen_longer_than_the_retries_fails_with_the_timeout_then_a_rerun_completes(make_archive, start_legacy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = make_archive(start=False)
    legacy = start_legacy()
    _add(server, "stuck", legacy, "--associations", "6", "--timeout", "2", "--retries", "1", "--backoff", "0.1")
    server.cli("migrate", "plan", "stuck")
    assert _status(server, "stuck")["instances"] == {"pending": len(legacy.files)}

    legacy.freeze()  # for the whole run: every association request goes unanswered
    try:
        run = server.cli("migrate", "run", "stuck", "--no-progress", check=False)
    finally:
        legacy.thaw()
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert re.search(rf"association with LEGACY@127\.0\.0\.1:\d+ {TIMED_OUT}; retry 1/1", run.stderr), run.stderr
    # --retries 1: two attempts per study, one retry each, no more (and never a wait without a bound)
    assert run.stderr.count("; retry 1/1 in 0.1s") == 18 and "retry 2/" not in run.stderr
    assert "18 busy/refused/timed-out source call(s) retried with backoff" in run.stdout
    assert "migration stuck (dimse): failed" in run.stdout
    status = _status(server, "stuck")
    assert status["state"] == "failed"
    assert status["studies"] == {"failed": 18} and status["instances"] == {"failed": len(legacy.files)}
    server.cli("migrate", "report", "stuck", "--out", str(tmp_path))
    rows = list(csv.DictReader((tmp_path / "stuck.csv").open()))
    assert len(rows) == len(legacy.files)
    reason = rf"association with LEGACY@127\.0\.0\.1:{legacy.port} {TIMED_OUT}"
    assert all(r["state"] == "failed" and re.fullmatch(reason, r["reason"]) for r in rows), rows[0]
    assert f"association with LEGACY@127.0.0.1:{legacy.port} {TIMED_OUT}" in (tmp_path / "stuck.html").read_text()

    # the source answers again: a rerun, given a source's usual patience, completes the job
    _answering_again(legacy)
    server.cli("migrate", "run", "stuck", "--no-progress", "--timeout", "30", "--retries", "4")
    archive = _open(server)
    try:
        options = JobStore(archive.engine).get("stuck").options
        assert options["timeout"] == 30 and options["retries"] == 4  # kept for later runs
    finally:
        archive.close()
    status = _status(server, "stuck")
    assert status["state"] == "done" and status["instances"] == {"migrated": len(legacy.files)}
