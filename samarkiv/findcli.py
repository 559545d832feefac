"""``samarkiv find``: query the catalogue from the shell, through index/query.py.

Keys are written ``Keyword=value`` with the C-FIND matching rules (PS3.4
C.2.2.2): ``PatientName=DOE^*``, ``StudyDate=20200101-20201231``,
``ModalitiesInStudy=CT\\MR``; a bare ``Keyword`` is returned without matching.

Access (issue 5): ``--as USER`` queries as that user: the access policy keeps
only what the user may see, and the query is audited as theirs. Without it
the command acts as the local operator (a system principal named
``cli:<login name>``): everything matches, and the query is audited as the
operator's, purpose HSYSADMIN (system administration).
"""

# No ``from __future__ import annotations``: typer evaluates the command's
# annotations, and the option aliases are imported inside register().
import json
from typing import Annotated, Any, Optional

import typer

# The columns shown for each level, besides any key given on the command line.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"),
    "STUDY": (
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesNumber",
        "Modality",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
    ),
    "IMAGE": ("SeriesInstanceUID", "InstanceNumber", "SOPClassUID", "Rows", "Columns", "NumberOfFrames", "SOPInstanceUID"),
}


_LEVEL_ALIASES = {"INSTANCE": "IMAGE", "STUDIES": "STUDY", "INSTANCES": "IMAGE", "PATIENTS": "PATIENT"}


class UsageError(ValueError):
    """Bad command-line input (exit status 2)."""


def parse_keys(arguments: list[str]) -> dict[str, str]:
    """``Keyword=value`` (or a bare ``Keyword``) arguments -> {keyword: value}."""
    from .index.query import is_keyword

    keys: dict[str, str] = {}
    for argument in arguments:
        keyword, _, value = argument.partition("=")
        keyword = keyword.strip()
        if not is_keyword(keyword):
            raise UsageError(f"unknown DICOM keyword {keyword!r} (use keywords such as PatientID, StudyDate)")
        keys[keyword] = value
    return keys


def plain(value: Any) -> Any:
    """A response value as JSON-friendly data: text, numbers, lists, nested objects."""
    from pydicom.dataset import Dataset
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence

    if value is None or value == "":
        return None
    if isinstance(value, Sequence):
        return [as_dict(item) for item in value]
    if isinstance(value, Dataset):
        return as_dict(value)
    if isinstance(value, (list, MultiValue)):
        return [plain(v) for v in value]
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else float(value)
    return str(value)


def as_dict(ds: Any) -> dict[str, Any]:
    return {elem.keyword: plain(elem.value) for elem in ds if elem.keyword and elem.keyword != "SpecificCharacterSet"}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def cli_principal(archive: Any, username: str | None) -> tuple[Any, Any]:
    """(principal, its organisation or None) for ``--as USERNAME``, or the local
    operator's system principal; UsageError for an unknown or disabled user."""
    import getpass

    from .access.principal import Principal
    from .access.users import get_user
    from .identity.organisations import get_organisation

    if username is None:
        try:
            login = getpass.getuser()
        except (KeyError, OSError):
            login = "unknown"
        operator = Principal(name=f"cli:{login}", kind="system", roles=frozenset({"administrator"}),
                             auth_method="cli", address="localhost")  # fmt: skip
        return operator, None
    with archive.engine.connect() as conn:
        user = get_user(conn, username)
        if user is None or user.disabled:
            raise UsageError(f"no user {username!r} (samarkiv users list)")
        return user.principal("cli", "localhost"), get_organisation(conn, user.org_code)


def register(app: typer.Typer) -> None:
    """Add the ``find`` command to ``app``."""
    from .cli import (
        ConfigOpt,
        DataOpt,
        IndexOpt,
        _fail,
        console,
        open_archive,
        settings_from,
    )

    @app.command("find")
    def find(
        keys: Annotated[
            Optional[list[str]],
            typer.Argument(help='Matching keys, e.g. PatientID=123 "PatientName=DOE^*" StudyDate=20200101-20201231.'),
        ] = None,
        level: Annotated[str, typer.Option("--level", "-l", help="patient, study, series or image.")] = "study",
        limit: Annotated[Optional[int], typer.Option(help="At most this many matches.", min=0)] = None,
        offset: Annotated[int, typer.Option(help="Skip this many matches first.", min=0)] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        as_user: Annotated[
            Optional[str],
            typer.Option("--as", help="Query as this user: only what the access policy lets them see (audited)."),
        ] = None,
        config: ConfigOpt = None,
        data: DataOpt = None,
        index_url: IndexOpt = None,
    ) -> None:
        """Query the archive like a C-FIND (PS3.4 C.2.2.2 matching) and print the matches."""
        from sqlalchemy.exc import SQLAlchemyError

        from .audit import AuditEvent
        from .index.query import Level, Model, Query, QueryError

        try:
            query_level = Level(_LEVEL_ALIASES.get(level.strip().upper(), level.strip().upper()))
        except ValueError:
            raise _fail(f"unknown level {level!r}: use patient, study, series or image") from None
        try:
            matching = parse_keys(list(keys or []))
        except UsageError as exc:
            raise _fail(str(exc)) from None
        model = Model.PATIENT_ROOT if query_level is Level.PATIENT else Model.STUDY_ROOT
        shown = [*TABLE_KEYS[query_level.value], *(k.split(".")[0] for k in matching)]
        query = Query(query_level, matching, tuple(TABLE_KEYS[query_level.value]), model, limit, offset)
        archive = open_archive(settings_from(config, data=data, index_url=index_url))
        try:
            principal, owner = cli_principal(archive, as_user)
            detail = {"door": "CLI", "level": query_level.value, "keys": {k: v for k, v in matching.items() if v}}
            if principal.kind == "system":  # the gate audits users; the operator is audited here
                archive.audit.record(AuditEvent("query", principal, purpose="HSYSADMIN", detail=detail))
            prepared, scope = archive.prepare_query(query, None, owner=owner, principal=principal, detail=detail)
            rows = [as_dict(scope.relabel(ds)) for ds in prepared.run(archive.engine)]
        except (QueryError, UsageError) as exc:
            raise _fail(str(exc)) from None
        except SQLAlchemyError as exc:
            raise _fail(f"cannot read the index: {type(exc).__name__}", 1) from None
        finally:
            archive.close()
        if as_json:
            typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
            return
        _print_table(console, query_level.value, list(dict.fromkeys(shown)), rows, prepared.unmatched)


def _print_table(console: Any, level: str, columns: list[str], rows: list[dict[str, Any]], unmatched: tuple[str, ...]) -> None:
    from rich.table import Table

    table = Table(title=f"{len(rows)} {level.lower()} match(es)")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    console.print(table)
    if unmatched:
        console.print(f"[yellow]not matched (no index column): {', '.join(unmatched)}[/yellow]")
