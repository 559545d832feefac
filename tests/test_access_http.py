"""The access matrix at the HTTP doors (issue 5): QIDO-RS, WADO-RS (metadata,
retrieve), WADO-URI, STOW-RS and FHIR (ImagingStudy, Patient) for each
relationship of tests/_access.py, every cell asserted, with the audit record
of every allowed and denied access.

Expected, for a user of RAD (a private provider with no study of Anna's) and
Anna's studies at KS and SU: nothing without a legitimate need; both studies
with a care relationship or break-glass (flagged), also when Anna blocks RAD
(break-glass only); the shared KS study with a share, viewable but not
downloadable without the download right; a share link's study to its token
(bearer or ``?token=``), 401 once revoked. Hidden studies are absent from
searches and their counts; a named study refused is 403 (DICOMweb) or 404
(FHIR read), the same as for a study that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _access import Region, assert_audited, build_region, matching
from _dicomweb import multipart
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

DICOM_JSON = "application/dicom+json"
NOT_AUTHORISED = 0x0124


@pytest.fixture
def region(make_archive, tmp_path: Path) -> Iterator[Region]:  # type: ignore[no-untyped-def]
    """The region of tests/_access.py, running."""
    built = build_region(make_archive, tmp_path / "region-studies")
    yield built
    built.dispose()


@dataclass(frozen=True)
class Cell:
    relationship: str  # tests/_access.py RELATIONSHIPS, or "owner"
    user: str  # a user key of tests/_access.py, or "link"
    visible: frozenset[str]  # region study keys the searches find
    view: bool  # the KS study's metadata
    download: bool  # the KS study's objects
    flagged: bool = False


def cell(
    relationship: str,
    user: str,
    visible: str,
    view: bool,
    download: bool,
    flagged: bool = False,
) -> Cell:
    return Cell(relationship, user, frozenset(visible.split()), view, download, flagged)


MATRIX = [
    cell("owner", "ks_rad", "KS KS-BO", True, True),
    cell("none", "rad_rad", "", False, False),
    cell("none", "researcher", "", False, False),
    cell("care", "rad_rad", "KS SU", True, True),
    cell("care-expired", "rad_rad", "", False, False),
    cell("break-glass", "rad_rad", "KS SU", True, True, flagged=True),
    cell("blocked", "rad_rad", "", False, False),
    cell("blocked-glass", "rad_rad", "KS SU", True, True, flagged=True),
    cell("share", "rad_rad", "KS", True, False),
    cell("share-download", "rad_rad", "KS", True, True),
    cell("share-expired", "rad_rad", "", False, False),
    cell("link", "link", "KS", True, True),
]


def _link_name(region: Region) -> str:
    from samarkiv.index.policy_schema import share_links

    with region.engine.connect() as conn:
        return f"share-link:{conn.execute(select(func.max(share_links.c.pk))).scalar_one()}"


def _who(region: Region, c: Cell) -> tuple[dict[str, str], str]:
    """The request headers and the audited user name of the cell's caller."""
    if c.user == "link":
        assert region.link_token
        return {"Authorization": f"Bearer {region.link_token}"}, _link_name(region)
    account = region.users[c.user]
    return account.headers, account.username


def _mine(region: Region, uids: list[str]) -> set[str]:
    """The region study keys among ``uids``."""
    keys = {study.uid: key for key, study in region.studies.items()}
    return {keys[uid] for uid in uids if uid in keys}


def _person_keys(region: Region, ids: list[str]) -> set[str]:
    names = {str(pk): name for name, pk in region.persons.items()}
    return {names[i] for i in ids if i in names}


