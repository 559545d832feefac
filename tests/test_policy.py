"""The access policy (samarkiv/access/policy.py): a decision matrix over every
relationship, the query doors' SQL filter giving the same answers as
``decide`` at every query level, and an audit record for every policy change.

The region: organisations KS, SU and RAD; two persons known at KS by a local
Patient ID plus a personnummer (Anna Andersson, person A; Bo Berg, person B);
A has study KS-A1 and KS-A2 owned by KS, and study SU-A3 owned by SU (filed
under SU's own Patient ID for her, linked by the personnummer); B has KS-B1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import run_cli
from sqlalchemy import and_, insert, select

from samarkiv.access.policy import (
    PolicyError,
    add_block,
    care_from_adt,
    care_from_referral,
    create_share_link,
    decide,
    declare_care,
    end_care,
    grant_share,
    lift_block,
    link_principal,
    list_care,
    revoke_share,
    revoke_share_link,
    start_break_glass,
    visible_condition,
)
from samarkiv.access.principal import SYSTEM, Principal
from samarkiv.access.users import create_user
from samarkiv.audit.verify import verify_chain
from samarkiv.identity.organisations import create_organisation
from samarkiv.identity.patients import resolve_identity
from samarkiv.index.audit_schema import audit_events
from samarkiv.index.engine import create_index_engine, migrate
from samarkiv.index.identity_schema import patient_identifiers
from samarkiv.index.query import Level, Model, Query, prepare
from samarkiv.index.schema import instances, patients, series, studies

PNR_OID = "1.2.752.129.2.1.3.1"
PNR_A = "191212121212"  # Skatteverket's test personnummer
UIDS = {name: f"1.2.826.0.1.3680043.10.543.{n}" for n, name in enumerate(("KS-A1", "KS-A2", "SU-A3", "KS-B1"), 1)}


def _pnr(born: str, serial: str) -> str:
    from samarkiv.identity.national import luhn_check_digit

    return f"{born}{serial}{luhn_check_digit(born[2:] + serial)}"


@dataclass
class Region:
    engine: Any
    org: dict[str, int]
    person: dict[str, int]  # "A", "B"
    user: dict[str, Principal]

    def studies(self) -> dict[str, tuple[list[int], set[int]]]:
        """Study UID -> (its persons, its owning organisations), as a door would find them."""
        pi = patient_identifiers
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(studies.c.study_instance_uid, pi.c.person_pk, instances.c.org_pk)
                .select_from(
                    studies.join(patients, studies.c.patient_pk == patients.c.pk)
                    .join(pi, and_(pi.c.value == patients.c.patient_id, pi.c.issuer == patients.c.issuer_of_patient_id))
                    .join(series, series.c.study_pk == studies.c.pk)
                    .join(instances, instances.c.series_pk == series.c.pk)
                )
            ).all()
        out: dict[str, tuple[list[int], set[int]]] = {}
        for uid, person, org in rows:
            persons_, orgs = out.setdefault(uid, ([], set()))
            if person not in persons_:
                persons_.append(person)
            orgs.add(org)
        return out

    def decide(self, principal: Principal, action: str, study: str) -> Any:
        persons_, owners = self.studies()[UIDS[study]]
        with self.engine.connect() as conn:
            return decide(conn, principal, action, person_pks=persons_, study_uid=UIDS[study], owner_org_pks=owners)


def _store(conn: Any, orgs: dict[str, Any], study: str, org: str, patient_id: str, pnr: str) -> int:
    """File one study of one series of two instances, owned by ``org``; returns the person."""
    resolved = resolve_identity(conn, patient_id, orgs[org].patient_id_issuer, [(pnr, PNR_OID)], orgs[org])
    now = datetime.now(UTC)
    key = {"patient_id": resolved.identifier.value, "issuer_of_patient_id": resolved.identifier.issuer}
    patient_pk = conn.execute(select(patients.c.pk).filter_by(**key)).scalar()
    if patient_pk is None:
        patient_pk = conn.execute(
            insert(patients).values(**key, patient_name=f"PATIENT^{patient_id}", created_at=now, updated_at=now)
            .returning(patients.c.pk)
        ).scalar_one()  # fmt: skip
    uid = UIDS[study]
    study_pk = conn.execute(
        insert(studies).values(patient_pk=patient_pk, study_instance_uid=uid, created_at=now, updated_at=now)
        .returning(studies.c.pk)
    ).scalar_one()  # fmt: skip
    series_pk = conn.execute(
        insert(series).values(study_pk=study_pk, series_instance_uid=f"{uid}.1", modality="CT", created_at=now)
        .returning(series.c.pk)
    ).scalar_one()  # fmt: skip
    conn.execute(insert(instances), [
        {"series_pk": series_pk, "sop_instance_uid": f"{uid}.1.{i}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
         "transfer_syntax_uid": "1.2.840.10008.1.2.1", "blob_key": f"k/{uid}.{i}", "size": 1, "sha256": "0" * 64,
         "org_pk": orgs[org].pk, "stored_at": now}
        for i in (1, 2)
    ])  # fmt: skip
    return resolved.person_pk


@pytest.fixture
def region(index_url: str) -> Iterator[Region]:
    engine = create_index_engine(index_url, writer=index_url.startswith("sqlite"))
    migrate(engine)
    pnr_b = _pnr("19400101", "123")
    with engine.begin() as conn:
        orgs = {code: create_organisation(conn, code, f"Hospital {code}", issuer_of_patient_id=code)
                for code in ("KS", "SU", "RAD")}  # fmt: skip
        person = {
            "A": _store(conn, orgs, "KS-A1", "KS", "KS-100", PNR_A),
            "B": _store(conn, orgs, "KS-B1", "KS", "KS-200", pnr_b),
        }
        _store(conn, orgs, "KS-A2", "KS", "KS-100", PNR_A)
        assert _store(conn, orgs, "SU-A3", "SU", "SU-9", PNR_A) == person["A"]
        made = {
            "ks_rad": create_user(conn, "karin", "KS", "radiologist"),
            "su_doc": create_user(conn, "sven", "SU", "clinician"),
            "su_doc2": create_user(conn, "siv", "SU", "clinician"),
            "su_res": create_user(conn, "rune", "SU", "researcher"),
            "su_admin": create_user(conn, "sara", "SU", "administrator"),
            "rad_doc": create_user(conn, "rolf", "RAD", "radiologist"),
            "patient_a": create_user(conn, "anna", "KS", "patient"),
        }
    user = {k: u.principal("password") for k, u in made.items()}
    user["patient_a"] = Principal(**{**user["patient_a"].__dict__, "patient_key": person["A"]})
    user["patient_b"] = Principal(name="bo", kind="user", org_pk=orgs["KS"].pk, roles=frozenset({"patient"}),
                                  patient_key=person["B"])  # fmt: skip
    user["su_aet"] = Principal(name="SU_PACS", kind="service", org_pk=orgs["SU"].pk, roles=frozenset({"service"}))
    yield Region(engine, {c: o.pk for c, o in orgs.items()}, person, user)
    engine.dispose()


ADMIN = Principal(name="cli:admin", kind="user", roles=frozenset({"administrator"}), auth_method="cli")


def _visible(region: Region, principal: Principal, level: Level) -> set[str]:
    """Study UIDs the query door returns at ``level`` (the real PreparedQuery path)."""
    keys = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID",
            Level.IMAGE: "SOPInstanceUID"}  # fmt: skip
    prepared = prepare(Query(level, {keys[level]: ""}, model=Model.PATIENT_ROOT), region.engine.dialect.name)
    with region.engine.connect() as conn:
        cond = visible_condition(conn, principal, level)
    if cond is not None:
        prepared.conditions.append(cond)
    found = [ds for ds in prepared.run(region.engine, page_size=3)]
    if level is Level.PATIENT:
        ids = {ds.PatientID for ds in found}
        with region.engine.connect() as conn:
            rows = conn.execute(
                select(studies.c.study_instance_uid).join(patients, patients.c.pk == studies.c.patient_pk)
                .where(patients.c.patient_id.in_(ids))
            ).scalars()  # fmt: skip
            return set(rows)
    if level is Level.STUDY:
        return {ds.StudyInstanceUID for ds in found}
    if level is Level.SERIES:
        return {ds.SeriesInstanceUID.rsplit(".", 1)[0] for ds in found}
    return {ds.SOPInstanceUID.rsplit(".", 2)[0] for ds in found}


def check(region: Region, principal: Principal, expected: dict[str, str | None], flagged: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Every study: decide() gives the expected basis (None: denied) for a
    query, and the query doors at every level return exactly the allowed ones."""
    got = {}
    for study in UIDS:
        d = region.decide(principal, "query", study)
        got[study] = d.basis if d.allowed else None
        assert d.flagged == (study in flagged), (study, d)
        if d.basis == "break-glass":
            assert d.purpose == "ETREAT" and d.reason
    assert got == {s: expected.get(s) for s in UIDS}, principal.name
    allowed = {UIDS[s] for s, basis in got.items() if basis}
    for level in (Level.STUDY, Level.SERIES, Level.IMAGE):
        assert _visible(region, principal, level) == allowed, (principal.name, level)
    persons_allowed = {UIDS[s] for s in UIDS if any(got[t] for t in UIDS if _same_patient(s, t))}
    assert _visible(region, principal, Level.PATIENT) == persons_allowed, (principal.name, "PATIENT")


