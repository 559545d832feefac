"""C-GET worker processes (samarkiv/migrate/sources/getproc.py) against DCMTK's dcmqrscp:
what they hand over, a worker killed mid-pull, what they inherit; and the IMAGE-level
listing's own decoding of C-FIND answers (sources/dimse.py ``_image_uids``)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from _dcmqrscp import LEGACY_AET, legacy_storage, start_legacy  # noqa: F401 - fixtures
from conftest import dataset_bytes
from samarkiv.core.ingest import ParsedInstance, parse_buffer
from samarkiv.migrate.job import PlannedInstance, PlannedStudy
from samarkiv.migrate.sources import SourceBusy
from samarkiv.migrate.sources.dimse import DimseSource, _image_uids
from samarkiv.migrate.sources.requestor import IMPLICIT_LE, encode_identifier
from samarkiv.storage.filesystem import StagedFile

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="C-GET workers are forked (POSIX only)")


class Collected:
    """A Deliver that keeps what a pull hands over; ``on_object`` runs after each object."""

    def __init__(self, on_object=None) -> None:  # type: ignore[no-untyped-def]
        self.objects: list[tuple[bytes | None, ParsedInstance | None]] = []
        self.staged: list[StagedFile | None] = []
        self.on_object = on_object

    def __call__(self, item):  # type: ignore[no-untyped-def]
        raise AssertionError("a C-GET pull defers every object")

    def defer(self, data: bytes | None, parsed: ParsedInstance | None = None, staged: StagedFile | None = None) -> None:
        self.objects.append((data, parsed))
        self.staged.append(staged)
        if self.on_object is not None:
            self.on_object(len(self.objects))


def _source(legacy) -> DimseSource:  # type: ignore[no-untyped-def]
    return DimseSource({"host": "127.0.0.1", "port": legacy.port, "called_aet": LEGACY_AET, "mode": "get", "timeout": 10})


def _largest_study(files: list[Path]) -> tuple[PlannedStudy, list[PlannedInstance], dict[str, Path]]:
    by_study: dict[str, dict[str, tuple[PlannedInstance, Path]]] = defaultdict(dict)
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        planned = PlannedInstance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID))
        by_study[str(ds.StudyInstanceUID)][planned.sop_instance_uid] = (planned, path)
    uid, members = max(by_study.items(), key=lambda item: len(item[1]))
    study = PlannedStudy(1, uid, None, None, "pending", True, 0)
    return study, [planned for planned, _path in members.values()], {sop: path for sop, (_planned, path) in members.items()}


def test_worker_hands_over_the_source_bytes_parsed(start_legacy) -> None:  # type: ignore[no-untyped-def]
    legacy = start_legacy()
    study, wanted, paths = _largest_study(legacy.files)
    source = _source(legacy)
    collected = Collected()
    try:
        assert source.pull(study, wanted, True, collected) == ""
        workers = list(source._workers._all)
    finally:
        source.close()
    assert len(workers) == 1  # one association, one worker
    assert collected.staged == [None] * len(wanted)  # nothing written unless asked
    assert len(collected.objects) == len(wanted) > 1
    for data, parsed in collected.objects:
        assert parsed is not None
        here = parse_buffer(data)  # the worker's parse is the one this process would make
        assert (parsed.patient, parsed.study, parsed.series, parsed.instance, parsed.header) == (
            here.patient, here.study, here.series, here.instance, here.header)  # fmt: skip
        assert dataset_bytes(data) == dataset_bytes(paths[parsed.sop_instance_uid])
    with pytest.raises(ChildProcessError):  # closing the source reaped the worker
        os.waitpid(workers[0].pid, os.WNOHANG)


def test_worker_writes_each_object_into_the_staging_folder_when_asked(start_legacy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A staged object's bytes are written once, into the staging folder, and not sent to the
    migrating process: it gets the parse and the staged file (with its digest and size)."""
    legacy = start_legacy()
    study, wanted, paths = _largest_study(legacy.files)
    source = _source(legacy)
    source.staging = str(tmp_path)
    collected = Collected()
    try:
        source.pull(study, wanted, True, collected)
    finally:
        source.close()
    assert len(collected.staged) == len(wanted)
    for (data, parsed), staged in zip(collected.objects, collected.staged, strict=True):
        assert data is None and parsed is not None
        assert staged is not None and staged.path.parent == tmp_path
        written = staged.path.read_bytes()
        assert staged.size == len(written) and staged.sha256 == hashlib.sha256(written).hexdigest()
        assert dataset_bytes(written) == dataset_bytes(paths[parsed.sop_instance_uid])
        assert parse_buffer(written).instance == parsed.instance


