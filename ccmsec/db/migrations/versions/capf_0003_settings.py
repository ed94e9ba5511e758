"""CAPF settings in CAPF's own table (issue 9 §5: one writer per table).

Activation (CHK-2) and the service/enterprise parameters used to be `capf.*` keys of
`cluster_settings`, which ctl-provider owns; they move to `capf_settings`.

Revision ID: capf_0003
Revises: capf_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "capf_0003"
down_revision = "capf_0002"
branch_labels = None
depends_on = ("core_0001",)  # cluster_settings, whose capf.* rows move here


def upgrade() -> None:
    op.create_table(
        "capf_settings",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(1024), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_capf_settings"),
    )
    op.execute("INSERT INTO capf_settings (key, value, updated_at) "
               "SELECT key, value, updated_at FROM cluster_settings WHERE key LIKE 'capf.%'")
    op.execute("DELETE FROM cluster_settings WHERE key LIKE 'capf.%'")


def downgrade() -> None:
    op.execute("INSERT INTO cluster_settings (key, value, updated_at) "
               "SELECT key, value, updated_at FROM capf_settings")
    op.drop_table("capf_settings")