def _same_patient(s: str, t: str) -> bool:
    """The catalogue's patient rows: KS-100 (A1, A2), SU-9 (A3), KS-200 (B1)."""
    rows = ({"KS-A1", "KS-A2"}, {"SU-A3"}, {"KS-B1"})
    return any(s in r and t in r for r in rows)


def _audit(region: Region) -> list[Any]:
    with region.engine.connect() as conn:
        return conn.execute(select(audit_events).order_by(audit_events.c.seq)).all()


def _policy_events(region: Region) -> list[tuple[str, str]]:
    import json

    return [(r.action, json.loads(r.detail)["policy"]) for r in _audit(region) if r.detail and "policy" in r.detail]


# --- the matrix ---------------------------------------------------------------------------------------


def test_owner_other_organisation_care_and_expiry(region: Region) -> None:
    u, A = region.user, region.person["A"]
    every_ks = {"KS-A1": "owner", "KS-A2": "owner", "KS-B1": "owner"}
    check(region, u["ks_rad"], every_ks)
    check(region, u["su_doc"], {"SU-A3": "owner"})  # another organisation without need sees only its own
    check(region, u["rad_doc"], {})
    check(region, u["su_aet"], {"SU-A3": "owner"})
    with region.engine.connect() as conn:
        assert visible_condition(conn, SYSTEM) is None
        assert decide(conn, SYSTEM, "retrieve", person_pks=[A], study_uid=UIDS["KS-A1"]).basis == "system"

    # an organisation-wide care relationship of SU with person A
    with region.engine.begin() as conn:
        rel = declare_care(conn, ADMIN, person_pk=A, org_pk=region.org["SU"], reason="follow-up of fracture", days=30)
    check(region, u["su_doc"], {"KS-A1": "care", "KS-A2": "care", "SU-A3": "owner"})
    check(region, u["su_doc2"], {"KS-A1": "care", "KS-A2": "care", "SU-A3": "owner"})
    check(region, u["su_aet"], {"KS-A1": "care", "KS-A2": "care", "SU-A3": "owner"})
    d = region.decide(u["su_doc"], "retrieve", "KS-A1")
    assert (d.allowed, d.care_relationship, d.purpose, d.reason) == (True, rel, "TREAT", "follow-up of fracture")
    assert region.decide(u["su_doc"], "download", "KS-A1").allowed  # care carries every right
    assert not region.decide(u["su_doc"], "delete", "KS-A1").allowed  # only the owner deletes
    assert region.decide(u["ks_rad"], "delete", "KS-A1").basis == "owner"
    check(region, u["rad_doc"], {})

    # a user's own care relationship (RAD's rolf, from a referral); not his colleagues'
    with region.engine.begin() as conn:
        rolf = region.user["rad_doc"]
        care_from_referral(conn, ADMIN, person_pk=A, org_pk=region.org["RAD"], user_pk=rolf.user_pk, referral="R-77")
        other = Principal(name="ruth", kind="user", org_pk=region.org["RAD"], user_pk=None, roles=frozenset({"radiologist"}))
    check(region, rolf, {"KS-A1": "care", "KS-A2": "care", "SU-A3": "care"})
    check(region, other, {})

    # ending it, and an expired one, give nothing
    with region.engine.begin() as conn:
        end_care(conn, ADMIN, rel, reason="discharged")
        long_ago = datetime.now(UTC) - timedelta(days=40)
        care_from_adt(conn, ADMIN, person_pk=A, org_pk=region.org["SU"], event="A01 visit 5", days=30, now=long_ago)
        assert [r["pk"] for r in list_care(conn, person_pk=A)] == [2]  # only rolf's referral is active
        assert len(list_care(conn, person_pk=A, active=False)) == 3
    check(region, u["su_doc"], {"SU-A3": "owner"})
    assert region.decide(u["su_doc"], "query", "KS-A1").reason == "no care relationship or share"
    assert _policy_events(region) == [
        ("share", "care.declare"), ("share", "care.declare"), ("share", "care.end"), ("share", "care.declare"),
    ]  # fmt: skip


