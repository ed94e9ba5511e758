"""calls: speed dials, call forwarding, regions, extension mobility

Revision ID: calls_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "calls_0001"
down_revision = None
branch_labels = ("calls",)
depends_on = "lines_0001"  # devices and directory numbers


def upgrade() -> None:
    op.create_table(
        "speed_dials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device", sa.String(15), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(24), nullable=False),
        sa.Column("label", sa.String(40), nullable=False),
        sa.ForeignKeyConstraint(["device"], ["devices.name"], ondelete="CASCADE",
                                name="fk_speed_dials_device_devices"),
        sa.PrimaryKeyConstraint("id", name="pk_speed_dials"),
        sa.UniqueConstraint("device", "idx", name="uq_speed_dials_device_idx"),
    )
    op.create_table(
        "line_forwards",
        sa.Column("dn", sa.String(24), nullable=False),
        sa.Column("forward_busy", sa.String(24), nullable=False),
        sa.Column("forward_no_answer", sa.String(24), nullable=False),
        sa.PrimaryKeyConstraint("dn", name="pk_line_forwards"),
    )
    op.create_table(
        "regions",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("wideband", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_regions"),
    )
    op.create_table(
        "device_regions",
        sa.Column("device", sa.String(15), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["device"], ["devices.name"], ondelete="CASCADE",
                                name="fk_device_regions_device_devices"),
        sa.ForeignKeyConstraint(["region"], ["regions.name"], ondelete="CASCADE",
                                name="fk_device_regions_region_regions"),
        sa.PrimaryKeyConstraint("device", name="pk_device_regions"),
    )
    op.create_table(
        "mobility_users",
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(40), nullable=False),
        sa.Column("dn", sa.String(24), nullable=False),
        sa.Column("label", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_mobility_users"),
    )
    op.create_table(
        "mobility_logins",
        sa.Column("device", sa.String(15), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device"], ["devices.name"], ondelete="CASCADE",
                                name="fk_mobility_logins_device_devices"),
        sa.ForeignKeyConstraint(["user_id"], ["mobility_users.user_id"], ondelete="CASCADE",
                                name="fk_mobility_logins_user_id_mobility_users"),
        sa.PrimaryKeyConstraint("device", name="pk_mobility_logins"),
        sa.UniqueConstraint("user_id", name="uq_mobility_logins_user_id"),
    )


def downgrade() -> None:
    for table in ("mobility_logins", "mobility_users", "device_regions", "regions",
                  "line_forwards", "speed_dials"):
        op.drop_table(table)
