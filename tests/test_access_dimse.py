"""The access matrix for the DIMSE doors (C-FIND, C-GET, C-MOVE) and the CLI
(``samarkiv find``), issue 5.

The region (tests/_access.py): Anna has a study at KS and one at SU. For
each relationship of the RAD organisation (or its radiologist rolf) with
Anna, each door is asked for the KS study, and the answer and its audit
record are asserted:

* DCMTK's findscu, getscu and movescu with the calling AE's service identity
  (RADUS, KSCT, SUCT: the organisation's), the fast path serving C-FIND and
  C-GET, pynetdicom C-MOVE;
* pynetdicom as the SCU with DICOM User Identity Negotiation (username and
  passcode; DCMTK 3.6.7's findscu/getscu/movescu cannot offer one) for what
  only a user can have: break-glass;
* ``samarkiv find --as rolf``.

A denied C-FIND simply lacks the study; a denied C-GET/C-MOVE fails with
0xC000 "not authorised"; share links are HTTP only (a link token offered as
a DIMSE user identity is refused).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from _access import PASSWORD, Region, assert_audited, build_region, matching, storescu
from conftest import require_tool
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from test_find import findscu
from test_retrieve import StoreSCP, dcmtk_retrieve, storescp  # noqa: F401  (fixture)

NOT_AUTHORISED = 0xC000
SOME_FAILED = 0xB000


@pytest.fixture
def dimse_region(make_archive, storescp, tmp_path: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    """The region, with a C-MOVE destination DEST (a DCMTK storescp) known to it."""
    require_tool("findscu", "getscu", "movescu", "storescp")
    dest: StoreSCP = storescp("DEST")
    region = build_region(make_archive, tmp_path / "studies", dest.node_config())
    region.dest = dest  # type: ignore[attr-defined]
    yield region
    region.dispose()


# --- the doors ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one door answered for Anna: the studies found, or a retrieve's status and count."""

    status: int
    studies: set[str]
    received: int = 0


class Door:
    """One way in: DCMTK with an AE's service identity, or pynetdicom with a user identity."""

    def __init__(self, region: Region, tmp_path: Path, aet: str, user: str | None = None) -> None:
        self.region, self.tmp_path, self.aet, self.user = region, tmp_path, aet, user

    @property
    def audit_name(self) -> str:
        return self.user or f"aet:{self.aet}"

    def _out(self, what: str) -> Path:
        return self.tmp_path / f"{what}-{self.aet}-{self.user}-{uuid.uuid4().hex[:8]}"

    # pynetdicom with User Identity Negotiation (PS3.7 D.3.3.7): username and passcode
    def _associate(self, contexts: list[str], roles: list = (), handlers: list = ()):  # type: ignore[no-untyped-def]
        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120  # a loaded CI machine
        for cx in contexts:
            ae.add_requested_context(cx)
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = self.user.encode()  # type: ignore[union-attr]
        identity.secondary_field = PASSWORD.encode()
        server = self.region.archive
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet, ext_neg=[identity, *roles],
                             evt_handlers=list(handlers))  # fmt: skip
        assert assoc.is_established, f"association of {self.user} refused"
        return assoc

    def find(self, *keys: str, level: str = "STUDY") -> Outcome:
        if self.user is None:
            status, responses, _log = findscu(
                self.region.archive, self._out("find"), [f"QueryRetrieveLevel={level}", "StudyInstanceUID", *keys],
                extra=("-aet", self.aet),
            )  # fmt: skip
            return Outcome(status, {str(r.StudyInstanceUID) for r in responses})
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = level, ""
        for key in keys:
            keyword, _, value = key.partition("=")
            setattr(query, keyword, value)
        assoc = self._associate([StudyRootQueryRetrieveInformationModelFind])
        try:
            responses = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        finally:
            assoc.release()
        found = {str(ds.StudyInstanceUID) for status, ds in responses if status.Status in (0xFF00, 0xFF01)}
        return Outcome(int(responses[-1][0].Status), found)

    def get(self, study_uids: list[str]) -> Outcome:
        keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(study_uids)]
        if self.user is None:
            out = self._out("get")
            out.mkdir()
            final = dcmtk_retrieve("getscu", self.region.archive, "-aet", self.aet, "-S", "+B", "-od", str(out),
                                   *(a for k in keys for a in ("-k", k)))  # fmt: skip
            return Outcome(final.status, set(), len(list(out.iterdir())))
        received: list[str] = []

        def on_store(event: evt.Event) -> int:
            received.append(event.request.AffectedSOPInstanceUID)
            return 0x0000

        assoc = self._associate([StudyRootQueryRetrieveInformationModelGet], [build_role(CTImageStorage, scp_role=True)],
                                [(evt.EVT_C_STORE, on_store)])  # fmt: skip
        try:
            responses = list(assoc.send_c_get(_identifier(keys), StudyRootQueryRetrieveInformationModelGet))
        finally:
            assoc.release()
        return Outcome(int(responses[-1][0].Status), set(), len(received))

    def move(self, study_uids: list[str]) -> Outcome:
        dest = self.region.dest  # type: ignore[attr-defined]
        dest.take()
        keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(study_uids)]
        if self.user is None:
            final = dcmtk_retrieve("movescu", self.region.archive, "-aet", self.aet, "-S", "-aem", "DEST",
                                   *(a for k in keys for a in ("-k", k)))  # fmt: skip
            return Outcome(final.status, set(), len(dest.take()))
        assoc = self._associate([StudyRootQueryRetrieveInformationModelMove])
        try:
            responses = list(assoc.send_c_move(_identifier(keys), "DEST", StudyRootQueryRetrieveInformationModelMove))
        finally:
            assoc.release()
        return Outcome(int(responses[-1][0].Status), set(), len(dest.take()))


