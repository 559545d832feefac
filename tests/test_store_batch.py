"""Archive.store_batch: a group of objects in one commit (a migration's group, a STOW-RS request).

New objects go in together (one savepoint, one multi-row INSERT per table); a group
with an object that needs a decision falls back to one savepoint each, and every
object still gets its own answer.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import text

from samarkiv.config import load_settings
from samarkiv.core.archive import Archive, StoreOutcome
from conftest import stored_object
from test_store import make_ct


def _archive(tmp_path: Path, index_url: str, extra: str = "") -> Archive:
    config = tmp_path / "samarkiv.toml"
    config.write_text(extra)
    return Archive(load_settings(config, data=tmp_path / "data", index_url=index_url))


def _objects(tmp_path: Path, count: int, **attrs: object) -> list[bytes]:
    study, series = generate_uid(), generate_uid()
    paths = [make_ct(tmp_path / f"ct{n}-{generate_uid()}.dcm", StudyInstanceUID=study, SeriesInstanceUID=series, **attrs)
             for n in range(count)]  # fmt: skip
    return [p.read_bytes() for p in paths]


def _rows(archive: Archive, table: str) -> int:
    with archive.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_a_group_of_new_objects_is_stored_whole(tmp_path, index_url):
    archive = _archive(tmp_path, index_url)
    try:
        group = _objects(tmp_path, 12)
        results = archive.store_batch([(data, None, None) for data in group])
        assert [r.outcome for r in results] == [StoreOutcome.STORED] * 12
        stored = archive.catalog.instances_by_uid([r.sop_instance_uid for r in results])
        assert len(stored) == 12
        assert _rows(archive, "studies") == 1 and _rows(archive, "series") == 1
        assert _rows(archive, "inline_blobs") == 12  # each object durable in the write-back journal
        for result, data in zip(results, group, strict=True):
            assert stored[result.sop_instance_uid].size == len(data)
            assert stored_object(archive, stored[result.sop_instance_uid]) == data
    finally:
        archive.close()


def test_sizes_by_uid_names_only_the_held_instances_across_chunks(tmp_path, index_url):
    """The migration's per-study look-up: held UIDs with their stored sizes, asked 500 at a time."""
    archive = _archive(tmp_path, index_url)
    try:
        group = _objects(tmp_path, 3)
        results = archive.store_batch([(data, None, None) for data in group])
        held = {r.sop_instance_uid: len(data) for r, data in zip(results, group, strict=True)}
        asked = [generate_uid() for _ in range(1200)]
        for n, uid in enumerate(held):
            asked.insert(n * 550, uid)  # one in each chunk of 500
        assert archive.catalog.sizes_by_uid(asked) == held
        assert archive.catalog.sizes_by_uid([]) == {}
    finally:
        archive.close()


def test_a_known_object_in_a_group_gets_its_own_answer_and_the_rest_are_stored(tmp_path, index_url):
    archive = _archive(tmp_path, index_url)
    try:
        group = _objects(tmp_path, 6)
        first = archive.store_bytes(group[2])
        assert first.outcome is StoreOutcome.STORED
        other = make_ct(tmp_path / "other.dcm", SOPInstanceUID=first.sop_instance_uid, PatientName="Other^Content")
        group.append(other.read_bytes())  # the same UID with other content: refused by default
        results = archive.store_batch([(data, None, None) for data in group])
        outcomes = [r.outcome for r in results]
        assert outcomes == [StoreOutcome.STORED, StoreOutcome.STORED, StoreOutcome.DUPLICATE, StoreOutcome.STORED,
                            StoreOutcome.STORED, StoreOutcome.STORED, StoreOutcome.REJECTED]  # fmt: skip
        assert len(archive.catalog.instances_by_uid([r.sop_instance_uid for r in results])) == 6
        assert _rows(archive, "instances") == 6
    finally:
        archive.close()


def test_a_group_can_go_straight_to_blob_files(tmp_path, index_url):
    """A migration's group (journal=False): blob files synced before the commit, nothing in the
    write-back journal, and the file of an object that then needs a decision is not left behind."""
    archive = _archive(tmp_path, index_url)
    try:
        group = _objects(tmp_path, 5)
        first = archive.store_bytes(group[0])
        archive.flush_all()
        results = archive.store_batch([(data, None, None) for data in group], journal=False)
        assert [r.outcome for r in results] == [StoreOutcome.DUPLICATE] + [StoreOutcome.STORED] * 4
        assert _rows(archive, "inline_blobs") == 0
        stored = archive.catalog.instances_by_uid([r.sop_instance_uid for r in results])
        files = sorted(p for p in (tmp_path / "data" / "blobs").rglob("*.dcm"))
        assert len(files) == 5  # one per instance: the duplicate's second file was removed
        assert {str(p.relative_to(tmp_path / "data" / "blobs")) for p in files} == {s.blob_key for s in stored.values()}
        for result, data in zip(results, group, strict=True):
            assert stored_object(archive, stored[result.sop_instance_uid]) == data
        assert first.sop_instance_uid == results[0].sop_instance_uid
    finally:
        archive.close()


