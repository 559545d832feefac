"""A patient user linked to their person (issue 5: "patients have the right to
know who looked at their records").

The region of tests/_access.py (Anna with a study at KS and one at SU, Bo with
one at KS), with OIDC on (tests/test_oidc.py's issuer) and the patient's
national identity number in the ``pnr`` claim. The patient user ``anna``, once
linked (``samarkiv users update anna --patient PNR^OID``, audited), sees
exactly her own studies from every organisation by token, password, session
and OIDC, and her own access log; nothing of Bo's; unlinked, nothing. After a
merge of her person she still sees her record. CLI errors are messages with
exit codes that write nothing; the migration matches the table definition.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _access import PERSONNUMMER_OID, PNR_ANNA, PNR_BO, Region, assert_audited, build_region
from conftest import run_cli
from sqlalchemy import func, select
from test_oidc import AUDIENCE, Issuer, issuer  # noqa: F401  (the OIDC issuer fixture)

DICOM_JSON = "application/dicom+json"
DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
UNKNOWN_PNR = "195001011237"  # a valid personnummer of no one here


@pytest.fixture
def region(make_archive, tmp_path: Path, issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Region]:  # type: ignore[no-untyped-def]  # noqa: F811
    """The region of tests/_access.py with OIDC on and the ``pnr`` claim mapped."""
    auth = {"oidc_issuer": issuer.url, "oidc_audience": AUDIENCE, "oidc_org_claim": "org",
            "oidc_patient_id_claim": "pnr"}  # fmt: skip
    for name, value in auth.items():
        monkeypatch.setenv(f"SAMARKIV_AUTH_{name.upper()}", value)
    built = build_region(make_archive, tmp_path / "region-studies")
    yield built
    built.dispose()


def _studies(region: Region, headers: dict[str, str]) -> set[str]:
    """The region study keys QIDO-RS finds for ``headers``; every study found is one of the region's."""
    found = httpx.get(f"{region.archive.http}/dicomweb/studies", headers={**headers, "Accept": DICOM_JSON}, timeout=60)
    assert found.status_code == 200, found.text
    keys = {study.uid: key for key, study in region.studies.items()}
    uids = [r["0020000D"]["Value"][0] for r in found.json()]
    assert set(uids) <= set(keys) and len(uids) == len(set(uids)), uids
    return {keys[uid] for uid in uids}


