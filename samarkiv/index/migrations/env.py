"""Alembic environment: runs on the engine handed over by samarkiv.index.engine."""

from alembic import context

import samarkiv.index.identity_schema  # noqa: F401  (these modules' tables share the metadata)
import samarkiv.hl7.demographics  # noqa: F401
import samarkiv.index.lifecycle_schema  # noqa: F401
import samarkiv.index.migrate_schema  # noqa: F401
import samarkiv.index.metadata_schema  # noqa: F401
import samarkiv.index.access_schema  # noqa: F401
import samarkiv.index.audit_schema  # noqa: F401
import samarkiv.index.policy_schema  # noqa: F401
from samarkiv.index.engine import lock_startup
from samarkiv.index.schema import metadata

engine = context.config.attributes["engine"]


def _for_this_dialect(obj, _name, type_, _reflected, _compare_to) -> bool:  # type: ignore[no-untyped-def]
    """Autogenerate skips indexes meant for another dialect (``ddl_if``)."""
    ddl_if = getattr(obj, "_ddl_if", None)
    if type_ == "index" and ddl_if is not None and ddl_if.dialect:
        return engine.dialect.name in (
            ddl_if.dialect if isinstance(ddl_if.dialect, (tuple, list)) else (ddl_if.dialect,)
        )
    return True


with engine.begin() as connection:
    lock_startup(connection)  # one node migrates while the others wait, then find the schema at head
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=_for_this_dialect,
    )
    context.run_migrations()
