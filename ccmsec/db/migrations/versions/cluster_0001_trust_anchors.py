"""cluster: trust lists, CTL Provider nodes, clusters sharing a TFTP server (MODE-6)

Revision ID: cluster_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "cluster_0001"
down_revision = None
branch_labels = ("cluster",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ctl_files",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("signer", sa.String(512), nullable=False),
        sa.Column("signer_serial", sa.String(128), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("tftp_path", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_ctl_files"),
    )
    op.create_table(
        "ctl_provider_nodes",
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("activated", sa.Boolean(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node", name="pk_ctl_provider_nodes"),
    )
    op.create_table(
        "tftp_clusters",
        sa.Column("cluster_id", sa.String(64), nullable=False),
        sa.Column("tftp_path", sa.String(64), nullable=False),
        sa.Column("alternate_path", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("cluster_id", name="pk_tftp_clusters"),
        sa.UniqueConstraint("tftp_path", name="uq_tftp_clusters_tftp_path"),
    )


def downgrade() -> None:
    op.drop_table("tftp_clusters")
    op.drop_table("ctl_provider_nodes")
    op.drop_table("ctl_files")
