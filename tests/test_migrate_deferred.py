"""The migration exception to fsync-before-ack (samarkiv/migrate/deferred.py).

A migration pull is answered before its grouped commit, and a SIGKILL of the
migrating process (C-GET) or of it and ``serve`` (C-MOVE) mid-pull still ends,
after a resume, with exactly the source's content and a clean verification.
Every other C-STORE, including one naming another move originator, is still
answered only after its commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _dcmqrscp import LEGACY_AET, legacy_storage, start_legacy  # noqa: F401 - fixtures
from conftest import stored_object
from test_migrate_dimse import _assert_holds_exactly, _open, _status

MIGRATOR = "SAMARKIV-MIG"
INLINE_MAX = 128 << 10  # larger objects are stored from a file


def _run_command(server, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [sys.executable, "-m", "samarkiv", "migrate", "run", name, "--no-progress",
            "--data", str(server.data), "--index-url", server.index_url]  # fmt: skip


def _move_job(make_archive, legacy_factory, name: str):  # type: ignore[no-untyped-def]
    """A running archive, a dcmqrscp that knows it as a C-MOVE destination, and a C-MOVE job ``name``."""
    server = make_archive()
    legacy = legacy_factory({server.aet: ("127.0.0.1", server.dicom_port)})
    server.cli(
        "migrate", "add", name, "--source", "dimse", "--host", "127.0.0.1", "--port", str(legacy.port),
        "--called-aet", LEGACY_AET, "--calling-aet", MIGRATOR, "--mode", "move", "--move-aet", server.aet,
        "--associations", "2", "--max-rate", "80",
    )  # fmt: skip
    return server, legacy


def _run_killed(server, name: str, also_kill=None) -> int:  # type: ignore[no-untyped-def]
    """Start ``migrate run``; SIGKILL it (and ``also_kill``) once 3 studies are done; the studies done then."""
    process = subprocess.Popen(_run_command(server, name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        done = _status(server, name)["studies"].get("done", 0)
        if done >= 3:
            break
        time.sleep(0.2)
    process.kill()  # SIGKILL: no cleanup at all
    if also_kill is not None:
        also_kill.kill()
    process.wait()
    return done


def _resume_and_check(server, name: str, legacy) -> None:  # type: ignore[no-untyped-def]
    server.cli("migrate", "run", name, "--no-progress")
    status = _status(server, name)
    assert status["studies"] == {"done": 18}
    assert status["instances"] == {"migrated": len(legacy.files)}
    _assert_holds_exactly(server, legacy.files)
    assert "verified 18/18 studies" in (out := server.cli("migrate", "verify", name).stdout)
    assert "0 missing, 0 mismatched" in out


def test_cget_killed_mid_pull_resumes_to_the_exact_source(make_archive, start_legacy) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = make_archive(start=False)
    legacy = start_legacy()
    server.cli(
        "migrate", "add", "get-kill", "--source", "dimse", "--host", "127.0.0.1", "--port", str(legacy.port),
        "--called-aet", LEGACY_AET, "--mode", "get", "--associations", "2", "--max-rate", "80",
    )  # fmt: skip
    done = _run_killed(server, "get-kill")
    assert 3 <= done < 18, "the run should be killed part-way"
    _resume_and_check(server, "get-kill", legacy)


def test_cmove_killed_with_serve_mid_pull_resumes_to_the_exact_source(make_archive, start_legacy) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server, legacy = _move_job(make_archive, start_legacy, "move-kill")
    done = _run_killed(server, "move-kill", also_kill=server)
    assert 3 <= done < 18, "the run should be killed part-way"
    # serve took the migration's sub-operations through the deferred path
    assert f"migrations of {MIGRATOR}: answered before their grouped commit" in server.log.read_text()
    server.start()
    _resume_and_check(server, "move-kill", legacy)


def test_a_killed_move_worker_costs_a_retry_and_nothing_else(make_archive, start_legacy) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """serve's worker process for a migration association (migrate/moveproc.py) is SIGKILLed
    mid-run: the association drops, serve goes on, and the job's retries complete it exactly."""
    server, legacy = _move_job(make_archive, start_legacy, "move-worker")
    run = subprocess.Popen(_run_command(server, "move-worker"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        workers = _children(server.process.pid)
        if workers and _status(server, "move-worker")["studies"].get("done", 0) >= 2:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    _stderr = run.communicate(timeout=300)[1]
    assert killed is not None, "serve handed no association to a worker"
    assert run.returncode == 0, _stderr
    assert server.process.poll() is None  # serve lives on
    status = _status(server, "move-worker")
    assert status["studies"] == {"done": 18} and status["instances"] == {"migrated": len(legacy.files)}
    _assert_holds_exactly(server, legacy.files)
    assert "0 missing, 0 mismatched" in server.cli("migrate", "verify", "move-worker").stdout


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _send(port: int, files: list[Path], originator: str | None | list[str | None]) -> list[str]:
    """C-STORE each file over one association (Move Originator AE Title ``originator``, or each
    file's in a list); the SOP Instance UIDs answered Success."""
    from pydicom import dcmread
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title="SAMARKIV")
    assert assoc.is_established
    acknowledged = []
    try:
        originators = originator if isinstance(originator, list) else [originator] * len(files)
        for path, sender in zip(files, originators, strict=True):
            ds = dcmread(path)
            status = assoc.send_c_store(ds, originator_aet=sender, originator_id=7 if sender else None)
            if status and status.Status == 0x0000:
                acknowledged.append(str(ds.SOPInstanceUID))
    finally:
        assoc.abort()
    return acknowledged


def test_ordinary_stores_are_still_answered_after_their_commit(make_archive, legacy_storage, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from samarkiv.migrate.deferred import MigrationIntake, MoveJob
    from samarkiv.migrate.mapping import Mapping
    from samarkiv.migrate.job import JobStore

    server = make_archive(f"inline_max_bytes = {INLINE_MAX}\n")
    _storage, files = legacy_storage
    archive = _open(server)
    try:
        jobs = JobStore(archive.engine, archive.catalog.writer)
        job = jobs.create("running-move", "dimse", {"host": "127.0.0.1", "port": 1, "calling_aet": MIGRATOR,
                                                     "mode": "move", "move_aet": server.aet})  # fmt: skip
        jobs.set_job(job, state="running")
        intake = MigrationIntake(archive)
        assert intake.job_for(MIGRATOR) == MoveJob(job.pk, MIGRATOR, Mapping(), None)
        assert intake.job_for("OTHER-AE") is None and intake.job_for("") is None and intake.job_for(None) is None
        jobs.set_job(job, state="done")
        assert MigrationIntake(archive).job_for(MIGRATOR) is None  # only while the job runs
        jobs.set_job(job, state="running")
    finally:
        archive.close()

    half = len(files) // 2
    acknowledged = _send(server.dicom_port, files[:half], None) + _send(server.dicom_port, files[half:], "OTHER-AE")
    # an association that carried the running job's sub-operations goes to a worker process
    # (migrate/moveproc.py), which has serve store every other C-STORE on it the ordinary way
    # (the last two larger than inline_max_bytes: stored from a file, the ordinary way, job or not)
    senders = [MIGRATOR, MIGRATOR, None, MIGRATOR, "OTHER-AE", None, MIGRATOR, None]
    mixed = _copies(files[:6], tmp_path) + _copies(files[6:8], tmp_path, pad=INLINE_MAX)
    answered = _send(server.dicom_port, mixed, senders)
    server.kill()  # SIGKILL the moment the last answer is in: each answered store must be committed
    assert len(acknowledged) == len(files) and len(answered) == len(mixed)
    assert "handed to a worker process" in server.log.read_text()
    acknowledged += [uid for uid, sender in zip(answered, senders, strict=True) if sender != MIGRATOR]
    archive = _open(server)
    try:
        stored = archive.catalog.instances_by_uid(acknowledged)
    finally:
        archive.close()
    assert set(stored) == set(acknowledged)


def _copies(files: list[Path], folder: Path, pad: int = 0) -> list[Path]:
    """The files again as new instances (new SOP Instance UIDs), ``pad`` bytes larger (a private element)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    copies = []
    for path in files:
        ds = dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if pad:
            ds.private_block(0x0099, "SAMARKIV TEST", create=True).add_new(0x01, "OB", b"\0" * pad)
        copies.append(folder / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


def test_the_cmove_intake_commits_its_groups_straight_to_blob_files(tmp_path, legacy_storage) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """``serve``'s C-MOVE intake writes a group's objects to blob files, made durable with the
    commit, not into the write-back journal: nothing is left to write back after a migration."""
    from sqlalchemy import text

    from samarkiv.config import load_settings
    from samarkiv.core.archive import INLINE_PREFIX, Archive
    from samarkiv.migrate.deferred import MigrationIntake, MoveJob
    from samarkiv.migrate.mapping import Mapping

    _storage, files = legacy_storage
    config = tmp_path / "samarkiv.toml"
    config.write_text("journal_idle_seconds = 3600\n")  # no write-back while the test looks
    archive = Archive(load_settings(config, data=tmp_path / "data"))
    try:
        intake, job = MigrationIntake(archive), MoveJob(0, "SAMARKIV-MIG", Mapping(), None)
        for path in files:
            intake.submit(path.read_bytes(), "LEGACY", None, None, job)
        intake.drain()
        stored = archive.catalog.instances_by_uid([_sop_instance_uid(path) for path in files])
        assert len(stored) == len(files)
        assert not any(row.blob_key.startswith(INLINE_PREFIX) for row in stored.values())
        with archive.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM inline_blobs")).scalar_one() == 0
        by_uid = {_sop_instance_uid(path): path.read_bytes() for path in files}
        assert all(stored_object(archive, row) == by_uid[uid] for uid, row in stored.items())
    finally:
        archive.close()


def _sop_instance_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
