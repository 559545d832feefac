"""Organisations: the identity migration, CRUD, AE title lookup, the default
organisation, config-file organisations synced at start, and ``samarkiv org``.
Each database test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from alembic import command
from alembic.migration import MigrationContext
from alembic.autogenerate import compare_metadata
from sqlalchemy import Engine, inspect

from samarkiv.config import ConfigError, OrganisationConfig, OrganisationKind, Settings, load_settings
from samarkiv.identity.organisations import (
    OrganisationConflict,
    OrganisationError,
    UnknownOrganisation,
    create_organisation,
    get_organisation,
    list_organisations,
    organisation_for_aet,
    organisation_for_issuer,
    sync_from_settings,
    update_organisation,
)
from samarkiv.identity.national import Issuer
from samarkiv.index import identity_schema
from samarkiv.index.engine import alembic_config, create_index_engine, migrate
from conftest import run_cli

IDENTITY_TABLES = {"organisations", "organisation_aets", "persons", "patient_identifiers", "identity_history"}
REGIONAL = Settings(accept_unknown_aets=False)


@pytest.fixture
def engine(index_url: str) -> Iterator[Engine]:
    engine = create_index_engine(index_url, writer=index_url.startswith("sqlite"))
    migrate(engine)
    yield engine
    engine.dispose()


def test_migration_matches_the_table_definitions(engine: Engine):
    assert IDENTITY_TABLES <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), identity_schema.metadata)
    ours = [d for d in diffs if any(t in repr(d) for t in IDENTITY_TABLES)]
    assert ours == []


def test_migration_downgrades_and_upgrades(engine: Engine):
    config = alembic_config(engine)
    command.downgrade(config, "0003")  # the revision before the identity tables
    assert not IDENTITY_TABLES & set(inspect(engine).get_table_names())
    command.upgrade(config, "head")
    assert IDENTITY_TABLES <= set(inspect(engine).get_table_names())


def test_create_list_show_update(engine: Engine):
    with engine.begin() as conn:
        ks = create_organisation(
            conn, "KS", "Karolinska", "hospital", issuer_of_patient_id="KS",
            issuer_ueid="1.2.752.99.1", aets=["KSCT ", "KSMR"],
        )  # fmt: skip
        create_organisation(conn, "CAPIO", "Capio Bild", OrganisationKind.PRIVATE, aets=["CAPIO1"])
    assert ks.aets == ("KSCT", "KSMR") and ks.issuer_ueid_type == "ISO"
    assert ks.patient_id_issuer == "KS"
    with engine.begin() as conn:
        assert [o.code for o in list_organisations(conn)] == ["CAPIO", "KS"]
        capio = get_organisation(conn, "CAPIO")
        assert capio.patient_id_issuer == "CAPIO"  # no issuer of its own: its code
        updated = update_organisation(
            conn, "KS", name="Karolinska universitetssjukhuset", kind="trust",
            add_aets=["KSUS"], remove_aets=["KSMR"], issuer_of_patient_id="",
        )  # fmt: skip
    assert updated.name == "Karolinska universitetssjukhuset" and updated.kind is OrganisationKind.TRUST
    assert updated.aets == ("KSCT", "KSUS")
    assert updated.issuer_of_patient_id is None and updated.patient_id_issuer == "1.2.752.99.1"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"code": "KS"}, OrganisationConflict),  # exists
        ({"aets": ["KSCT"]}, OrganisationConflict),  # another's AE title
        ({"kind": "pharmacy"}, OrganisationError),
        ({"code": "with space"}, OrganisationError),
        ({"aets": ["SEVENTEEN_CHARS_X"]}, OrganisationError),
        ({"aets": ["BACK\\SLASH"]}, OrganisationError),
        ({"issuer_ueid": "not-an-oid"}, OrganisationError),
        ({"issuer_ueid": "1.2.3", "issuer_ueid_type": "ZIP"}, OrganisationError),
        ({"name": " "}, OrganisationError),
    ],
)
def test_bad_organisations_are_refused_and_nothing_is_written(engine: Engine, kwargs: dict, error: type):
    with engine.begin() as conn:
        create_organisation(conn, "KS", "Karolinska", aets=["KSCT"])
    args = {"code": "NEW", "name": "New", **kwargs}
    with pytest.raises(error), engine.begin() as conn:
        create_organisation(conn, args.pop("code"), args.pop("name"), **args)
    with engine.begin() as conn:
        assert [o.code for o in list_organisations(conn)] == ["KS"]
        assert get_organisation(conn, "KS").aets == ("KSCT",)
    with pytest.raises(UnknownOrganisation), engine.begin() as conn:
        update_organisation(conn, "NOPE", name="x")


def test_calling_aet_to_organisation(engine: Engine):
    embedded = Settings()
    sync_from_settings(engine, embedded)
    with engine.begin() as conn:
        create_organisation(conn, "KS", "Karolinska", aets=["KSCT"])
        assert organisation_for_aet(conn, "KSCT", embedded).code == "KS"
        assert organisation_for_aet(conn, " KSCT ", embedded).code == "KS"
        # The embedded defaults: any other calling AE stores for the default organisation.
        assert organisation_for_aet(conn, "STRANGER", embedded).code == "default"
        # A regional configuration: unknown calling AEs belong to nobody (rejected).
        assert organisation_for_aet(conn, "STRANGER", REGIONAL) is None
        assert organisation_for_aet(conn, "KSCT", REGIONAL).code == "KS"


def test_organisation_for_issuer(engine: Engine):
    with engine.begin() as conn:
        create_organisation(conn, "KS", "Karolinska", issuer_of_patient_id="KS", issuer_ueid="1.2.752.99.1")
        assert organisation_for_issuer(conn, Issuer(universal="1.2.752.99.1")).code == "KS"
        assert organisation_for_issuer(conn, Issuer(local="KS")).code == "KS"
        assert organisation_for_issuer(conn, Issuer(local="SU")) is None


def test_config_organisations_are_synced_and_the_file_wins(engine: Engine):
    ks = OrganisationConfig("KS", "Karolinska", OrganisationKind.HOSPITAL, "KS", "1.2.752.99.1", "ISO", ("KSCT",))
    settings = Settings(organisations=(ks,), default_organisation="KS", accept_unknown_aets=False)
    with engine.begin() as conn:
        create_organisation(conn, "LAB", "Lab", aets=["KSMR"])  # an AE the file will give to KS
    sync_from_settings(engine, settings)
    with engine.begin() as conn:
        assert get_organisation(conn, "KS").source == "config"
        assert get_organisation(conn, "default") is None  # regional: no catch-all organisation
        update_organisation(conn, "KS", name="Renamed by hand", add_aets=["KSXA"])
    changed = replace(ks, name="Karolinska Universitetssjukhuset", aets=("KSCT", "KSMR"))
    sync_from_settings(engine, replace(settings, organisations=(changed,)))
    with engine.begin() as conn:
        org = get_organisation(conn, "KS")
        assert org.name == "Karolinska Universitetssjukhuset"
        assert org.aets == ("KSCT", "KSMR")
        assert get_organisation(conn, "LAB").aets == ()
        assert organisation_for_aet(conn, "ANY", settings) is None
    sync_from_settings(engine, replace(settings, organisations=(changed,)))  # idempotent


def test_default_organisation_must_exist(engine: Engine):
    with pytest.raises(OrganisationError, match="default_organisation"):
        sync_from_settings(engine, Settings(default_organisation="NOPE"))
    sync_from_settings(engine, Settings())
    sync_from_settings(engine, Settings())
    with engine.begin() as conn:
        assert [o.code for o in list_organisations(conn)] == ["default"]


def test_config_file_organisations(tmp_path: Path):
    config = tmp_path / "region.toml"
    config.write_text(
        'accept_unknown_aets = false\ndefault_organisation = "KS"\n'
        '[[organisations]]\ncode = "KS"\nname = "Karolinska"\nissuer_of_patient_id = "KS"\n'
        'issuer_ueid = "1.2.752.99.1"\naets = ["KSCT", "KSMR"]\n'
        '[[organisations]]\ncode = "CAPIO"\nname = "Capio"\nkind = "private"\n'
    )
    settings = load_settings(config)
    assert settings.accept_unknown_aets is False and settings.default_organisation == "KS"
    assert settings.organisations == (
        OrganisationConfig("KS", "Karolinska", OrganisationKind.HOSPITAL, "KS", "1.2.752.99.1", "ISO", ("KSCT", "KSMR")),
        OrganisationConfig("CAPIO", "Capio", OrganisationKind.PRIVATE),
    )
    defaults = load_settings()
    assert defaults.organisations == () and defaults.accept_unknown_aets is True


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[organisations]]\ncode = "A"\nname = "A"\nkind = "pharmacy"\n', "organisations"),
        ('[[organisations]]\ncode = "A"\nname = "A"\ncolour = "red"\n', "organisations"),
        ('[[organisations]]\ncode = "A"\nname = "A"\n[[organisations]]\ncode = "A"\nname = "B"\n', "listed twice"),
        ('[[organisations]]\ncode = "A"\nname = "A"\naets = ["X"]\n[[organisations]]\ncode = "B"\nname = "B"\naets = ["X"]\n', "listed twice"),
    ],
)
def test_bad_config_organisations(tmp_path: Path, text: str, message: str):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_org_command_line(tmp_path: Path, index_url: str):
    where = ("--data", str(tmp_path / "data"), "--index-url", index_url)
    run_cli("org", "add", "KS", "--name", "Karolinska", "--issuer", "KS", "--issuer-ueid", "1.2.752.99.1",
            "--aet", "KSCT", "--aet", "KSMR", *where)  # fmt: skip
    listed = json.loads(run_cli("org", "list", "--json", *where).stdout)
    assert [o["code"] for o in listed] == ["KS", "default"]
    shown = json.loads(run_cli("org", "show", "KS", "--json", *where).stdout)
    assert shown["aets"] == ["KSCT", "KSMR"] and shown["issuer_ueid_type"] == "ISO"
    run_cli("org", "update", "KS", "--kind", "trust", "--remove-aet", "KSMR", *where)
    assert json.loads(run_cli("org", "show", "KS", "--json", *where).stdout)["aets"] == ["KSCT"]
    table = run_cli("org", "list", *where).stdout
    assert "KSCT" in table and "trust" in table

    unknown = run_cli("org", "show", "NOPE", *where, check=False)
    assert unknown.returncode == 1 and "no organisation 'NOPE'" in unknown.stderr
    taken = run_cli("org", "add", "SU", "--name", "Sahlgrenska", "--aet", "KSCT", *where, check=False)
    assert taken.returncode == 1 and "belongs to organisation 'KS'" in taken.stderr
    bad = run_cli("org", "add", "SU", "--name", "Sahlgrenska", "--kind", "pharmacy", *where, check=False)
    assert bad.returncode == 2 and "kind" in bad.stderr and "Traceback" not in bad.stderr
    assert [o["code"] for o in json.loads(run_cli("org", "list", "--json", *where).stdout)] == ["KS", "default"]


def test_org_command_line_with_a_config_file(tmp_path: Path, index_url: str):
    config = tmp_path / "region.toml"
    config.write_text(
        'accept_unknown_aets = false\n[[organisations]]\ncode = "SU"\nname = "Sahlgrenska"\naets = ["SUCT"]\n'
    )
    where = ("--config", str(config), "--data", str(tmp_path / "data"), "--index-url", index_url)
    listed = json.loads(run_cli("org", "list", "--json", *where).stdout)
    assert [(o["code"], o["source"], o["aets"]) for o in listed] == [("SU", "config", ["SUCT"])]
    note = run_cli("org", "update", "SU", "--name", "SU", *where)
    assert "config file" in note.stderr
