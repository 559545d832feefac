"""``samarkiv users`` and ``samarkiv tokens``: local users and personal API tokens.

A patient user is linked to their person with ``--patient ID[^ISSUER]``: a
Patient ID and its issuer (an issuer OID or name, an organisation code, or a
national kind such as ``se-personnummer``; without one, the user's
organisation's issuer), e.g. ``191212121212^1.2.752.129.2.1.3.1``.

Exit status: 0 done, 1 unknown or taken (no such user, token or patient
identifier, the name exists), 2 bad input (unknown role or organisation,
short password, invalid national number).
"""

# No ``from __future__ import annotations``: typer reads the annotations.
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..cli_common import ByOpt, ConfigOpt, DataOpt, IndexOpt, JsonOpt, cli_principal, console, err, index_transaction
from ..cli_common import fail as _fail

users_app = typer.Typer(no_args_is_help=True, help="Local users: organisation, roles, password; a patient user's own person.")
tokens_app = typer.Typer(no_args_is_help=True, help="Personal API tokens (HTTP bearer tokens for scripts).")

PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")]
PatientOpt = Annotated[
    Optional[str],
    typer.Option("--patient", help="Link a patient user to their person: ID^ISSUER (issuer OID, organisation code "
                 "or e.g. se-personnummer), or ID under the user's organisation's issuer."),
]  # fmt: skip


def _exit_code(exc: ValueError) -> int:
    from ..identity.patients import IdentityError, InvalidNationalNumber, MalformedIdentifier
    from .tokens import UnknownToken
    from .users import UnknownUser, UserExists

    if isinstance(exc, (InvalidNationalNumber, MalformedIdentifier)):
        return 2
    return 1 if isinstance(exc, (UnknownUser, UserExists, UnknownToken, IdentityError)) else 2


def _transaction(config: Optional[Path], data: Optional[Path], index_url: Optional[str]) -> Any:
    """A transaction on the migrated index; domain errors become a message and an exit status."""
    return index_transaction(config, data, index_url, _exit_code)


def _read_password() -> str:
    line = sys.stdin.readline()
    if not line:
        raise _fail("--password-stdin: nothing on standard input", 2)
    return line.rstrip("\r\n")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else ""


# --- users ---------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name.")],
    org: Annotated[str, typer.Option("--org", help="Organisation code (samarkiv org list).")],
    role: Annotated[list[str], typer.Option("--role", help="A role (repeatable): radiologist, clinician, technologist, administrator, auditor, researcher, patient, service.")],
    password_stdin: PasswordStdin = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Display name.")] = None,
    token: Annotated[bool, typer.Option("--token", help="Also create an API token and print it (once).")] = False,
    patient: PatientOpt = None,
    by: ByOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Add a user. Without --password-stdin a random password is made and printed once."""
    from .tokens import create_token
    from .users import create_user, random_password, set_patient

    password = _read_password() if password_stdin else random_password()
    with _transaction(config, data, index_url) as conn:
        user = create_user(conn, username, org, role, password=password, display_name=name)
        if patient is not None:
            user = set_patient(conn, user.username, patient, cli_principal(by, "administrator"))
        secret = create_token(conn, user.username, name="created with the user")[0] if token else None
    link = f"; {user.patient_link}" if user.patient_link else ""
    console.print(f"user {user.username} added ({user.org_code}; {', '.join(sorted(user.roles))}{link})")
    if not password_stdin:
        console.print(f"password (shown once): {password}", highlight=False)
    if secret is not None:
        console.print(f"token (shown once): {secret}", highlight=False)


@users_app.command("list")
def users_list(config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """List users."""
    from .users import list_users

    with _transaction(config, data, index_url) as conn:
        found = list_users(conn)
    if as_json:
        print(json.dumps([_as_dict(u) for u in found], indent=2))
        return
    table = Table(title="users")
    for column in ("user", "name", "organisation", "roles", "state", "source", "patient"):
        table.add_column(column, overflow="fold")
    for u in found:
        table.add_row(u.username, u.display_name or "", u.org_code, ", ".join(sorted(u.roles)),
                      "disabled" if u.disabled else "active", u.source, u.patient_link)  # fmt: skip
    console.print(table)


def _as_dict(u: Any) -> dict[str, Any]:
    return {"username": u.username, "name": u.display_name, "organisation": u.org_code, "roles": sorted(u.roles),
            "disabled": u.disabled, "source": u.source, "password": u.has_password, "person": u.person_pk,
            "patient_key": u.patient_key, "patient": u.patient_link}  # fmt: skip


@users_app.command("show")
def users_show(
    username: str, config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one user (a patient user's person, or "not linked")."""
    from .users import require_user

    with _transaction(config, data, index_url) as conn:
        user = require_user(conn, username)
    if as_json:
        print(json.dumps(_as_dict(user), indent=2))
        return
    table = Table(title=f"user {user.username}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for label, value in (
        ("name", user.display_name or ""), ("organisation", user.org_code), ("roles", ", ".join(sorted(user.roles))),
        ("state", "disabled" if user.disabled else "active"), ("source", user.source),
        ("password", "set" if user.has_password else "none"), ("patient", user.patient_link or "-"),
    ):  # fmt: skip
        table.add_row(label, value)
    console.print(table)