def _log(region: Region, patient: str | int, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{region.archive.http}/api/patients/{patient}/access-log", headers=headers, timeout=60)


def _oidc(oidc: Issuer, pnr: str | None, role: str = "patient") -> dict[str, str]:
    claims: dict[str, Any] = {"preferred_username": "anna.oidc", "realm_access": {"roles": [role]}}
    if pnr is not None:
        claims["pnr"] = pnr
    return {"Authorization": f"Bearer {oidc.token(**claims)}"}


def test_patient_user_sees_their_own_record_and_its_access_log(region: Region, issuer: Issuer) -> None:  # noqa: F811
    server, anna, bo = region.archive, region.persons["anna"], region.persons["bo"]
    account = region.users["patient"]
    name, headers = account.username, account.headers

    # not linked: a patient role alone sees nothing, and no access log
    assert "not linked" in server.cli("users", "show", name).stdout
    listed = {u["username"]: u for u in json.loads(server.cli("users", "list", "--json").stdout)}
    assert listed[name]["patient"] == "not linked" and listed[name]["person"] is None
    assert listed[region.users["ks_rad"].username]["patient"] == ""  # not a patient: nothing to link
    mark = region.audit_mark()
    assert _studies(region, headers) == set()
    assert_audited(region, mark, action="query", outcome="allowed", user_name=name)
    mark = region.audit_mark()
    assert _log(region, anna, headers).status_code == 403
    assert_audited(region, mark, action="audit-read", outcome="denied", user_name=name)

    # linked through the CLI: one audit record naming the user and the person
    mark = region.audit_mark()
    linked = server.cli("users", "update", name, "--patient", f"{PNR_ANNA}^{PERSONNUMMER_OID}", "--by", "test-admin")
    assert f"person {anna}" in linked.stdout
    (link,) = assert_audited(region, mark, action="link", outcome="allowed", user_name="test-admin")
    assert link["patient_keys"] == str(anna) and '"user":"anna"' in link["detail"], link
    assert f"person {anna}" in server.cli("users", "show", name).stdout

    # QIDO-RS: exactly her studies, from both organisations, by every way she can authenticate
    mark = region.audit_mark()
    assert _studies(region, headers) == {"KS", "SU"}
    assert_audited(region, mark, action="query", outcome="allowed", user_name=name)
    with httpx.Client(base_url=server.http, timeout=60) as browser:
        assert browser.post("/login", data={"username": name, "password": account.password}).status_code == 303
        session = {"Cookie": f"samarkiv_session={browser.cookies['samarkiv_session']}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"{name}:{account.password}".encode()).decode()}
    for other in (session, basic):
        assert _studies(region, other) == {"KS", "SU"}
    me = httpx.get(f"{server.http}/api/me", headers=headers, timeout=30).json()
    assert me["patient"] == anna and me["roles"] == ["patient"]

    # WADO-RS: her studies retrieved, Bo's refused; each audited
    for key, status in (("KS", 200), ("SU", 200), ("KS-BO", 403)):
        uid = region.studies[key].uid
        mark = region.audit_mark()
        retrieve = httpx.get(f"{server.http}/dicomweb/studies/{uid}", headers={**headers, "Accept": DICOM}, timeout=60)
        assert retrieve.status_code == status, (key, retrieve.text[:200])
        outcome = "allowed" if status == 200 else "denied"
        (row,) = assert_audited(region, mark, action="download", outcome=outcome, user_name=name, study_uid=uid)
        assert row["purpose"] == ("PATRQT" if status == 200 else None), row

    # her access log: who looked at her images (her own retrievals among them); not Bo's
    mark = region.audit_mark()
    log = _log(region, anna, headers)
    assert log.status_code == 200, log.text
    entries = log.json()["entries"]
    assert {(e["action"], e["study"]) for e in entries} >= {("download", region.studies[k].uid) for k in ("KS", "SU")}
    assert all(region.studies["KS-BO"].uid != e["study"] for e in entries)
    assert_audited(region, mark, action="audit-read", outcome="allowed", user_name=name)
    mark = region.audit_mark()
    assert _log(region, "19121212-1212", headers).status_code == 200
    assert_audited(region, mark, action="audit-read", outcome="allowed", user_name=name)
    for someone_else in (bo, PNR_BO, "KS-200^KS"):
        mark = region.audit_mark()
        assert _log(region, someone_else, headers).status_code == 403, someone_else
        assert_audited(region, mark, action="audit-read", outcome="denied", user_name=name)

    # OIDC: the pnr claim names her person; an invalid or unknown number, or none, names no one
    mark = region.audit_mark()
    assert _studies(region, _oidc(issuer, "19121212-1212")) == {"KS", "SU"}
    assert_audited(region, mark, action="query", outcome="allowed", user_name="anna.oidc")
    for pnr in ("19121212-1213", UNKNOWN_PNR, None):
        mark = region.audit_mark()
        assert _studies(region, _oidc(issuer, pnr)) == set(), pnr
        assert_audited(region, mark, action="query", outcome="allowed", user_name="anna.oidc")
    oidc_me = httpx.get(f"{server.http}/api/me", headers=_oidc(issuer, PNR_ANNA), timeout=30).json()
    assert oidc_me["patient"] == anna and _log(region, anna, _oidc(issuer, PNR_ANNA)).status_code == 200
    assert "patient" not in httpx.get(f"{server.http}/api/me", headers=_oidc(issuer, PNR_ANNA, "clinician"), timeout=30).json()

    # a merge: KS-100 split off onto a person of its own, then her person merged into it
    server.cli("patients", "unlink", "KS-100^KS", "--why", "test")
    assert _studies(region, headers) == {"SU"}
    server.cli("patients", "merge", str(anna), "KS-100^KS", "--why", "test")
    assert _studies(region, headers) == {"KS", "SU"}
    assert _studies(region, _oidc(issuer, PNR_ANNA)) == {"KS", "SU"}
    now = httpx.get(f"{server.http}/api/me", headers=headers, timeout=30).json()["patient"]
    assert now != anna and f"person {anna} (now person {now})" in server.cli("users", "show", name).stdout
    retrieve = httpx.get(f"{server.http}/dicomweb/studies/{region.studies['KS'].uid}", headers={**headers, "Accept": DICOM}, timeout=60)
    assert retrieve.status_code == 200
    for patient in (anna, now, PNR_ANNA):  # her access log is the merged person's
        log = _log(region, patient, headers)
        assert log.status_code == 200 and log.json()["patient"] == now, log.text
        # with what was recorded under her person before the merge: her studies' arrival over C-STORE
        stored = [e["organisation"] for e in log.json()["entries"] if e["action"] == "store"]
        assert sorted(stored) == ["Karolinska", "Sahlgrenska"], log.text

    # unlinked again: audited, and she sees nothing
    mark = region.audit_mark()
    server.cli("users", "update", name, "--no-patient", "--by", "test-admin")
    (unlink,) = assert_audited(region, mark, action="unlink", outcome="allowed", user_name="test-admin")
    assert unlink["patient_keys"] == str(now) and '"user":"anna"' in unlink["detail"], unlink
    assert _studies(region, headers) == set()
    assert "not linked" in server.cli("users", "show", name).stdout


def _audit_count(url: str) -> int:
    from samarkiv.index.audit_schema import audit_events
    from samarkiv.index.engine import create_index_engine

    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_events)).scalar_one())
    finally:
        engine.dispose()


