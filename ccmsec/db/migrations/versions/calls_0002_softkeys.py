"""calls: the softkey set of a device or a device pool

Revision ID: calls_0002
"""
import sqlalchemy as sa
from alembic import op

revision = "calls_0002"
down_revision = "calls_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_softkeys",
        sa.Column("device", sa.String(15), nullable=False),
        sa.Column("softkey_set", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["device"], ["devices.name"], ondelete="CASCADE",
                                name="fk_device_softkeys_device_devices"),
        sa.PrimaryKeyConstraint("device", name="pk_device_softkeys"),
    )
    op.create_table(
        "pool_softkeys",
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("softkey_set", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["pool"], ["device_pools.name"], ondelete="CASCADE",
                                name="fk_pool_softkeys_pool_device_pools"),
        sa.PrimaryKeyConstraint("pool", name="pk_pool_softkeys"),
    )


def downgrade() -> None:
    op.drop_table("pool_softkeys")
    op.drop_table("device_softkeys")