@users_app.command("update")
def users_update(
    username: str,
    patient: PatientOpt = None,
    no_patient: Annotated[bool, typer.Option("--no-patient", help="Unlink the user from their person.")] = False,
    by: ByOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Link a patient user to their person (--patient), or unlink it (--no-patient); audited."""
    from .users import set_patient

    if (patient is None) == (not no_patient):
        raise _fail("give --patient ID[^ISSUER] or --no-patient", 2)
    with _transaction(config, data, index_url) as conn:
        user = set_patient(conn, username, patient, cli_principal(by, "administrator"))
    console.print(f"user {user.username}: {user.patient_link or 'no person'}")


@users_app.command("disable")
def users_disable(
    username: str,
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again instead.")] = False,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Disable a user: password, tokens and sessions stop working at once."""
    from .users import set_disabled

    with _transaction(config, data, index_url) as conn:
        set_disabled(conn, username, not enable)
    console.print(f"user {username} {'enabled' if enable else 'disabled'}")


@users_app.command("passwd")
def users_passwd(
    username: str,
    password_stdin: PasswordStdin = False,
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Set a user's password. Without --password-stdin a random one is made and printed once."""
    from .users import random_password, set_password

    password = _read_password() if password_stdin else random_password()
    with _transaction(config, data, index_url) as conn:
        set_password(conn, username, password)
    console.print(f"password of {username} changed")
    if not password_stdin:
        console.print(f"password (shown once): {password}", highlight=False)


# --- tokens --------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    username: str,
    expires: Annotated[Optional[float], typer.Option("--expires", help="Days until it expires [default: never].")] = None,
    name: Annotated[str, typer.Option("--name", help="What it is for.")] = "",
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Create an API token and print it (only this once) on standard output."""
    from .tokens import create_token

    with _transaction(config, data, index_url) as conn:
        token, info = create_token(conn, username, name=name, expires_days=expires)
    err.print(f"token {info.pk} ({info.name}) for {username}" + (f", expires {_when(info.expires_at)} UTC" if info.expires_at else ""))
    print(token)  # alone on stdout: TOKEN=$(samarkiv tokens create USER)


@tokens_app.command("list")
def tokens_list(username: str, config: ConfigOpt = None, data: DataOpt = None, index_url: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """List a user's tokens (never the tokens themselves)."""
    from .tokens import list_tokens

    with _transaction(config, data, index_url) as conn:
        found = list_tokens(conn, username)
    if as_json:
        print(json.dumps([{"id": t.pk, "name": t.name, "state": t.state, "created": _when(t.created_at),
                           "expires": _when(t.expires_at), "last_used": _when(t.last_used_at)} for t in found], indent=2))  # fmt: skip
        return
    table = Table(title=f"tokens of {username}")
    for column in ("id", "name", "state", "created", "expires", "last used"):
        table.add_column(column)
    for t in found:
        table.add_row(str(t.pk), t.name, t.state, _when(t.created_at), _when(t.expires_at), _when(t.last_used_at))
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (samarkiv tokens list USER).")],
    config: ConfigOpt = None,
    data: DataOpt = None,
    index_url: IndexOpt = None,
) -> None:
    """Revoke a token: it stops working at once."""
    from .tokens import revoke_token

    with _transaction(config, data, index_url) as conn:
        info = revoke_token(conn, token_id)
    console.print(f"token {info.pk} ({info.name}) of {info.username} revoked")