def _identifier(keys: list[str]) -> Dataset:
    ds = Dataset()
    for key in keys:
        keyword, _, value = key.partition("=")
        setattr(ds, keyword, value)
    return ds


# --- the matrix ---------------------------------------------------------------------------------

# (who, relationship created for RAD/rolf, KS study allowed, SU study visible, flagged)
# who: an AE title (service identity), or "user:<key>" (pynetdicom, user identity)
MATRIX = [
    ("KSCT", "owner", True, False, False),
    ("user:ks_rad", "owner", True, False, False),
    ("RADUS", "none", False, False, False),
    ("user:rad_rad", "none", False, False, False),
    ("RADUS", "care", True, True, False),
    ("user:rad_rad", "care", True, True, False),
    ("RADUS", "care-expired", False, False, False),
    ("user:rad_rad", "break-glass", True, True, True),
    ("RADUS", "blocked", False, False, False),
    ("user:rad_rad", "blocked", False, False, False),
    ("user:rad_rad", "blocked-glass", True, True, True),
    ("RADUS", "share", True, False, False),
    ("user:rad_rad", "share", True, False, False),
    ("RADUS", "share-expired", False, False, False),
]


def _door(region: Region, tmp_path: Path, who: str) -> Door:
    if who.startswith("user:"):
        account = region.users[who.removeprefix("user:")]
        return Door(region, tmp_path, "RADUS" if account.org == "RAD" else f"{account.org}CT", account.username)
    return Door(region, tmp_path, who)


def test_dimse_access_matrix(dimse_region: Region, tmp_path: Path):
    """Every cell of MATRIX through C-FIND, C-GET and C-MOVE, each with its audit record."""
    region = dimse_region
    ks, su = region.studies["KS"].uid, region.studies["SU"].uid
    for who, relationship, allowed, su_visible, flagged in MATRIX:
        region.clear()
        if relationship != "owner":
            region.relate(relationship, "rad_rad")
        door = _door(region, tmp_path, who)
        cell = f"{who} / {relationship}"

        mark = region.audit_mark()
        found = door.find("PatientName=Andersson^Anna")
        assert found.status == 0x0000, cell
        assert (ks in found.studies, su in found.studies) == (allowed, su_visible), cell
        assert_audited(region, mark, action="query", outcome="allowed", user_name=door.audit_name)

        outcome = "allowed" if allowed else "denied"
        for retrieve in (door.get, door.move):
            mark = region.audit_mark()
            got = retrieve([ks])
            if allowed:
                assert (got.status, got.received) == (0x0000, 2), f"{cell} {retrieve.__name__}"
            else:
                assert (got.status, got.received) == (NOT_AUTHORISED, 0), f"{cell} {retrieve.__name__}"
            [row] = assert_audited(region, mark, action="retrieve", outcome=outcome, user_name=door.audit_name,
                                   study_uid=ks, flagged=flagged)  # fmt: skip
            assert row["object_count"] == 2
            if flagged:
                assert row["purpose"] == "ETREAT" and row["reason"], row


