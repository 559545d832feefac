"""Shared fixtures for the access-matrix tests of every door (issue 5).

``region`` is a running archive (tests/conftest.py ``make_archive``) for three
organisations: KS and SU (hospitals, owners; DIMSE AEs ``KSCT`` and ``SUCT``)
and RAD (a private provider, AE ``RADUS``), with users per role, one person
(Anna, personnummer 19121212-1212) with a study at KS and one at SU (each of
two instances, sent over DIMSE by the owner's AE), and another person (Bo)
with one study at KS.

Relationships (:meth:`Region.relate`), each made through the policy API in
the test process, the same database the archive reads:

=================  ==================================================================
``none``           nothing: another organisation has no legitimate need
``care``           an active care relationship of the user's organisation with Anna
``care-expired``   the same, expired yesterday
``break-glass``    the user's own emergency access to Anna (flagged)
``blocked``        Anna blocks the user's organisation; an active care relationship too
``blocked-glass``  the block, and the user's emergency access (allowed, flagged)
``share``          the KS study shared with the user's organisation, view only
``share-download`` the same, view and download
``share-expired``  a view share that expired yesterday
``link``           a share link to the KS study (HTTP only); ``Region.link_token``
``link-revoked``   the same link, revoked
=================  ==================================================================

:meth:`Region.clear` removes every relationship again (between matrix cells).
Audit rows are read from the index (:meth:`Region.audit_rows`, waiting for
the archive's background writer) and checked with :func:`assert_audited`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ArchiveProcess, require_tool, storescu
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import delete, func, select

PERSONNUMMER_OID = "1.2.752.129.2.1.3.1"
PNR_ANNA = "191212121212"  # Skatteverket's test personnummer 19121212-1212
PNR_BO = "194001011230"
PASSWORD = "test-password-1"

REGION_CONFIG = """
accept_unknown_aets = false

[auth]
dimse_user_identity = "optional"

[[organisations]]
code = "KS"
name = "Karolinska"
issuer_of_patient_id = "KS"
aets = ["KSCT"]

[[organisations]]
code = "SU"
name = "Sahlgrenska"
issuer_of_patient_id = "SU"
aets = ["SUCT"]

