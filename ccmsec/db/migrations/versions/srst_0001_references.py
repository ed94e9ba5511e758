"""srst: SRST references with the router certificate (CERT-6)

Revision ID: srst_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "srst_0001"
down_revision = None
branch_labels = ("srst",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "srst_references",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("sccp_port", sa.Integer(), nullable=False),
        sa.Column("sccp_tls_port", sa.Integer(), nullable=False),
        sa.Column("credentials_port", sa.Integer(), nullable=False),
        sa.Column("secure", sa.Boolean(), nullable=False),
        sa.Column("certificate", sa.LargeBinary(), nullable=True),
        sa.Column("fingerprint", sa.String(95), nullable=False),
        sa.Column("certificate_subject", sa.String(255), nullable=False),
        sa.Column("secured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_srst_references"),
    )


def downgrade() -> None:
    op.drop_table("srst_references")
