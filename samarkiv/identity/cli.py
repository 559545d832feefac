"""``samarkiv org`` and ``samarkiv patients``: organisations and the master
patient index from the shell.

Identifiers are written ``VALUE^ISSUER`` (ISSUER: an issuer name or OID, an
organisation code, or a national kind such as ``se-personnummer``); a person
is its number or any of its identifiers. Exit status: 0 done, 1 unknown or
conflicting (no such organisation, person or identifier; AE title taken), 2
bad input (invalid national number, malformed value).
"""

# No ``from __future__ import annotations``: typer reads the annotations.
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..cli_common import ByOpt, ConfigOpt, DataOpt, IndexOpt, JsonOpt, console, err, index_transaction, operator
from ..cli_common import fail as _fail

org_app = typer.Typer(no_args_is_help=True, help="Organisations: codes, issuers of Patient IDs, AE titles.")
patients_app = typer.Typer(
    no_args_is_help=True, help="The master patient index: persons, identifiers, links and merges."
)

WhyOpt = Annotated[str, typer.Option("--why", help="Why (kept in the identity history).")]


def _exit_code(exc: Exception) -> int:
    from .organisations import OrganisationConflict, UnknownOrganisation
    from .patients import IdentityError, InvalidNationalNumber, MalformedIdentifier

    if isinstance(exc, (InvalidNationalNumber, MalformedIdentifier)):
        return 2
    return 1 if isinstance(exc, (UnknownOrganisation, OrganisationConflict, IdentityError)) else 2


def _transaction(config: Optional[Path], data: Optional[Path], index_url: Optional[str]) -> Any:
    """A transaction on the migrated index, with config-file organisations
    synced; domain errors become a message and an exit status."""
    return index_transaction(config, data, index_url, _exit_code)


def _actor(by: Optional[str]) -> str:
    return operator(by)


# --- organisations ----------------------------------------------------------------