def test_break_glass_and_patient_blocks(region: Region) -> None:
    u, A = region.user, region.person["A"]
    with region.engine.begin() as conn:
        declare_care(conn, ADMIN, person_pk=A, org_pk=region.org["SU"], reason="oncology", days=10)
        with pytest.raises(PolicyError, match="reason"):
            start_break_glass(conn, u["rad_doc"], person_pk=A, reason="  ")
        start_break_glass(conn, u["rad_doc"], person_pk=A, reason="unconscious in the ER")
    glass = {"KS-A1", "KS-A2", "SU-A3"}
    check(region, u["rad_doc"], {s: "break-glass" for s in glass}, flagged=glass)
    check(region, Principal(name="ruth", kind="user", org_pk=region.org["RAD"], roles=frozenset({"radiologist"})), {})

    # the patient blocks every other organisation: care denied, owner still allowed, break-glass allowed + flagged
    with region.engine.begin() as conn:
        block = add_block(conn, u["patient_a"], person_pk=A, reason="I do not want SU to see my records")
    check(region, u["su_doc"], {"SU-A3": "owner"})
    assert region.decide(u["su_doc"], "retrieve", "KS-A1").reason == "blocked by the patient"
    check(region, u["ks_rad"], {"KS-A1": "owner", "KS-A2": "owner", "KS-B1": "owner"})
    check(region, u["rad_doc"], {s: "break-glass" for s in glass}, flagged=glass)
    with region.engine.begin() as conn:
        lift_block(conn, u["patient_a"], block)
        # a block of one study against SU only
        add_block(conn, u["patient_a"], person_pk=A, blocked_org_pk=region.org["SU"], study_uid=UIDS["KS-A2"],
                  reason="private")  # fmt: skip
        add_block(conn, u["patient_a"], person_pk=A, blocked_org_pk=region.org["RAD"], reason="not RAD")
        with pytest.raises(PolicyError, match="not the patient's"):
            add_block(conn, u["patient_a"], person_pk=A, study_uid=UIDS["KS-B1"], reason="x")
    check(region, u["su_doc"], {"KS-A1": "care", "SU-A3": "owner"})
    check(region, u["rad_doc"], {s: "break-glass" for s in glass}, flagged=glass)

    # break-glass expires
    with region.engine.begin() as conn:
        start_break_glass(conn, u["su_doc2"], person_pk=region.person["B"], reason="trauma", hours=1,
                          now=datetime.now(UTC) - timedelta(hours=2))  # fmt: skip
    check(region, u["su_doc2"], {"KS-A1": "care", "SU-A3": "owner"})
    events = _audit(region)
    glass_events = [e for e in events if e.action == "break-glass"]
    assert [(e.flagged, e.review_status, e.purpose, e.reason) for e in glass_events] == [
        (True, "pending", "ETREAT", "unconscious in the ER"), (True, "pending", "ETREAT", "trauma"),
    ]  # fmt: skip
    assert [p for a, p in _policy_events(region) if a == "share"] == [
        "care.declare", "block.add", "block.lift", "block.add", "block.add",
    ]  # fmt: skip
    with region.engine.connect() as conn:
        assert verify_chain(conn).ok