def _check_cell(region: Region, c: Cell) -> None:
    base = region.archive.http
    headers, name = _who(region, c)
    ks = region.studies["KS"]
    kwargs: dict[str, Any] = {"study_uid": ks.uid, "user_name": name}
    decision = "allowed"

    # QIDO-RS: hidden studies are absent (and not counted by the paging probe)
    mark = region.audit_mark()
    found = httpx.get(
        f"{base}/dicomweb/studies", headers={**headers, "Accept": DICOM_JSON}
    )
    assert found.status_code == 200, (c, found.text)
    uids = [r["0020000D"]["Value"][0] for r in found.json()]
    assert _mine(region, uids) == c.visible, c
    assert_audited(region, mark, action="query", outcome="allowed", user_name=name)
    mark = region.audit_mark()
    series = httpx.get(
        f"{base}/dicomweb/series",
        headers={**headers, "Accept": DICOM_JSON},
        params={"Modality": "CT"},
    )
    assert (
        _mine(region, [r["0020000D"]["Value"][0] for r in series.json()]) == c.visible
    ), c
    instances = httpx.get(
        f"{base}/dicomweb/studies/{ks.uid}/instances",
        headers={**headers, "Accept": DICOM_JSON},
    )
    assert len(instances.json()) == (
        len(ks.instance_uids) if "KS" in c.visible else 0
    ), c
    assert_audited(
        region, mark, action="query", outcome="allowed", user_name=name, count=2
    )

    # WADO-RS metadata (view) and retrieve (download): 403 when refused, audited either way
    mark = region.audit_mark()
    metadata = httpx.get(f"{base}/dicomweb/studies/{ks.uid}/metadata", headers=headers)
    assert metadata.status_code == (200 if c.view else 403), (c, metadata.text)
    if not c.view:
        assert metadata.headers["content-type"].startswith("application/problem+json")
    decision = "allowed" if c.view else "denied"
    assert_audited(
        region, mark, action="view", outcome=decision, flagged=c.flagged, **kwargs
    )
    mark = region.audit_mark()
    retrieve = httpx.get(
        f"{base}/dicomweb/studies/{ks.uid}",
        headers={
            **headers,
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
        },
    )
    assert retrieve.status_code == (200 if c.download else 403), (
        c,
        retrieve.text[:200],
    )
    assert_audited(
        region,
        mark,
        action="download",
        outcome="allowed" if c.download else "denied",
        flagged=c.flagged,
        **kwargs,
    )

    # WADO-URI: the object itself is a download
    mark = region.audit_mark()
    params = {"requestType": "WADO", "studyUID": ks.uid, "seriesUID": ks.series_uid, "objectUID": ks.instance_uids[0],
              "contentType": "application/dicom"}  # fmt: skip
    wado = httpx.get(f"{base}/wado", headers=headers, params=params)
    assert wado.status_code == (200 if c.download else 403), c
    assert_audited(
        region,
        mark,
        action="download",
        outcome="allowed" if c.download else "denied",
        **kwargs,
    )

    # FHIR: searches filtered and counted without hidden studies; a refused read is 404
    mark = region.audit_mark()
    bundle = httpx.get(
        f"{base}/fhir/ImagingStudy", headers=headers, params={"_count": "100"}
    ).json()
    ids = [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] == "ImagingStudy"
    ]
    assert _mine(region, ids) == c.visible and bundle["total"] == len(ids), (c, bundle)
    assert_audited(region, mark, action="query", outcome="allowed", user_name=name)
    mark = region.audit_mark()
    read = httpx.get(f"{base}/fhir/ImagingStudy/{ks.uid}", headers=headers)
    assert read.status_code == (200 if c.view else 404), c
    assert_audited(
        region, mark, action="view", outcome=decision, flagged=c.flagged, **kwargs
    )
    mark = region.audit_mark()
    patients = httpx.get(
        f"{base}/fhir/Patient", headers=headers, params={"_count": "100"}
    ).json()
    person_ids = [
        e["resource"]["id"]
        for e in patients.get("entry", [])
        if e["resource"]["resourceType"] == "Patient"
    ]
    persons = _person_keys(region, person_ids)
    expected = ({"anna"} if c.visible & {"KS", "SU"} else set()) | (
        {"bo"} if "KS-BO" in c.visible else set()
    )
    if c.relationship in ("care", "break-glass", "blocked-glass"):
        expected.add("anna")
    assert persons == expected and patients["total"] == len(person_ids), (c, patients)
    anna = httpx.get(f"{base}/fhir/Patient/{region.persons['anna']}", headers=headers)
    assert anna.status_code == (200 if "anna" in expected else 404), c
    assert_audited(
        region, mark, action="query", outcome="allowed", user_name=name, count=2
    )