def _org_table(orgs: list[Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("code", "name", "kind", "issuer of patient ID", "issuer UEID", "AE titles", "source"):
        table.add_column(column, overflow="fold")
    for o in orgs:
        ueid = f"{o.issuer_ueid} ({o.issuer_ueid_type})" if o.issuer_ueid else ""
        table.add_row(o.code, o.name, o.kind.value, o.issuer_of_patient_id or "", ueid, ", ".join(o.aets), o.source)
    return table


@org_app.command("add")
def org_add(
    code: Annotated[str, typer.Argument(help="Short unique code, e.g. KS.")],
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    kind: Annotated[str, typer.Option("--kind", help="hospital, trust, private or research.")] = "hospital",
    issuer: Annotated[Optional[str], typer.Option("--issuer", help="Issuer of Patient ID (0010,0021).")] = None,
    issuer_ueid: Annotated[
        Optional[str], typer.Option("--issuer-ueid", help="The issuer's universal entity ID (an OID).")
    ] = None,
    issuer_ueid_type: Annotated[Optional[str], typer.Option("--issuer-ueid-type", help="[default: ISO]")] = None,
    aet: Annotated[Optional[list[str]], typer.Option("--aet", help="An AE title it sends from (repeatable).")] = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Add an organisation."""
    from .organisations import create_organisation

    with _transaction(config, data, index_url) as conn:
        org = create_organisation(
            conn, code, name, kind, issuer_of_patient_id=issuer, issuer_ueid=issuer_ueid,
            issuer_ueid_type=issuer_ueid_type, aets=aet or (),
        )  # fmt: skip
    console.print(f"organisation {org.code} added")


@org_app.command("list")
def org_list(config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """List organisations (config-file ones included)."""
    from .organisations import list_organisations

    with _transaction(config, data, index_url) as conn:
        orgs = list_organisations(conn)
    if as_json:
        console.print_json(json.dumps([o.as_dict() for o in orgs]))
        return
    console.print(_org_table(orgs, "organisations"))


@org_app.command("show")
def org_show(
    code: str, config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one organisation."""
    from .organisations import require_organisation

    with _transaction(config, data, index_url) as conn:
        org = require_organisation(conn, code)
    if as_json:
        console.print_json(json.dumps(org.as_dict()))
        return
    console.print(_org_table([org], f"organisation {org.code}"))
    console.print(f"Patient IDs without an issuer are keyed under: {org.patient_id_issuer}")


@org_app.command("update")
def org_update(
    code: str,
    name: Annotated[Optional[str], typer.Option("--name")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind")] = None,
    issuer: Annotated[Optional[str], typer.Option("--issuer", help="'' clears it.")] = None,
    issuer_ueid: Annotated[Optional[str], typer.Option("--issuer-ueid", help="'' clears it.")] = None,
    issuer_ueid_type: Annotated[Optional[str], typer.Option("--issuer-ueid-type")] = None,
    add_aet: Annotated[Optional[list[str]], typer.Option("--add-aet", help="Repeatable.")] = None,
    remove_aet: Annotated[Optional[list[str]], typer.Option("--remove-aet", help="Repeatable.")] = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Change an organisation's name, kind, issuer or AE titles."""
    from .organisations import _UNSET, update_organisation

    given = lambda v: _UNSET if v is None else v  # noqa: E731
    with _transaction(config, data, index_url) as conn:
        org = update_organisation(
            conn, code, name=name, kind=kind, issuer_of_patient_id=given(issuer), issuer_ueid=given(issuer_ueid),
            issuer_ueid_type=given(issuer_ueid_type), add_aets=add_aet or (), remove_aets=remove_aet or (),
        )  # fmt: skip
    console.print(f"organisation {org.code} updated")
    if org.source == "config":
        err.print(f"[yellow]note:[/yellow] {org.code} is defined in the config file, which wins at the next start")


# --- patients -----------------------------------------------------------------------


def _identifier(conn: Any, text: str) -> Any:
    """The Canonical key typed (which may not be stored yet)."""
    from .patients import identifier_from_text

    return identifier_from_text(conn, text)


def _stored(conn: Any, text: str) -> Any:
    """The stored Identifier typed (a national number in any written form)."""
    from .patients import find_identifier

    return find_identifier(conn, _identifier(conn, text))


def _person(conn: Any, text: str) -> int:
    """A person number, or the person of an identifier."""
    from .patients import current_person, person_for

    if text.strip().isdigit():
        return current_person(conn, int(text))
    return person_for(conn, _identifier(conn, text))


@patients_app.command("link")
def patients_link(
    identifier: Annotated[str, typer.Argument(help="VALUE^ISSUER to move.")],
    to: Annotated[Optional[str], typer.Option("--to", help="VALUE^ISSUER of the person to join.")] = None,
    to_person: Annotated[Optional[int], typer.Option("--to-person", help="Or the person's number.")] = None,
    by: ByOpt = None,
    why: WhyOpt = "",
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Link an identifier to the person of another identifier (or a person)."""
    from .patients import link, person_of

    if (to is None) == (to_person is None):
        raise _fail("give one of --to VALUE^ISSUER or --to-person N", 2)
    with _transaction(config, data, index_url) as conn:
        ident = _stored(conn, identifier)
        target: Any = to_person if to_person is not None else _identifier(conn, to)  # type: ignore[arg-type]
        done = link(conn, ident, target, actor=_actor(by), reason=why)
        person = person_of(conn, ident)
    if done is None:
        console.print(f"{ident} already belongs to person {person}")
    else:
        console.print(f"linked: {ident} belongs to person {person}")


@patients_app.command("unlink")
def patients_unlink(
    identifier: Annotated[str, typer.Argument(help="VALUE^ISSUER to separate.")],
    by: ByOpt = None,
    why: WhyOpt = "",
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Separate an identifier from its person (onto a new person of its own)."""
    from .patients import unlink

    with _transaction(config, data, index_url) as conn:
        ident = _stored(conn, identifier)
        new = unlink(conn, ident, actor=_actor(by), reason=why)
    console.print(f"unlinked: {ident} is now person {new}")


@patients_app.command("merge")
def patients_merge(
    source: Annotated[str, typer.Argument(help="Person merged away: number or VALUE^ISSUER.")],
    target: Annotated[str, typer.Argument(help="Person kept: number or VALUE^ISSUER.")],
    by: ByOpt = None,
    why: WhyOpt = "",
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Merge two persons; every identifier is kept, and ``unmerge`` undoes it."""
    from .patients import merge

    with _transaction(config, data, index_url) as conn:
        source_pk, target_pk = _person(conn, source), _person(conn, target)
        merge(conn, source_pk, target_pk, actor=_actor(by), reason=why)
    console.print(f"merged: person {source_pk} into person {target_pk}")


@patients_app.command("unmerge")
def patients_unmerge(
    person: Annotated[str, typer.Argument(help="The merged-away person's number, or an identifier it brought.")],
    by: ByOpt = None,
    why: WhyOpt = "",
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Undo the latest merge of a person."""
    from .patients import IdentityError, last_merge_of, unmerge

    with _transaction(config, data, index_url) as conn:
        if person.strip().isdigit():
            source = int(person)
        else:
            ident = _stored(conn, person)
            found = last_merge_of(conn, ident)
            if found is None:
                raise IdentityError(f"no merge brought {ident} to its person")
            source = found
        unmerge(conn, source, actor=_actor(by), reason=why)
    console.print(f"unmerged: person {source} is separate again")


@patients_app.command("show")
def patients_show(
    person: Annotated[str, typer.Argument(help="Person number or VALUE^ISSUER.")],
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A person: every identifier, its organisation, national number checks,
    the number of studies, and the link/merge history."""
    from .patients import show

    with _transaction(config, data, index_url) as conn:
        view = show(conn, _person(conn, person))
    if as_json:
        console.print_json(json.dumps(view.as_dict(), default=str))
        return
    facts = [f"person {view.pk}"]
    if view.merged_into:
        facts.append(f"merged into person {view.merged_into}")
    if view.birth_date:
        facts.append(f"born {view.birth_date[:4]}-{view.birth_date[4:6]}-{view.birth_date[6:]}")
    if view.sex:
        facts.append(f"sex {view.sex}")
    facts.append(f"{view.studies} stud{'y' if view.studies == 1 else 'ies'}")
    if view.merged_from:
        facts.append("merged from " + ", ".join(map(str, view.merged_from)))
    console.print(", ".join(facts))
    for title, rows in (("identifiers", view.identifiers), ("flagged, not linked", view.flagged)):
        if not rows and title != "identifiers":
            continue
        table = Table(title=title)
        for column in ("Patient ID", "issuer", "organisation", "national number", "pinned"):
            table.add_column(column, overflow="fold")
        for i in rows:
            if i.national_kind is None:
                national = ""
            elif i.national_valid:
                national = f"{i.national_kind} (valid)"
            else:
                national = f"[red]{i.national_kind or 'national'} invalid: {i.national_reason}[/red]"
            table.add_row(i.value, i.issuer, i.organisation or "", national, "yes" if i.pinned else "")
        console.print(table)
    if view.demographics:
        table = Table(title="demographics")
        for column in ("identifier", "organisation", "source", "name", "born", "sex", "updated"):
            table.add_column(column, overflow="fold")
        for d in view.demographics:
            updated = d.updated_at.isoformat()[:19] if d.updated_at else ""
            table.add_row(d.identifier, d.organisation or "", d.source, d.name or "", d.birth_date or "", d.sex or "", updated)
        console.print(table)
    for conflict in view.conflicts:
        console.print(f"[yellow]conflict:[/yellow] the sources disagree on the {conflict.attribute}")
    if view.history:
        table = Table(title="history")
        for column in ("at", "action", "from", "to", "by", "why"):
            table.add_column(column, overflow="fold")
        for h in view.history:
            action = h["action"] + (" (undone)" if h["reverted"] else "")
            table.add_row(
                h["at"][:19], action, str(h["from_person"] or ""), str(h["to_person"] or ""), h["actor"], h["reason"]
            )
        console.print(table)


@patients_app.command("conflicts")
def patients_conflicts(
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Demographic conflicts for review: the same person with a different name,
    birth date or sex across organisations and sources (DICOM, HL7 ADT, the
    national number), and automatic links refused because the sides disagreed."""
    from .demographics import conflicts, links_not_made

    with _transaction(config, data, index_url) as conn:
        found = conflicts(conn)
        refused = links_not_made(conn)
    if as_json:
        console.print_json(
            json.dumps({"conflicts": [c.as_dict() for c in found], "links_not_made": [r.as_dict() for r in refused]})
        )
        return
    if not found and not refused:
        console.print("no demographic conflicts")
        return
    if found:
        table = Table(title=f"{len(found)} demographic conflict{'s' if len(found) != 1 else ''}")
        for column in ("person", "attribute", "value", "identifier", "organisation", "source"):
            table.add_column(column, overflow="fold")
        for conflict in found:
            for n, d in enumerate(conflict.values):
                value = {"name": d.name, "birth date": d.birth_date, "sex": d.sex}[conflict.attribute] or ""
                first = n == 0
                table.add_row(
                    str(conflict.person_pk) if first else "", conflict.attribute if first else "",
                    value, d.identifier, d.organisation or "", d.source,
                )  # fmt: skip
        console.print(table)
    if refused:
        table = Table(title="automatic links not made")
        for column in ("at", "identifier", "person", "other person", "why"):
            table.add_column(column, overflow="fold")
        for r in refused:
            table.add_row(r.at.isoformat()[:19], r.identifier or "", str(r.from_person or ""), str(r.to_person or ""), r.reason)
        console.print(table)