def test_some_studies_denied_are_failed_sub_operations(dimse_region: Region, tmp_path: Path):
    """A retrieve naming a visible and a hidden study: the visible one goes, the
    hidden one's instances are failed sub-operations, status 0xB000; both audited."""
    region = dimse_region
    ks, su = region.studies["KS"], region.studies["SU"]
    door = Door(region, tmp_path, "SUCT")
    for retrieve, tool in ((door.get, "getscu"), (door.move, "movescu")):
        mark = region.audit_mark()
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ks.uid}\\{su.uid}"]
        out = tmp_path / f"mixed-{tool}"
        out.mkdir()
        args = ("-S", "+B", "-od", str(out)) if tool == "getscu" else ("-S", "-aem", "DEST")
        region.dest.take()  # type: ignore[attr-defined]
        final = dcmtk_retrieve(tool, region.archive, "-aet", "SUCT", *args, *keys)
        received = len(list(out.iterdir())) if tool == "getscu" else len(region.dest.take())  # type: ignore[attr-defined]
        assert (final.status, final.completed, final.failed, received) == (SOME_FAILED, 2, 2, 2), final.output
        if tool == "movescu":  # getscu does not show the final identifier: pynetdicom below
            assert sorted(final.failed_uids) == sorted(ks.instance_uids)
        assert_audited(region, mark, action="retrieve", outcome="allowed", user_name="aet:SUCT", study_uid=su.uid)
        assert_audited(region, mark, action="retrieve", outcome="denied", user_name="aet:SUCT", study_uid=ks.uid)
    # the Failed SOP Instance UID List of a C-GET, on the fast path (no user identity)
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="SUCT")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120  # a loaded CI machine
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", region.archive.dicom_port, ae_title=region.archive.aet,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    try:
        query = _identifier(["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ks.uid}\\{su.uid}"])
        *_, (status, identifier) = assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
    finally:
        assoc.release()
    assert status.Status == SOME_FAILED and sorted(received) == sorted(su.instance_uids)
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(ks.instance_uids)


def test_share_links_are_not_a_dimse_identity(dimse_region: Region):
    """Share links are HTTP only: a link's token, valid or revoked, offered as a
    DIMSE user identity (JWT type) gets the association refused."""
    region = dimse_region
    for relationship in ("link", "link-revoked"):
        region.clear()
        region.relate(relationship, "RAD")
        assert region.link_token
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 5
        identity.primary_field = region.link_token.encode()
        ae = AE(ae_title="RADUS")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120  # a loaded CI machine
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        server = region.archive
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet, ext_neg=[identity])
        assert not assoc.is_established, relationship
        if assoc.is_established:
            assoc.release()