def test_shares_and_share_links(region: Region) -> None:
    u, A = region.user, region.person["A"]
    with region.engine.begin() as conn:
        (s1,) = grant_share(conn, ADMIN, study_uids=[UIDS["KS-A1"]], grantee_org_pk=region.org["RAD"],
                            rights=["view"], reason="second opinion")  # fmt: skip
        grant_share(conn, ADMIN, study_uids=[UIDS["KS-B1"]], grantee_user_pk=u["su_doc"].user_pk,
                    rights="view,download", reason="consultation")  # fmt: skip
        long_ago = datetime.now(UTC) - timedelta(days=10)
        grant_share(conn, ADMIN, study_uids=[UIDS["KS-A2"]], grantee_org_pk=region.org["RAD"], rights="view",
                    reason="old", days=1, now=long_ago)  # fmt: skip
        with pytest.raises(PolicyError, match="rights"):
            grant_share(conn, ADMIN, study_uids=[UIDS["KS-A1"]], grantee_org_pk=region.org["RAD"], rights="edit",
                        reason="x")  # fmt: skip
        with pytest.raises(PolicyError, match="no study"):
            grant_share(conn, ADMIN, study_uids=["1.2.3"], grantee_org_pk=region.org["RAD"], reason="x")
    check(region, u["rad_doc"], {"KS-A1": "share"})  # the expired share of KS-A2 gives nothing
    assert region.decide(u["rad_doc"], "retrieve", "KS-A1").basis == "share"
    denied = region.decide(u["rad_doc"], "download", "KS-A1")
    assert (denied.allowed, denied.reason) == (False, "the share does not include download")
    assert not region.decide(u["rad_doc"], "store", "KS-A1").allowed
    check(region, u["su_doc"], {"KS-B1": "share", "SU-A3": "owner"})  # shared with sven, not with SU
    assert region.decide(u["su_doc"], "download", "KS-B1").allowed
    check(region, u["su_doc2"], {"SU-A3": "owner"})

    # a block overrides a share
    with region.engine.begin() as conn:
        block = add_block(conn, u["patient_a"], person_pk=A, blocked_org_pk=region.org["RAD"], reason="no")
    check(region, u["rad_doc"], {})
    with region.engine.begin() as conn:
        lift_block(conn, ADMIN, block)
        revoke_share(conn, ADMIN, s1)
        with pytest.raises(PolicyError, match="already revoked"):
            revoke_share(conn, ADMIN, s1)
    check(region, u["rad_doc"], {})

    # share links: exactly their studies and rights, until revoked or expired
    with region.engine.begin() as conn:
        link, token = create_share_link(conn, ADMIN, study_uids=[UIDS["KS-A1"], UIDS["SU-A3"]], rights="view",
                                        reason="private clinic")  # fmt: skip
        _old, old_token = create_share_link(conn, ADMIN, study_uids=[UIDS["KS-B1"]], days=1,
                                            now=datetime.now(UTC) - timedelta(days=3))  # fmt: skip
        stored = conn.execute(select(audit_events.c.detail)).scalars().all()
        assert token not in "".join(stored)
    with region.engine.connect() as conn:
        guest = link_principal(conn, token, address="203.0.113.9")
        assert guest is not None and guest.kind == "share-link"
        assert link_principal(conn, old_token) is None  # expired
        assert link_principal(conn, "smkl_not-a-token") is None and link_principal(conn, "junk") is None
    check(region, guest, {"KS-A1": "share-link", "SU-A3": "share-link"})
    assert not region.decide(guest, "download", "KS-A1").allowed
    with region.engine.begin() as conn:
        revoke_share_link(conn, ADMIN, link)
        assert link_principal(conn, token) is None
    check(region, guest, {})  # a principal made before the revocation sees nothing more
    assert [p for a, p in _policy_events(region)] == [
        "share.grant", "share.grant", "share.grant", "block.add", "block.lift", "share.revoke",
        "share-link.create", "share-link.create", "share-link.revoke",
    ]  # fmt: skip


