"""query indexes: wildcard (LIKE 'prefix%') lookups on PostgreSQL

PostgreSQL uses a plain btree index for LIKE only under the C collation, so
the keys most often matched with a trailing * (Patient's Name, Patient ID,
Accession Number) get varchar_pattern_ops indexes there. SQLite matches
wildcards with GLOB, which uses the existing indexes.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_PATTERN_INDEXES = (
    ("ix_patients_name_norm_pattern", "patients", "patient_name_norm"),
    ("ix_patients_id_pattern", "patients", "patient_id"),
    ("ix_studies_accession_pattern", "studies", "accession_number"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, column in _PATTERN_INDEXES:
        op.create_index(name, table, [column], postgresql_ops={column: "varchar_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, _column in _PATTERN_INDEXES:
        op.drop_index(name, table_name=table)
