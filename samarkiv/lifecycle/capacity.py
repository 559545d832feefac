"""Capacity planning: from the ingest history, when each tier fills and what
three years need.

The growth rate is the bytes stored over the last ``window_days`` (default
90) divided by that many days, broken down by the owning organisation
(``instances.org_pk``, the organisation the store was filed for: the calling
AE's, or the default one) and modality. The projection runs day by
day: new objects arrive on the first tier at the current rate, and the
configured move/copy/delete rules carry them on when they pass their age
(access is assumed not to hold them back). A tier's capacity is its
``[tier_capacity]`` entry, else for a filesystem tier the bytes it holds plus
its filesystem's free space, else unknown (it never "fills").
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from ..core.archive import Archive
from ..index.identity_schema import organisations
from ..index.schema import instances, series, studies
from ..storage.tiers import DEFAULT_TIERS, tier_folder
from .rules import LifecycleRule, in_tier

THREE_YEARS = 3 * 365


@dataclass
class GroupRate:
    organisation: str  # the owning organisation's code ("-": none recorded)
    modality: str
    bytes_per_day: float


@dataclass
class TierForecast:
    name: str
    kind: str
    used_bytes: int
    capacity_bytes: int | None
    capacity_source: str  # "config", "filesystem", "unknown"
    fill_date: date | None  # None: not within the horizon (or no capacity known)
    bytes_in_three_years: int
    projection: list[int] = field(default_factory=list)  # used bytes per day from today


@dataclass
class Forecast:
    today: date
    window_days: int
    horizon_days: int
    bytes_per_day: float
    groups: list[GroupRate]
    history: list[tuple[date, int]]  # bytes stored per day (of objects still held)
    tiers: list[TierForecast]

    @property
    def total_in_three_years(self) -> int:
        return sum(t.bytes_in_three_years for t in self.tiers)


def _day(value: object) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value)
    try:
        if len(text) >= 10 and text[4] == "-":
            return date.fromisoformat(text[:10])
        if len(text) == 8 and text.isdigit():
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return None


def _tier_contents(archive: Archive, tier: str, first: str, by_study_date: bool) -> dict[date, int]:
    """Bytes on ``tier`` by the date the tier's outgoing rule ages them by."""
    stored_day = func.date(instances.c.stored_at)
    query = (
        select(stored_day, studies.c.study_date, func.sum(instances.c.size))
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)
        .where(in_tier(instances.c.blob_key, tier, first))
        .group_by(stored_day, studies.c.study_date)
    )
    contents: dict[date, int] = defaultdict(int)
    with archive.engine.connect() as conn:
        for stored, study_date, size in conn.execute(query):
            day = (_day(study_date) if by_study_date else None) or _day(stored)
            if day is not None:
                contents[day] += int(size)
    return contents


def _history_and_groups(archive: Archive, since: datetime) -> tuple[list[tuple[date, int]], dict[tuple[str, str], int]]:
    stored_day = func.date(instances.c.stored_at)
    by_day = select(stored_day, func.sum(instances.c.size)).group_by(stored_day)
    groups = (
        select(organisations.c.code, series.c.modality, func.sum(instances.c.size))
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .outerjoin(organisations, instances.c.org_pk == organisations.c.pk)
        .where(instances.c.stored_at >= since)
        .group_by(organisations.c.code, series.c.modality)
    )
    with archive.engine.connect() as conn:
        history = sorted((d, int(s)) for raw, s in conn.execute(by_day) if (d := _day(raw)) is not None)
        grouped: dict[tuple[str, str], int] = defaultdict(int)
        for code, modality, size in conn.execute(groups):
            grouped[(code or "-", modality or "-")] += int(size)
    return history, grouped


def _capacity(archive: Archive, name: str, used: int) -> tuple[int | None, str]:
    configured = dict(archive.settings.tier_capacity)
    if name in configured:
        return configured[name], "config"
    spec = next((s for s in archive.settings.tiers or DEFAULT_TIERS if s.name == name), None)
    if spec is not None and spec.s3 is None:
        folder = tier_folder(spec, Path(archive.settings.data))
        try:
            return used + shutil.disk_usage(folder).free, "filesystem"
        except OSError:
            pass
    return None, "unknown"


class _Tier:
    """A tier's projected contents: bytes by age date, oldest first."""

    def __init__(self, contents: dict[date, int]) -> None:
        self.bytes: dict[date, float] = defaultdict(float, contents)
        self.heap = list(contents)
        heapq.heapify(self.heap)
        self.total = float(sum(contents.values()))

    def add(self, day: date, size: float) -> None:
        if day not in self.bytes or not self.bytes[day]:
            heapq.heappush(self.heap, day)
        self.bytes[day] += size
        self.total += size

    def take_older(self, cutoff: date) -> list[tuple[date, float]]:
        taken = []
        while self.heap and self.heap[0] < cutoff:
            day = heapq.heappop(self.heap)
            size = self.bytes.pop(day, 0.0)
            if size:
                taken.append((day, size))
                self.total -= size
        return taken


