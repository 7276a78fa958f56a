"""Leases: which worker runs a prediction, until when, and how many runs it has had.

A worker renews its lease while it runs; a prediction whose lease ran out (the worker
was killed, or its host lost) is queued again or, after ``max_attempts`` runs, failed
(leases.py). Rows from before have no lease: they count as expired.

Revision ID: 0008_lease
Revises: 0007_indexes
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from repligate.store.rows import UTCDateTime

revision = "0008_lease"
down_revision = "0007_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("lease_owner", sa.String(200), nullable=True))
    op.add_column("predictions", sa.Column("lease_expires_at", UTCDateTime(), nullable=True))
    op.add_column(
        "predictions",
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
