"""``samarkiv tiers``, ``samarkiv lifecycle``, ``samarkiv fixity``, ``samarkiv capacity``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..cli import ConfigOpt, DataOpt, IndexOpt, _fail, _logging, console, err, open_archive, settings_from

HORIZONS = (30, 90, 365)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

tiers_app = typer.Typer(help="Per storage tier: studies, instances, bytes, and what the rules will move.")
lifecycle_app = typer.Typer(no_args_is_help=True, help="Lifecycle rules: move, copy and drop objects between tiers.")
fixity_app = typer.Typer(no_args_is_help=True, help="Fixity: re-read stored objects against their SHA-256.")
capacity_app = typer.Typer(help="Capacity forecast: when each tier fills, what three years need.")


def _open(config: Path | None, data: Path | None, index_url: str | None):  # type: ignore[no-untyped-def]
    from ..config import ConfigError

    settings = settings_from(config, data=data, index_url=index_url)
    try:
        return open_archive(settings)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _runner(archive, **kwargs):  # type: ignore[no-untyped-def]
    from ..config import ConfigError
    from .mover import LifecycleRunner

    try:
        return LifecycleRunner(archive, **kwargs)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def tier_summary(archive) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Per tier: studies, instances, bytes; and per rule what it moves in 30/90/365 days."""
    from sqlalchemy import func, select

    from ..index.schema import instances, series
    from .rules import candidates, in_tier

    first = next(iter(archive.tiers))
    now = datetime.now(UTC)
    rows = []
    with archive.engine.connect() as conn:
        for name in archive.tiers:
            studies, count, size = conn.execute(
                select(func.count(func.distinct(series.c.study_pk)), func.count(), func.coalesce(func.sum(instances.c.size), 0))
                .select_from(instances)
                .join(series, instances.c.series_pk == series.c.pk)
                .where(in_tier(instances.c.blob_key, name, first))
            ).one()
            outgoing = []
            for rule in archive.settings.lifecycle:
                if rule.source != name:
                    continue
                horizons = {}
                for days in HORIZONS:
                    query = candidates(rule, first, now, days).subquery()
                    n, b = conn.execute(select(func.count(), func.coalesce(func.sum(query.c.size), 0))).one()
                    horizons[str(days)] = {"instances": int(n), "bytes": int(b)}
                outgoing.append({"rule": rule.name, "action": rule.action, "to": rule.target, "within_days": horizons})
            rows.append({"tier": name, "studies": int(studies), "instances": int(count), "bytes": int(size), "rules": outgoing})
    return rows