def test_patients_researchers_and_administrators(region: Region) -> None:
    u, A = region.user, region.person["A"]
    mine = {"KS-A1": "self", "KS-A2": "self", "SU-A3": "self"}
    check(region, u["patient_a"], mine)  # her own person's data, at every organisation, not KS's other patients
    check(region, u["patient_b"], {"KS-B1": "self"})
    assert region.decide(u["patient_a"], "download", "KS-A1").allowed
    assert not region.decide(u["patient_a"], "store", "KS-A1").allowed
    check(region, u["su_res"], {})  # research sees nothing identifiable, even what SU owns
    check(region, u["su_admin"], {"SU-A3": "owner"})  # administrators see only on a basis
    with region.engine.begin() as conn:
        declare_care(conn, ADMIN, person_pk=A, org_pk=region.org["SU"], reason="x")
        with pytest.raises(PolicyError, match="staff"):
            start_break_glass(conn, u["patient_b"], person_pk=A, reason="curious")
        with pytest.raises(PolicyError, match="staff"):
            start_break_glass(conn, u["su_res"], person_pk=A, reason="study")
    check(region, u["su_res"], {})
    check(region, u["patient_b"], {"KS-B1": "self"})
    # an identity known by name only (quotes and colons reach the SQL as literals)
    odd = Principal(name="o'brien:x", kind="user", org_pk=region.org["RAD"], roles=frozenset({"radiologist"}))
    with region.engine.begin() as conn:
        start_break_glass(conn, odd, person_pk=region.person["B"], reason="ER")
    check(region, odd, {"KS-B1": "break-glass"}, flagged={"KS-B1"})
    with region.engine.connect() as conn, pytest.raises(PolicyError, match="unknown action"):
        decide(conn, u["ks_rad"], "peek", person_pks=[A])


