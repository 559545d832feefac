"""One archive for a region: ownership and patient identity on store and query.

Three organisations send over DIMSE with their own AE titles. The same local
Patient ID at two hospitals stays two patients; one person with three local IDs
and a personnummer is found by one query, over findscu and over QIDO-RS.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from conftest import dcmtk_env, require_tool, storescu
from test_find import findscu

PERSONNUMMER_OID = "1.2.752.129.2.1.3.1"
PNR = "191212121212"  # Skatteverket's test personnummer 19121212-1212

REGION = """
accept_unknown_aets = false

[[organisations]]
code = "KS"
name = "Karolinska"
issuer_of_patient_id = "KS"
aets = ["KS_CT"]

[[organisations]]
code = "SU"
name = "Sahlgrenska"
issuer_of_patient_id = "SU"
aets = ["SU_MR"]

[[organisations]]
code = "RAD"
name = "Privatrontgen"
kind = "private"
issuer_of_patient_id = "RAD"
aets = ["RAD_US"]
"""


def _study(folder: Path, patient_id: str, name: str, pnr: str | None = None) -> tuple[Path, str]:
    """One instance of a new study, without Issuer of Patient ID (the sender's is implied)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID, ds.PatientName = patient_id, name
    for keyword in ("IssuerOfPatientID", "OtherPatientIDsSequence", "InstitutionName"):
        if keyword in ds:
            delattr(ds, keyword)
    if pnr is not None:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = pnr, PERSONNUMMER_OID
        ds.OtherPatientIDsSequence = Sequence([item])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds.StudyInstanceUID


def _send(server, path: Path, aet: str) -> None:  # type: ignore[no-untyped-def]
    result = storescu(server, path, extra=("-aet", aet))
    assert result.returncode == 0, result.stderr


def _find(server, tmp_path: Path, aet: str, *keys: str, level: str = "STUDY") -> list[Dataset]:  # type: ignore[no-untyped-def]
    out = tmp_path / f"find-{aet}-{len(list(tmp_path.glob('find-*')))}"
    status, responses, log = findscu(
        server, out, [f"QueryRetrieveLevel={level}", "StudyInstanceUID", "PatientName", "IssuerOfPatientID", *keys],
        extra=("-aet", aet),
    )  # fmt: skip
    assert status == 0x0000, log
    return responses


@pytest.fixture
def region(make_archive):  # type: ignore[no-untyped-def]
    require_tool("storescu", "findscu")
    return make_archive(REGION)


def test_colliding_local_ids_stay_apart(region, tmp_path):
    ks_file, ks_study = _study(tmp_path, "1001", "Karlsson^Anna")
    su_file, su_study = _study(tmp_path, "1001", "Svensson^Bo")
    _send(region, ks_file, "KS_CT")
    _send(region, su_file, "SU_MR")

    [at_ks] = _find(region, tmp_path, "KS_CT", "PatientID=1001")
    assert (at_ks.StudyInstanceUID, str(at_ks.PatientName), at_ks.IssuerOfPatientID) == (ks_study, "Karlsson^Anna", "KS")
    [at_su] = _find(region, tmp_path, "SU_MR", "PatientID=1001")
    assert (at_su.StudyInstanceUID, at_su.IssuerOfPatientID) == (su_study, "SU")
    # naming the other hospital's issuer finds its patient, not one's own, once
    # there is a legitimate need (issue 5): without one, nothing
    assert _find(region, tmp_path, "KS_CT", "PatientID=1001", "IssuerOfPatientID=SU") == []
    region.cli("care", "declare", "1001^SU", "--org", "KS", "--reason", "referral from SU")
    [named] = _find(region, tmp_path, "KS_CT", "PatientID=1001", "IssuerOfPatientID=SU")
    assert named.StudyInstanceUID == su_study
    # ownership shows: Institution Name (a series attribute) was empty, the owner's name fills it
    [series] = _find(region, tmp_path, "KS_CT", f"StudyInstanceUID={ks_study}", "InstitutionName", level="SERIES")
    assert series.InstitutionName == "Karolinska"


def test_one_query_by_personnummer_finds_the_person_everywhere(region, tmp_path):
    sent = {}
    for aet, patient_id, pnr in (("KS_CT", "K-1", PNR), ("SU_MR", "S-77", "19121212-1212"), ("RAD_US", "R-5", PNR)):
        path, study = _study(tmp_path, patient_id, "Testsson^Tolvan", pnr=pnr)
        _send(region, path, aet)
        sent[aet] = study
    other, other_study = _study(tmp_path, "K-1", "Annan^Person")  # K-1 at SU: another person
    _send(region, other, "SU_MR")

    # without a legitimate need, each organisation sees only its own study (issue 5)
    found = _find(region, tmp_path, "RAD_US", "PatientID=19121212-1212", f"IssuerOfPatientID={PERSONNUMMER_OID}")
    assert {d.StudyInstanceUID for d in found} == {sent["RAD_US"]}
    for org in ("RAD", "KS"):
        region.cli("care", "declare", PNR, "--org", org, "--reason", "referral for a second reading")

    # by personnummer (any written form), from any organisation: all three studies
    found = _find(region, tmp_path, "RAD_US", "PatientID=19121212-1212", f"IssuerOfPatientID={PERSONNUMMER_OID}")
    assert {d.StudyInstanceUID for d in found} == set(sent.values())
    # each answer carries the identifier the querying organisation knows
    assert {(d.PatientID, d.IssuerOfPatientID) for d in found} == {("R-5", "RAD")}

    # by a local ID: the querying organisation's own, cross-referenced
    found = _find(region, tmp_path, "KS_CT", "PatientID=K-1")
    assert {d.StudyInstanceUID for d in found} == set(sent.values())
    assert other_study not in {d.StudyInstanceUID for d in found}

    # the same over QIDO-RS
    answer = httpx.get(
        f"{region.http}/dicomweb/studies",
        params={"PatientID": PNR, "IssuerOfPatientID": PERSONNUMMER_OID},
        timeout=30,headers=region.headers
    )
    assert answer.status_code == 200, answer.text
    studies = {item["0020000D"]["Value"][0] for item in answer.json()}
    assert studies == set(sent.values())


def test_unknown_calling_ae_is_refused_in_a_regional_setup(region, tmp_path):
    require_tool("echoscu")
    result = subprocess.run(
        ["echoscu", "-aet", "STRANGER", "-aec", region.aet, "127.0.0.1", str(region.dicom_port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    known = subprocess.run(
        ["echoscu", "-aet", "KS_CT", "-aec", region.aet, "127.0.0.1", str(region.dicom_port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )  # fmt: skip
    assert known.returncode == 0, known.stderr