def forecast(archive: Archive, *, window_days: int = 90, horizon_days: int = THREE_YEARS,
             now: datetime | None = None) -> Forecast:  # fmt: skip
    now = now or datetime.now(UTC)
    today = now.date()
    names = list(archive.tiers)
    first = names[0]
    rules: list[LifecycleRule] = list(archive.settings.lifecycle)
    outgoing = {r.source: r for r in reversed(rules) if r.action in ("move", "delete")}
    history, grouped = _history_and_groups(archive, now - timedelta(days=window_days))
    rate = sum(grouped.values()) / window_days
    groups = sorted(
        (GroupRate(org, modality, size / window_days) for (org, modality), size in grouped.items()),
        key=lambda g: -g.bytes_per_day,
    )
    tiers = {
        name: _Tier(_tier_contents(archive, name, first, getattr(outgoing.get(name), "age_by", "") == "study_date"))
        for name in names
    }
    # copy rules see what arrives on their source tier, and copy it once it is old enough
    copy_queues: dict[str, list[tuple[date, float]]] = {r.name: [] for r in rules if r.action == "copy"}
    for rule in rules:
        if rule.action == "copy":
            copy_queues[rule.name] = sorted(tiers[rule.source].bytes.items())

    def arrive(tier: str, day: date, size: float) -> None:
        tiers[tier].add(day, size)
        for rule in rules:
            if rule.action == "copy" and rule.source == tier:
                heapq.heappush(copy_queues[rule.name], (day, size))

    projections: dict[str, list[int]] = {name: [int(tiers[name].total)] for name in names}
    for offset in range(1, horizon_days + 1):
        day = today + timedelta(days=offset)
        arrive(first, day, rate)
        for rule in rules:
            cutoff = day - timedelta(days=rule.older_than_days)
            if rule.action == "copy" and rule.target is not None:
                queue = copy_queues[rule.name]
                while queue and queue[0][0] < cutoff:
                    aged, size = heapq.heappop(queue)
                    tiers[rule.target].add(aged, size)
                continue
            for aged, size in tiers[rule.source].take_older(cutoff):
                if rule.action == "move" and rule.target is not None:
                    arrive(rule.target, aged, size)
        for name in names:
            projections[name].append(int(tiers[name].total))

    results = []
    for name in names:
        used = projections[name][0]
        capacity, source = _capacity(archive, name, used)
        fill = None
        if capacity is not None:
            fill = next((today + timedelta(days=i) for i, v in enumerate(projections[name]) if v > capacity), None)
        kind = "s3" if type(archive.tiers[name]).__name__ == "S3BlobStore" else "filesystem"
        at_three = projections[name][min(THREE_YEARS, horizon_days)]
        results.append(TierForecast(name, kind, used, capacity, source, fill, at_three, projections[name]))
    return Forecast(today, window_days, horizon_days, rate, groups, history, results)


# --- output ------------------------------------------------------------------------------


def human(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:,.1f} {unit}" if unit != "B" else f"{size:,.0f} B"
        size /= 1000
    return f"{size:,.1f} PB"


def render_png(result: Forecast) -> bytes:
    """The history of stored bytes and each tier's projection (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in server threads

    figure = Figure(figsize=(10, 5.5), dpi=100)
    axes = figure.add_subplot()
    if result.history:
        days, sizes, running = [], [], 0
        for day, size in result.history:
            running += size
            days.append(day)
            sizes.append(running)
        axes.plot(days, sizes, color="black", linewidth=2, label="stored (history)")
    future = [result.today + timedelta(days=i) for i in range(result.horizon_days + 1)]
    for tier in result.tiers:
        line = axes.plot(future, tier.projection, linestyle="-", label=f"{tier.name} (projected)")[0]
        if tier.capacity_bytes is not None:
            axes.axhline(tier.capacity_bytes, color=line.get_color(), linestyle="--", linewidth=1,
                         label=f"{tier.name} capacity")  # fmt: skip
        if tier.fill_date is not None:
            axes.axvline(tier.fill_date, color=line.get_color(), linestyle=":", linewidth=1)
    axes.set_ylabel("bytes")
    axes.set_title(f"samarkiv capacity: {human(result.bytes_per_day)}/day over the last {result.window_days} days")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    figure.autofmt_xdate()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def fill_text(tier: TierForecast) -> str:
    if tier.capacity_bytes is None:
        return "no capacity known"
    if tier.fill_date is None:
        return "not within the forecast"
    return tier.fill_date.isoformat()


def render_html(result: Forecast, png: bytes | None = None) -> str:
    """A self-contained HTML page (the plot inlined)."""
    png = render_png(result) if png is None else png
    e = html.escape
    tier_rows = "".join(
        f"<tr><td>{e(t.name)}</td><td>{e(t.kind)}</td><td class=n>{e(human(t.used_bytes))}</td>"
        f"<td class=n>{e(human(t.capacity_bytes))}</td><td>{e(t.capacity_source)}</td>"
        f"<td>{e(fill_text(t))}</td><td class=n>{e(human(t.bytes_in_three_years))}</td></tr>"
        for t in result.tiers
    )
    group_rows = "".join(
        f"<tr><td>{e(g.organisation)}</td><td>{e(g.modality)}</td><td class=n>{e(human(g.bytes_per_day))}</td></tr>"
        for g in result.groups
    )
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>samarkiv capacity</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}td.n{{text-align:right}}img{{max-width:100%}}</style>
</head><body>
<h1>Capacity</h1>
<p>As of {e(result.today.isoformat())}: {e(human(result.bytes_per_day))} per day stored over the last
{result.window_days} days; three years from now the tiers hold {e(human(result.total_in_three_years))}.</p>
<h2>Tiers</h2>
<table id="tiers"><tr><th>tier</th><th>kind</th><th>used</th><th>capacity</th><th>capacity from</th>
<th>full on</th><th>in three years</th></tr>{tier_rows}</table>
<h2>Growth by organisation and modality</h2>
<p>Organisation: the organisation owning the stored objects (by its code).</p>
<table id="groups"><tr><th>organisation</th><th>modality</th><th>per day</th></tr>{group_rows}</table>
<h2>Projection</h2>
<img alt="stored bytes and projection per tier" src="data:image/png;base64,{image}">
</body></html>
"""
