"""Opening the index: SQLite (WAL) embedded, or PostgreSQL by URL, migrated by Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

_MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Let users write ``postgresql://``; we drive PostgreSQL with psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # Takes effect when the file is created. A store writes one page per B-tree it
    # touches (the instance row, six indexes, the journal row and its key) plus the
    # object: 4 KiB pages make that about 90 KB of WAL for a 40 KB CT slice, where
    # 16 KiB pages made it 237 KB and the commit twice as slow (in-process store of
    # 1000 CT_small copies: 0.99-1.04 ms median against 1.47-1.50 ms).
    cursor.execute("PRAGMA page_size=4096")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged store survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # SQLite's own upper() folds ASCII only; names here are Nordic (Ø, Å, Ä).
    dbapi_connection.create_function("upper", 1, _unicode_upper, deterministic=True)


def _unicode_upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _sqlite_autocommit_driver(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself


def _begin_immediate(conn) -> None:  # type: ignore[no-untyped-def]
    # A deferred transaction that reads, then writes, fails with SQLITE_BUSY
    # when another writer committed in between; IMMEDIATE takes the lock first.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_index_engine(url: str, *, writer: bool = False) -> Engine:
    """An engine for ``url`` with the settings the archive relies on.

    On SQLite, ``writer=True`` gives an engine whose transactions take the
    write lock up front; use it for read-modify-write transactions.
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if writer:
            event.listen(engine, "connect", _sqlite_autocommit_driver)
            event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["engine"] = engine
    return config


# Several archive nodes may start at once on one PostgreSQL (docs/deployment.md):
# their start-up writes (schema upgrades, the organisations of the config file)
# take this advisory lock in turn. SQLite's writer engine serialises them already.
STARTUP_LOCK = 0x53414D41  # "SAMA"


def lock_startup(conn: Connection) -> None:
    """Hold the start-up lock until ``conn``'s transaction ends (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({STARTUP_LOCK})")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    command.upgrade(alembic_config(engine), "head")
