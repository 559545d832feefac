"""C-STORE SCP: statuses, duplicate and conflict policies, bad input (PS3.4 Annex B)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

import pydicom
import pydicom.filereader
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from sqlalchemy import select, text

from conftest import dataset_bytes, dcmtk_env, require_tool, stored_object, storescu
from samarkiv.config import load_settings
from samarkiv.core.archive import Archive, _journal_target
from samarkiv.index.engine import create_index_engine
from samarkiv.index.schema import inline_blobs


def make_ct(path: Path, **attrs: object) -> Path:
    """A small, valid CT instance written as a Part 10 file."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PAT1"
    ds.PatientName = "Test^Patient"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(32)
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def send_file(server, path: Path, called_aet: str | None = None) -> int:
    """Send the file's bytes as they are with pynetdicom (a real SCU), return the status.

    Chunked sending takes the command's UIDs from the File Meta and streams the
    dataset without decoding it, so malformed datasets reach the server intact.
    """
    _config.STORE_SEND_CHUNKED_DATASET = True
    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=called_aet or server.aet)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


def instance_count(server) -> int:
    return json.loads(server.cli("stats", "--json").stdout)["instances"]


def blob_files(server) -> list[Path]:
    return [p for p in (server.data / "blobs").rglob("*") if p.is_file()]