def test_query_retrieve_and_fhir_matrix(region: Region) -> None:
    for c in MATRIX:
        region.clear()
        if c.relationship not in ("owner", "none"):
            region.relate(c.relationship, c.user if c.user != "link" else "RAD")
        _check_cell(region, c)


def test_share_links(region: Region) -> None:
    base = region.archive.http
    ks = region.studies["KS"]
    region.relate("link", "RAD")
    token, name = region.link_token, _link_name(region)
    # ?token= where a viewer opens a link (GET, DICOMweb/WADO-URI/viewer paths)
    mark = region.audit_mark()
    found = httpx.get(
        f"{base}/dicomweb/studies",
        params={"token": token},
        headers={"Accept": DICOM_JSON},
    )
    assert found.status_code == 200 and _mine(
        region, [r["0020000D"]["Value"][0] for r in found.json()]
    ) == {"KS"}
    metadata = httpx.get(
        f"{base}/dicomweb/studies/{ks.uid}/metadata", params={"token": token}
    )
    assert metadata.status_code == 200 and len(metadata.json()) == len(ks.instance_uids)
    assert_audited(
        region, mark, action="view", outcome="allowed", user_name=name, study_uid=ks.uid
    )
    # only the link's studies, nothing else
    su = region.studies["SU"]
    other = httpx.get(
        f"{base}/dicomweb/studies/{su.uid}/metadata",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert other.status_code == 403
    assert_audited(
        region, mark, action="view", outcome="denied", user_name=name, study_uid=su.uid
    )
    # a viewer page opened with ?token= hands the token on as a cookie for the viewer's own requests
    page = httpx.get(f"{base}/viewer/app-config.js", params={"token": token})
    assert page.status_code == 200 and page.cookies.get("samarkiv_link") == token
    with_cookie = httpx.get(
        f"{base}/dicomweb/studies/{ks.uid}/metadata", cookies={"samarkiv_link": token}
    )
    assert with_cookie.status_code == 200
    assert_audited(region, mark, action="view", outcome="allowed", user_name=name, study_uid=ks.uid, count=2)
    # not accepted as ?token= elsewhere (FHIR)
    assert (
        httpx.get(f"{base}/fhir/ImagingStudy", params={"token": token}).status_code
        == 401
    )
    # revoked: 401 for bearer and ?token=, audited as a refused login
    region.clear()
    region.relate("link-revoked", "RAD")
    token = region.link_token
    mark = region.audit_mark()
    for response in (
        httpx.get(
            f"{base}/dicomweb/studies/{ks.uid}/metadata",
            headers={"Authorization": f"Bearer {token}"},
        ),
        httpx.get(
            f"{base}/dicomweb/studies/{ks.uid}/metadata", params={"token": token}
        ),
        httpx.get(
            f"{base}/fhir/ImagingStudy", headers={"Authorization": f"Bearer {token}"}
        ),
    ):
        assert response.status_code == 401, response.text
    assert_audited(
        region, mark, action="login", outcome="denied", user_name="share-link", count=3
    )
    rows = region.audit_rows(mark)
    assert not matching(rows, action="view", study_uid=ks.uid), (
        "a refused link reached the study"
    )


def _new_instance(region: Region, study: str, tmp: Path) -> tuple[bytes, str]:
    """A new instance of region study ``study`` (same patient), as Part 10 bytes."""
    ds = dcmread(region.studies[study].files[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes(), ds.SOPInstanceUID


def _stow(
    region: Region,
    headers: dict[str, str],
    contents: list[bytes],
    study: str | None = None,
) -> httpx.Response:
    body, boundary = multipart(
        [({"Content-Type": "application/dicom"}, c) for c in contents]
    )
    url = region.archive.http + "/dicomweb/studies" + (f"/{study}" if study else "")
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return httpx.post(
        url,
        content=body,
        headers={**headers, "Content-Type": content_type, "Accept": DICOM_JSON},
        timeout=60,
    )


def _failures(response: httpx.Response) -> list[int]:
    items = response.json().get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in items]


def test_stow_matrix(region: Region, tmp_path: Path) -> None:
    ks = region.studies["KS"]
    rad = region.users["rad_rad"]
    # refused: no need, a view-only share, an expired share, a block over care, a link without annotate
    for relationship in (
        "none",
        "share",
        "share-download",
        "share-expired",
        "blocked",
        "link",
    ):
        region.clear()
        if relationship != "none":
            region.relate(relationship, "RAD" if relationship == "link" else "rad_rad")
        headers = (
            {"Authorization": f"Bearer {region.link_token}"}
            if relationship == "link"
            else rad.headers
        )
        name = _link_name(region) if relationship == "link" else rad.username
        data, _sop = _new_instance(region, "KS", tmp_path)
        mark = region.audit_mark()
        named = _stow(
            region, headers, [data], ks.uid
        )  # the study named: 403 before the body is read
        assert named.status_code == 403, (relationship, named.text)
        assert_audited(
            region,
            mark,
            action="store",
            outcome="denied",
            user_name=name,
            study_uid=ks.uid,
        )
        mark = region.audit_mark()
        unnamed = _stow(
            region, headers, [data, data]
        )  # per instance: Refused, Not Authorized; one record
        assert (
            unnamed.status_code == 409 and _failures(unnamed) == [NOT_AUTHORISED] * 2
        ), (relationship, unnamed.text)
        assert_audited(
            region,
            mark,
            action="store",
            outcome="denied",
            user_name=name,
            study_uid=ks.uid,
        )
    # the owner may add; a new study is the caller's own
    owner = region.users["ks_rad"]
    region.clear()
    data, _sop = _new_instance(region, "KS", tmp_path)
    mark = region.audit_mark()
    assert _stow(region, owner.headers, [data], ks.uid).status_code == 200
    assert_audited(
        region,
        mark,
        action="store",
        outcome="allowed",
        user_name=owner.username,
        study_uid=ks.uid,
    )
    ds = dcmread(region.studies["KS"].files[0])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "new-study.dcm"
    ds.save_as(path, enforce_file_format=True)
    mark = region.audit_mark()
    assert _stow(region, rad.headers, [path.read_bytes()]).status_code == 200
    assert_audited(
        region,
        mark,
        action="store",
        outcome="allowed",
        user_name=rad.username,
        study_uid=ds.StudyInstanceUID,
    )
    found = httpx.get(f"{region.archive.http}/dicomweb/studies", headers={**rad.headers, "Accept": DICOM_JSON},
                      params={"StudyInstanceUID": ds.StudyInstanceUID})  # fmt: skip
    assert len(found.json()) == 1  # RAD owns what it stored
    # with a care relationship RAD may add to KS's study (annotate right): one record for two instances
    region.relate("care", "rad_rad")
    first, _ = _new_instance(region, "KS", tmp_path)
    second, _ = _new_instance(region, "KS", tmp_path)
    mark = region.audit_mark()
    assert _stow(region, rad.headers, [first, second], ks.uid).status_code == 200
    assert_audited(
        region,
        mark,
        action="store",
        outcome="allowed",
        user_name=rad.username,
        study_uid=ks.uid,
    )
