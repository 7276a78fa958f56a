"""Indexes for per-key counts under many processes.

Listing a key's predictions newest first already has ``ix_predictions_key_created``
(api_key_id, created_at, id), and usage sums have ``ix_usage_key_completed``. The
concurrency check on every create (``store.limits.count_unfinished``: a key's predictions
``starting`` or ``processing``) had only the status index, which grows with every other
key's queue; (api_key_id, status) answers it from the key's own entries.

Revision ID: 0007_indexes
Revises: 0006_progress
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007_indexes"
down_revision = "0006_progress"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_predictions_key_status", "predictions", ["api_key_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_predictions_key_status", table_name="predictions")
