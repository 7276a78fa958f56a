"""Per-key limits, usage records, and the data_removed mark of retention.

Revision ID: 0004_limits
Revises: 0003_hooks
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from repligate.store.rows import UTCDateTime

revision = "0004_limits"
down_revision = "0003_hooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(
            sa.Column("data_removed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "key_limits",
        sa.Column("api_key_id", sa.String(32), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("create_rate_limit", sa.String(200), nullable=True),
        sa.Column("read_rate_limit", sa.String(200), nullable=True),
        sa.Column("prediction_quota", sa.Integer(), nullable=True),
        sa.Column("quota_window_seconds", sa.Integer(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "usage",
        sa.Column("prediction_id", sa.String(32), primary_key=True),
        sa.Column("api_key_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=False),
        sa.Column("predict_time", sa.Float(), nullable=True),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.Column("pixels", sa.BigInteger(), nullable=False),
        sa.Column("pixel_steps", sa.BigInteger(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("video_seconds", sa.Float(), nullable=False),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_usage_completed", "usage", ["completed_at"])
    op.create_index("ix_usage_key_completed", "usage", ["api_key_id", "completed_at"])
    # The retention sweep looks for finished predictions by completion time.
    op.create_index("ix_predictions_completed", "predictions", ["completed_at"])


def downgrade() -> None:
    op.drop_index("ix_predictions_completed", "predictions")
    op.drop_table("usage")
    op.drop_table("key_limits")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("data_removed")
