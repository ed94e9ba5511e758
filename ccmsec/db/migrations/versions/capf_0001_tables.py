"""CAPF: scheduled operations and the issued-certificate log (CHK-7: kept in the publisher DB).

Revision ID: capf_0001
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "capf_0001"
down_revision = None
branch_labels = ("capf",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capf_operations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_name", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("auth_mode", sa.String(length=16), nullable=False),
        sa.Column("auth_string_hash", sa.String(length=255), nullable=True),
        sa.Column("key_type", sa.String(length=16), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("issued_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "operation IN ('install', 'upgrade', 'delete', 'troubleshoot')",
            name=op.f("ck_capf_operations_operation"),
        ),
        sa.CheckConstraint(
            "auth_mode IN ('string', 'null', 'lsc', 'mic', 'lsc-then-mic')",
            name=op.f("ck_capf_operations_auth_mode"),
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'in_progress', 'done', 'failed', 'expired', 'locked')",
            name=op.f("ck_capf_operations_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_capf_operations")),
    )
    op.create_index(op.f("ix_capf_operations_device_name"), "capf_operations", ["device_name"])
    op.create_table(
        "capf_certificates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("operation_id", sa.Integer(), nullable=True),
        sa.Column("device_name", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=True),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=True),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('issued', 'installed', 'fetched', 'deleted')",
            name=op.f("ck_capf_certificates_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["operation_id"], ["capf_operations.id"],
            name=op.f("fk_capf_certificates_operation_id_capf_operations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_capf_certificates")),
    )
    op.create_index(op.f("ix_capf_certificates_device_name"), "capf_certificates", ["device_name"])


def downgrade() -> None:
    op.drop_index(op.f("ix_capf_certificates_device_name"), table_name="capf_certificates")
    op.drop_table("capf_certificates")
    op.drop_index(op.f("ix_capf_operations_device_name"), table_name="capf_operations")
    op.drop_table("capf_operations")
