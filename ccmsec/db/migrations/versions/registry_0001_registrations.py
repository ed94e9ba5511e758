"""registry: SCCP registrations mirrored by call control

Revision ID: registry_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "registry_0001"
down_revision = None
branch_labels = ("registry",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registrations",
        sa.Column("device", sa.String(15), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("model", sa.String(8), nullable=False),
        sa.Column("security_mode", sa.String(16), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("reported_address", sa.String(64), nullable=False),
        sa.Column("nat_suspected", sa.Boolean(), nullable=False),
        sa.Column("transport_port", sa.Integer(), nullable=False),
        sa.Column("cipher", sa.String(64), nullable=False),
        sa.Column("certificate_fingerprint", sa.String(64), nullable=False),
        sa.Column("certificate_kind", sa.String(8), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device", name="pk_registrations"),
    )
    op.create_index("ix_registrations_node", "registrations", ["node"])


def downgrade() -> None:
    op.drop_index("ix_registrations_node", table_name="registrations")
    op.drop_table("registrations")
