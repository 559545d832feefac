"""C-FIND (PS3.4 C.4.1) and ``samarkiv find``: DCMTK findscu against a running archive.

The archive holds crafted datasets with known values, so every expectation is
exact; one test uses real sample files. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from conftest import dcmtk_env, require_tool, storescu

CT, MR, SC = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"
US_MF = "1.2.840.10008.5.1.4.1.1.3.1"
A1, A2, B1, C1 = "2.25.1001", "2.25.1002", "2.25.2001", "2.25.3001"  # studies
A1S1, A1S2, A2S1, B1S1, C1S1 = "2.25.1001.1", "2.25.1001.2", "2.25.1002.1", "2.25.2001.1", "2.25.3001.1"

PATIENT_A = dict(PatientID="PQA-001", PatientName="Doe^John", PatientBirthDate="19700101", PatientSex="M", PatientWeight="72.5")
PATIENT_B = dict(PatientID="PQB-002", PatientName="DOE^JANE", PatientBirthDate="19800202", PatientSex="F")
PATIENT_C = dict(PatientID="PQC-003", PatientName="Müller^Jürgen", SpecificCharacterSet="ISO_IR 100")
STUDY_A1 = dict(StudyInstanceUID=A1, StudyDate="20200115", StudyTime="101500", AccessionNumber="ACC-A1", StudyID="A1",
                StudyDescription="CT CHEST", ReferringPhysicianName="Smith^Anna")  # fmt: skip
STUDY_A2 = dict(StudyInstanceUID=A2, StudyDate="20211130", StudyTime="0830", AccessionNumber="ACC-A2", StudyID="A2")
STUDY_B1 = dict(StudyInstanceUID=B1, StudyDate="20200620", StudyTime="235959.5", AccessionNumber="ACC-B1")
STUDY_C1 = dict(StudyInstanceUID=C1, StudyDate="20190301", StudyTime="120000", AccessionNumber="XYZ")


def _request_attributes() -> list[Dataset]:
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS-1"
    item.RequestedProcedureID = "RP-1"
    return [item]


def crafted() -> list[dict[str, Any]]:
    """8 instances: patient A (2 studies, 3 series, 6 instances), B and C (1 each)."""
    files = []
    for n in range(1, 4):
        files.append({**PATIENT_A, **STUDY_A1, "SeriesInstanceUID": A1S1, "Modality": "CT", "SeriesNumber": 1,
                      "SOPClassUID": CT, "SOPInstanceUID": f"{A1S1}.{n}", "InstanceNumber": n, "Rows": 64,
                      "Columns": 32, "ImageComments": f"slice {n}", "BodyPartExamined": "CHEST",
                      "RequestAttributesSequence": _request_attributes()})  # fmt: skip
    files.append({**PATIENT_A, **STUDY_A1, "SeriesInstanceUID": A1S2, "Modality": "OT", "SeriesNumber": 2,
                  "SOPClassUID": SC, "SOPInstanceUID": f"{A1S2}.1", "InstanceNumber": 1})  # fmt: skip
    for n in (1, 2):
        files.append({**PATIENT_A, **STUDY_A2, "SeriesInstanceUID": A2S1, "Modality": "MR", "SeriesNumber": 1,
                      "SOPClassUID": MR, "SOPInstanceUID": f"{A2S1}.{n}", "InstanceNumber": n})  # fmt: skip
    files.append({**PATIENT_B, **STUDY_B1, "SeriesInstanceUID": B1S1, "Modality": "MR", "SeriesNumber": 3,
                  "SOPClassUID": MR, "SOPInstanceUID": f"{B1S1}.1", "InstanceNumber": 1})  # fmt: skip
    files.append({**PATIENT_C, **STUDY_C1, "SeriesInstanceUID": C1S1, "Modality": "US", "SeriesNumber": 1,
                  "SOPClassUID": US_MF, "SOPInstanceUID": f"{C1S1}.1", "InstanceNumber": 1, "NumberOfFrames": 5})  # fmt: skip
    return files


def write_dataset(path: Path, attributes: dict[str, Any]) -> Path:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def crafted_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_dataset(folder / f"{i:02d}.dcm", attrs) for i, attrs in enumerate(crafted())]


@pytest.fixture
def catalogue(archive, tmp_path):  # type: ignore[no-untyped-def]
    """The running archive (SQLite or PostgreSQL) holding the crafted datasets."""
    sent = storescu(archive, *crafted_files(tmp_path / "crafted"))
    assert sent.returncode == 0, sent.stderr
    return archive


# --- findscu ---------------------------------------------------------------------------

_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-f]{4})", re.IGNORECASE)
_OFFENDING = re.compile(r"\(0000,0901\) at (\([0-9a-f]{4},[0-9a-f]{4}\))")


def findscu(server, out: Path, keys: list[str], model: str = "-S", extra: tuple[str, ...] = ()) -> tuple[int, list[Dataset], str]:  # type: ignore[no-untyped-def]
    """Run one C-FIND; return the final status, the responses (read with pydicom) and the log."""
    require_tool("findscu")
    out.mkdir(parents=True)
    args = ["findscu", model, "-d", "-X", "-od", str(out), "-aec", server.aet, *extra]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(server.dicom_port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    log = result.stdout + result.stderr
    statuses = _STATUS.findall(log)
    assert statuses, log
    responses = [pydicom.dcmread(f) for f in sorted(out.glob("rsp*.dcm"))]
    assert [int(s, 16) for s in statuses[:-1]] == [0xFF00] * len(responses), log  # one pending per match
    return int(statuses[-1], 16), responses, log


class Finder:
    """findscu with a fresh output folder per call."""

    def __init__(self, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        self.server, self.tmp_path, self.calls = server, tmp_path, 0

    def __call__(self, level: str, *keys: str, model: str = "-S") -> list[Dataset]:
        """Matches of a query that must succeed."""
        status, responses, log = self.raw(level, *keys, model=model)
        assert status == 0x0000, log
        return responses

    def raw(self, level: str, *keys: str, model: str = "-S") -> tuple[int, list[Dataset], str]:
        self.calls += 1
        return findscu(self.server, self.tmp_path / f"find{self.calls}", [f"QueryRetrieveLevel={level}", *keys], model)


def values(responses: list[Dataset], keyword: str) -> list[Any]:
    return sorted(str(r.get(keyword, "")) for r in responses)


@pytest.fixture
def find(catalogue, tmp_path) -> Finder:  # type: ignore[no-untyped-def]
    return Finder(catalogue, tmp_path)


# --- tests -------------------------------------------------------------------------


def test_study_level_matching(find: Finder, catalogue) -> None:  # type: ignore[no-untyped-def]
    """Single value, wildcard, range, UID list, universal and Modalities in Study (PS3.4 C.2.2.2)."""
    uid = "StudyInstanceUID"
    # single value, and the computed return keys
    found = find("STUDY", "PatientID=PQA-001", uid, "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                 "NumberOfStudyRelatedInstances", "NumberOfPatientRelatedStudies", "StudyDate", "PatientWeight",
                 "SOPClassesInStudy")  # fmt: skip
    by_uid = {r.StudyInstanceUID: r for r in found}
    assert sorted(by_uid) == [A1, A2]
    assert list(by_uid[A1].ModalitiesInStudy) == ["CT", "OT"]
    assert by_uid[A2].ModalitiesInStudy == "MR"
    assert (by_uid[A1].NumberOfStudyRelatedSeries, by_uid[A1].NumberOfStudyRelatedInstances) == (2, 4)
    assert (by_uid[A2].NumberOfStudyRelatedSeries, by_uid[A2].NumberOfStudyRelatedInstances) == (1, 2)
    assert by_uid[A1].NumberOfPatientRelatedStudies == 2
    assert by_uid[A1].StudyDate == "20200115"
    assert sorted(by_uid[A1].SOPClassesInStudy) == sorted([CT, SC])
    assert float(by_uid[A1].PatientWeight) == 72.5  # no column: from the stored header
    assert all(r.QueryRetrieveLevel == "STUDY" for r in found)

    # wildcards; person names match case-insensitively
    assert values(find("STUDY", "PatientName=doe*", uid), uid) == [A1, A2, B1]
    assert values(find("STUDY", "PatientName=DOE^JOHN", uid), uid) == [A1, A2]
    assert values(find("STUDY", "PatientName=d?e^jan?", uid), uid) == [B1]
    assert values(find("STUDY", "AccessionNumber=ACC-A*", uid), uid) == [A1, A2]
    assert values(find("STUDY", "AccessionNumber=acc-a*", uid), uid) == []  # other text is case-sensitive
    # ranges, closed and open, on dates and times (fractions included)
    assert values(find("STUDY", "StudyDate=20200101-20201231", uid), uid) == [A1, B1]
    assert values(find("STUDY", "StudyDate=-20191231", uid), uid) == [C1]
    assert values(find("STUDY", "StudyDate=20210101-", uid), uid) == [A2]
    assert values(find("STUDY", "StudyTime=2300-", uid), uid) == [B1]
    assert values(find("STUDY", "StudyTime=1015", uid), uid) == [A1]
    # list of UIDs, and multiple values of other keys
    assert values(find("STUDY", f"StudyInstanceUID={A1}\\{C1}"), uid) == [A1, C1]
    assert values(find("STUDY", "PatientID=PQB-002\\PQC-003", uid), uid) == [B1, C1]
    # Modalities in Study: any series of the study
    assert values(find("STUDY", "ModalitiesInStudy=MR", uid), uid) == [A2, B1]
    assert values(find("STUDY", "ModalitiesInStudy=US\\OT", uid), uid) == [A1, C1]
    # universal matching: every study, and an empty key comes back
    everything = find("STUDY", "PatientID", uid, "StudyDescription")
    assert values(everything, uid) == [A1, A2, B1, C1]
    assert values(everything, "StudyDescription") == ["", "", "", "CT CHEST"]
    # non-ASCII values are answered in UTF-8
    (c1,) = find("STUDY", f"StudyInstanceUID={C1}", "PatientName")
    assert c1.SpecificCharacterSet == "ISO_IR 192"
    assert str(c1.PatientName) == "Müller^Jürgen"
    # the same through the Patient Root model
    assert values(find("STUDY", "PatientID=PQA-001", uid, model="-P"), uid) == [A1, A2]

    metrics = httpx.get(f"{catalogue.http}/metrics", headers=catalogue.headers).text
    assert f'samarkiv_queries_total{{level="study"}} {find.calls}.0' in metrics


def test_patient_series_image_levels(find: Finder) -> None:
    """Patient Root PATIENT level with counts; SERIES and IMAGE levels of both models."""
    patients = find("PATIENT", "PatientName=doe^j*", "PatientID", "NumberOfPatientRelatedStudies",
                    "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances", "PatientBirthDate",
                    model="-P")  # fmt: skip
    counts = {
        r.PatientID: (r.NumberOfPatientRelatedStudies, r.NumberOfPatientRelatedSeries, r.NumberOfPatientRelatedInstances)
        for r in patients
    }
    assert counts == {"PQA-001": (2, 3, 6), "PQB-002": (1, 1, 1)}
    assert values(patients, "PatientBirthDate") == ["19700101", "19800202"]

    uid = "SeriesInstanceUID"
    series = find("SERIES", f"StudyInstanceUID={A1}", uid, "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances",
                  "BodyPartExamined")  # fmt: skip
    assert {(r.SeriesInstanceUID, r.Modality, r.SeriesNumber, r.NumberOfSeriesRelatedInstances) for r in series} == {
        (A1S1, "CT", 1, 3),
        (A1S2, "OT", 2, 1),
    }
    assert values(series, "BodyPartExamined") == ["", "CHEST"]
    assert values(find("SERIES", f"StudyInstanceUID={A1}", "Modality=C?", uid), uid) == [A1S1]
    assert values(find("SERIES", f"StudyInstanceUID={A1}\\{B1}", "Modality=MR", uid), uid) == [B1S1]
    assert values(find("SERIES", "PatientID=PQA-001", f"StudyInstanceUID={A2}", uid, model="-P"), uid) == [A2S1]
    (with_request,) = find("SERIES", f"StudyInstanceUID={A1}", uid,
                           "RequestAttributesSequence[0].ScheduledProcedureStepID=SPS-1",
                           "RequestAttributesSequence[0].RequestedProcedureID")  # fmt: skip
    assert with_request.SeriesInstanceUID == A1S1
    item = with_request.RequestAttributesSequence[0]
    assert (item.ScheduledProcedureStepID, item.RequestedProcedureID) == ("SPS-1", "RP-1")

    sop = "SOPInstanceUID"
    images = find("IMAGE", f"StudyInstanceUID={A1}", f"SeriesInstanceUID={A1S1}", sop, "InstanceNumber", "Rows",
                  "Columns", "SOPClassUID", "ImageComments")  # fmt: skip
    assert sorted((r.InstanceNumber, r.Rows, r.Columns, r.SOPClassUID, r.ImageComments) for r in images) == [
        (n, 64, 32, CT, f"slice {n}") for n in (1, 2, 3)
    ]
    two = find("IMAGE", f"StudyInstanceUID={A1}", f"SeriesInstanceUID={A1S1}", f"SOPInstanceUID={A1S1}.1\\{A1S1}.3")
    assert values(two, sop) == [f"{A1S1}.1", f"{A1S1}.3"]
    assert values(find("IMAGE", f"StudyInstanceUID={A1}", f"SeriesInstanceUID={A1S1}", "InstanceNumber=2", sop), sop) == [
        f"{A1S1}.2"
    ]
    frames = find("IMAGE", "PatientID=PQC-003", f"StudyInstanceUID={C1}", f"SeriesInstanceUID={C1S1}",
                  "NumberOfFrames", model="-P")  # fmt: skip
    assert [r.NumberOfFrames for r in frames] == [5]


BAD_IDENTIFIERS = [
    ("-P", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], "(0010,0020)"),  # Patient Root needs PatientID
    ("-P", ["QueryRetrieveLevel=SERIES", "PatientID=PQA-001", "SeriesInstanceUID"], "(0020,000d)"),
    ("-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={A1}", "SOPInstanceUID"], "(0020,000e)"),
    ("-S", ["QueryRetrieveLevel=PATIENT", "PatientID"], "(0008,0052)"),  # Study Root has no PATIENT level
    ("-S", ["QueryRetrieveLevel=FOO", "PatientID"], "(0008,0052)"),
    ("-S", ["PatientID=PQA-001"], "(0008,0052)"),  # no level at all
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=2020"], "(0008,0020)"),  # not a date
    ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={A1}", "SeriesNumber=one"], "(0020,0011)"),
]


def test_bad_identifiers_are_refused(archive, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """PS3.4 C.4.1.2.2.1 hierarchy and malformed keys: 0xA900 naming the offending element."""
    for n, (model, keys, offending) in enumerate(BAD_IDENTIFIERS):
        status, responses, log = findscu(archive, tmp_path / f"out{n}", keys, model)
        assert status == 0xA900, log
        assert responses == []
        assert _OFFENDING.findall(log.lower()) == [offending], log
    assert "Traceback" not in archive.log.read_text()


def test_real_sample_files(archive, tmp_path, sendable_files) -> None:  # type: ignore[no-untyped-def]
    """Stored sample files are found by their own UIDs, with their own values."""
    chosen: dict[str, tuple[Path, Dataset]] = {}
    for path in sendable_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.get("PatientID") and ds.StudyInstanceUID not in chosen:
            chosen[ds.StudyInstanceUID] = (path, ds)
        if len(chosen) == 6:
            break
    sent = storescu(archive, *(path for path, _ in chosen.values()))
    assert sent.returncode == 0, sent.stderr
    find = Finder(archive, tmp_path)
    found = find("STUDY", "StudyInstanceUID=" + "\\".join(chosen), "PatientID", "StudyDate",
                 "NumberOfStudyRelatedInstances", "ModalitiesInStudy")  # fmt: skip
    assert sorted(r.StudyInstanceUID for r in found) == sorted(chosen)
    for response in found:
        ds = chosen[response.StudyInstanceUID][1]
        assert response.PatientID == ds.PatientID
        assert response.get("StudyDate", "") == str(ds.get("StudyDate", "") or "").replace(".", "")
        assert response.NumberOfStudyRelatedInstances == 1
        assert response.get("ModalitiesInStudy", "") == (ds.get("Modality") or "")
    some = list(chosen.values())[:3]
    images = find("IMAGE", f"StudyInstanceUID={some[0][1].StudyInstanceUID}",
                  f"SeriesInstanceUID={some[0][1].SeriesInstanceUID}", "SOPInstanceUID", "SOPClassUID")  # fmt: skip
    assert [(r.SOPInstanceUID, r.SOPClassUID) for r in images] == [(some[0][1].SOPInstanceUID, some[0][1].SOPClassUID)]


def test_find_command(catalogue) -> None:  # type: ignore[no-untyped-def]
    """``samarkiv find`` answers through the same query module; bad input exits 2."""
    rows = json.loads(catalogue.cli("find", "--json", "PatientID=PQA-001", "StudyDate=20200101-20201231").stdout)
    assert [(r["StudyInstanceUID"], r["ModalitiesInStudy"], r["NumberOfStudyRelatedInstances"]) for r in rows] == [
        (A1, ["CT", "OT"], 4)
    ]
    names = json.loads(catalogue.cli("find", "--json", "--level", "patient", "PatientName=*ü*").stdout)
    assert [(r["PatientID"], r["PatientName"]) for r in names] == [("PQC-003", "Müller^Jürgen")]
    images = json.loads(catalogue.cli("find", "--json", "--level", "image", f"SeriesInstanceUID={A1S1}",
                                      "--limit", "2", "--offset", "1").stdout)  # fmt: skip
    assert [r["SOPInstanceUID"] for r in images] == [f"{A1S1}.2", f"{A1S1}.3"]
    table = catalogue.cli("find", "--level", "series", f"StudyInstanceUID={A2}").stdout
    assert "1 series match(es)" in table and "MR" in table

    for args, message in [
        (("--level", "galaxy"), "unknown level"),
        (("PatientNam=DOE",), "unknown DICOM keyword"),
        (("StudyDate=2020-13",), "StudyDate"),
    ]:
        result = catalogue.cli("find", *args, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


# --- the handler in-process: cancel, warnings, failures ---------------------------------


class FakeEvent:
    """What handle_find reads from a pynetdicom C-FIND event."""

    def __init__(self, identifier: Dataset, sop_class: str, cancel_after: int | None = None) -> None:
        self.identifier = identifier
        self.request = SimpleNamespace(AffectedSOPClassUID=sop_class)
        self.assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="TESTSCU"))
        self.checks, self.cancel_after = 0, cancel_after

    @property
    def is_cancelled(self) -> bool:
        self.checks += 1
        return self.cancel_after is not None and self.checks > self.cancel_after


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def local_archive(tmp_path: Path, index_url: str) -> Iterator[Any]:
    """An in-process Archive on SQLite or PostgreSQL holding the crafted datasets."""
    from samarkiv.config import Settings
    from samarkiv.core.archive import Archive, StoreOutcome

    archive = Archive(Settings(data=tmp_path / "data", index_url=index_url))
    for path in crafted_files(tmp_path / "crafted"):
        with open(path, "rb") as f:
            assert archive.store_stream(f).outcome is StoreOutcome.STORED
    yield archive
    archive.close()


def statuses(answers: list[tuple[Any, Any]]) -> list[int]:
    return [int(status if isinstance(status, int) else status.Status) for status, _ in answers]


def test_cancel_warning_and_index_failure(local_archive) -> None:  # type: ignore[no-untyped-def]
    """C-CANCEL stops the answers (0xFE00); unmatchable keys give 0xFF01; a dead index 0xC001."""
    from sqlalchemy import create_engine

    from samarkiv.dimse.find import handle_find

    study_root = "1.2.840.10008.5.1.4.1.2.2.1"
    everything = identifier("STUDY", PatientID="", StudyInstanceUID="")
    assert statuses(list(handle_find(FakeEvent(everything, study_root), local_archive))) == [0xFF00] * 4
    cancelled = list(handle_find(FakeEvent(everything, study_root, cancel_after=1), local_archive))
    assert statuses(cancelled) == [0xFF00, 0xFE00]

    # Patient's Age has no index column: matched as universal, answered with a warning status
    warned = list(handle_find(FakeEvent(identifier("STUDY", PatientID="PQA-001", PatientAge="050Y"), study_root), local_archive))
    assert statuses(warned) == [0xFF01, 0xFF01]
    assert local_archive.metrics.registry.get_sample_value("samarkiv_queries_total", {"level": "study"}) == 3

    local_archive.engine = create_engine(f"sqlite:///{local_archive.settings.data}/missing/index.sqlite")
    (failure,) = list(handle_find(FakeEvent(everything, study_root), local_archive))
    assert statuses([failure]) == [0xC001]
    assert local_archive.metrics.registry.get_sample_value("samarkiv_errors_total", {"kind": "query-index"}) == 1


def test_matching_edge_cases(local_archive) -> None:  # type: ignore[no-untyped-def]
    """SQL wildcards in values are literal; times match to their precision; bad values refused."""
    from samarkiv.index.query import Level, Model, Query, QueryError, prepare, run_query

    def uids(level: Level = Level.STUDY, model: Model = Model.STUDY_ROOT, **keys: str) -> list[str]:
        unique = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID"}[level]
        return sorted(str(ds[unique].value) for ds in run_query(local_archive.engine, Query(level, keys, model=model)))

    assert uids(AccessionNumber="ACC?A*") == [A1, A2]
    assert uids(AccessionNumber="ACC_A*") == []  # "_" and "%" are not wildcards in DICOM
    assert uids(AccessionNumber="ACC%") == []
    assert uids(AccessionNumber="[X]*") == []  # nor "[" (SQLite GLOB)
    assert uids(AccessionNumber="*") == [A1, A2, B1, C1]
    assert uids(StudyTime="23") == [B1]  # 23:00:00 to 23:59:59.999999
    assert uids(StudyTime="235959.5") == [B1]
    assert uids(StudyTime="0800-0830") == [A2]
    assert uids(StudyTime="08:30") == [A2]  # ACR-NEMA style
    assert uids(StudyDate="2020.01.15") == [A1]
    assert uids(ReferringPhysicianName="smith^anna") == [A1]
    assert uids(Level.SERIES, **{"RequestAttributesSequence.RequestedProcedureID": "RP-1"}) == [A1S1]
    assert uids(Level.PATIENT, Model.PATIENT_ROOT, PatientSex="F") == ["PQB-002"]
    # matches come in the order they were stored: A1, A2, B1, C1
    limited = [str(ds.StudyInstanceUID) for ds in run_query(local_archive.engine, Query(Level.STUDY, {}, limit=2, offset=1))]
    assert limited == [A2, B1]
    prepared = prepare(Query(Level.STUDY, {}), local_archive.engine.dialect.name)
    paged = [str(ds.StudyInstanceUID) for ds in prepared.run(local_archive.engine, page_size=1)]
    assert paged == [A1, A2, B1, C1]
    for bad in ({"StudyDate": "2020-01-15"}, {"StudyTime": "25h"}, {"InstanceNumber": "x"}, {"NoSuchKeyword": ""}):
        with pytest.raises(QueryError):
            list(run_query(local_archive.engine, Query(Level.IMAGE, bad)))
    with pytest.raises(QueryError):
        list(run_query(local_archive.engine, Query(Level.PATIENT, {})))  # Study Root has no PATIENT level


# --- answer encoding ---------------------------------------------------------------------


def _answers() -> list[Dataset]:
    """Answers shaped like index/query.py's: text values, counts, lists, empties, UTF-8."""
    from pydicom.sequence import Sequence

    plain = Dataset()
    plain.QueryRetrieveLevel = "STUDY"
    plain.PatientName = "Doe^John"
    plain.PatientID = "PID1"  # even length
    plain.PatientBirthDate = "19121212"
    plain.PatientSex = "M"  # odd: padded with a space
    plain.StudyInstanceUID = "1.2.3.45"  # even
    plain.SeriesInstanceUID = "1.2.3.456"  # odd: padded with NUL
    plain.StudyDate = ""
    plain.AccessionNumber = None
    plain.ModalitiesInStudy = ["CT", "SR"]
    plain.NumberOfStudyRelatedInstances = 12
    plain.Rows, plain.Columns = 512, 256
    plain.StudyDescription = "Thorax " * 20
    nordic = Dataset()
    nordic.SpecificCharacterSet = "ISO_IR 192"
    nordic.PatientName = "Østergård^Åsa"
    nordic.InstitutionName = "Sjukhuset i Växjö"
    nordic.QueryRetrieveLevel = "PATIENT"
    latin = Dataset()
    latin.SpecificCharacterSet = "ISO_IR 100"  # not ours: pydicom writes it
    latin.PatientName = "Ärlig^Åke"
    nested = Dataset()
    item = Dataset()
    item.UniversalEntityID = "1.2.752.129.2.1.3.1"
    nested.PatientID = "X"
    nested.IssuerOfPatientIDQualifiersSequence = Sequence([item])
    return [plain, nordic, latin, nested]


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
def test_answers_encode_exactly_as_pydicom_writes_them(syntax: str) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID

    from samarkiv.dimse.encode import encode_dataset, encode_flat

    uid = UID(syntax)
    for n, ds in enumerate(_answers()):
        reference = DicomBytesIO()
        reference.is_implicit_VR, reference.is_little_endian = uid.is_implicit_VR, uid.is_little_endian
        write_dataset(reference, ds)
        assert encode_dataset(ds, uid) == reference.getvalue(), ds
        if n < 2 and uid.is_little_endian:  # the answers samarkiv makes take the fast way
            assert encode_flat(ds, implicit=uid.is_implicit_VR) == reference.getvalue()
