"""core: devices, administration accounts, tokens and audit log (callmanager's)

`cluster_settings` was created here too until issue 9 §5 gave each role its own branches: it is
ctl-provider's, created by `cluster_0002` (which finds it already there on a database this
revision created before).

Revision ID: core_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "core_0001"
down_revision = None
branch_labels = ("core",)
depends_on = None

_MODELS = "'7970', '7960', '7940', '7912', '7910', '7905G', '7902'"
_MODES = "'non-secure', 'authenticated', 'encrypted'"


def _hardening_column(name: str) -> sa.Column:
    return sa.Column(name, sa.Boolean(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(15), nullable=False),
        sa.Column("model", sa.String(8), nullable=False),
        sa.Column("security_mode", sa.String(16), nullable=False),
        sa.Column("description", sa.String(128), nullable=False),
        sa.Column("device_pool", sa.String(64), nullable=True),
        _hardening_column("web_access"),
        _hardening_column("pc_port"),
        _hardening_column("settings_access"),
        _hardening_column("garp"),
        _hardening_column("voice_vlan_access"),
        sa.Column("config_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"model IN ({_MODELS})", name="ck_devices_model"),
        sa.CheckConstraint(f"security_mode IN ({_MODES})", name="ck_devices_security_mode"),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("name", name="uq_devices_name"),
    )
    op.create_table(
        "admin_accounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'readonly')", name="ck_admin_accounts_role"),
        sa.PrimaryKeyConstraint("id", name="pk_admin_accounts"),
        sa.UniqueConstraint("username", name="uq_admin_accounts_username"),
    )
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["admin_accounts.id"], ondelete="CASCADE",
                                name="fk_admin_tokens_account_id_admin_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_admin_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_admin_tokens_token_hash"),
    )
    op.create_index("ix_admin_tokens_account_id", "admin_tokens", ["account_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(128), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("remote", sa.String(64), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('ok', 'refused', 'denied', 'unauthenticated', 'error')",
            name="ck_audit_log_outcome",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_admin_tokens_account_id", table_name="admin_tokens")
    op.drop_table("admin_tokens")
    op.drop_table("admin_accounts")
    op.drop_table("devices")