def test_a_killed_worker_fails_the_pull_as_busy_and_a_new_one_pulls(start_legacy) -> None:  # type: ignore[no-untyped-def]
    legacy = start_legacy()
    study, wanted, _paths = _largest_study(legacy.files)
    source = _source(legacy)

    def kill_worker(count: int) -> None:
        if count == 1:
            os.kill(source._workers._all[0].pid, signal.SIGKILL)

    try:
        with pytest.raises(SourceBusy, match="worker"):
            source.pull(study, wanted, True, Collected(kill_worker))
        assert source._workers._all == []  # the dead worker was discarded (and reaped)
        again = Collected()
        assert source.pull(study, wanted, True, again) == ""
        assert sorted(parsed.sop_instance_uid for _data, parsed in again.objects) == sorted(i.sop_instance_uid for i in wanted)
    finally:
        source.close()


def test_a_failed_delivery_leaves_no_worker_behind(start_legacy) -> None:  # type: ignore[no-untyped-def]
    legacy = start_legacy()
    study, wanted, _paths = _largest_study(legacy.files)
    source = _source(legacy)

    def refuse(count: int) -> None:
        raise RuntimeError("the grouped commit is closed")

    try:
        source.pull(study, wanted, True, Collected())  # one idle worker to start with
        (worker,) = source._workers._all
        with pytest.raises(RuntimeError, match="closed"):
            source.pull(study, wanted, True, Collected(refuse))
        assert source._workers._all == []  # left mid-job: discarded, not reused
        with pytest.raises(ChildProcessError):  # and reaped
            os.waitpid(worker.pid, os.WNOHANG)
    finally:
        source.close()


def test_worker_does_not_keep_a_listening_socket_it_inherited(start_legacy) -> None:  # type: ignore[no-untyped-def]
    legacy = start_legacy()
    study, wanted, _paths = _largest_study(legacy.files)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    source = _source(legacy)
    try:
        source.pull(study, wanted, True, Collected())  # forks the worker while the listener is open
        listener.close()
        with pytest.raises(ConnectionRefusedError):  # nobody listens: the worker let it go
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        listener.close()
        source.close()


def _encoded(ds: Dataset, implicit: bool = True) -> bytes:
    if implicit:
        return encode_identifier(ds)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def test_image_level_answers_are_read_without_pydicom_and_with_it_where_needed() -> None:
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 100"
    answer.QueryRetrieveLevel = "IMAGE"
    answer.RetrieveAETitle = "LEGACY"
    answer.SeriesInstanceUID = "1.2.3.4"
    answer.SOPInstanceUID = "1.2.3.4.5"
    answer.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    expected = ("1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2")
    assert _image_uids(_encoded(answer), IMPLICIT_LE) == expected
    assert _image_uids(_encoded(answer, implicit=False), "1.2.840.10008.1.2.1") == expected  # another syntax: pydicom
    nested = Dataset()
    nested.CodeValue = "X"
    answer.ProcedureCodeSequence = [nested]  # a sequence: read by pydicom when the walk meets one it cannot skip
    assert _image_uids(_encoded(answer), IMPLICIT_LE) == expected
    del answer.SOPClassUID
    assert _image_uids(_encoded(answer), IMPLICIT_LE) == ("1.2.3.4", "1.2.3.4.5", "")


def test_several_studies_are_listed_over_one_association(start_legacy, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The run's lister asks for several studies at once (DimseSource.instances_of): one
    association for all of them, each study's listing exactly what the source holds, and a
    study the source does not know listed empty."""
    from pydicom.uid import generate_uid

    from samarkiv.migrate.sources.requestor import Requestor

    legacy = start_legacy()
    held: dict[str, set[tuple[str, str]]] = defaultdict(set)
    classes = {}
    for path in legacy.files:
        ds = dcmread(path, stop_before_pixels=True)
        held[str(ds.StudyInstanceUID)].add((str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
        classes[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
    assert len(held) > 2
    uids = [*sorted(held), generate_uid()]
    studies = [PlannedStudy(n + 1, uid, None, None, "pending", False, 0) for n, uid in enumerate(uids)]
    opened = []
    real_open = Requestor.open
    monkeypatch.setattr(Requestor, "open", lambda self, *a: (opened.append(self), real_open(self, *a))[1])
    listings = _source(legacy).instances_of(studies)
    assert len(opened) == 1
    assert [{(i.series_instance_uid, i.sop_instance_uid) for i in listing} for listing in listings] == [
        *(held[uid] for uid in uids[:-1]), set()]  # fmt: skip
    # dcmqrscp names no SOP class at either level: left open (the C-GET proposes the common ones)
    assert all(i.sop_class_uid in (None, classes[i.sop_instance_uid]) for listing in listings for i in listing)
