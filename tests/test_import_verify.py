"""``samarkiv import`` (files, folders, zip, DICOMDIR), ``verify``, ``stats`` and ``nodes``."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pydicom
import pytest

from conftest import audit_records, run_cli
from samarkiv.config import load_settings
from samarkiv.core.archive import Archive


@pytest.fixture
def target(tmp_path: Path, index_url: str) -> list[str]:
    """CLI options for an archive on this test's index (no server needed)."""
    return ["--data", str(tmp_path / "data"), "--index-url", index_url]


def stats(target: list[str]) -> dict[str, int]:
    return json.loads(run_cli("stats", "--json", *target).stdout)


def test_import_folder_zip_and_summary(tmp_path, target, sample_files):
    folder = tmp_path / "media" / "nested"
    folder.mkdir(parents=True)
    for f in sample_files[:10]:
        shutil.copy(f, folder / f.name)
    (folder / "notes.txt").write_text("not DICOM")
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        for f in sample_files[10:15]:
            z.write(f, f"zipped/{f.name}")
        z.write(sample_files[0], "zipped/again.dcm")  # a duplicate of an imported file

    result = run_cli("import", str(tmp_path / "media"), str(bundle), *target, check=False)
    assert result.returncode == 1  # one rejected file
    assert "notes.txt" in result.stdout and "not a DICOM Part 10 file" in result.stdout
    assert stats(target)["instances"] == 15
    summary = result.stdout
    assert "stored" in summary and "duplicate" in summary and "rejected" in summary
    # each study imported is audited once, as stored by the operator at the console
    records = audit_records(target[3], "store")
    studies = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in sample_files[:15]}
    assert sorted(r["study_uid"] for r in records) == sorted(studies)
    assert all(r["user_name"].startswith("cli") and '"door":"import"' in r["detail"] for r in records), records

    again = run_cli("import", str(bundle), *target)
    assert "duplicate" in again.stdout
    assert stats(target)["instances"] == 15


def test_import_dicomdir_media(target):
    dicomdir = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "DICOMDIR"
    referenced = [
        r for r in pydicom.dcmread(dicomdir).DirectoryRecordSequence if "ReferencedFileID" in r
    ]
    result = run_cli("import", str(dicomdir), *target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert stats(target)["instances"] == len(referenced)


def test_import_missing_path_is_a_clear_error(target, tmp_path):
    result = run_cli("import", str(tmp_path / "nowhere"), *target, check=False)
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_reports_corruption_missing_and_orphans(tmp_path, target, sample_files):
    run_cli("import", *map(str, sample_files[:4]), *target)
    assert run_cli("verify", *target).returncode == 0

    archive = Archive(load_settings(data=tmp_path / "data", index_url=target[-1]), run_migrations=False)
    stored = list(archive.iter_instances())
    corrupt_path = archive.instance_path(stored[0])
    data = bytearray(corrupt_path.read_bytes())
    data[-1] ^= 0xFF
    corrupt_path.write_bytes(bytes(data))
    archive.instance_path(stored[1]).unlink()
    orphan = archive.blobs.root / "2020/01/01/00/orphan.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a crash")
    an_hour_ago = time.time() - 3600  # older than the grace for stores in flight
    os.utime(orphan, (an_hour_ago, an_hour_ago))
    archive.close()

    result = run_cli("verify", *target, check=False)
    assert result.returncode == 1
    assert f"checksum mismatch {stored[0].sop_instance_uid}" in result.stdout
    assert f"missing {stored[1].sop_instance_uid}" in result.stdout
    assert "orphan removed 2020/01/01/00/orphan.dcm" in result.stdout
    assert not orphan.exists()


def test_nodes_add_list_remove(target):
    run_cli("nodes", "add", "PACS1", "127.0.0.1", "11113", "--description", "test peer", *target)
    listed = run_cli("nodes", "list", *target).stdout
    assert "PACS1" in listed and "11113" in listed
    run_cli("nodes", "remove", "PACS1", *target)
    assert "PACS1" not in run_cli("nodes", "list", *target).stdout
    missing = run_cli("nodes", "remove", "PACS1", *target, check=False)
    assert missing.returncode == 1 and "no node" in missing.stderr
    bad = run_cli("nodes", "add", "X" * 17, "127.0.0.1", "1", *target, check=False)
    assert bad.returncode == 2


def test_bad_config_is_a_clear_error(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('duplicate_policy = "sometimes"\n')
    result = run_cli("stats", "--config", str(config), "--data", str(tmp_path / "d"), check=False)
    assert result.returncode == 2
    assert "duplicate_policy" in result.stderr and "Traceback" not in result.stderr
