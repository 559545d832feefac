"""The capacity forecast from a synthetic ingest history: the fill date and
the three-year need match a computation done here independently; the table,
PNG and HTML outputs, and the page at /admin/capacity."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _lifecycle import make_sample, open_archive, store
from conftest import run_cli
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from samarkiv.index.identity_schema import organisations
from samarkiv.index.schema import instances
from samarkiv.lifecycle.capacity import forecast
from samarkiv.web.app import Readiness, create_app

PER_DAY = 10_000_000  # bytes stored each day
DAYS = 200
CAPACITY = int(323.5 * PER_DAY)


ORGANISATIONS = """
[[organisations]]
code = "north"
name = "North Hospital"
aets = ["CT_NORTH"]

[[organisations]]
code = "south"
name = "South Clinic"
aets = ["CT_SOUTH"]
"""


def _history(archive) -> None:  # type: ignore[no-untyped-def]
    """One instance row per day over the last DAYS days, PER_DAY bytes each,
    owned by the two organisations in turn but all sent from one AE title (a
    shared router): the forecast groups by owner, not by sender."""
    sample = make_sample("MR_small.dcm", "20240101")
    store(archive, sample)
    now = datetime.now(UTC)
    with archive.catalog.writer.begin() as conn:
        owners = dict(conn.execute(select(organisations.c.code, organisations.c.pk)).all())
        template = dict(conn.execute(select(instances).where(instances.c.sop_instance_uid == sample.uid)).one()._mapping)
        conn.execute(instances.delete().where(instances.c.pk == template.pop("pk")))
        rows = [
            {**template, "sop_instance_uid": f"2.25.{uuid.uuid4().int}", "size": PER_DAY,
             "stored_at": now - timedelta(days=day, hours=1), "source_aet": "ROUTER",
             "org_pk": owners["north" if day % 2 else "south"],
             "blob_key": f"2020/01/01/00/{uuid.uuid4().hex}.dcm"}
            for day in range(DAYS)
        ]  # fmt: skip
        conn.execute(insert(instances), rows)


def _administrator(archive) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Basic credentials of an administrator of the organisation "north" (the page is behind login)."""
    from samarkiv.access.users import create_user

    password = f"capacity-{uuid.uuid4().hex}"
    with archive.catalog.writer.begin() as conn:
        create_user(conn, "capacity-admin", "north", ["administrator"], password=password)
    return ("capacity-admin", password)


def test_fill_date_and_three_year_need(tmp_path: Path, index_url: str):
    config = ORGANISATIONS + f'[tier_capacity]\nshort = {CAPACITY}\n'
    archive, config_path = open_archive(tmp_path, index_url, config)
    _history(archive)
    result = forecast(archive, window_days=90)

    # independently: 90 days in the window at PER_DAY each -> PER_DAY a day;
    # used DAYS * PER_DAY now, so full on the first day the total passes CAPACITY
    days_to_full = math.floor((CAPACITY - DAYS * PER_DAY) / PER_DAY) + 1
    today = datetime.now(UTC).date()
    (short,) = result.tiers
    assert result.bytes_per_day == PER_DAY
    assert short.used_bytes == DAYS * PER_DAY and short.capacity_bytes == CAPACITY
    assert short.fill_date == today + timedelta(days=days_to_full)
    assert short.bytes_in_three_years == DAYS * PER_DAY + 3 * 365 * PER_DAY
    assert {(g.organisation, g.modality) for g in result.groups} == {("north", "MR"), ("south", "MR")}
    assert sum(g.bytes_per_day for g in result.groups) == PER_DAY
    by_org = {g.organisation: g.bytes_per_day for g in result.groups}  # alternate days over 90 days
    assert by_org == {"north": 45 * PER_DAY / 90, "south": 45 * PER_DAY / 90}

    png, page = tmp_path / "capacity.png", tmp_path / "capacity.html"
    out = run_cli("capacity", "--json", "--png", str(png), "--html", str(page), "--config", str(config_path),
                  "--data", str(tmp_path / "data"), "--index-url", index_url).stdout  # fmt: skip
    assert json.loads(out)["tiers"][0]["fill_date"] == short.fill_date.isoformat()
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert short.fill_date.isoformat() in page.read_text() and "data:image/png;base64," in page.read_text()

    client = TestClient(create_app(archive, Readiness()))
    client.auth = _administrator(archive)
    response = client.get("/admin/capacity")
    assert response.status_code == 200 and short.fill_date.isoformat() in response.text
    assert client.get("/admin/capacity.png").headers["content-type"] == "image/png"
    archive.close()


def test_a_move_rule_shifts_growth_to_the_long_tier(tmp_path: Path, index_url: str):
    config = ORGANISATIONS + (
        '[[tiers]]\nname = "short"\n[[tiers]]\nname = "long"\npath = "long"\n'
        '[[lifecycle]]\nfrom = "short"\nto = "long"\nolder_than_days = 100\nage_by = "stored"\n'
        f'[tier_capacity]\nshort = {CAPACITY}\nlong = {10 * CAPACITY}\n'
    )
    archive, _ = open_archive(tmp_path, index_url, config)
    _history(archive)
    short, long = forecast(archive, window_days=90).tiers
    # steady state: the short tier holds about the last 100 days, never more than its capacity
    assert short.fill_date is None
    assert abs(short.bytes_in_three_years - 100 * PER_DAY) <= 2 * PER_DAY
    assert abs(short.bytes_in_three_years + long.bytes_in_three_years - (DAYS + 3 * 365) * PER_DAY) <= 1
    archive.close()
