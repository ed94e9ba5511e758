"""lines: directory numbers on devices, device pools

Revision ID: lines_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "lines_0001"
down_revision = None
branch_labels = ("lines",)
depends_on = "core_0001"  # lines reference devices


def upgrade() -> None:
    op.create_table(
        "lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dn", sa.String(24), nullable=False),
        sa.Column("device", sa.String(15), nullable=False),
        sa.Column("line_index", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device"], ["devices.name"], ondelete="CASCADE",
                                name="fk_lines_device_devices"),
        sa.PrimaryKeyConstraint("id", name="pk_lines"),
        sa.UniqueConstraint("device", "dn", name="uq_lines_device_dn"),
        sa.UniqueConstraint("device", "line_index", name="uq_lines_device_line_index"),
    )
    op.create_index("ix_lines_dn", "lines", ["dn"])
    op.create_table(
        "device_pools",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("cm_group", sa.String(200), nullable=False),
        sa.Column("srst", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_device_pools"),
    )


def downgrade() -> None:
    op.drop_table("device_pools")
    op.drop_index("ix_lines_dn", table_name="lines")
    op.drop_table("lines")