def journalled(server) -> int:
    """Objects in the write-back journal (not yet moved to a blob file)."""
    engine = create_index_engine(server.index_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM inline_blobs")).scalar_one()
    finally:
        engine.dispose()


def stored_objects(server) -> int:
    """Stored objects, wherever they are: blob files and the journal. An object the write-back
    is moving is both a blob file and a journal row for a moment; its journal row names the
    file it moves to, so it counts once (the journal is read first: a move finishing in
    between leaves the file)."""
    engine = create_index_engine(server.index_url)
    try:
        with engine.connect() as conn:
            moving_to = {_journal_target(key, stored_at)
                         for key, stored_at in conn.execute(select(inline_blobs.c.key, inline_blobs.c.stored_at))}  # fmt: skip
    finally:
        engine.dispose()
    root = server.data / "blobs"
    return len(moving_to | {str(p.relative_to(root)) for p in blob_files(server)})


def staging_files(server) -> list[Path]:
    return [p for p in (server.data / "tmp").iterdir() if p.is_file()]


def test_storescu_stores_every_transfer_syntax(archive, sendable_files):
    """DCMTK's storescu sends each sample in its own transfer syntax; all are kept so."""
    sent = storescu(archive, *sendable_files)
    assert sent.returncode == 0, sent.stderr
    assert instance_count(archive) == len(sendable_files)
    local = Archive(load_settings(data=archive.data, index_url=archive.index_url), run_migrations=False)
    try:
        for original in sendable_files:
            header = pydicom.dcmread(original, stop_before_pixels=True)
            stored = local.catalog.instance(header.SOPInstanceUID)
            assert stored is not None, original.name
            assert stored.transfer_syntax_uid == header.file_meta.TransferSyntaxUID
    finally:
        local.close()


def test_received_bytes_are_stored_as_they_came(archive, sample_files):
    """A byte-preserving sender (pynetdicom streaming the files) gets back, byte for
    byte, the dataset it sent: no re-encoding anywhere on the store path."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in sample_files}
    ae = AE(ae_title="TESTSCU")
    for pair in sorted({(h.SOPClassUID, h.file_meta.TransferSyntaxUID) for h in headers.values()}):
        ae.add_requested_context(*pair)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title=archive.aet)
    assert assoc.is_established
    try:
        for path in sample_files:
            assert int(assoc.send_c_store(path).Status) == 0x0000, path.name
    finally:
        assoc.release()
    local = Archive(load_settings(data=archive.data, index_url=archive.index_url), run_migrations=False)
    try:
        for path, header in headers.items():
            stored = local.catalog.instance(header.SOPInstanceUID)
            assert dataset_bytes(stored_object(local, stored)) == dataset_bytes(path), path.name
    finally:
        local.close()


VIDEO_SYNTAXES = {
    "MPEG2 Main Profile @ Main Level": "1.2.840.10008.1.2.4.100",
    "MPEG-4 AVC/H.264 High Profile / Level 4.1": "1.2.840.10008.1.2.4.102",
    "HEVC/H.265 Main Profile / Level 5.1": "1.2.840.10008.1.2.4.107",
}


@pytest.mark.parametrize("syntax", list(VIDEO_SYNTAXES))
def test_video_is_stored_in_its_transfer_syntax(archive, tmp_path, syntax):
    """Video objects are archived as sent (the stream is never decoded, so any
    bytes stand in for one here)."""
    ds = pydicom.dcmread(make_ct(tmp_path / "template.dcm"))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4.1"  # Video Photographic Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.TransferSyntaxUID = VIDEO_SYNTAXES[syntax]
    ds.Modality, ds.NumberOfFrames, ds.Rows, ds.Columns = "XC", 30, 480, 640
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.PixelData = pydicom.encaps.encapsulate([bytes(range(256)) * 512])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send_file(archive, path) == 0x0000
    local = Archive(load_settings(data=archive.data, index_url=archive.index_url), run_migrations=False)
    stored = local.catalog.instance(ds.SOPInstanceUID)
    assert stored.transfer_syntax_uid == VIDEO_SYNTAXES[syntax]
    assert dataset_bytes(stored_object(local, stored)) == dataset_bytes(path)
    local.close()


def test_deflated_dataset_is_stored_as_sent(archive, tmp_path):
    ds = pydicom.dcmread(make_ct(tmp_path / "plain.dcm", PatientName="Deflated^Test"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send_file(archive, path) == 0x0000
    local = Archive(load_settings(data=archive.data, index_url=archive.index_url), run_migrations=False)
    stored = local.catalog.instance(ds.SOPInstanceUID)
    assert stored.transfer_syntax_uid == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert dataset_bytes(stored_object(local, stored)) == dataset_bytes(path)
    local.close()


def test_identical_restore_is_harmless(archive, tmp_path):
    ct = make_ct(tmp_path / "a.dcm")
    assert send_file(archive, ct) == 0x0000
    assert send_file(archive, ct) == 0x0000
    assert instance_count(archive) == 1
    assert stored_objects(archive) == 1


def _same_uid_different_object(tmp_path: Path) -> tuple[Path, Path]:
    first = make_ct(tmp_path / "first.dcm")
    ds = pydicom.dcmread(first)
    ds.PixelData = bytes([1]) * 32
    second = tmp_path / "second.dcm"
    ds.save_as(second, enforce_file_format=True)
    return first, second


def test_different_object_same_uid_rejected_by_default(archive, tmp_path):
    first, second = _same_uid_different_object(tmp_path)
    assert send_file(archive, first) == 0x0000
    assert send_file(archive, second) == 0x0111  # duplicate SOP instance
    assert instance_count(archive) == 1
    assert stored_objects(archive) == 1


@pytest.mark.parametrize("policy, blobs", [("keep-new", 1), ("keep-both", 2)])
def test_duplicate_policies(make_archive, tmp_path, policy, blobs):
    server = make_archive(f'duplicate_policy = "{policy}"\n')
    first, second = _same_uid_different_object(tmp_path)
    assert send_file(server, first) == 0x0000
    assert send_file(server, second) == 0x0000
    assert instance_count(server) == 1
    assert stored_objects(server) == blobs
    local = Archive(load_settings(data=server.data, index_url=server.index_url), run_migrations=False)
    uid = pydicom.dcmread(second).SOPInstanceUID
    stored = local.catalog.instance(uid)
    assert dataset_bytes(stored_object(local, stored)) == dataset_bytes(second)
    local.close()
    listed = json.loads(server.cli("conflicts", "--json").stdout)
    assert [(c["kind"], c["sop_instance_uid"]) for c in listed] == [("duplicate-sop-instance", uid)]


def test_journal_moves_small_objects_to_blob_files_when_idle(make_archive, tmp_path):
    """A small object is acknowledged from the write-back journal, then moved,
    byte for byte, to a blob file once the archive is idle."""
    server = make_archive("journal_idle_seconds = 0\n")
    ct = make_ct(tmp_path / "a.dcm")
    assert send_file(server, ct) == 0x0000
    deadline = time.monotonic() + 30
    while journalled(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert journalled(server) == 0
    [blob] = blob_files(server)
    assert dataset_bytes(blob) == dataset_bytes(ct)
    local = Archive(load_settings(data=server.data, index_url=server.index_url), run_migrations=False)
    try:
        stored = local.catalog.instance(pydicom.dcmread(ct).SOPInstanceUID)
        assert local.instance_path(stored) == blob
    finally:
        local.close()
    metrics = httpx.get(f"{server.http}/metrics", headers=server.headers).text
    assert "samarkiv_written_back_instances_total 1.0" in metrics
    assert server.cli("verify", check=False).returncode == 0


def test_objects_over_the_inline_limit_go_straight_to_blob_files(make_archive, tmp_path):
    server = make_archive("inline_max_bytes = 0\n")
    ct = make_ct(tmp_path / "a.dcm")
    assert send_file(server, ct) == 0x0000
    assert journalled(server) == 0
    [blob] = blob_files(server)
    assert dataset_bytes(blob) == dataset_bytes(ct)


def test_patient_conflict_rejected_by_default(archive, tmp_path):
    study = generate_uid()
    assert send_file(archive, make_ct(tmp_path / "a.dcm", StudyInstanceUID=study, PatientID="A")) == 0
    status = send_file(archive, make_ct(tmp_path / "b.dcm", StudyInstanceUID=study, PatientID="B"))
    assert status == 0xC001
    assert instance_count(archive) == 1


def test_patient_conflict_accepted_and_reported(make_archive, tmp_path):
    server = make_archive('conflict_policy = "accept"\n')
    study = generate_uid()
    assert send_file(server, make_ct(tmp_path / "a.dcm", StudyInstanceUID=study, PatientID="A")) == 0
    assert send_file(server, make_ct(tmp_path / "b.dcm", StudyInstanceUID=study, PatientID="B")) == 0
    assert instance_count(server) == 2
    listed = json.loads(server.cli("conflicts", "--json").stdout)
    assert [(c["kind"], c["study_instance_uid"]) for c in listed] == [("patient-mismatch", study)]


def _truncated(tmp_path: Path) -> Path:
    path = make_ct(tmp_path / "full.dcm", PixelData=bytes(4096), Rows=32, Columns=64)
    data = path.read_bytes()
    cut = tmp_path / "truncated.dcm"
    cut.write_bytes(data[:-1000])
    return cut


def _uid_mismatch(tmp_path: Path) -> Path:
    path = make_ct(tmp_path / "m.dcm")
    uid = pydicom.dcmread(path).SOPInstanceUID
    other = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    # the File Meta comes first; the command will carry its (different) UID
    path.write_bytes(path.read_bytes().replace(uid.encode(), other.encode(), 1))
    return path


BAD_INPUT = {
    "truncated": (_truncated, 0xC000),
    "missing study uid": (lambda p: make_ct(p / "x.dcm", StudyInstanceUID=None), 0xC000),
    "invalid sop uid": (lambda p: make_ct(p / "x.dcm", SOPInstanceUID="1.2.03.abc"), 0xC000),
    "sop uid differs from command": (_uid_mismatch, 0xC000),
    "garbage": (lambda p: _garbage(p), 0xC000),
}


def _garbage(tmp_path: Path) -> Path:
    path = make_ct(tmp_path / "g.dcm")
    data = bytearray(path.read_bytes())
    offset = len(data) - 80
    data[offset : offset + 12] = b"\xff" * 12  # an element header that makes no sense
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_and_writes_nothing(archive, tmp_path, case):
    build, expected = BAD_INPUT[case]
    status = send_file(archive, build(tmp_path))
    assert status == expected
    assert instance_count(archive) == 0
    assert stored_objects(archive) == 0
    assert staging_files(archive) == []
    assert "store rejected" in archive.log.read_text()


def test_wrong_called_ae_is_rejected(archive):
    require_tool("echoscu")
    result = subprocess.run(
        ["echoscu", "-aec", "NOT_US", "127.0.0.1", str(archive.dicom_port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr or "called" in result.stderr.lower()


def test_store_on_an_association_served_by_pynetdicom(archive, tmp_path):
    """Associations that are not storage-only (here: with role selection, as a
    C-GET requestor proposes) are served by pynetdicom, with the same store path."""
    from pynetdicom import build_role

    _config.STORE_SEND_CHUNKED_DATASET = True
    first, second = _same_uid_different_object(tmp_path)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1", archive.dicom_port, ae_title=archive.aet,
        ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
    )  # fmt: skip
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(first).Status) == 0x0000
        assert int(assoc.send_c_store(first).Status) == 0x0000
        assert int(assoc.send_c_store(second).Status) == 0x0111
        assert int(assoc.send_c_store(_truncated(tmp_path)).Status) == 0xC000
    finally:
        assoc.release()
    assert instance_count(archive) == 1
    assert staging_files(archive) == []
