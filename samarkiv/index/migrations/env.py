"""Alembic environment: runs on the engine handed over by samarkiv.index.engine."""

from alembic import context

from samarkiv.index.schema import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
