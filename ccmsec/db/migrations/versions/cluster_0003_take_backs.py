"""cluster: ctl_take_backs — the CTL take-backs tftp-signer has not answered yet (ctl-provider's)

A take-back (PublishFile of the recorded CTL, or a withdraw, naming the generation it undoes) that
got no answer may still land at tftp-signer; every later publish names it in `takes_back` until one
that did is answered. Kept here so a ctl-provider restart does not forget them.

Revision ID: cluster_0003
Revises: cluster_0002
"""
import sqlalchemy as sa
from alembic import op

revision = "cluster_0003"
down_revision = "cluster_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ctl_take_backs",
        sa.Column("generation", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("generation", name="pk_ctl_take_backs"),
    )


def downgrade() -> None:
    op.drop_table("ctl_take_backs")
