"""Structured progress: the last step (and frame) a prediction's runner reported.

Revision ID: 0006_progress
Revises: 0005_relay
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_progress"
down_revision = "0005_relay"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("progress", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("progress")
