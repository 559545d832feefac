"""Migration from a legacy archive's folders and DICOMDIR media (PS3.10 8.6):
imported (copied in), or indexed in place (the files stay where they are and
samarkiv serves them), verified, idempotent on a rerun."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from _dcmqrscp import legacy_files
from conftest import dataset_bytes, dcmtk_env, require_tool, stored_object
from samarkiv.migrate.sources.multipart import boundary_of, read_parts


def _open(server):  # type: ignore[no-untyped-def]
    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive

    return Archive(load_settings(None, data=server.data, index_url=server.index_url))


def _status(server, name: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(server.cli("migrate", "status", name, "--json").stdout)


@pytest.fixture(scope="module")
def legacy_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A legacy archive's folder tree: one folder per patient/study, plus files that are not DICOM."""
    root = tmp_path_factory.mktemp("tree") / "pacs-export"
    flat = legacy_files(root / "incoming", patients=1)
    files = []
    for path in flat:
        ds = dcmread(path, stop_before_pixels=True)
        folder = root / str(ds.PatientID) / str(ds.StudyInstanceUID)[-12:] / f"se{ds.SeriesNumber}"
        folder.mkdir(parents=True, exist_ok=True)
        files.append(path.rename(folder / path.name))
    (root / "incoming").rmdir()
    (root / "README.txt").write_text("exported from the old PACS\n")
    (root / "LEG000" / "Thumbs.db").write_bytes(b"\0" * 64)
    return root, files


@pytest.fixture(scope="module")
def dicomdir_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """DICOMDIR media (a CD of the old archive) written with pydicom's FileSet."""
    scratch = tmp_path_factory.mktemp("cd-source")
    fs = FileSet()
    for path in legacy_files(scratch, patients=1)[:16]:
        fs.add(dcmread(path))
    media = tmp_path_factory.mktemp("cd") / "media"
    fs.write(media)
    files = [p for p in media.rglob("*") if p.is_file() and p.name != "DICOMDIR"]
    assert len(files) == 16
    return media / "DICOMDIR", files


def _holds_exactly(server, files: list[Path]) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Assert the archive holds exactly ``files``' instances, byte-identical; SOP UID -> stored row."""
    archive = _open(server)
    try:
        uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        stored = archive.catalog.instances_by_uid(list(uids))
        assert set(stored) == set(uids)
        assert archive.catalog.counts()["instances"] == len(uids)
        differ = [uid for uid, f in uids.items() if dataset_bytes(stored_object(archive, stored[uid])) != dataset_bytes(f)]
        assert not differ, differ[:5]
        return stored
    finally:
        archive.close()


def _digests(files: list[Path]) -> dict[Path, str]:
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_import_tree_and_dicomdir_then_verify_and_rerun(make_archive, legacy_tree, dicomdir_media) -> None:  # type: ignore[no-untyped-def]
    root, tree_files = legacy_tree
    dicomdir, media_files = dicomdir_media
    before = _digests(tree_files + media_files)
    server = make_archive(start=False)
    server.cli("migrate", "add", "folders", "--source", "filesystem", "--path", str(root), "--path", str(dicomdir))
    server.cli("migrate", "run", "folders", "--no-progress")
    everything = tree_files + media_files
    status = _status(server, "folders")
    assert status["studies"] == {"done": 3 + 1}  # three studies in the tree, one on the CD
    assert status["instances"] == {"migrated": len(everything)}
    stored = _holds_exactly(server, everything)
    assert not any(s.blob_key.startswith("file:") for s in stored.values())  # copied in
    verified = server.cli("migrate", "verify", "folders")
    assert "verified 4/4 studies" in verified.stdout and "0 missing, 0 mismatched" in verified.stdout
    # a rerun, even one that walks the folders again, moves nothing and changes nothing
    server.cli("migrate", "run", "folders", "--refresh", "--no-progress")
    assert _status(server, "folders")["instances"] == {"migrated": len(everything)}
    _holds_exactly(server, everything)
    assert _digests(tree_files + media_files) == before  # the source is never changed


def test_in_place_files_stay_and_are_served_byte_identical(make_archive, legacy_tree, tmp_path) -> None:  # type: ignore[no-untyped-def]
    require_tool("getscu")
    root, files = legacy_tree
    before = _digests(files)
    server = make_archive(start=False)
    server.cli("migrate", "add", "in-place", "--source", "filesystem", "--path", str(root), "--in-place")
    server.cli("migrate", "run", "in-place", "--no-progress")
    assert _status(server, "in-place")["instances"] == {"migrated": len(files)}
    stored = _holds_exactly(server, files)
    by_path = {Path(s.blob_key.removeprefix("file:")) for s in stored.values()}
    assert by_path == {f.resolve() for f in files}  # indexed where they lie, nothing copied
    assert _digests(files) == before

    server.start()
    first = sorted(files)[0]
    ds = dcmread(first, stop_before_pixels=True)
    # WADO-RS, as stored: the very file on disk
    url = f"{server.http}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*', **server.headers}, timeout=30)
    assert response.status_code == 200
    parts = list(read_parts([response.content], boundary_of(response.headers["content-type"])))
    assert len(parts) == 1 and dataset_bytes(parts[0][1]) == dataset_bytes(first)
    # C-GET of the whole study with DCMTK: every object as on disk, element for element
    out = tmp_path / "got"
    out.mkdir()
    subprocess.run(
        ["getscu", "-aec", server.aet, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
         "-od", str(out), "127.0.0.1", str(server.dicom_port)],
        check=True, capture_output=True, env=dcmtk_env(), timeout=120,
    )  # fmt: skip
    study_files = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files if dcmread(f, stop_before_pixels=True).StudyInstanceUID == ds.StudyInstanceUID}
    got = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in out.iterdir()}
    assert set(got) == set(study_files)
    # getscu re-writes what it receives (its own sequence length encoding), so the
    # C-GET copies are compared element by element; WADO-RS above showed the bytes.
    assert all(dcmread(got[uid]) == dcmread(path) for uid, path in study_files.items())
    server.stop()

    verified = server.cli("migrate", "verify", "in-place")
    assert "verified 3/3 studies" in verified.stdout and "0 missing, 0 mismatched" in verified.stdout
    server.cli("migrate", "run", "in-place", "--refresh", "--no-progress")  # idempotent
    assert _status(server, "in-place")["instances"] == {"migrated": len(files)}
    assert _open_count(server) == len(files)
    assert _digests(files) == before


def _open_count(server) -> int:  # type: ignore[no-untyped-def]
    archive = _open(server)
    try:
        return int(archive.catalog.counts()["instances"])
    finally:
        archive.close()


def test_filesystem_source_errors_are_clear(make_archive, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = make_archive(start=False)
    result = server.cli("migrate", "add", "x", "--source", "filesystem", check=False)
    assert result.returncode == 2 and "--path" in result.stderr and "Traceback" not in result.stderr
    result = server.cli("migrate", "add", "y", "--source", "filesystem", "--path", str(tmp_path), "--in-place", "--issuer", "X", check=False)
    assert result.returncode == 2 and "in place" in result.stderr
    server.cli("migrate", "add", "gone", "--source", "filesystem", "--path", str(tmp_path / "nowhere"))
    result = server.cli("migrate", "run", "gone", "--no-progress", check=False)
    assert result.returncode == 1 and "no such file or folder" in result.stderr and "Traceback" not in result.stderr
