"""Migration from DCMTK's dcmqrscp as a legacy DIMSE archive: C-FIND + C-MOVE / C-GET,
kill and resume, verification and reports; the throttle's schedule."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from io import BytesIO
from pathlib import Path

import pytest

from _dcmqrscp import LEGACY_AET, start_legacy, legacy_storage  # noqa: F401 - fixtures
from conftest import audit_records, dataset_bytes, stored_object
from pydicom import dcmread
from samarkiv.migrate.throttle import Throttle, Window


def _open(server):  # type: ignore[no-untyped-def]
    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive

    return Archive(load_settings(None, data=server.data, index_url=server.index_url))


def _assert_holds_exactly(server, files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """The archive holds every source instance, byte-identical after the File Meta."""
    from pydicom import dcmread

    archive = _open(server)
    try:
        uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        stored = archive.catalog.instances_by_uid(list(uids))
        assert set(stored) == set(uids)
        differ = [
            (path.name, stored[uid].transfer_syntax_uid, len(dataset_bytes(stored_object(archive, stored[uid]))), len(dataset_bytes(path)))
            for uid, path in uids.items()
            if dataset_bytes(stored_object(archive, stored[uid])) != dataset_bytes(path)
        ]
        assert not differ, differ[:5]
        assert archive.catalog.counts()["instances"] == len(uids)
    finally:
        archive.close()


def _status(server, name: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(server.cli("migrate", "status", name, "--json").stdout)


def test_cmove_migrates_everything_byte_identical_then_verifies_and_reports(archive, start_legacy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    legacy = start_legacy({archive.aet: ("127.0.0.1", archive.dicom_port)})
    archive.cli(
        "migrate", "add", "old-pacs", "--source", "dimse", "--host", "127.0.0.1", "--port", str(legacy.port),
        "--called-aet", LEGACY_AET, "--mode", "move", "--move-aet", archive.aet,
        "--from-date", "20190101", "--to-date", "20191231", "--window-days", "60", "--max-results", "4",
        "--associations", "3",
    )  # fmt: skip
    archive.cli("migrate", "run", "old-pacs", "--no-progress")
    status = _status(archive, "old-pacs")
    assert status["studies"] == {"done": 18}
    assert status["instances"] == {"migrated": len(legacy.files)}
    _assert_holds_exactly(archive, legacy.files)

    # a rerun moves nothing: every study is done
    again = archive.cli("migrate", "run", "old-pacs", "--no-progress")
    assert "done" in again.stdout
    verified = archive.cli("migrate", "verify", "old-pacs", "--sample", "2")
    assert "verified 18/18 studies" in verified.stdout and "0 missing, 0 mismatched" in verified.stdout
    archive.cli("migrate", "report", "old-pacs", "--out", str(tmp_path / "report"))
    csv = (tmp_path / "report" / "old-pacs.csv").read_text().splitlines()
    assert len(csv) == 1 + len(legacy.files) and all(",migrated," in line for line in csv[1:])
    assert "Migration old-pacs" in (tmp_path / "report" / "old-pacs.html").read_text()


def test_cget_into_this_process_skips_what_is_present(make_archive, start_legacy) -> None:  # type: ignore[no-untyped-def]
    server = make_archive(start=False)
    legacy = start_legacy()
    # one study's worth already in the archive before the migration: skipped as present
    from samarkiv.core.archive import StoreOutcome

    archive = _open(server)
    first = sorted(legacy.files)[0]
    assert archive.store_bytes(first.read_bytes()).outcome is StoreOutcome.STORED
    archive.flush_all()
    archive.close()
    server.cli(
        "migrate", "add", "get-pacs", "--source", "dimse", "--host", "127.0.0.1", "--port", str(legacy.port),
        "--called-aet", LEGACY_AET, "--mode", "get", "--associations", "2",
    )  # fmt: skip
    server.cli("migrate", "run", "get-pacs", "--no-progress")
    status = _status(server, "get-pacs")
    assert status["instances"] == {"migrated": len(legacy.files) - 1, "present": 1}
    # each study is audited once as stored by the job, with the count it pulled
    records = [r for r in audit_records(server.index_url, "store") if r["user_name"] == "migration:get-pacs"]
    studies = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in legacy.files}
    assert sorted(r["study_uid"] for r in records) == sorted(studies)
    assert sum(r["object_count"] for r in records) == len(legacy.files) - 1
    _assert_holds_exactly(server, legacy.files)
    assert "0 missing, 0 mismatched" in server.cli("migrate", "verify", "get-pacs").stdout


@pytest.mark.parametrize("mode", ["move", "get"])
def test_mapping_on_the_way_in_coerces_sets_the_issuer_and_the_organisation(make_archive, start_legacy, mode: str) -> None:  # type: ignore[no-untyped-def]
    """--coerce, --issuer and --source-aet apply to what C-MOVE brings into ``serve`` as to what
    C-GET brings into the migrating process; verification compares with what the source sent."""
    from sqlalchemy import select

    from samarkiv.index.identity_schema import organisations
    from samarkiv.index.schema import instances

    server = make_archive('[[organisations]]\ncode = "OLD"\nname = "Old Hospital"\naets = ["OLDPACS"]\n')
    legacy = start_legacy({server.aet: ("127.0.0.1", server.dicom_port)})
    server.cli(
        "migrate", "add", "mapped", "--source", "dimse", "--host", "127.0.0.1", "--port", str(legacy.port),
        "--called-aet", LEGACY_AET, "--mode", mode, *(["--move-aet", server.aet] if mode == "move" else []),
        "--from-date", "20190101", "--to-date", "20190228", "--source-aet", "OLDPACS", "--issuer", "OLD-PACS",
        "--coerce", "InstitutionName:Old Hospital (typo)=Old Hospital",
    )  # fmt: skip
    server.cli("migrate", "run", "mapped", "--no-progress")
    sources = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, legacy.files) if "20190101" <= ds.StudyDate <= "20190228"}
    assert len(sources) == 4 * 16
    assert _status(server, "mapped")["instances"] == {"migrated": len(sources)}
    archive = _open(server)
    try:
        stored = archive.catalog.instances_by_uid(list(sources))
        assert set(stored) == set(sources)
        for uid, source in sources.items():
            kept = dcmread(BytesIO(stored_object(archive, stored[uid])))
            source.InstitutionName = "Old Hospital"
            if not source.get("IssuerOfPatientID"):
                source.IssuerOfPatientID = "OLD-PACS"
            assert [(e.tag, e.value) for e in kept] == [(e.tag, e.value) for e in source], uid
        with archive.engine.connect() as conn:
            owners = conn.execute(select(organisations.c.code).join(instances, instances.c.org_pk == organisations.c.pk)).scalars().all()
        assert owners == ["OLD"] * len(sources)
    finally:
        archive.close()
    assert "0 missing, 0 mismatched" in server.cli("migrate", "verify", "mapped").stdout


def test_killed_run_resumes_to_the_same_result(make_archive, start_legacy) -> None:  # type: ignore[no-untyped-def]
    server = make_archive(start=False)
    legacy = start_legacy()
    server.cli(
        "migrate", "add", "resume", "--source", "dimse", "--host", "127.0.0.1", "--port", str(legacy.port),
        "--called-aet", LEGACY_AET, "--mode", "get", "--associations", "1", "--max-rate", "60",
    )  # fmt: skip
    cmd = [sys.executable, "-m", "samarkiv", "migrate", "run", "resume", "--no-progress",
           "--data", str(server.data), "--index-url", server.index_url]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        done = _status(server, "resume")["studies"].get("done", 0)
        if done >= 3:
            break
        time.sleep(0.3)
    process.kill()  # SIGKILL: no cleanup at all
    process.wait()
    assert 3 <= done < 18, "the run should be killed part-way"
    before = _status(server, "resume")
    server.cli("migrate", "run", "resume", "--no-progress")
    after = _status(server, "resume")
    assert after["studies"] == {"done": 18}
    assert after["instances"] == {"migrated": len(legacy.files)}
    assert before["studies"].get("done", 0) >= done  # finished studies were not redone
    _assert_holds_exactly(server, legacy.files)


def test_bad_options_are_clear_errors(make_archive) -> None:  # type: ignore[no-untyped-def]
    server = make_archive(start=False)
    result = server.cli("migrate", "add", "x", "--source", "dimse", "--host", "127.0.0.1", "--port", "1", "--called-aet", "A", check=False)
    assert result.returncode == 2 and "move_aet" in result.stderr and "Traceback" not in result.stderr
    result = server.cli("migrate", "run", "nope", check=False)
    assert result.returncode == 1 and "no migration named" in result.stderr


# --- the throttle (no waiting: injected clocks) ------------------------------------------------


def test_throttle_schedule_spaces_instances_and_bytes() -> None:
    now = [100.0]
    slept: list[float] = []
    throttle = Throttle(instances_per_second=10, bytes_per_second=1000, clock=lambda: now[0], sleep=slept.append)
    assert throttle.reserve(1, 10) == 0  # first one at once; books 0.1 s (instances dominate)
    assert throttle.reserve(1, 500) == pytest.approx(0.1)  # books 0.5 s (bytes dominate)
    assert throttle.reserve(1, 0) == pytest.approx(0.6)
    now[0] += 5  # idle time is not saved up as credit
    assert throttle.reserve(2, 0) == 0
    throttle.acquire(1, 0)
    assert slept == [pytest.approx(0.2)]


def test_time_windows() -> None:
    nights = Window.parse("22:00-06:00")
    weekend = Window.parse("sat,sun")
    assert nights.contains(datetime(2026, 11, 23, 23, 0)) and nights.contains(datetime(2026, 11, 24, 5, 59))
    assert not nights.contains(datetime(2026, 11, 23, 12, 0))
    assert weekend.contains(datetime(2026, 11, 22, 12, 0)) and not weekend.contains(datetime(2026, 11, 23, 12, 0))
    throttle = Throttle(windows=[nights, weekend], wallclock=lambda: datetime(2026, 11, 23, 20, 30))  # a Monday
    assert throttle.seconds_until_open() == 90 * 60
    assert Throttle(windows=[nights]).seconds_until_open(datetime(2026, 11, 23, 22, 30)) == 0
    with pytest.raises(ValueError):
        Window.parse("someday")
