"""calls: the PIN of an extension-mobility user (argon2 hash), for a login at the phone

Revision ID: calls_0003
"""
import sqlalchemy as sa
from alembic import op

revision = "calls_0003"
down_revision = "calls_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mobility_users") as batch:
        batch.add_column(sa.Column("pin_hash", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mobility_users") as batch:
        batch.drop_column("pin_hash")
