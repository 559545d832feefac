"""Helpers of the lifecycle, fixity and capacity tests: tiered archives and old studies."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

# native samples: three compress losslessly, rtdose cannot be (32-bit) and moves as it is
SAMPLES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "rtdose.dcm")


@dataclass
class Sample:
    uid: str
    study_uid: str
    data: bytes

    @property
    def dataset(self) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(self.data))


def make_sample(name: str, study_date: str, study_uid: str | None = None) -> Sample:
    """A pydicom test file as a new instance of a new (or the given) study."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyDate = study_date
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = f"LC-{uuid.uuid5(uuid.NAMESPACE_OID, ds.StudyInstanceUID).hex[:8]}"  # one per study
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return Sample(ds.SOPInstanceUID, ds.StudyInstanceUID, out.getvalue())


def tiered_config(endpoint: str, bucket: str, *, long_name: str = "long", extra: str = "") -> str:
    return f"""
[[tiers]]
name = "short"
path = "short"

[[tiers]]
name = "{long_name}"
kind = "s3"
endpoint = "{endpoint}"
bucket = "{bucket}"
prefix = "samarkiv"
{extra}
"""


def open_archive(tmp_path: Path, index_url: str, config: str):  # type: ignore[no-untyped-def]
    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive

    path = tmp_path / "samarkiv.toml"
    path.write_text(config)
    settings = load_settings(path, data=tmp_path / "data", index_url=index_url, inline_max_bytes=0)
    return Archive(settings), path


def store(archive, *samples: Sample) -> None:  # type: ignore[no-untyped-def]
    from samarkiv.core.archive import StoreOutcome

    for sample in samples:
        result = archive.store_bytes(sample.data)
        assert result.outcome is StoreOutcome.STORED, result


def read(archive, uid: str) -> bytes:  # type: ignore[no-untyped-def]
    with archive.open_instance(archive.catalog.instance(uid)) as f:
        return f.read()


def bucket_keys(seaweedfs, bucket: str) -> list[str]:  # type: ignore[no-untyped-def]
    client = seaweedfs.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def backdate(archive, days: int) -> None:  # type: ignore[no-untyped-def]
    """Make every stored instance look stored ``days`` ago (for "not accessed for M days")."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from samarkiv.index.schema import instances

    with archive.catalog.writer.begin() as conn:
        conn.execute(update(instances).values(stored_at=datetime.now(UTC) - timedelta(days=days)))