@tiers_app.callback(invoke_without_command=True)
def tiers(config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """Per storage tier: studies, instances, bytes, and what moves under the rules in 30/90/365 days."""
    from .capacity import human

    archive = _open(config, data, index_url)
    _runner(archive)  # checks the rules name configured tiers
    summary = tier_summary(archive)
    archive.close()
    if as_json:
        console.print_json(json.dumps(summary))
        return
    table = Table(title="tiers")
    for column in ("tier", "studies", "instances", "bytes", *(f"leaves in {d} d" for d in HORIZONS)):
        table.add_column(column, justify="left" if column == "tier" else "right")
    for tier in summary:
        leaving = []
        for days in HORIZONS:
            parts = [
                f"{r['within_days'][str(days)]['instances']:,} ({human(r['within_days'][str(days)]['bytes'])}) "
                f"{r['action']}{' to ' + r['to'] if r['to'] else ''}"
                for r in tier["rules"]
            ]
            leaving.append("\n".join(parts) or "-")
        table.add_row(tier["tier"], f"{tier['studies']:,}", f"{tier['instances']:,}", human(tier["bytes"]), *leaving)
    console.print(table)


@lifecycle_app.command("run")
def lifecycle_run(
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    rate: Annotated[Optional[float], typer.Option("--mib-per-second", help="Copy throttle [default: lifecycle_mib_per_second].")] = None,
    plan: Annotated[bool, typer.Option(help="Select instances under the rules first (--no-plan: only finish queued jobs).")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Apply the lifecycle rules now: plan jobs, then do them (resumable; safe beside a running server)."""
    _logging("WARNING")
    archive = _open(config, data, index_url)
    runner = _runner(archive, mib_per_second=rate)
    planned = runner.plan() if plan else 0
    total = runner.pending()
    with Progress(TextColumn("[bold]lifecycle"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err) as progress:
        task = progress.add_task("jobs", total=total)
        report = runner.run(plan=False, progress=lambda _job, _outcome: progress.advance(task))
    report.planned = planned
    archive.close()
    result = {
        "planned": report.planned, "done": report.done, "skipped": report.skipped, "failed": report.failed,
        "bytes_written": report.bytes_moved, "bytes_saved": report.bytes_saved, "by_rule": report.by_rule,
    }  # fmt: skip
    if as_json:
        console.print_json(json.dumps(result))
    else:
        console.print(
            f"lifecycle: {report.planned} job(s) planned, {report.done} done, {report.skipped} skipped, "
            f"{report.failed} failed; {report.bytes_moved:,} bytes written, {report.bytes_saved:,} bytes saved by compression"
        )
    if report.failed:
        raise typer.Exit(1)


@lifecycle_app.command("jobs")
def lifecycle_jobs(config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """Jobs by rule and state, with bytes saved by compression."""
    from sqlalchemy import func, select

    from ..index.lifecycle_schema import lifecycle_jobs as jobs

    archive = _open(config, data, index_url)
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(jobs.c.rule, jobs.c.state, func.count(),
                   func.coalesce(func.sum(jobs.c.bytes_before - jobs.c.bytes_after), 0))
            .group_by(jobs.c.rule, jobs.c.state).order_by(jobs.c.rule, jobs.c.state)
        ).all()  # fmt: skip
    archive.close()
    result = [{"rule": r[0], "state": r[1], "jobs": int(r[2]), "bytes_saved": int(r[3])} for r in rows]
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table(title="lifecycle jobs")
    for column in ("rule", "state", "jobs", "bytes saved"):
        table.add_column(column)
    for r in result:
        table.add_row(r["rule"], r["state"], f"{r['jobs']:,}", f"{r['bytes_saved']:,}")
    console.print(table)


@fixity_app.command("run")
def fixity_run(
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    rate: Annotated[Optional[float], typer.Option("--mib-per-second", help="Read throttle [default: fixity_mib_per_second].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-read every stored object, compare SHA-256 with the index, repair from copies.

    Exits 1 when an object is bad and could not be repaired.
    """
    from .fixity import FixityChecker

    _logging("ERROR")
    archive = _open(config, data, index_url)
    total = archive.catalog.counts()["instances"]
    checker = FixityChecker(archive, mib_per_second=rate)
    with Progress(TextColumn("[bold]fixity"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err) as progress:
        task = progress.add_task("fixity", total=total)
        report = checker.run_all(progress=lambda _pk: progress.advance(task))
    archive.close()
    result = {
        "checked": report.checked, "checked_bytes": report.checked_bytes, "corrupt": report.corrupt,
        "missing": report.missing, "repaired": report.repaired, "unrepairable": report.unrepairable,
    }  # fmt: skip
    if as_json:
        console.print_json(json.dumps(result))
    else:
        console.print(
            f"fixity: checked {report.checked:,} object(s) ({report.checked_bytes / 1e6:,.1f} MB): "
            f"{len(report.corrupt)} corrupt, {len(report.missing)} missing, {len(report.repaired)} repaired, "
            f"{len(report.unrepairable)} unrepairable"
        )
        for uid in report.unrepairable:
            console.print(f"[red]unrepairable[/red] {uid}")
    if not report.ok:
        raise typer.Exit(1)


@fixity_app.command("events")
def fixity_events(config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None,
                  limit: int = 100, as_json: JsonOpt = False) -> None:  # fmt: skip
    """The latest fixity findings."""
    from .fixity import recent_events

    archive = _open(config, data, index_url)
    rows = recent_events(archive, limit)
    archive.close()
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(title="fixity events")
    for column in ("at", "outcome", "tier", "sop_instance_uid", "detail"):
        table.add_column(column)
    for r in rows:
        table.add_row(f"{r['at']:%Y-%m-%d %H:%M:%S}", r["outcome"], r["tier"] or "", r["sop_instance_uid"] or "", r["detail"] or "")
    console.print(table)


@capacity_app.callback(invoke_without_command=True)
def capacity(
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Write the plot here.")] = None,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Write an HTML page here.")] = None,
    window: Annotated[int, typer.Option("--window-days", help="Growth measured over this many days.")] = 90,
    as_json: JsonOpt = False,
) -> None:
    """Forecast from the ingest history: when each tier fills, and what three years need."""
    from .capacity import fill_text, forecast, human, render_html, render_png

    if window < 1:
        raise _fail("--window-days must be at least 1")
    archive = _open(config, data, index_url)
    result = forecast(archive, window_days=window)
    archive.close()
    image = render_png(result) if png or html_file else None
    try:
        if png:
            png.write_bytes(image)  # type: ignore[arg-type]
        if html_file:
            html_file.write_text(render_html(result, image))
    except OSError as exc:
        raise _fail(f"cannot write: {exc}") from None
    if as_json:
        console.print_json(json.dumps({
            "today": result.today.isoformat(), "bytes_per_day": result.bytes_per_day,
            "tiers": [{"tier": t.name, "used_bytes": t.used_bytes, "capacity_bytes": t.capacity_bytes,
                       "capacity_from": t.capacity_source, "fill_date": t.fill_date.isoformat() if t.fill_date else None,
                       "bytes_in_three_years": t.bytes_in_three_years} for t in result.tiers],
            "groups": [{"organisation": g.organisation, "modality": g.modality, "bytes_per_day": g.bytes_per_day}
                       for g in result.groups],
        }))  # fmt: skip
        return
    console.print(f"growth: {human(result.bytes_per_day)}/day over the last {result.window_days} days")
    table = Table(title="tiers")
    for column in ("tier", "used", "capacity", "full on", "in three years"):
        table.add_column(column)
    for t in result.tiers:
        table.add_row(t.name, human(t.used_bytes), f"{human(t.capacity_bytes)} ({t.capacity_source})", fill_text(t),
                      human(t.bytes_in_three_years))  # fmt: skip
    console.print(table)
    groups = Table(title="growth by owning organisation and modality")
    for column in ("organisation", "modality", "per day"):
        groups.add_column(column)
    for g in result.groups:
        groups.add_row(g.organisation, g.modality, human(g.bytes_per_day))
    console.print(groups)