def test_patient_related_counts_only_count_visible_studies(dimse_region: Region, tmp_path: Path):
    """SU files a study under KS's Patient ID for Anna: KS sees her patient row,
    and NumberOfPatientRelatedStudies counts only the study KS may see."""
    from _access import make_study

    region = dimse_region
    extra = make_study(tmp_path, "KS-100", "Andersson^Anna", "191212121212", n=1)
    from pydicom import dcmread

    ds = dcmread(extra.files[0])
    ds.IssuerOfPatientID = "KS"
    ds.save_as(extra.files[0])
    assert storescu(region.archive, *extra.files, extra=("-aet", "SUCT")).returncode == 0
    ks_door = Door(region, tmp_path, "KSCT")
    status, responses, log = findscu(
        region.archive, tmp_path / "patient-find", ["QueryRetrieveLevel=PATIENT", "PatientID=KS-100",
                                                    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"],
        model="-P", extra=("-aet", "KSCT"),
    )  # fmt: skip
    assert status == 0x0000, log
    [patient] = responses
    assert (int(patient.NumberOfPatientRelatedStudies), int(patient.NumberOfPatientRelatedInstances)) == (1, 2)
    # SU sees the study it owns and its own study of the same person, not KS's
    found = Door(region, tmp_path, "SUCT").find("PatientID=KS-100", "IssuerOfPatientID=KS")
    assert found.studies == {extra.uid, region.studies["SU"].uid}
    assert region.studies["KS"].uid in ks_door.find("PatientID=KS-100").studies


def test_stores_are_audited_once_per_study_and_association(dimse_region: Region, tmp_path: Path):
    """C-STORE writes one ``store`` record per study and association, naming the
    sender and the person: on the fast path (DCMTK storescu, the region's
    studies) and on pynetdicom's (an association with a user identity)."""
    from _access import AETS, PNR_BO, make_study

    region = dimse_region
    rows = region.audit_rows(expect=lambda rs: len(matching(rs, action="store")) >= 3)
    for key, person in (("KS", "anna"), ("SU", "anna"), ("KS-BO", "bo")):
        study = region.studies[key]
        [row] = assert_audited(region, 0, action="store", outcome="allowed", user_name=f"aet:{AETS[study.owner]}",
                               study_uid=study.uid)  # fmt: skip
        assert row["patient_keys"] == str(region.persons[person]), row
        assert row["owner_org"] == study.owner
    assert len(matching(rows, action="store")) == 3  # two instances of KS and of SU, one record each

    mark = region.audit_mark()
    new = make_study(tmp_path, "KS-201", "Berg^Bo", PNR_BO, n=2)
    assoc = Door(region, tmp_path, "KSCT", "karin")._associate([])
    try:
        statuses = [assoc.send_c_store(path).Status for path in new.files]
    finally:
        assoc.release()
    assert statuses == [0x0000, 0x0000]
    [row] = assert_audited(region, mark, action="store", outcome="allowed", user_name="karin", study_uid=new.uid)
    assert row["patient_keys"] == str(region.persons["bo"]) and row["org_code"] == "KS"


# --- the CLI door ---------------------------------------------------------------------------


CLI_MATRIX = [
    ("ks_rad", "owner", True),
    ("rad_rad", "none", False),
    ("rad_rad", "care", True),
    ("rad_rad", "care-expired", False),
    ("rad_rad", "break-glass", True),
    ("rad_rad", "blocked", False),
    ("rad_rad", "blocked-glass", True),
    ("rad_rad", "share", True),
    ("rad_rad", "share-expired", False),
    ("researcher", "owner", False),  # a researcher sees nothing identifiable, even their own organisation's
]


def _cli_find(region: Region, *args: str) -> set[str]:
    result = region.archive.cli("find", "--json", *args, "PatientName=Andersson^Anna")
    return {row["StudyInstanceUID"] for row in json.loads(result.stdout)}


@pytest.fixture
def cli_region(make_archive, tmp_path: Path):  # type: ignore[no-untyped-def]
    built = build_region(make_archive, tmp_path / "studies")
    yield built
    built.dispose()


def test_cli_access_matrix(cli_region: Region):
    """``samarkiv find --as USER``: the policy for that user, audited as theirs;
    without ``--as`` the local operator sees everything, audited with purpose HSYSADMIN."""
    region = cli_region
    ks = region.studies["KS"].uid
    for user, relationship, allowed in CLI_MATRIX:
        region.clear()
        if relationship != "owner":
            region.relate(relationship, user)
        mark = region.audit_mark()
        name = region.users[user].username
        assert (ks in _cli_find(region, "--as", name)) is allowed, f"{user} / {relationship}"
        assert_audited(region, mark, action="query", outcome="allowed", user_name=name)
    mark = region.audit_mark()
    assert _cli_find(region) == {region.studies["KS"].uid, region.studies["SU"].uid}
    rows = region.audit_rows(mark, expect=lambda rs: bool(matching(rs, action="query")))
    [row] = matching(rows, action="query")
    assert row["user_name"].startswith("cli:") and row["purpose"] == "HSYSADMIN" and row["principal_kind"] == "system"
    bad = region.archive.cli("find", "--as", "nobody", "PatientName=X", check=False)
    assert bad.returncode == 2 and "no user 'nobody'" in bad.stderr and "Traceback" not in bad.stderr