def _staged(archive: Archive, data: bytes):  # type: ignore[no-untyped-def]
    import hashlib

    from samarkiv.storage.filesystem import StagedFile

    path = archive.staging / f"{generate_uid()}.part"
    path.write_bytes(data)
    return StagedFile(path, hashlib.sha256(data).hexdigest(), len(data))


def test_objects_given_only_as_staged_files_are_stored_and_read_back_where_needed(tmp_path, index_url):
    """A C-GET worker hands over the parse and the staged file, not the bytes (data None):
    the group stores them from the files; one it must store the one-at-a-time way (a UID the
    archive holds, a group kept in the write-back journal) is read back from its file."""
    from samarkiv.core.ingest import parse_buffer

    archive = _archive(tmp_path, index_url)
    try:
        group = _objects(tmp_path, 4)
        known = archive.store_bytes(group[3])  # in the archive already: its commit in the group fails
        staged = [_staged(archive, data) for data in group]
        results = archive.store_batch([(None, None, None)] * 4, journal=False, parsed=[parse_buffer(d) for d in group],
                                      staged=staged)  # fmt: skip
        assert [r.outcome for r in results] == [StoreOutcome.STORED] * 3 + [StoreOutcome.DUPLICATE]
        assert results[3].sop_instance_uid == known.sop_instance_uid
        stored = archive.catalog.instances_by_uid([r.sop_instance_uid for r in results])
        for result, data in zip(results, group, strict=True):
            assert stored_object(archive, stored[result.sop_instance_uid]) == data
        assert not any(file.path.exists() for file in staged)
        assert _rows(archive, "instances") == 4

        journaled = _objects(tmp_path, 2)  # into the journal, and one without its parse: both read from their files
        staged = [_staged(archive, data) for data in journaled]
        results = archive.store_batch([(None, None, None)] * 2, parsed=[parse_buffer(journaled[0]), None], staged=staged)
        assert [r.outcome for r in results] == [StoreOutcome.STORED] * 2
        stored = archive.catalog.instances_by_uid([r.sop_instance_uid for r in results])
        for result, data in zip(results, journaled, strict=True):
            assert stored_object(archive, stored[result.sop_instance_uid]) == data
        assert not any(file.path.exists() for file in staged)
    finally:
        archive.close()


def test_a_failed_group_write_stores_staged_only_objects_one_by_one_from_their_files(tmp_path, index_url, monkeypatch):
    """The group's blob write fails (a full disk, faked: it cannot be made here) before any
    rename: each object given only as a staged file is read from it and stored the
    one-at-a-time way, none lost."""
    import errno

    from samarkiv.core.ingest import parse_buffer

    archive = _archive(tmp_path, index_url)
    try:
        group = _objects(tmp_path, 3)
        staged = [_staged(archive, data) for data in group]

        def full(items):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(archive.blobs, "put_many", full)
        results = archive.store_batch([(None, None, None)] * 3, journal=False, parsed=[parse_buffer(d) for d in group],
                                      staged=staged)  # fmt: skip
        assert [r.outcome for r in results] == [StoreOutcome.STORED] * 3
        stored = archive.catalog.instances_by_uid([r.sop_instance_uid for r in results])
        for result, data in zip(results, group, strict=True):
            assert stored_object(archive, stored[result.sop_instance_uid]) == data
        assert not any(file.path.exists() for file in staged)  # read, then removed
    finally:
        archive.close()


def test_staged_files_are_renamed_into_place_and_unused_ones_removed(tmp_path, index_url):
    """A migration's C-GET workers write each object into the staging folder themselves
    (migrate/sources/getproc.py): the group renames those files into place instead of writing
    the bytes again; a staged file whose object is not stored this way is removed."""
    archive = _archive(tmp_path, index_url)
    try:
        group = _objects(tmp_path, 4)
        known = archive.store_bytes(group[3])  # in the archive already: stored the one-by-one way, refused
        staged = [_staged(archive, data) for data in group]
        results = archive.store_batch([(data, None, None) for data in group], journal=False, staged=staged)
        assert [r.outcome for r in results[:3]] == [StoreOutcome.STORED] * 3
        assert results[3].sop_instance_uid == known.sop_instance_uid and results[3].outcome is not StoreOutcome.STORED
        stored = archive.catalog.instances_by_uid([r.sop_instance_uid for r in results[:3]])
        for result, data, file in zip(results[:3], group, staged, strict=False):
            row = stored[result.sop_instance_uid]
            assert archive.blobs.local_path(row.blob_key).read_bytes() == data
            assert row.sha256 == file.sha256
            assert not file.path.exists()  # moved, not copied
        assert not staged[3].path.exists()  # the refused object's staged file is not left behind
        assert _rows(archive, "inline_blobs") == 1  # only the one stored before, one by one

        journaled = _objects(tmp_path, 2)  # into the write-back journal: the staged files are not used
        unused = [_staged(archive, data) for data in journaled]
        results = archive.store_batch([(data, None, None) for data in journaled], staged=unused)
        assert [r.outcome for r in results] == [StoreOutcome.STORED] * 2
        assert _rows(archive, "inline_blobs") == 3 and not any(file.path.exists() for file in unused)
    finally:
        archive.close()
