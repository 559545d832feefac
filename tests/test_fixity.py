"""Fixity against a real SeaweedFS replica tier: a corrupted filesystem object
is found and repaired from the replica, a corrupted replica object from the
primary; an object with no good copy is reported, never silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sqlalchemy import select

from _lifecycle import bucket_keys, make_sample, open_archive, read, store, tiered_config
from _seaweedfs import SeaweedS3, seaweedfs  # noqa: F401 (fixture)
from conftest import run_cli
from samarkiv.index.audit_schema import audit_events
from samarkiv.index.lifecycle_schema import fixity_events, lifecycle_copies
from samarkiv.lifecycle.fixity import FixityChecker
from samarkiv.lifecycle.mover import LifecycleRunner

REPLICA_RULE = """
[[lifecycle]]
name = "replicate"
from = "short"
to = "replica"
action = "copy"
"""


@pytest.fixture
def s3_env(seaweedfs: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:  # noqa: F811
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    return seaweedfs


def test_fixity_finds_corruption_and_repairs_from_the_replica(tmp_path: Path, index_url: str, s3_env: SeaweedS3):
    bucket = s3_env.create_bucket()
    config = tiered_config(s3_env.endpoint, bucket, long_name="replica") + REPLICA_RULE
    archive, config_path = open_archive(tmp_path, index_url, config)
    samples = [make_sample(name, "20200101") for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm")]
    store(archive, *samples)
    assert LifecycleRunner(archive).run().done == 3
    assert len(bucket_keys(s3_env, bucket)) == 3
    clean = FixityChecker(archive, mib_per_second=0).run_all()
    assert (clean.checked, clean.corrupt, clean.repaired) == (3, [], [])

    # flip a byte of a primary on the filesystem tier
    primary = archive.instance_path(archive.catalog.instance(samples[0].uid))
    data = bytearray(primary.read_bytes())
    data[len(data) // 2] ^= 0xFF
    primary.write_bytes(bytes(data))
    # overwrite another instance's replica on S3
    with archive.engine.connect() as conn:
        copy_key = conn.execute(
            select(lifecycle_copies.c.blob_key).where(
                lifecycle_copies.c.instance_pk == archive.catalog.instance(samples[1].uid).pk
            )
        ).scalar_one()
    s3_env.client().put_object(Bucket=bucket, Key="samarkiv/" + copy_key.split(":", 1)[1], Body=b"not the object")

    report = FixityChecker(archive, mib_per_second=0).run_all()
    assert report.corrupt == [samples[0].uid] and report.repaired == [samples[0].uid]
    assert report.ok
    for sample in samples:
        assert read(archive, sample.uid) == sample.data
    assert not primary.exists()  # the bad object is gone; a good one under a new key
    with archive.engine.connect() as conn:
        events = conn.execute(select(fixity_events.c.outcome, fixity_events.c.sop_instance_uid, fixity_events.c.tier)).all()
    assert ("corrupt", samples[0].uid, "short") in events and ("repaired", samples[0].uid, "short") in events
    assert ("corrupt", samples[1].uid, "replica") in events and ("repaired", samples[1].uid, "replica") in events
    archive.audit.flush()
    with archive.engine.connect() as conn:
        alerts = conn.execute(
            select(audit_events.c.outcome_detail, audit_events.c.instance_uid).where(audit_events.c.action == "fixity")
        ).all()
    assert {("corrupt", samples[0].uid), ("repaired", samples[0].uid), ("repaired", samples[1].uid)} <= set(alerts)
    metrics = generate_latest(archive.metrics.registry).decode()
    assert 'samarkiv_fixity_events_total{outcome="repaired"} 2.0' in metrics
    assert 'samarkiv_fixity_events_total{outcome="corrupt"} 2.0' in metrics

    again = FixityChecker(archive, mib_per_second=0).run_all()
    assert (again.corrupt, again.missing, again.repaired) == ([], [], [])
    assert len(bucket_keys(s3_env, bucket)) == 3

    # no good copy anywhere: reported, exit 1, the object left for a person to see to
    archive.instance_path(archive.catalog.instance(samples[2].uid)).write_bytes(b"broken")
    with archive.engine.connect() as conn:
        third = conn.execute(
            select(lifecycle_copies.c.blob_key).where(
                lifecycle_copies.c.instance_pk == archive.catalog.instance(samples[2].uid).pk
            )
        ).scalar_one()
    s3_env.client().delete_object(Bucket=bucket, Key="samarkiv/" + third.split(":", 1)[1])
    archive.close()
    result = run_cli("fixity", "run", "--json", "--config", str(config_path), "--data", str(tmp_path / "data"),
                     "--index-url", index_url, check=False)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert samples[2].uid in result.stdout and "Traceback" not in result.stderr


def test_the_shared_pass_visits_every_object_once(tmp_path: Path, index_url: str, s3_env: SeaweedS3):
    bucket = s3_env.create_bucket()
    archive, _ = open_archive(tmp_path, index_url, tiered_config(s3_env.endpoint, bucket))
    store(archive, *(make_sample("MR_small.dcm", "20200101") for _ in range(5)))
    one, two = FixityChecker(archive, mib_per_second=0), FixityChecker(archive, mib_per_second=0)
    first = one.run_pass(limit=2)  # claims a batch (of up to 100): all five
    second = two.run_pass()
    assert first.checked + second.checked == 5 and second.pass_complete
    assert one.last_pass() is not None
    archive.close()
