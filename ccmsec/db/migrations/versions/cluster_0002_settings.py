"""cluster: cluster_settings (cluster mode, CTL version, legacy TLS) in ctl-provider's branch

Issue 9 §5: each role migrates only its own branches, and `cluster_settings` is ctl-provider's.
It used to be created by callmanager's `core_0001`; a database made then already has it (and its
rows), so it is created here only when missing.

Revision ID: cluster_0002
Revises: cluster_0001
"""
import datetime

import sqlalchemy as sa
from alembic import op

revision = "cluster_0002"
down_revision = "cluster_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("cluster_settings"):
        return  # created by core_0001 before the split: kept as it is, rows included
    cluster_settings = op.create_table(
        "cluster_settings",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(1024), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_cluster_settings"),
    )
    # MODE-1: a freshly installed cluster is non-secure.
    op.bulk_insert(cluster_settings, [
        {"key": "security_mode", "value": "non-secure",
         "updated_at": datetime.datetime.now(datetime.timezone.utc)},
    ])


def downgrade() -> None:
    op.drop_table("cluster_settings")