[[organisations]]
code = "RAD"
name = "Privatrontgen"
kind = "private"
issuer_of_patient_id = "RAD"
aets = ["RADUS"]
"""

AETS = {"KS": "KSCT", "SU": "SUCT", "RAD": "RADUS"}
# user key -> (username, organisation, role)
USERS = {
    "ks_rad": ("karin", "KS", "radiologist"),
    "su_clin": ("sven", "SU", "clinician"),
    "rad_rad": ("rolf", "RAD", "radiologist"),
    "ks_aud": ("astrid", "KS", "auditor"),
    "researcher": ("rut", "KS", "researcher"),
    "patient": ("anna", "KS", "patient"),
}
RELATIONSHIPS = (
    "none", "care", "care-expired", "break-glass", "blocked", "blocked-glass",
    "share", "share-download", "share-expired", "link", "link-revoked",
)  # fmt: skip


@dataclass
class Account:
    """A user of the region: name, organisation, role, password and API token."""

    username: str
    org: str
    role: str
    token: str
    password: str = PASSWORD
    pk: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def principal(self, method: str = "password") -> Any:
        """The principal this user acts as (what the doors derive from the credentials)."""
        from samarkiv.access.principal import Principal

        return Principal(name=self.username, kind="user", org_code=self.org, roles=frozenset({self.role}),
                         user_pk=self.pk, auth_method=method)  # fmt: skip


@dataclass
class Study:
    uid: str
    owner: str
    patient_id: str
    series_uid: str
    instance_uids: list[str]
    files: list[Path]


@dataclass
class Region:
    archive: ArchiveProcess
    users: dict[str, Account]
    studies: dict[str, Study]  # "KS", "SU" (Anna), "KS-BO" (Bo)
    persons: dict[str, int]  # "anna", "bo" -> person pk
    org_pks: dict[str, int]
    link_token: str | None = None
    _engine: Any = field(default=None, repr=False)

    # --- the database the archive uses ------------------------------------------------------

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from samarkiv.index.engine import create_index_engine

            url = self.archive.index_url
            self._engine = create_index_engine(url, writer=url.startswith("sqlite"))
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # --- relationships --------------------------------------------------------------------

    def relate(self, relationship: str, user: str, study: str = "KS") -> None:
        """Create ``relationship`` (one of RELATIONSHIPS) between user key ``user``
        (or an organisation code: then org-wide where the relationship allows)
        and Anna / ``study``. Call :meth:`clear` first for a fresh cell."""
        from samarkiv.access import policy as p

        if relationship not in RELATIONSHIPS:
            raise ValueError(f"unknown relationship {relationship!r}")
        account = self.users.get(user)
        org = account.org if account else user
        by = _admin()
        anna, org_pk = self.persons["anna"], self.org_pks[org]
        past = datetime.now(UTC) - timedelta(days=40)
        uid = self.studies[study].uid
        glass = self.principal(user) if account is not None and "glass" in relationship else None
        with self.engine.begin() as conn:
            if relationship in ("care", "blocked"):
                p.declare_care(conn, by, person_pk=anna, org_pk=org_pk, reason="referral for a second reading")
            if relationship == "care-expired":
                p.declare_care(conn, by, person_pk=anna, org_pk=org_pk, reason="an old referral", days=1, now=past)
            if relationship in ("blocked", "blocked-glass"):
                p.add_block(conn, by, person_pk=anna, blocked_org_pk=org_pk, reason="the patient asked")
            if relationship in ("break-glass", "blocked-glass"):
                if glass is None:
                    raise ValueError("break-glass is a user's, name a user key")
                p.start_break_glass(conn, glass, person_pk=anna, reason="unconscious in the ER")
            if relationship in ("share", "share-download"):
                rights = "view" if relationship == "share" else "view,download"
                p.grant_share(conn, by, study_uids=[uid], grantee_org_pk=org_pk, rights=rights, reason="second opinion")
            if relationship == "share-expired":
                p.grant_share(conn, by, study_uids=[uid], grantee_org_pk=org_pk, rights="view",
                              reason="an old consultation", days=1, now=past)  # fmt: skip
            if relationship in ("link", "link-revoked"):
                pk, self.link_token = p.create_share_link(conn, by, study_uids=[uid], rights="view,download",
                                                          reason="for the patient's dentist")  # fmt: skip
                if relationship == "link-revoked":
                    p.revoke_share_link(conn, by, pk)

    def clear(self) -> None:
        """Remove every care relationship, share, share link, break-glass and block."""
        from samarkiv.index import policy_schema as ps

        with self.engine.begin() as conn:
            for table in (ps.share_link_studies, ps.share_links, ps.shares, ps.care_relationships, ps.break_glass,
                          ps.patient_blocks):  # fmt: skip
                conn.execute(delete(table))
        self.link_token = None

    def principal(self, user: str) -> Any:
        """The principal of user key ``user``, read from the index (with its pk)."""
        from samarkiv.access.users import require_user

        with self.engine.connect() as conn:
            return require_user(conn, self.users[user].username).principal("password", "127.0.0.1")

    def link_patient(self) -> None:
        """Link the patient user (Anna) to her person (``users.person_pk``), as
        ``samarkiv users update anna --patient`` does."""
        from samarkiv.access.users import set_patient

        with self.engine.begin() as conn:
            set_patient(conn, self.users["patient"].username, f"{PNR_ANNA}^{PERSONNUMMER_OID}", _admin())

    def patient_principal(self) -> Any:
        """The patient user (Anna) bound to her person: the principal every door
        builds for her once she is linked (:meth:`link_patient`)."""
        self.link_patient()
        return self.principal("patient")

    # --- audit ------------------------------------------------------------------------------

    def audit_mark(self) -> int:
        """The last audit sequence number now (read rows after it with ``since=``)."""
        from samarkiv.index.audit_schema import audit_events

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(audit_events.c.seq), 0))).scalar_one())

    def audit_rows(self, since: int = 0, *, expect: Callable[[list[dict]], bool] | None = None,
                   timeout: float = 30.0) -> list[dict[str, Any]]:  # fmt: skip
        """Audit rows after ``since`` (policy changes excluded), waiting up to ``timeout``
        for ``expect(rows)`` to hold (the archive appends in the background)."""
        from samarkiv.index.audit_schema import audit_events

        deadline = time.monotonic() + timeout
        while True:
            with self.engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(
                    select(audit_events).where(audit_events.c.seq > since).order_by(audit_events.c.seq)
                )]  # fmt: skip
            rows = [r for r in rows if r["action"] not in ("share", "break-glass")]
            if expect is None or expect(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


def _admin() -> Any:
    from samarkiv.access.principal import Principal

    return Principal(name="test-admin", kind="user", roles=frozenset({"administrator"}), auth_method="test")


def matching(rows: list[dict[str, Any]], **want: Any) -> list[dict[str, Any]]:
    """The rows whose columns equal ``want`` (``study_uid``, ``action``, ``outcome``, ``user_name``...)."""
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]


def assert_audited(region: Region, since: int, *, action: str, outcome: str, user_name: str,
                   study_uid: str | None = None, flagged: bool | None = None, count: int = 1) -> list[dict[str, Any]]:  # fmt: skip
    """Exactly ``count`` audit records after ``since`` for this access (one per
    request and study), with the outcome (and review flag) asked for."""
    want: dict[str, Any] = {"action": action, "user_name": user_name}
    if study_uid is not None:
        want["study_uid"] = study_uid
    rows = region.audit_rows(since, expect=lambda rs: len(matching(rs, **want)) >= count)
    found = matching(rows, **want)
    assert len(found) == count, f"want {count} {want}, got {len(found)} of:\n" + "\n".join(map(_row, rows))
    for row in found:
        assert row["outcome"] == outcome, _row(row)
        if flagged is not None:
            assert bool(row["flagged"]) is flagged, _row(row)
    return found


def _row(row: dict[str, Any]) -> str:
    keys = ("seq", "action", "outcome", "user_name", "org_code", "study_uid", "object_count", "purpose", "flagged",
            "outcome_detail")  # fmt: skip
    return " ".join(f"{k}={row.get(k)!r}" for k in keys)


# --- the data ---------------------------------------------------------------------------------


def make_study(folder: Path, patient_id: str, name: str, pnr: str, n: int = 2) -> Study:
    """``n`` instances of a new study of one series (CT), with the personnummer among
    Other Patient IDs and no Issuer of Patient ID (the sender's is implied)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files, instance_uids = [], []
    for i in range(n):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName = patient_id, name
        for keyword in ("IssuerOfPatientID", "OtherPatientIDsSequence", "InstitutionName"):
            if keyword in ds:
                delattr(ds, keyword)
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = pnr, PERSONNUMMER_OID
        ds.OtherPatientIDsSequence = Sequence([item])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study_uid, series_uid, i + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        instance_uids.append(ds.SOPInstanceUID)
    return Study(study_uid, "", patient_id, series_uid, instance_uids, files)


def build_region(make_archive: Callable[..., ArchiveProcess], folder: Path, extra_config: str = "") -> Region:
    """Start the region's archive, add its users, store its studies (see the module docstring)."""
    require_tool("storescu")
    from samarkiv.access.tokens import create_token
    from samarkiv.access.users import create_user
    from samarkiv.identity.organisations import get_organisation
    from samarkiv.identity.patients import person_for

    server = make_archive(REGION_CONFIG + extra_config)
    folder.mkdir(parents=True, exist_ok=True)
    studies = {
        "KS": make_study(folder, "KS-100", "Andersson^Anna", PNR_ANNA),
        "SU": make_study(folder, "SU-9", "Andersson^Anna", PNR_ANNA),
        "KS-BO": make_study(folder, "KS-200", "Berg^Bo", PNR_BO, n=1),
    }
    for key, study in studies.items():
        study.owner = key.split("-")[0]
        result = storescu(server, *study.files, extra=("-aet", AETS[study.owner]))
        assert result.returncode == 0, result.stderr
    region = Region(server, {}, studies, {}, {})
    with region.engine.begin() as conn:
        for key, (username, org, role) in USERS.items():
            user = create_user(conn, username, org, role, password=PASSWORD)
            token, _ = create_token(conn, username, name="tests")
            region.users[key] = Account(username, org, role, token, pk=user.pk)
        for code in AETS:
            org = get_organisation(conn, code)
            assert org is not None
            region.org_pks[code] = org.pk
        from samarkiv.identity.patients import canonicalise

        for name, pnr in (("anna", PNR_ANNA), ("bo", PNR_BO)):
            region.persons[name] = person_for(conn, canonicalise(conn, pnr, PERSONNUMMER_OID, None))
    return region


@pytest.fixture
def region(make_archive, tmp_path: Path) -> Iterator[Region]:  # type: ignore[no-untyped-def]
    """The region (see the module docstring), running."""
    built = build_region(make_archive, tmp_path / "region-studies")
    yield built
    built.dispose()
