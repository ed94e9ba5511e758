"""cluster: ctl_take_backs.kind — a commit's publish in flight is stored before it is sent (ctl-provider's)

Write-ahead intent (CHK-6): ctl-provider stores a commit's PublishFile generation (kind `publish`)
before sending it and removes it in the transaction that records the CTL. One left at start means
the process stopped between publish and record (SIGKILL, power loss): the CTL the signer may serve
was never recorded, so the start takes it back. The rows kept so far are take-backs (`take_back`).

Revision ID: cluster_0004
Revises: cluster_0003
"""
import sqlalchemy as sa
from alembic import op

revision = "cluster_0004"
down_revision = "cluster_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite rebuilds the (small) table to add the CHECK constraint; PostgreSQL alters it.
    with op.batch_alter_table("ctl_take_backs", recreate="auto") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=False,
                                   server_default="take_back"))
        batch.create_check_constraint(op.f("ck_ctl_take_backs_kind"), "kind IN ('take_back', 'publish')")


def downgrade() -> None:
    # An intent left becomes an unanswered take-back: still named by every later publish, but no
    # longer taken back at start.
    with op.batch_alter_table("ctl_take_backs", recreate="auto") as batch:
        batch.drop_constraint("ck_ctl_take_backs_kind", type_="check")
        batch.drop_column("kind")
