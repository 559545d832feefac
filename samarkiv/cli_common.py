"""What the administrative command groups share: options, consoles, the index
transaction, errors as messages with exit codes, and who is at the keyboard.

Exit codes: 0 done, 1 something named does not exist (or a check failed),
2 bad input or an index error.
"""

# No ``from __future__ import annotations``: typer reads the annotations.
import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Data folder [default: ./samarkiv-data].")]
IndexOpt = Annotated[
    Optional[str], typer.Option("--index-url", help="Index database URL [default: SQLite in the data folder].")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ByOpt = Annotated[Optional[str], typer.Option("--by", help="Who does this [default: the login name].")]


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as an error; the caller raises the returned Exit."""
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def operator(by: Optional[str] = None) -> str:
    """The person at the keyboard: ``--by``, else ``cli:<login name>``."""
    if by:
        return by
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cli_principal(by: Optional[str], role: str) -> Any:
    """The operator as a Principal acting in ``role`` (local console access)."""
    from .access.principal import Principal

    return Principal(name=operator(by), kind="user", roles=frozenset({role}), auth_method="cli", address="localhost")


@contextmanager
def index_engine(
    config: Optional[Path],
    data: Optional[Path],
    index_url: Optional[str],
    exit_code: Callable[[ValueError], int] = lambda _exc: 2,
) -> Iterator[Any]:
    """The migrated index's engine (a writer on SQLite) with the config file's
    organisations synced; index errors and domain errors (ValueError
    subclasses, whose exit code ``exit_code`` picks) become messages."""
    from sqlalchemy.exc import SQLAlchemyError

    from .cli import settings_from
    from .identity.organisations import sync_from_settings
    from .index.engine import create_index_engine, migrate

    settings = settings_from(config, data=data, index_url=index_url)
    url = settings.resolved_index_url
    engine = None
    try:
        engine = create_index_engine(url, writer=url.startswith("sqlite"))
        migrate(engine)
        sync_from_settings(engine, settings)
        yield engine
    except SQLAlchemyError as exc:
        where = url.split("@")[-1]
        raise fail(f"index at {where}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}", 2) from None
    except ValueError as exc:
        raise fail(str(exc), exit_code(exc)) from None
    finally:
        if engine is not None:
            engine.dispose()


@contextmanager
def index_transaction(
    config: Optional[Path],
    data: Optional[Path],
    index_url: Optional[str],
    exit_code: Callable[[ValueError], int] = lambda _exc: 2,
) -> Iterator[Any]:
    """One transaction on the index (see :func:`index_engine`)."""
    with index_engine(config, data, index_url, exit_code) as engine, engine.begin() as conn:
        yield conn