def test_a_merged_person_keeps_its_relationships(region: Region) -> None:
    """Care, blocks and a patient's own key recorded for a person that is then
    merged into another apply to the merged person."""
    from samarkiv.identity.patients import merge

    u, A, B = region.user, region.person["A"], region.person["B"]
    with region.engine.begin() as conn:
        declare_care(conn, ADMIN, person_pk=A, org_pk=region.org["RAD"], reason="A's referral")
    check(region, u["rad_doc"], {"KS-A1": "care", "KS-A2": "care", "SU-A3": "care"})
    with region.engine.begin() as conn:
        merge(conn, A, B, actor="test", reason="one person after all")
    every = {"KS-A1": "care", "KS-A2": "care", "SU-A3": "care", "KS-B1": "care"}
    check(region, u["rad_doc"], every)
    with region.engine.begin() as conn:
        add_block(conn, u["patient_b"], person_pk=B, blocked_org_pk=region.org["RAD"], reason="no")
    check(region, u["rad_doc"], {})
    check(region, u["patient_a"], {s: "self" for s in every})  # A's key, merged into B: the whole person


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli(region: Region, index_url: str, tmp_path: Any) -> None:
    data = str(tmp_path / "data")

    def cli(*args: str, check: bool = True) -> Any:
        return run_cli(*args, "--data", data, "--index-url", index_url, check=check)

    out = cli("care", "declare", PNR_A, "--org", "SU", "--reason", "referral from GP", "--days", "14").stdout
    assert "care relationship 1" in out
    out = cli("care", "list", "--json").stdout
    assert '"org": "SU"' in out and '"person_pk": ' + str(region.person["A"]) in out
    assert region.decide(region.user["su_doc"], "retrieve", "KS-A1").basis == "care"
    out = cli("block", "add", "KS-100^KS", "--org", "SU", "--reason", "sperre").stdout
    assert "block 1" in out
    assert region.decide(region.user["su_doc"], "retrieve", "KS-A1").reason == "blocked by the patient"
    cli("block", "lift", "1")
    out = cli("share", "grant", UIDS["KS-B1"], "--user", "rolf", "--rights", "view,download", "--reason", "2nd").stdout
    assert "share 1" in out
    assert region.decide(region.user["rad_doc"], "download", "KS-B1").basis == "share"
    out = cli("share", "link", "create", UIDS["KS-A1"], "--days", "2").stdout
    token = next(w for w in out.split() if w.startswith("smkl_"))
    with region.engine.connect() as conn:
        assert link_principal(conn, token) is not None
    cli("share", "link", "revoke", "1")
    with region.engine.connect() as conn:
        assert link_principal(conn, token) is None
    out = cli("breakglass", "start", str(region.person["A"]), "--user", "rolf", "--reason", "ER").stdout
    assert "until" in out
    assert region.decide(region.user["rad_doc"], "view", "KS-A1").flagged
    bad = cli("breakglass", "start", str(region.person["B"]), "--user", "rolf", "--reason", " ", check=False)
    assert bad.returncode == 2 and "reason" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("care", "declare", "999999^NOWHERE", "--org", "SU", "--reason", "x", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    bad = cli("share", "grant", UIDS["KS-B1"], "--org", "NOPE", "--reason", "x", check=False)
    assert bad.returncode == 1 and "NOPE" in bad.stderr
    cli("care", "end", "1")
    assert not region.decide(region.user["su_doc"], "retrieve", "KS-A1").allowed
    policies = [p for _a, p in _policy_events(region)]
    assert policies == ["care.declare", "block.add", "block.lift", "share.grant", "share-link.create",
                        "share-link.revoke", "break-glass.start", "care.end"]  # fmt: skip


# --- the schema -----------------------------------------------------------------------------------------

POLICY_TABLES = ("care_relationships", "shares", "share_links", "share_link_studies", "break_glass", "patient_blocks")


def test_migration_matches_the_table_definitions(index_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from samarkiv.index.engine import alembic_config
    from samarkiv.index.schema import metadata

    engine = create_index_engine(index_url, writer=index_url.startswith("sqlite"))
    migrate(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    ours = [d for d in diffs if any(t in repr(d) for t in (*POLICY_TABLES, "ix_instances_series_org", "ix_persons_merged_into"))]
    assert ours == []
    command.downgrade(alembic_config(engine), "0009_audit")
    assert not set(POLICY_TABLES) & set(inspect(engine).get_table_names())
    command.upgrade(alembic_config(engine), "head")
    assert set(POLICY_TABLES) <= set(inspect(engine).get_table_names())
    engine.dispose()
