"""``samarkiv migrate``: add, plan, run, status, verify, report and list migration jobs."""

# No ``from __future__ import annotations``: typer reads the annotations.
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

migrate_app = typer.Typer(no_args_is_help=True, help="Migrate legacy archives (DIMSE, DICOMweb, folders), verified.")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Data folder [default: ./samarkiv-data].")]
IndexOpt = Annotated[Optional[str], typer.Option("--index-url", help="Index database URL [default: SQLite in the data folder].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@contextmanager
def _opened(config: Optional[Path], data: Optional[Path], index_url: Optional[str]) -> Iterator[tuple[Any, Any]]:
    from ..cli import open_archive, settings_from
    from .job import JobStore

    archive = open_archive(settings_from(config, data=data, index_url=index_url))
    try:
        yield archive, JobStore(archive.engine, archive.catalog.writer)
    finally:
        archive.close()


def _job(jobs: Any, name: str, refresh: bool = False) -> Any:
    """The job ``name``; with ``refresh``, marked to ask the source for its studies again."""
    from .job import JobError

    try:
        job = jobs.get(name)
    except JobError as exc:
        raise _fail(str(exc), 1) from None
    if refresh:
        jobs.set_job(job, enumerated=False)
        job = jobs.get(name)
    return job


@migrate_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The job's name.")],
    source: Annotated[str, typer.Option(help="dimse, dicomweb or filesystem.")],
    host: Annotated[Optional[str], typer.Option(help="DIMSE: the source's host.")] = None,
    port: Annotated[Optional[int], typer.Option(help="DIMSE: the source's port.")] = None,
    called_aet: Annotated[Optional[str], typer.Option(help="DIMSE: the source's AE title.")] = None,
    calling_aet: Annotated[str, typer.Option(help="DIMSE: our AE title towards the source.")] = "SAMARKIV-MIG",
    mode: Annotated[str, typer.Option(help="DIMSE: move (to a running samarkiv serve) or get (into this process).")] = "move",
    move_aet: Annotated[Optional[str], typer.Option(help="DIMSE move: the receiving samarkiv AE title (the source must know it).")] = None,
    from_date: Annotated[Optional[str], typer.Option(help="Studies from this date (YYYYMMDD), in date windows.")] = None,
    to_date: Annotated[Optional[str], typer.Option(help="Studies up to this date (YYYYMMDD).")] = None,
    window_days: Annotated[int, typer.Option(help="C-FIND date window length in days.")] = 30,
    max_results: Annotated[int, typer.Option(help="The source's C-FIND result cap: windows that reach it are halved.")] = 0,
    url: Annotated[Optional[str], typer.Option(help="DICOMweb: the service root URL.")] = None,
    token_env: Annotated[Optional[str], typer.Option(help="DICOMweb: environment variable holding a bearer token (read at run time, never stored).")] = None,
    page_size: Annotated[int, typer.Option(help="DICOMweb: QIDO-RS results per page (limit/offset).")] = 100,
    path: Annotated[Optional[list[Path]], typer.Option("--path", help="Filesystem: folders, files or DICOMDIRs.")] = None,
    in_place: Annotated[bool, typer.Option(help="Filesystem: index the files where they are, without copying.")] = False,
    associations: Annotated[int, typer.Option(help="Parallel associations/requests towards the source.")] = 2,
    retries: Annotated[int, typer.Option(help="Retries of a busy/refused/timed-out source, with backoff.")] = 4,
    backoff: Annotated[float, typer.Option(help="First backoff in seconds (doubles each retry).")] = 1.0,
    max_rate: Annotated[Optional[float], typer.Option(help="At most this many instances per second.")] = None,
    max_mbps: Annotated[Optional[float], typer.Option(help="At most this many MB per second.")] = None,
    window: Annotated[Optional[list[str]], typer.Option(help="Run only in these time windows, e.g. '22:00-06:00', 'sat,sun'.")] = None,
    issuer: Annotated[Optional[str], typer.Option(help="Issuer of Patient ID to set where the source left it empty.")] = None,
    coerce: Annotated[Optional[list[str]], typer.Option(help="Attribute rule: Keyword=Value or Keyword:Old=New.")] = None,
    source_aet: Annotated[Optional[str], typer.Option(help="Store as if sent by this AE title (selects the organisation).")] = None,
    timeout: Annotated[float, typer.Option(help="DIMSE/HTTP timeout in seconds.")] = 30.0,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Create a migration job (nothing is pulled until ``migrate run``)."""
    from .job import JobError
    from .mapping import Rule
    from .sources import SourceError, open_source
    from .throttle import Window

    options: dict[str, Any] = dict(
        associations=associations, retries=retries, backoff_seconds=backoff, max_instances_per_second=max_rate,
        max_mbps=max_mbps, windows=window or [], issuer_of_patient_id=issuer, coerce=coerce or [], source_aet=source_aet,
        timeout=timeout,
    )  # fmt: skip
    if source == "dimse":
        if not host or not port or not called_aet:
            raise _fail("a DIMSE source needs --host, --port and --called-aet")
        options.update(host=host, port=port, called_aet=called_aet, calling_aet=calling_aet, mode=mode, move_aet=move_aet,
                       from_date=from_date, to_date=to_date, window_days=window_days, max_results=max_results)  # fmt: skip
    elif source == "dicomweb":
        if not url:
            raise _fail("a DICOMweb source needs --url")
        options.update(url=url, from_date=from_date, to_date=to_date, window_days=window_days, page_size=page_size, token_env=token_env)
    elif source == "filesystem":
        if not path:
            raise _fail("a filesystem source needs --path")
        options.update(paths=[str(p.resolve()) for p in path], in_place=in_place)
        if in_place and (issuer or coerce):
            raise _fail("files indexed in place are kept as they are: no --issuer or --coerce")
    try:
        [Window.parse(w) for w in options["windows"]]
        [Rule.parse(r) for r in options["coerce"]]
        open_source(source, options)
    except (ValueError, SourceError) as exc:
        raise _fail(str(exc)) from None
    with _opened(config, data, index_url) as (_archive, jobs):
        try:
            jobs.create(name, source, options)
        except JobError as exc:
            raise _fail(str(exc)) from None
    console.print(f"migration {name} added ({source}); start it with `samarkiv migrate run {name}`")


@migrate_app.command("run")
def run(
    name: str,
    refresh: Annotated[bool, typer.Option(help="Ask the source for its studies again (new ones join the plan).")] = False,
    progress_bar: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress display.")] = True,
    retries: Annotated[Optional[int], typer.Option(min=0, help="Change the job's retries (kept for later runs).")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=0.1, help="Change the job's DIMSE/HTTP timeout in seconds (kept).")] = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Run (or resume) a migration: pulls only what the archive does not hold."""
    from .runner import Runner
    from .sources import SourceError

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with _opened(config, data, index_url) as (archive, jobs):
        job = _job(jobs, name, refresh)
        changes = {k: v for k, v in (("retries", retries), ("timeout", timeout)) if v is not None}
        if changes:
            job = jobs.update_options(job, **changes)  # e.g. more patience with a source that recovered
        try:
            runner = Runner(archive, jobs, job)
        except (SourceError, ValueError) as exc:
            raise _fail(str(exc)) from None
        try:
            runner.enumerate()
        except SourceError as exc:
            jobs.set_job(job, state="failed")
            raise _fail(f"cannot enumerate the source: {exc}", 1) from None
        todo = len(jobs.studies(runner.job, ["pending", "failed"]))
        columns = (
            TextColumn("[bold]migrating[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[instances]:,} inst  {task.fields[mb]:,.1f} MB  {task.fields[rate]:,.1f} inst/s"),
            TimeRemainingColumn(),
        )  # fmt: skip
        with Progress(*columns, console=err, disable=not progress_bar) as progress:
            task = progress.add_task(name, total=todo, instances=0, mb=0.0, rate=0.0)

            def on_study(_study: Any, _count: int, _nbytes: int) -> None:
                elapsed = progress.tasks[0].elapsed or 1e-9
                s = runner.stats
                progress.update(task, advance=1, instances=s.instances, mb=s.bytes / 1e6, rate=s.instances / elapsed)

            runner.on_study = on_study
            result = runner.run()
    _print_progress(result)
    if runner.stats.retries:
        console.print(f"{runner.stats.retries} busy/refused/timed-out source call(s) retried with backoff")
    if result["studies"].get("failed"):
        raise typer.Exit(1)


@migrate_app.command("plan")
def plan(
    name: str,
    refresh: Annotated[bool, typer.Option(help="Ask the source for its studies again (new ones join the plan).")] = False,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Enumerate the source and list each study's instances without pulling anything."""
    from .runner import Runner
    from .sources import SourceError

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with _opened(config, data, index_url) as (archive, jobs):
        job = _job(jobs, name, refresh)
        try:
            result = Runner(archive, jobs, job).plan_all()
        except (SourceError, ValueError) as exc:
            raise _fail(f"cannot enumerate the source: {exc}", 1) from None
    _print_progress(result)


def _print_progress(result: dict[str, Any]) -> None:
    table = Table(title=f"migration {result['job']} ({result['source']}): {result['state']}")
    table.add_column("what")
    table.add_column("state")
    table.add_column("count", justify="right")
    for state, count in sorted(result["studies"].items()):
        table.add_row("studies", state, f"{count:,}")
    for state, count in sorted(result["instances"].items()):
        table.add_row("instances", state, f"{count:,}")
    table.add_row("bytes", "migrated", f"{result['bytes_migrated']:,}")
    console.print(table)


@migrate_app.command("status")
def status(name: str, as_json: JsonOpt = False, config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None) -> None:
    """Progress of a migration: studies and instances by state, bytes."""
    with _opened(config, data, index_url) as (_archive, jobs):
        result = jobs.progress(_job(jobs, name))
    if as_json:
        console.print_json(json.dumps(result))
    else:
        _print_progress(result)


@migrate_app.command("list")
def list_(as_json: JsonOpt = False, config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None) -> None:
    """Every migration job."""
    with _opened(config, data, index_url) as (_archive, jobs):
        rows = [jobs.progress(job) for job in jobs.jobs()]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="migrations")
    for column in ("job", "source", "state", "studies", "instances"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["job"], row["source"], row["state"], str(row["studies_total"]), str(row["instances_total"]))
    console.print(table)


@migrate_app.command("verify")
def verify(
    name: str,
    sample: Annotated[Optional[int], typer.Option(help="Objects per study compared by checksum [default: all]; 0: none.")] = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Compare every migrated study with the source; exits 1 on any difference."""
    from .runner import Runner
    from .sources import SourceError
    from .verify import verify_job

    logging.basicConfig(level="WARNING")
    with _opened(config, data, index_url) as (archive, jobs):
        runner = Runner(archive, jobs, _job(jobs, name))
        try:
            result = verify_job(runner, sample)
        except SourceError as exc:
            raise _fail(f"the source: {exc}", 1) from None
        finally:
            runner.close()  # what a re-pull left in the grouped commit
    console.print(
        f"verified {result.verified}/{result.studies} studies, {result.compared_bytes / 1e6:,.1f} MB compared by checksum: "
        f"{len(result.missing)} missing, {len(result.mismatched)} mismatched, {len(result.series_mismatch)} series with other counts"
    )
    for study, sop in result.missing:
        console.print(f"[red]missing[/red] {study} {sop}")
    for study, sop, why in result.mismatched:
        console.print(f"[red]mismatch[/red] {study} {sop}: {why}")
    if not result.ok:
        raise typer.Exit(1)


@migrate_app.command("report")
def report(
    name: str,
    out: Annotated[Path, typer.Option(help="Folder for NAME.csv and NAME.html.")] = Path("."),
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Write a CSV and an HTML report: migrated, skipped, failed (with reasons), mismatched."""
    from .report import write_report

    with _opened(config, data, index_url) as (_archive, jobs):
        csv_path, html_path = write_report(jobs, _job(jobs, name), out)
    console.print(f"wrote {csv_path} and {html_path}")
