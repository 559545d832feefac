"""``samarkiv care|share|breakglass|block``: the access policy from the command line
(samarkiv/access/policy.py). Every change writes an audit record.

A PATIENT is a national number (any written form), ``VALUE^ISSUER`` (the
issuer an OID, an organisation code or a national kind) or a person number.
Exit status: 0 done, 1 something named does not exist, 2 bad input or no index.
"""

# No ``from __future__ import annotations``: typer reads the annotations (hence Optional).
# ruff: noqa: UP045
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..cli_common import ByOpt, ConfigOpt, DataOpt, IndexOpt, JsonOpt, cli_principal, console, index_transaction
from ..cli_common import fail as _fail

care_app = typer.Typer(no_args_is_help=True, help="Care relationships: who may see a patient's images, and why.")
share_app = typer.Typer(no_args_is_help=True, help="Share studies with an organisation or a user; share links.")
link_app = typer.Typer(no_args_is_help=True, help="Share links with a token for an external party.")
share_app.add_typer(link_app, name="link")
breakglass_app = typer.Typer(no_args_is_help=True, help="Emergency access (break the glass), reviewed later.")
block_app = typer.Typer(no_args_is_help=True, help="Patient blocks (sperre) against organisations.")

ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the audit trail).")]
AllOpt = Annotated[bool, typer.Option("--all", help="Also ended, expired and revoked ones.")]
PatientArg = Annotated[str, typer.Argument(help="National number, VALUE^ISSUER, or person number.")]


def _exit_code(exc: ValueError) -> int:
    """1 when something named does not exist, else 2 (bad input)."""
    from ..identity.organisations import OrganisationError
    from ..identity.patients import IdentityError, InvalidNationalNumber, MalformedIdentifier
    from .policy import PolicyNotFound

    missing = isinstance(exc, (PolicyNotFound, IdentityError, OrganisationError))
    return 1 if missing and not isinstance(exc, (InvalidNationalNumber, MalformedIdentifier)) else 2


def _transaction(config: Optional[Path], data: Optional[Path], index_url: Optional[str]) -> Any:
    """A transaction on the migrated index; domain errors become a message and an exit status."""
    return index_transaction(config, data, index_url, _exit_code)


def _by(by: Optional[str]) -> Any:
    return cli_principal(by, "administrator")


def _patient(conn: Any, text: str) -> int:
    """The person a PATIENT argument names."""
    from ..identity.cli import _person
    from ..identity.national import ISSUER_OF_KIND, NationalKind, parse_national
    from ..identity.patients import canonicalise, person_for

    text = text.strip()
    if "^" not in text:
        for kind in (NationalKind.SE_PERSONNUMMER, NationalKind.NO_FODSELSNUMMER, NationalKind.DK_CPR):
            parsed = parse_national(text, kind)
            if parsed.valid and parsed.kind is not None:
                return person_for(conn, canonicalise(conn, text, ISSUER_OF_KIND[parsed.kind], None))
        if not text.isdigit():
            from .policy import PolicyError

            raise PolicyError(f"{text!r}: give a national number, VALUE^ISSUER or a person number")
    return _person(conn, text)


def _org_pk(conn: Any, code: str) -> int:
    from ..identity.organisations import require_organisation

    return require_organisation(conn, code).pk


def _user(conn: Any, username: str) -> Any:
    from .policy import PolicyNotFound
    from .users import get_user

    user = get_user(conn, username)
    if user is None:
        raise PolicyNotFound(f"no user {username!r}")
    return user


def _show(rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c))[:40] for c in columns))
    console.print(table)


# --- care ----------------------------------------------------------------------------------------


