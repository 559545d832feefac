"""Lifecycle rules between a filesystem tier and a real SeaweedFS S3 tier:
moves with lossless compression, recall on access, idempotent reruns, and a
``samarkiv lifecycle run`` killed with SIGKILL mid-move that resumes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from _lifecycle import SAMPLES, backdate, bucket_keys, make_sample, open_archive, read, store, tiered_config
from _seaweedfs import SeaweedS3, seaweedfs  # noqa: F401 (fixture)
from conftest import run_cli
from samarkiv.index.lifecycle_schema import lifecycle_jobs, lifecycle_originals
from samarkiv.lifecycle.access import forget_memo, note_access
from samarkiv.lifecycle.compress import original_bytes
from samarkiv.lifecycle.mover import LifecycleRunner

OLD = "20150101"
RECENT = (date.today() - timedelta(days=200)).strftime("%Y%m%d")  # moves in 165 days
MOVE_RULE = """
[[lifecycle]]
name = "to-long"
from = "short"
to = "long"
older_than_days = 365
{extra}
"""


@pytest.fixture
def s3_env(seaweedfs: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:  # noqa: F811
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    return seaweedfs


def test_old_studies_move_to_s3_compressed_and_read_back_identical(tmp_path: Path, index_url: str, s3_env: SeaweedS3):
    bucket = s3_env.create_bucket()
    config = tiered_config(s3_env.endpoint, bucket) + MOVE_RULE.format(extra='compress = "jpeg-ls"')
    archive, config_path = open_archive(tmp_path, index_url, config)
    old = [make_sample(name, OLD) for name in SAMPLES]
    recent = make_sample("CT_small.dcm", RECENT)
    store(archive, *old, recent)

    report = LifecycleRunner(archive).run()
    assert (report.planned, report.done, report.failed) == (4, 4, 0)
    assert 0 < report.bytes_saved == report.bytes_before - report.bytes_after

    assert len(bucket_keys(s3_env, bucket)) == 4
    assert [info.key for info in archive.blobs.list()] == [archive.catalog.instance(recent.uid).blob_key]
    assert read(archive, recent.uid) == recent.data
    for sample in old:
        stored = archive.catalog.instance(sample.uid)
        assert stored.blob_key.startswith("long:")
        assert archive.instance_path(stored) is None  # not a local file: read through open_instance
        moved = pydicom.dcmread(io.BytesIO(read(archive, sample.uid)))
        original = sample.dataset
        assert np.array_equal(moved.pixel_array, original.pixel_array)
        if sample is old[-1]:  # rtdose: 32-bit, not compressible: moved byte-identical
            assert read(archive, sample.uid) == sample.data
            continue
        assert stored.transfer_syntax_uid == "1.2.840.10008.1.2.4.80"
        assert stored.size < len(sample.data)
        with archive.engine.connect() as conn:
            kept = conn.execute(select(lifecycle_originals).where(lifecycle_originals.c.instance_pk == stored.pk)).one()
        assert kept.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
        # the original syntax, served again by transcoding
        with archive.open_instance(stored) as f:
            again = pydicom.dcmread(io.BytesIO(original_bytes(f, kept.transfer_syntax_uid)))
        assert again.file_meta.TransferSyntaxUID == kept.transfer_syntax_uid
        assert again.PixelData == original.PixelData

    verify = archive.verify()
    assert verify.ok and verify.checked == 5

    again = LifecycleRunner(archive).run()  # idempotent
    assert (again.planned, again.done, again.failed) == (0, 0, 0)
    assert len(bucket_keys(s3_env, bucket)) == 4

    listing = json.loads(
        run_cli("tiers", "--json", "--config", str(config_path), "--data", str(tmp_path / "data"),
                "--index-url", index_url).stdout
    )  # fmt: skip
    by_tier = {t["tier"]: t for t in listing}
    assert (by_tier["short"]["instances"], by_tier["long"]["instances"], by_tier["long"]["studies"]) == (1, 4, 4)
    soon = by_tier["short"]["rules"][0]["within_days"]
    assert (soon["30"]["instances"], soon["90"]["instances"], soon["365"]["instances"]) == (0, 0, 1)
    archive.close()


def test_recall_on_access_brings_a_study_back(tmp_path: Path, index_url: str, s3_env: SeaweedS3):
    bucket = s3_env.create_bucket()
    rule = MOVE_RULE.format(extra="not_accessed_days = 30\nrecall_on_access = true")
    archive, _ = open_archive(tmp_path, index_url, tiered_config(s3_env.endpoint, bucket) + rule)
    first = make_sample("CT_small.dcm", OLD)
    second = make_sample("MR_small.dcm", OLD, study_uid=first.study_uid)
    other = make_sample("SC_rgb.dcm", OLD)
    store(archive, first, second, other)
    assert LifecycleRunner(archive).run().done == 0  # just stored counts as accessed
    backdate(archive, 60)
    assert LifecycleRunner(archive).run().done == 3

    note_access(archive, first.study_uid)
    note_access(archive, first.study_uid)  # within the hour: no second write, no second recall
    report = LifecycleRunner(archive).run(plan=False)
    assert report.done == 2 and report.by_rule == {"to-long:recall": 2}
    for sample in (first, second):
        stored = archive.catalog.instance(sample.uid)
        assert ":" not in stored.blob_key and archive.instance_path(stored).is_file()
        assert read(archive, sample.uid) == sample.data
    assert archive.catalog.instance(other.uid).blob_key.startswith("long:")
    # accessed just now: the rule leaves it on the short tier
    assert LifecycleRunner(archive).run().done == 0
    forget_memo(archive)
    archive.close()


def _job_counts(archive) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with archive.engine.connect() as conn:
        rows = conn.execute(select(lifecycle_jobs.c.state, func.count()).group_by(lifecycle_jobs.c.state))
        return {state: count for state, count in rows}


def test_a_run_killed_mid_move_resumes_and_loses_nothing(tmp_path: Path, index_url: str, s3_env: SeaweedS3):
    bucket = s3_env.create_bucket()
    archive, config_path = open_archive(tmp_path, index_url, tiered_config(s3_env.endpoint, bucket) + MOVE_RULE.format(extra=""))
    samples = [make_sample("CT_small.dcm", OLD) for _ in range(8)]
    store(archive, *samples)

    # ~40 KB objects at 20 KB/s: about two seconds each, most of it between the
    # verified copy and the commit
    cmd = [sys.executable, "-m", "samarkiv", "lifecycle", "run", "--mib-per-second", "0.02", "--config",
           str(config_path), "--data", str(tmp_path / "data"), "--index-url", index_url]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while _job_counts(archive).get("done", 0) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    counts = _job_counts(archive)
    assert 2 <= counts.get("done", 0) < 8 and counts.get("claimed", 0) >= 1

    report = LifecycleRunner(archive, mib_per_second=0).run()
    assert report.failed == 0
    assert _job_counts(archive) == {"done": 8}
    for sample in samples:
        assert archive.catalog.instance(sample.uid).blob_key.startswith("long:")
        assert read(archive, sample.uid) == sample.data
    assert list(archive.blobs.list()) == []  # nothing left behind on the short tier
    assert len(bucket_keys(s3_env, bucket)) == 8  # and no orphan on S3
    archive.close()


def test_rules_naming_unknown_tiers_are_clear_errors(tmp_path: Path):
    from samarkiv.config import ConfigError, load_settings
    from samarkiv.core.archive import Archive

    bad = tmp_path / "bad.toml"
    bad.write_text('[[lifecycle]]\nfrom = "short"\nto = "short"\n')
    with pytest.raises(ConfigError, match="another tier"):
        load_settings(bad)
    bad.write_text('[[lifecycle]]\nfrom = "short"\nto = "cold"\nolder_than_days = 10\n')
    archive = Archive(load_settings(bad, data=tmp_path / "data"))
    with pytest.raises(ConfigError, match="no tier named 'cold'"):
        LifecycleRunner(archive)
    archive.close()
    result = run_cli("lifecycle", "run", "--config", str(bad), "--data", str(tmp_path / "data"), check=False)
    assert result.returncode == 2 and "no tier named 'cold'" in result.stderr and "Traceback" not in result.stderr
