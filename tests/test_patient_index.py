"""The master patient index: keys never a bare Patient ID, automatic links by
valid national numbers, invalid ones flagged, manual link/unlink/merge/unmerge
with history, cross-referencing keys, and ``samarkiv patients``. Each test
runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, func, insert, select, tuple_

from conftest import run_cli
from samarkiv.config import Settings
from samarkiv.identity.national import Issuer
from samarkiv.identity.organisations import create_organisation, get_organisation, sync_from_settings
from samarkiv.identity.patients import (
    Identifier,
    IdentityError,
    InvalidNationalNumber,
    UnknownIdentifier,
    canonicalise,
    current_person,
    identifier_from_text,
    identifiers_of_same_person,
    link,
    merge,
    person_of,
    resolve_dataset,
    resolve_identity,
    show,
    unlink,
    unmerge,
)
from samarkiv.index.engine import create_index_engine, migrate
from samarkiv.index.identity_schema import identity_history, persons
from samarkiv.index.schema import patients, studies

TODAY = date(2026, 5, 1)
PNR = "1.2.752.129.2.1.3.1"
SNR = "1.2.752.129.2.1.3.3"
ANNA = "196408233234"  # valid personnummer (SKV 704's example)
ANNA_10 = "640823-3234"
BERIT = "191212121212"  # Tolvan, valid
BAD = "196408233235"  # wrong check digit


@pytest.fixture
def engine(index_url: str) -> Iterator[Engine]:
    engine = create_index_engine(index_url, writer=index_url.startswith("sqlite"))
    migrate(engine)
    sync_from_settings(engine, Settings())
    with engine.begin() as conn:
        create_organisation(conn, "KS", "Karolinska", issuer_of_patient_id="KS", aets=["KSCT"])
        create_organisation(conn, "SU", "Sahlgrenska", issuer_ueid="1.2.752.99.2", aets=["SUCT"])
        create_organisation(conn, "CAPIO", "Capio", "private", aets=["CAPIO"])
    yield engine
    engine.dispose()


def org(conn, code: str):  # type: ignore[no-untyped-def]
    return get_organisation(conn, code)


def resolve(engine: Engine, patient_id: str, issuer=None, others=(), owner: str | None = None):  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        owner_org = org(conn, owner) if owner else None
        return resolve_identity(conn, patient_id, issuer, others, owner_org, today=TODAY)


def test_colliding_local_ids_stay_separate(engine: Engine):
    # Patient ID 12345 means three different people at three organisations,
    # none of which sends an Issuer of Patient ID.
    ks = resolve(engine, "12345", owner="KS")
    su = resolve(engine, "12345", owner="SU")
    capio = resolve(engine, "12345", owner="CAPIO")
    assert {ks.identifier.issuer, su.identifier.issuer, capio.identifier.issuer} == {"KS", "1.2.752.99.2", "CAPIO"}
    assert len({ks.person_pk, su.person_pk, capio.person_pk}) == 3
    # The same key again is the same person, at the cost of one lookup.
    again = resolve(engine, "12345", owner="KS")
    assert (again.person_pk, again.identifier_pk) == (ks.person_pk, ks.identifier_pk)
    # The dataset's own issuer wins over the owner's; SU's OID maps to SU's key.
    assert resolve(engine, "12345", Issuer(universal="1.2.752.99.2"), owner="KS").person_pk == su.person_pk
    assert resolve(engine, "12345", "OTHER", owner="KS").person_pk not in {ks.person_pk, su.person_pk}


def test_never_a_bare_patient_id(engine: Engine):
    with pytest.raises(IdentityError, match="owning organisation"), engine.begin() as conn:
        resolve_identity(conn, "12345")
    # The embedded defaults' organisation keys under its code.
    assert resolve(engine, "12345", owner="default").identifier == Identifier("12345", "default")


def test_one_person_with_three_local_ids_and_a_personnummer(engine: Engine):
    ks = resolve(engine, "KS-1", others=[(ANNA_10, PNR)], owner="KS")
    assert ks.linked == (Identifier(ANNA_10, PNR),)
    su = resolve(engine, "SU-7", others=[(ANNA, Issuer(universal=PNR, universal_type="ISO"))], owner="SU")
    # A local ID seen before the personnummer arrived is linked when it does.
    capio_first = resolve(engine, "C-9", owner="CAPIO")
    capio = resolve(engine, "C-9", others=[(ANNA, f"urn:oid:{PNR}")], owner="CAPIO")
    # The personnummer itself as Patient ID, in yet another written form.
    national = resolve(engine, "19640823-3234", PNR, owner="default")
    assert ks.person_pk == su.person_pk == capio.person_pk == national.person_pk
    assert capio_first.person_pk != capio.person_pk  # merged into the personnummer's person
    with engine.begin() as conn:
        view = show(conn, ks.person_pk)
        keys = {(i.value, i.issuer) for i in view.identifiers}
        assert keys == {
            ("KS-1", "KS"), ("SU-7", "1.2.752.99.2"), ("C-9", "CAPIO"),
            (ANNA_10, PNR), (ANNA, PNR), ("19640823-3234", PNR),
        }  # fmt: skip
        assert (view.birth_date, view.sex) == ("19640823", "M")
        assert capio_first.person_pk in view.merged_from
        assert {i.organisation for i in view.identifiers} >= {"KS", "SU", "CAPIO"}
        # One key, national or local, finds every identifier of the person.
        for query in ("196408233234^se-personnummer", "640823-3234^" + PNR, "SU-7^SU", "C-9^CAPIO"):
            found = set(conn.execute(identifiers_of_same_person(identifier_from_text(conn, query, TODAY))))
            assert found == keys, query
        auto = conn.execute(select(identity_history.c.action).where(identity_history.c.action == "auto-link")).all()
        assert auto


def test_invalid_national_numbers_are_flagged_not_linked(engine: Engine):
    anna = resolve(engine, "KS-1", others=[(ANNA, PNR)], owner="KS")
    bad = resolve(engine, "SU-7", others=[(BAD, PNR)], owner="SU")
    assert bad.person_pk != anna.person_pk
    assert bad.flagged == (Identifier(BAD, PNR),) and bad.linked == ()
    assert not bad.national[0].valid
    with engine.begin() as conn:
        view = show(conn, bad.person_pk)
        assert [(i.value, i.national_valid) for i in view.flagged] == [(BAD, False)]
        assert "check digit" in view.flagged[0].national_reason
        assert person_of(conn, Identifier(BAD, PNR)) is None
    # An invalid number as the Patient ID is a key of its own, never linked.
    own = resolve(engine, BAD, PNR, owner="KS")
    assert own.person_pk not in {anna.person_pk, bad.person_pk}
    # Help numbers and an empty Patient ID never link either.
    empty = resolve(engine, "", others=[(ANNA, PNR)], owner="KS")
    assert empty.person_pk != anna.person_pk


def test_samordningsnummer_under_either_swedish_issuer_is_one_number(engine: Engine):
    a = resolve(engine, "KS-5", others=[("701063-2391", SNR)], owner="KS")
    b = resolve(engine, "SU-5", others=[("197010632391", PNR)], owner="SU")
    assert a.person_pk == b.person_pk
    assert b.national[0].kind == "se-samordningsnummer"


def test_conflicting_numbers_are_recorded_once_and_not_linked(engine: Engine):
    anna = resolve(engine, "KS-1", others=[(ANNA, PNR)], owner="KS")
    berit = resolve(engine, "SU-1", others=[(BERIT, PNR)], owner="SU")
    # KS now says KS-1 is Berit: a different personnummer than KS-1 carries.
    for _ in range(3):  # every instance of the study repeats it
        clash = resolve(engine, "KS-1", others=[(BERIT, PNR)], owner="KS")
        assert clash.person_pk == anna.person_pk and clash.conflicts
    # A dataset with two personnummer: which is the patient's? Neither is linked.
    two = resolve(engine, "CAP-1", others=[(ANNA, PNR), (BERIT, PNR)], owner="CAPIO")
    assert two.person_pk not in {anna.person_pk, berit.person_pk} and "different" in two.conflicts[0]
    assert two.linked == ()
    with engine.begin() as conn:
        assert person_of(conn, Identifier("KS-1", "KS")) == anna.person_pk
        assert current_person(conn, berit.person_pk) == berit.person_pk
        reasons = conn.execute(
            select(identity_history.c.reason).where(identity_history.c.action == "conflict")
        ).scalars().all()
        assert len(reasons) == 2, reasons


def test_link_unlink_merge_unmerge_with_history(engine: Engine):
    ks = resolve(engine, "KS-1", owner="KS")
    su = resolve(engine, "SU-7", owner="SU")
    capio = resolve(engine, "C-9", owner="CAPIO")
    with engine.begin() as conn:
        assert link(conn, Identifier("SU-7", "1.2.752.99.2"), Identifier("KS-1", "KS"), actor="alice", reason="same") is not None
        assert link(conn, Identifier("SU-7", "1.2.752.99.2"), ks.person_pk, actor="alice") is None  # already
        assert person_of(conn, Identifier("SU-7", "1.2.752.99.2")) == ks.person_pk
        merge(conn, capio.person_pk, ks.person_pk, actor="bob", reason="ticket 42")
        assert len(show(conn, ks.person_pk).identifiers) == 3
        with pytest.raises(IdentityError, match="already merged"):
            merge(conn, capio.person_pk, su.person_pk, actor="bob")
    with engine.begin() as conn:
        unmerge(conn, capio.person_pk, actor="bob", reason="wrong patient")
        assert person_of(conn, Identifier("C-9", "CAPIO")) == capio.person_pk
        assert current_person(conn, capio.person_pk) == capio.person_pk
        with pytest.raises(IdentityError, match="no merge"):
            unmerge(conn, capio.person_pk, actor="bob")
        new = unlink(conn, Identifier("SU-7", "1.2.752.99.2"), actor="carol", reason="typo")
        assert new not in {ks.person_pk, su.person_pk}
        with pytest.raises(IdentityError, match="only identifier"):
            unlink(conn, Identifier("SU-7", "1.2.752.99.2"), actor="carol")
        with pytest.raises(UnknownIdentifier):
            unlink(conn, Identifier("NOPE", "KS"), actor="carol")
        history = show(conn, ks.person_pk).history
    assert [(h["action"], h["actor"]) for h in history] == [
        ("link", "alice"), ("merge", "bob"), ("unmerge", "bob"), ("unlink", "carol"),
    ]  # fmt: skip
    assert history[1]["reverted"] and history[1]["reason"] == "ticket 42"


def test_separated_identifiers_are_not_linked_again_automatically(engine: Engine):
    anna = resolve(engine, "KS-1", others=[(ANNA, PNR)], owner="KS")
    wrong = resolve(engine, "SU-7", others=[(ANNA, PNR)], owner="SU")
    assert wrong.person_pk == anna.person_pk
    with engine.begin() as conn:
        separate = unlink(conn, Identifier("SU-7", "1.2.752.99.2"), actor="alice", reason="not Anna")
    again = resolve(engine, "SU-7", others=[(ANNA, PNR)], owner="SU")
    assert again.person_pk == separate and again.conflicts
    # Automatic merges are undone the same way.
    merged = resolve(engine, "C-9", owner="CAPIO")
    resolve(engine, "C-9", others=[(ANNA, PNR)], owner="CAPIO")
    with engine.begin() as conn:
        assert person_of(conn, Identifier("C-9", "CAPIO")) == anna.person_pk
        unmerge(conn, merged.person_pk, actor="alice")
        assert person_of(conn, Identifier("C-9", "CAPIO")) == merged.person_pk
    assert resolve(engine, "C-9", others=[(ANNA, PNR)], owner="CAPIO").person_pk == merged.person_pk


def test_link_to_a_new_national_number(engine: Engine):
    ks = resolve(engine, "KS-1", owner="KS")
    with engine.begin() as conn:
        link(conn, Identifier("KS-1", "KS"), canonicalise(conn, ANNA, PNR, None, TODAY), actor="alice")
        assert show(conn, ks.person_pk).birth_date == "19640823"
        with pytest.raises(InvalidNationalNumber, match="check digit"):
            link(conn, Identifier("KS-1", "KS"), canonicalise(conn, BAD, PNR, None, TODAY), actor="alice")
    assert resolve(engine, "SU-7", others=[(ANNA, PNR)], owner="SU").person_pk == ks.person_pk


def test_studies_are_counted_through_the_identifiers(engine: Engine):
    anna = resolve(engine, "KS-1", others=[(ANNA, PNR)], owner="KS")
    resolve(engine, "SU-7", others=[(ANNA, PNR)], owner="SU")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for n, (pid, issuer) in enumerate([("KS-1", "KS"), ("SU-7", "1.2.752.99.2"), ("OTHER", "KS")]):
            pk = conn.execute(
                insert(patients).values(patient_id=pid, issuer_of_patient_id=issuer, created_at=now, updated_at=now)
                .returning(patients.c.pk)
            ).scalar_one()
            conn.execute(
                insert(studies).values(patient_pk=pk, study_instance_uid=f"1.2.3.{n}", created_at=now, updated_at=now)
            )
        assert show(conn, anna.person_pk).studies == 2
        # The query path: patients rows of the person, found by the personnummer.
        key = identifier_from_text(conn, f"{ANNA_10}^se-personnummer", TODAY)
        rows = conn.execute(
            select(func.count()).select_from(patients).where(
                tuple_(patients.c.patient_id, patients.c.issuer_of_patient_id).in_(identifiers_of_same_person(key))
            )
        ).scalar_one()
        assert rows == 2


def test_resolve_a_dicom_dataset(engine: Engine):
    ds = Dataset()
    ds.PatientID = "KS-1"
    item = Dataset()
    item.PatientID = ANNA
    item.IssuerOfPatientID = PNR
    ds.OtherPatientIDsSequence = [item]
    with engine.begin() as conn:
        first = resolve_dataset(conn, ds, org(conn, "KS"), today=TODAY)
    assert first.identifier == Identifier("KS-1", "KS") and first.linked == (Identifier(ANNA, PNR),)


def test_concurrent_stores_of_a_new_patient_make_one_person(engine: Engine):
    results: list[int] = []
    inside = threading.Event()
    release = threading.Event()

    def first() -> None:
        with engine.begin() as conn:
            results.append(resolve_identity(conn, "NEW-1", "KS", [(ANNA, PNR)], today=TODAY).person_pk)
            inside.set()
            release.wait(30)

    def second() -> None:
        inside.wait(30)
        with engine.begin() as conn:
            results.append(resolve_identity(conn, "NEW-1", "KS", [(ANNA, PNR)], today=TODAY).person_pk)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(30)
    release.set()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and results[0] == results[1]
    with engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(persons)).scalar_one() == 1


# --- the command line -----------------------------------------------------------------


def test_patients_command_line(engine: Engine, tmp_path: Path, index_url: str):
    where = ("--data", str(tmp_path / "data"), "--index-url", index_url)
    anna = resolve(engine, "KS-1", others=[(ANNA, PNR)], owner="KS")
    other = resolve(engine, "SU-7", owner="SU")

    shown = json.loads(run_cli("patients", "show", f"{ANNA_10}^se-personnummer", "--json", *where).stdout)
    assert shown["person"] == anna.person_pk and shown["birth_date"] == "19640823"
    assert {(i["value"], i["organisation"]) for i in shown["identifiers"]} == {("KS-1", "KS"), (ANNA, "KS")}

    run_cli("patients", "link", "SU-7^SU", "--to", "KS-1^KS", "--by", "alice", "--why", "same person", *where)
    assert json.loads(run_cli("patients", "show", "SU-7^SU", "--json", *where).stdout)["person"] == anna.person_pk
    run_cli("patients", "unlink", "SU-7^SU", *where)
    run_cli("patients", "merge", "SU-7^SU", str(anna.person_pk), *where)
    merged = json.loads(run_cli("patients", "show", str(anna.person_pk), "--json", *where).stdout)
    assert len(merged["identifiers"]) == 3
    assert [h["action"] for h in merged["history"]][-1] == "merge"
    run_cli("patients", "unmerge", "SU-7^SU", *where)
    assert json.loads(run_cli("patients", "show", "SU-7^SU", "--json", *where).stdout)["person"] != anna.person_pk
    table = run_cli("patients", "show", "KS-1^KS", *where).stdout
    assert "KS-1" in table and "history" in table

    def fails(code: int, message: str, *args: str) -> None:
        result = run_cli("patients", *args, *where, check=False)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr

    fails(1, "no person has the identifier", "show", "NOPE^KS")
    fails(1, "no person 999", "show", "999")
    fails(2, "VALUE^ISSUER", "show", "KS-1")  # never a bare Patient ID
    fails(2, "invalid se-personnummer", "link", "KS-1^KS", "--to", f"{BAD}^se-personnummer")
    fails(1, "no merge", "unmerge", str(anna.person_pk))
    fails(2, "--to", "link", "KS-1^KS")
    assert other.person_pk != anna.person_pk
