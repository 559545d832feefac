"""Durability: kill -9 mid-transfer, graceful shutdown, and large objects streamed to disk."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import time
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import dcmtk_env, require_tool, stored_object
from samarkiv.config import load_settings
from samarkiv.core.archive import INLINE_PREFIX, Archive


def make_series(folder: Path, count: int) -> dict[str, Path]:
    """``count`` distinct CT instances made from pydicom's CT sample; SOP UID -> file."""
    folder.mkdir()
    template = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    study, series = generate_uid(), generate_uid()
    files = {}
    for number in range(count):
        template.StudyInstanceUID, template.SeriesInstanceUID = study, series
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = number
        path = folder / f"{number:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        files[template.SOPInstanceUID] = path
    return files


def stored_count(server) -> float:
    metrics = httpx.get(f"{server.http}/metrics", timeout=5, headers=server.headers).text
    match = re.search(r'samarkiv_stores_total\{outcome="stored"\} ([0-9.]+)', metrics)
    return float(match.group(1)) if match else 0.0


def acknowledged_files(storescu_output: str) -> list[str]:
    """Files storescu saw a success response for (storescu -v output)."""
    acknowledged, current = [], None
    for line in storescu_output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(current)
            current = None
    return acknowledged


def start_storescu(server, folder: Path) -> subprocess.Popen[str]:
    require_tool("storescu")
    return subprocess.Popen(
        ["storescu", "-v", "+sd", "-xe", "-aec", server.aet, "127.0.0.1", str(server.dicom_port), str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env(),
    )  # fmt: skip


def wait_for_stores(server, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while stored_count(server) < at_least:
        assert time.monotonic() < deadline, "stores did not start"
        time.sleep(0.05)


def check_intact(server, files: dict[str, Path], acknowledged: list[str]) -> int:
    """Every acknowledged instance is in the index with a blob matching its checksum,
    nothing unacknowledged is half there, and no stray file remains."""
    verify = server.cli("verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    archive = Archive(load_settings(data=server.data, index_url=server.index_url), run_migrations=False)
    try:
        by_name = {str(path): uid for uid, path in files.items()}
        for name in acknowledged:
            stored = archive.catalog.instance(by_name[name])
            assert stored is not None, f"acknowledged but lost: {name}"
            blob = BytesIO(stored_object(archive, stored))
            assert pydicom.dcmread(blob).SOPInstanceUID == by_name[name]
        # objects in the write-back journal have no file yet
        indexed = {s.blob_key for s in archive.iter_instances() if not s.blob_key.startswith(INLINE_PREFIX)}
        on_disk = {info.key for info in archive.blobs.list()}
        assert on_disk == indexed, "blob files and index rows disagree"
        assert not [p for p in (server.data / "tmp").iterdir() if p.is_file()]
        return len(indexed)
    finally:
        archive.close()


def test_kill_9_mid_store_loses_nothing_acknowledged(make_archive, tmp_path):
    files = make_series(tmp_path / "series", 400)
    server = make_archive()
    sender = start_storescu(server, tmp_path / "series")
    wait_for_stores(server, 50)
    server.process.kill()  # SIGKILL: no cleanup of any kind
    server.process.wait()
    output, _ = sender.communicate(timeout=60)
    acknowledged = acknowledged_files(output)
    assert 50 <= len(acknowledged) < len(files), "the kill should land mid-run"

    server.start()  # the startup sweep removes staging leftovers and orphans
    assert "Traceback" not in server.log.read_text()
    indexed = check_intact(server, files, acknowledged)
    # at most the one instance in flight was committed without its response arriving
    assert len(acknowledged) <= indexed <= len(acknowledged) + 1
    server.stop()


def test_sigterm_finishes_stores_in_flight_and_exits_cleanly(make_archive, tmp_path):
    files = make_series(tmp_path / "series", 300)
    server = make_archive()
    sender = start_storescu(server, tmp_path / "series")
    wait_for_stores(server, 30)
    assert server.stop(timeout=60) == 0
    output, _ = sender.communicate(timeout=60)
    acknowledged = acknowledged_files(output)
    assert len(acknowledged) < len(files)
    assert "samarkiv stopped" in server.log.read_text()

    server.start()
    assert check_intact(server, files, acknowledged) >= len(acknowledged)
    server.stop()


def _write_big_multiframe(path: Path, frames: int, rows: int = 1024, columns: int = 1024) -> int:
    """A multi-frame CT written without ever holding its pixel data in memory."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BIG", "Big^Study", "CT"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    header = BytesIO()
    ds.save_as(header, enforce_file_format=True)
    length = frames * rows * columns * 2
    frame = bytes(range(256)) * (rows * columns * 2 // 256)
    with open(path, "wb") as f:
        f.write(header.getvalue())
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for _ in range(frames):
            f.write(frame)
    return path.stat().st_size


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


@pytest.mark.parametrize("index_url", ["sqlite"], indirect=True)
def test_large_multiframe_is_streamed_with_bounded_memory(make_archive, tmp_path):
    require_tool("storescu")
    big = tmp_path / "big.dcm"
    size = _write_big_multiframe(big, frames=1024)  # 2 GiB of pixel data
    server = make_archive()
    before = peak_rss_mb(server.process.pid)
    sent = subprocess.run(
        ["storescu", "-xe", "-aec", server.aet, "127.0.0.1", str(server.dicom_port), str(big)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=600,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    growth = peak_rss_mb(server.process.pid) - before
    assert growth < 64, f"server memory grew by {growth:.0f} MB for a {size / 2**20:.0f} MB object"
    stats = json.loads(server.cli("stats", "--json").stdout)
    assert stats["instances"] == 1 and stats["bytes"] >= size - 1024
    big.unlink()
