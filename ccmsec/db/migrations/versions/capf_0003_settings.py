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
# No dependency on another owner's branch (issue 9 §5: capf migrates only its own). The capf.* rows
# can only exist in a cluster_settings made before this revision, so they move only when it is there.
depends_on = None


def _cluster_settings_exist() -> bool:
    return sa.inspect(op.get_bind()).has_table("cluster_settings")


def upgrade() -> None:
    op.create_table(
        "capf_settings",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(1024), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_capf_settings"),
    )
    if _cluster_settings_exist():
        op.execute("INSERT INTO capf_settings (key, value, updated_at) "
                   "SELECT key, value, updated_at FROM cluster_settings WHERE key LIKE 'capf.%'")
        op.execute("DELETE FROM cluster_settings WHERE key LIKE 'capf.%'")


def downgrade() -> None:
    if _cluster_settings_exist():
        op.execute("INSERT INTO cluster_settings (key, value, updated_at) "
                   "SELECT key, value, updated_at FROM capf_settings")
    op.drop_table("capf_settings")
