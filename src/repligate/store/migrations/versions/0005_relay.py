"""The upstream relay: relayed predictions, upstream key states, idempotency keys.

Revision ID: 0005_relay
Revises: 0004_limits
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from repligate.store.rows import UTCDateTime

revision = "0005_relay"
down_revision = "0004_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relayed_predictions",
        sa.Column(
            "prediction_id", sa.String(32), sa.ForeignKey("predictions.id"), primary_key=True
        ),
        sa.Column("upstream_id", sa.String(64), nullable=True),
        sa.Column("key_fingerprint", sa.String(16), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "upstream_keys",
        sa.Column("fingerprint", sa.String(16), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("api_key_id", sa.String(32), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("prediction_id", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("upstream_keys")
    op.drop_table("relayed_predictions")
