"""Live search trees: the latest partial tree of each running search.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-10

`search_snapshots` holds one row per task that a worker is searching (or was, when the
attempt failed): the partial tree it last published, a sequence number bumped by every
write, and when. The web console's live view reads it; the final tree stays in
`search_results`, and recording it deletes the snapshot.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "search_snapshots",
        sa.Column("task_id", _big_id, autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("n_nodes", sa.Integer(), nullable=False),
        sa.Column("tree", _json, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("seq >= 1 AND n_nodes >= 0", name=op.f("ck_search_snapshots_counts")),
        sa.ForeignKeyConstraint(["task_id"], ["search_tasks.id"],
                                name=op.f("fk_search_snapshots_task_id_search_tasks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_search_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("search_snapshots")
