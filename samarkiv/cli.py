"""The ``samarkiv`` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from .cli_common import ConfigOpt, DataOpt, IndexOpt, cli_principal, console, err, fail
from .config import ConfigError, Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="samarkiv: a regional vendor-neutral archive.")
nodes_app = typer.Typer(no_args_is_help=True, help="DICOM peers (C-MOVE destinations).")
app.add_typer(nodes_app, name="nodes")


def _fail(message: str, code: int = 2) -> typer.Exit:
    return fail(message, code)


def settings_from(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def open_archive(settings: Settings):  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import SQLAlchemyError

    from .core.archive import Archive

    try:
        return Archive(settings)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(f"cannot open the index at {settings.resolved_index_url.split('@')[-1]}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    host: Annotated[Optional[str], typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
    dicom_port: Annotated[Optional[int], typer.Option(help="DIMSE port [default: 11112].")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="HTTP port [default: 8080].")] = None,
    aet: Annotated[Optional[str], typer.Option(help="Our AE title [default: SAMARKIV].")] = None,
) -> None:
    """Run the archive: DICOM (DIMSE) and HTTP servers, until SIGTERM/SIGINT."""
    from .serve import DataFolderBusy, serve as run

    settings = settings_from(
        config, data=data, index_url=index_url, host=host, dicom_port=dicom_port, http_port=http_port, aet=aet
    )
    _logging(settings.log_level)
    try:
        run(settings)
    except DataFolderBusy as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot start: {exc}") from None


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders, zip files or DICOMDIRs.")],
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    workers: Annotated[int, typer.Option(help="Parallel stores.")] = 4,
) -> None:
    """Import DICOM files into the archive, with a progress bar and a summary."""
    from .importer import discover, import_items

    settings = settings_from(config, data=data, index_url=index_url)
    _logging("ERROR")
    try:
        items = list(discover(paths))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    archive = open_archive(settings)
    columns = (
        TextColumn("[bold]importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("import", total=sum(i.size for i in items))
        done = progress.advance
        summary = import_items(archive, items, workers, lambda item, _r: done(task, item.size),
                               by=cli_principal(None, "administrator"))  # fmt: skip
    table = Table(title="import summary")
    table.add_column("outcome")
    table.add_column("instances", justify="right")
    for outcome, count in sorted(summary.outcomes.items()):
        table.add_row(outcome, str(count))
    console.print(table)
    for name, reason in summary.rejected:
        console.print(f"[yellow]rejected[/yellow] {name}: {reason}")
    archive.close()
    if summary.rejected:
        raise typer.Exit(1)


@app.command()
def stats(
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts of patients, studies, series, instances and stored bytes."""
    archive = open_archive(settings_from(config, data=data, index_url=index_url))
    counts = archive.catalog.counts()
    archive.close()
    if as_json:
        console.print_json(json.dumps(counts))
        return
    table = Table(title="samarkiv")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in counts.items():
        table.add_row(key, f"{value:,}")
    console.print(table)