@care_app.command("declare")
def care_declare(
    patient: PatientArg,
    org: Annotated[str, typer.Option("--org", help="The organisation whose staff may see.")],
    reason: ReasonOpt,
    user: Annotated[Optional[str], typer.Option("--user", help="Only this user of the organisation.")] = None,
    days: Annotated[Optional[float], typer.Option("--days", help="Expires after [default: by source].")] = None,
    source: Annotated[str, typer.Option("--source", help="declared, referral or adt.")] = "declared",
    by: ByOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Declare a care relationship of an organisation (or one of its users) with a patient."""
    from .policy import declare_care

    with _transaction(config, data, index_url) as conn:
        person, org_pk = _patient(conn, patient), _org_pk(conn, org)
        user_pk = _user(conn, user).pk if user else None
        pk = declare_care(conn, _by(by), person_pk=person, org_pk=org_pk, user_pk=user_pk, reason=reason, days=days,
                          source=source)  # fmt: skip
    console.print(f"care relationship {pk}: {org}{'/' + user if user else ''} with person {person}")


@care_app.command("end")
def care_end(
    pk: int, reason: Annotated[str, typer.Option("--reason")] = "", by: ByOpt = None,
    config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None,
) -> None:  # fmt: skip
    """End a care relationship now."""
    from .policy import end_care

    with _transaction(config, data, index_url) as conn:
        end_care(conn, _by(by), pk, reason=reason)
    console.print(f"care relationship {pk} ended")


@care_app.command("list")
def care_list(
    patient: Annotated[Optional[str], typer.Argument(help="Only this patient.")] = None,
    org: Annotated[Optional[str], typer.Option("--org")] = None,
    all_: AllOpt = False, as_json: JsonOpt = False,
    config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None,
) -> None:  # fmt: skip
    """Active care relationships (``--all``: every one)."""
    from .policy import list_care

    with _transaction(config, data, index_url) as conn:
        person = _patient(conn, patient) if patient else None
        rows = list_care(conn, person_pk=person, org_pk=_org_pk(conn, org) if org else None, active=not all_)
    _show(rows, ["pk", "person_pk", "org", "user_pk", "source", "reason", "expires_at", "ended_at"], "care", as_json)


# --- shares ----------------------------------------------------------------------------------------

StudiesArg = Annotated[list[str], typer.Argument(help="Study Instance UIDs.")]
RightsOpt = Annotated[str, typer.Option("--rights", help="Comma-separated: view, download, annotate.")]


@share_app.command("grant")
def share_grant(
    studies: StudiesArg,
    reason: ReasonOpt,
    org: Annotated[Optional[str], typer.Option("--org", help="Share with this organisation...")] = None,
    user: Annotated[Optional[str], typer.Option("--user", help="...or with this user.")] = None,
    rights: RightsOpt = "view",
    days: Annotated[Optional[float], typer.Option("--days", help="Expires after [default: 90].")] = None,
    by: ByOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Share studies with an organisation or a user."""
    from .policy import grant_share

    if (org is None) == (user is None):
        raise _fail("give one of --org CODE or --user NAME", 2)
    with _transaction(config, data, index_url) as conn:
        org_pk = _org_pk(conn, org) if org else None
        user_pk = _user(conn, user).pk if user else None
        pks = grant_share(conn, _by(by), study_uids=studies, grantee_org_pk=org_pk, grantee_user_pk=user_pk,
                          rights=rights, reason=reason, days=days)  # fmt: skip
    for pk, uid in zip(pks, sorted(set(studies)), strict=False):
        console.print(f"share {pk}: {uid} with {org or user} ({rights})")


@share_app.command("revoke")
def share_revoke(
    pk: int, by: ByOpt = None, config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None
) -> None:
    """Revoke a share now."""
    from .policy import revoke_share

    with _transaction(config, data, index_url) as conn:
        revoke_share(conn, _by(by), pk)
    console.print(f"share {pk} revoked")


@share_app.command("list")
def share_list(
    study: Annotated[Optional[str], typer.Option("--study")] = None, all_: AllOpt = False, as_json: JsonOpt = False,
    config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None,
) -> None:  # fmt: skip
    """Active shares (``--all``: every one)."""
    from .policy import list_shares

    with _transaction(config, data, index_url) as conn:
        rows = list_shares(conn, study_uid=study, active=not all_)
    columns = ["pk", "study_instance_uid", "grantee_org", "grantee_user", "rights", "expires_at", "revoked_at"]
    _show(rows, columns, "shares", as_json)


@link_app.command("create")
def link_create(
    studies: StudiesArg,
    rights: RightsOpt = "view",
    days: Annotated[Optional[float], typer.Option("--days", help="Expires after [default: 7].")] = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
    by: ByOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Create a share link; its token is printed once and never stored."""
    from .policy import create_share_link

    with _transaction(config, data, index_url) as conn:
        pk, token = create_share_link(conn, _by(by), study_uids=studies, rights=rights, days=days, reason=reason)
    console.print(f"share link {pk} ({rights}); its token, shown only now:")
    print(token)


@link_app.command("revoke")
def link_revoke(
    pk: int, by: ByOpt = None, config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None
) -> None:
    """Revoke a share link now."""
    from .policy import revoke_share_link

    with _transaction(config, data, index_url) as conn:
        revoke_share_link(conn, _by(by), pk)
    console.print(f"share link {pk} revoked")


@link_app.command("list")
def link_list(
    all_: AllOpt = False, as_json: JsonOpt = False,
    config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None,
) -> None:  # fmt: skip
    """Active share links (``--all``: every one)."""
    from .policy import list_share_links

    with _transaction(config, data, index_url) as conn:
        rows = list_share_links(conn, active=not all_)
    _show(rows, ["pk", "studies", "rights", "created_by", "expires_at", "revoked_at"], "share links", as_json)


# --- break-glass ------------------------------------------------------------------------------------


@breakglass_app.command("start")
def breakglass_start(
    patient: PatientArg,
    user: Annotated[str, typer.Option("--user", help="The user who needs emergency access.")],
    reason: ReasonOpt,
    hours: Annotated[float, typer.Option("--hours", help="How long it lasts.")] = 4.0,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Start emergency access of a user to a patient; flagged for the auditors' review."""
    from datetime import UTC, datetime, timedelta

    from .policy import start_break_glass

    with _transaction(config, data, index_url) as conn:
        person = _patient(conn, patient)
        principal = _user(conn, user).principal("cli", "localhost")
        pk = start_break_glass(conn, principal, person_pk=person, reason=reason, hours=hours)
    until = datetime.now(UTC) + timedelta(hours=hours)
    console.print(f"break-glass {pk}: {user} may see person {person} until {until:%Y-%m-%d %H:%M} UTC (flagged for review)")


# --- blocks -----------------------------------------------------------------------------------------


@block_app.command("add")
def block_add(
    patient: PatientArg,
    reason: ReasonOpt,
    org: Annotated[Optional[str], typer.Option("--org", help="Block this organisation [default: every other].")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Only this study [default: everything].")] = None,
    by: ByOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """The patient blocks an organisation (or all but the owner) from a study (or everything)."""
    from .policy import add_block

    with _transaction(config, data, index_url) as conn:
        person = _patient(conn, patient)
        pk = add_block(conn, _by(by), person_pk=person, blocked_org_pk=_org_pk(conn, org) if org else None,
                       study_uid=study, reason=reason)  # fmt: skip
    console.print(f"block {pk}: person {person}, {study or 'everything'}, against {org or 'every other organisation'}")


@block_app.command("lift")
def block_lift(
    pk: int, reason: Annotated[str, typer.Option("--reason")] = "", by: ByOpt = None,
    config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None,
) -> None:  # fmt: skip
    """Lift a block now."""
    from .policy import lift_block

    with _transaction(config, data, index_url) as conn:
        lift_block(conn, _by(by), pk, reason=reason)
    console.print(f"block {pk} lifted")


@block_app.command("list")
def block_list(
    patient: Annotated[Optional[str], typer.Argument(help="Only this patient.")] = None,
    all_: AllOpt = False, as_json: JsonOpt = False,
    config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None,
) -> None:  # fmt: skip
    """Active blocks (``--all``: lifted ones too)."""
    from .policy import list_blocks

    with _transaction(config, data, index_url) as conn:
        rows = list_blocks(conn, person_pk=_patient(conn, patient) if patient else None, active=not all_)
    _show(rows, ["pk", "person_pk", "blocked_org", "study_instance_uid", "reason", "revoked_at"], "blocks", as_json)