def test_cli_link_errors_are_messages_that_write_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    where = ("--data", str(tmp_path / "data"), "--index-url", url)
    run_cli("users", "add", "pat", "--org", "default", "--role", "patient", *where)
    run_cli("users", "add", "doc", "--org", "default", "--role", "clinician", *where)
    from samarkiv.identity.organisations import get_organisation
    from samarkiv.identity.patients import resolve_identity
    from samarkiv.index.engine import create_index_engine

    engine = create_index_engine(url, writer=True)
    with engine.begin() as conn:
        person = resolve_identity(conn, "P-1", None, [(PNR_ANNA, PERSONNUMMER_OID)], get_organisation(conn, "default")).person_pk
    engine.dispose()
    before = _audit_count(url)

    failures = {
        ("users", "update", "pat", "--patient", "19121212-1213^se-personnummer"): (2, "invalid"),  # check digit
        ("users", "update", "pat", "--patient", f"{UNKNOWN_PNR}^{PERSONNUMMER_OID}"): (1, "no person"),
        ("users", "update", "pat", "--patient", "P-404"): (1, "no person"),  # the organisation's issuer
        ("users", "update", "pat", "--patient", "^default"): (2, "ID[^ISSUER]"),
        ("users", "update", "doc", "--patient", "P-1"): (2, "no patient role"),
        ("users", "update", "ghost", "--patient", "P-1"): (1, "no user"),
        ("users", "update", "pat"): (2, "--no-patient"),
        ("users", "add", "pat2", "--org", "default", "--role", "patient", "--patient", "19121212-1213^se-personnummer"): (2, "invalid"),
    }  # fmt: skip
    for args, (code, message) in failures.items():
        result = run_cli(*args, *where, check=False)
        assert result.returncode == code and message in result.stderr, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
    assert "pat2" not in run_cli("users", "list", *where).stdout  # the failed add left no user
    assert _audit_count(url) == before
    assert "not linked" in run_cli("users", "show", "pat", *where).stdout

    # a bare ID is the user's organisation's; VALUE^ISSUER takes an OID, an organisation code or a kind
    for patient in ("P-1", "P-1^default", f"{PNR_ANNA}^se-personnummer", "19121212-1212^1.2.752.129.2.1.3.1"):
        assert f"person {person}" in run_cli("users", "update", "pat", "--patient", patient, *where).stdout
    added = run_cli("users", "add", "pat3", "--org", "default", "--role", "patient", "--patient", "P-1", *where)
    assert f"person {person}" in added.stdout
    shown = run_cli("users", "list", "--json", *where).stdout
    assert f'"person": {person}' in shown and '"patient": ""' in shown  # doc: not a patient, no link
    assert _audit_count(url) == before + 2  # pat's first link (the rest named the same person) and pat3's


def test_migration_matches_the_table_definition(index_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from samarkiv.index.access_schema import users
    from samarkiv.index.engine import alembic_config, create_index_engine, migrate

    engine = create_index_engine(index_url, writer=index_url.startswith("sqlite"))
    try:
        migrate(engine)
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), users.metadata)
        assert [d for d in diffs if "users" in repr(d)] == []
        command.downgrade(alembic_config(engine), "0010_policy")
        assert "person_pk" not in {c["name"] for c in inspect(engine).get_columns("users")}
        command.upgrade(alembic_config(engine), "head")
        assert "person_pk" in {c["name"] for c in inspect(engine).get_columns("users")}
    finally:
        engine.dispose()