@app.command()
def conflicts(
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Patient/study conflicts and replaced duplicates found while storing."""
    archive = open_archive(settings_from(config, data=data, index_url=index_url))
    rows = archive.catalog.conflicts(limit)
    archive.close()
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(title="conflicts")
    for column in ("detected_at", "kind", "action", "study_instance_uid", "detail"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            f"{row['detected_at']:%Y-%m-%d %H:%M:%S}",
            row["kind"],
            row["action"],
            row["study_instance_uid"] or "",
            row["detail"],
        )
    console.print(table)


@app.command()
def verify(config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None) -> None:
    """Re-hash every stored object against the index; remove orphan files.

    Exits 1 when an object is missing or does not match its checksum.
    """
    settings = settings_from(config, data=data, index_url=index_url)
    archive = open_archive(settings)
    total = archive.catalog.counts()["instances"]
    with Progress(TextColumn("[bold]verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err) as progress:
        task = progress.add_task("verify", total=total)
        report = archive.verify(lambda _stored: progress.advance(task))
    orphans = _sweep_orphans(archive, settings)
    archive.close()
    console.print(
        f"checked {report.checked:,} instances ({report.checked_bytes / 1e6:,.1f} MB): "
        f"{len(report.missing)} missing, {len(report.corrupt)} corrupt, {len(orphans)} orphan file(s) removed"
    )
    for uid in report.missing:
        console.print(f"[red]missing[/red] {uid}")
    for uid in report.corrupt:
        console.print(f"[red]checksum mismatch[/red] {uid}")
    for key in orphans:
        console.print(f"[yellow]orphan removed[/yellow] {key}")
    if not report.ok:
        raise typer.Exit(1)


def _sweep_orphans(archive, settings: Settings) -> list[str]:  # type: ignore[no-untyped-def]
    """Full orphan sweep. While a server holds the data folder, blobs younger
    than the grace period may be its stores in flight and are left alone."""
    from .serve import DataFolderBusy, lock_data_folder

    if archive.shared:  # other nodes may be storing into the same tiers
        return archive.sweep_orphans(full=True)
    try:
        lock = lock_data_folder(Path(settings.data))
    except DataFolderBusy:
        return archive.sweep_orphans(full=True)
    try:
        return archive.sweep_orphans(full=True, grace_seconds=0)  # no server writes these blobs
    finally:
        lock.close()


@nodes_app.command("add")
def nodes_add(
    aet: str,
    host: str,
    port: int,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Add (or replace) a DICOM peer."""
    if not (1 <= len(aet) <= 16) or not (0 < port < 65536):
        raise _fail("AE title must be 1-16 characters and port 1-65535")
    archive = open_archive(settings_from(config, data=data, index_url=index_url))
    archive.catalog.add_node(aet, host, port, description)
    archive.close()
    console.print(f"node {aet} at {host}:{port} saved")


@nodes_app.command("list")
def nodes_list(config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None) -> None:
    """List DICOM peers (from the config file and from ``nodes add``)."""
    settings = settings_from(config, data=data, index_url=index_url)
    archive = open_archive(settings)
    rows = [dict(aet=n.aet, host=n.host, port=n.port, description=n.description, source="config") for n in settings.nodes]
    rows += [{**n, "source": "index"} for n in archive.catalog.nodes()]
    archive.close()
    table = Table(title="DICOM nodes")
    for column in ("aet", "host", "port", "source", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["aet"], row["host"], str(row["port"]), row["source"], row["description"])
    console.print(table)


@nodes_app.command("remove")
def nodes_remove(aet: str, config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None) -> None:
    """Remove a DICOM peer added with ``nodes add``."""
    archive = open_archive(settings_from(config, data=data, index_url=index_url))
    removed = archive.catalog.remove_node(aet)
    archive.close()
    if not removed:
        raise _fail(f"no node {aet!r}", 1)
    console.print(f"node {aet} removed")


from .findcli import register as _register_find  # noqa: E402

_register_find(app)

from .identity.cli import org_app, patients_app  # noqa: E402

app.add_typer(org_app, name="org")
app.add_typer(patients_app, name="patients")

from .lifecycle.cli import capacity_app, fixity_app, lifecycle_app, tiers_app  # noqa: E402

app.add_typer(tiers_app, name="tiers")
app.add_typer(lifecycle_app, name="lifecycle")
app.add_typer(fixity_app, name="fixity")
app.add_typer(capacity_app, name="capacity")

from .migrate.cli import migrate_app  # noqa: E402

app.add_typer(migrate_app, name="migrate")

from .access.cli import tokens_app, users_app  # noqa: E402

app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")

from .audit.cli import audit_app  # noqa: E402

app.add_typer(audit_app, name="audit")

from .access.policy_cli import block_app, breakglass_app, care_app, share_app  # noqa: E402

app.add_typer(care_app, name="care")
app.add_typer(share_app, name="share")
app.add_typer(breakglass_app, name="breakglass")
app.add_typer(block_app, name="block")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
