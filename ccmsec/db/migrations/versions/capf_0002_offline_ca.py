"""CAPF offline CA: the phone's CSR on its operation and the states awaiting_ca / issued.

Revision ID: capf_0002
Revises: capf_0001
Create Date: 2026-05-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "capf_0002"
down_revision = "capf_0001"
branch_labels = None
depends_on = None

OLD_STATES = "state IN ('pending', 'in_progress', 'done', 'failed', 'expired', 'locked')"
NEW_STATES = ("state IN ('pending', 'in_progress', 'awaiting_ca', 'issued', 'done', 'failed', "
              "'expired', 'locked')")


def upgrade() -> None:
    # Batch mode: SQLite rebuilds the table to change a CHECK constraint; PostgreSQL alters it in
    # place (a rebuild there would trip over the foreign key from capf_certificates).
    with op.batch_alter_table("capf_operations", recreate="auto") as batch:
        batch.add_column(sa.Column("csr_der", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("csr_key_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("csr_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("ck_capf_operations_state", type_="check")
        batch.create_check_constraint(op.f("ck_capf_operations_state"), NEW_STATES)
        batch.create_index("ix_capf_operations_csr_key_sha256", ["csr_key_sha256"])


def downgrade() -> None:
    # Offline operations cannot be represented any more: they fail with a reason.
    op.execute("UPDATE capf_operations SET state = 'failed', reason = 'offline CA removed by downgrade' "
               "WHERE state IN ('awaiting_ca', 'issued')")
    with op.batch_alter_table("capf_operations", recreate="auto") as batch:
        batch.drop_index("ix_capf_operations_csr_key_sha256")
        batch.drop_constraint("ck_capf_operations_state", type_="check")
        batch.create_check_constraint(op.f("ck_capf_operations_state"), OLD_STATES)
        batch.drop_column("csr_at")
        batch.drop_column("csr_key_sha256")
        batch.drop_column("csr_der")
