"""Model registry and self-evolution state: version status, lineage details, promotions, evolve steps.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

`model_versions` gains the base model, dataset manifests, training config, a status
(candidate / promoted / rejected, at most one promoted per kind: a partial unique index)
and the time of its last promotion; its kinds widen to the baselines' `orm` and `pqm`.
`model_promotions` is the history a rollback walks; `evolve_steps` the durable progress of
the self-evolution driver.

Existing versions become candidates with empty datasets and config. The NOT NULL columns
are added with a server default for those rows, which is then dropped: like every other
value, new ones are written by Python.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_ts = sa.DateTime(timezone=True)
_PROMOTED = sa.text("status = 'promoted'")


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("base", sa.Text(), nullable=True))
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="candidate"))
        batch.add_column(sa.Column("datasets", _json, nullable=False, server_default=sa.text("'{}'")))
        batch.add_column(sa.Column("train_config", _json, nullable=False, server_default=sa.text("'{}'")))
        batch.add_column(sa.Column("promoted_at", _ts, nullable=True))
        batch.drop_constraint(op.f("ck_model_versions_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_model_versions_kind"), "kind IN ('policy', 'ppm', 'orm', 'pqm')")
        batch.create_check_constraint(op.f("ck_model_versions_status"),
                                      "status IN ('candidate', 'promoted', 'rejected')")
    # A second batch: SQLite rebuilds the table, and the rows copied into it need the
    # defaults above while they exist.
    with op.batch_alter_table("model_versions") as batch:
        for column in ("status", "datasets", "train_config"):
            batch.alter_column(column, server_default=None)
    op.create_index("uq_model_versions_promoted_kind", "model_versions", ["kind"], unique=True,
                    sqlite_where=_PROMOTED, postgresql_where=_PROMOTED)

    op.create_table(
        "model_promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("previous", sa.String(200), nullable=True),
        sa.Column("at", _ts, nullable=False),
        sa.CheckConstraint("kind IN ('policy', 'ppm', 'orm', 'pqm')", name=op.f("ck_model_promotions_kind")),
        sa.CheckConstraint("action IN ('promote', 'rollback')", name=op.f("ck_model_promotions_action")),
        sa.ForeignKeyConstraint(["version"], ["model_versions.version"],
                                name=op.f("fk_model_promotions_version_model_versions"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["previous"], ["model_versions.version"],
                                name=op.f("fk_model_promotions_previous_model_versions"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_promotions")),
    )
    op.create_index("ix_model_promotions_kind", "model_promotions", ["kind"])

    op.create_table(
        "evolve_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result", _json, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", _ts, nullable=False),
        sa.Column("finished_at", _ts, nullable=True),
        sa.CheckConstraint("round >= 0", name=op.f("ck_evolve_steps_round")),
        sa.CheckConstraint("state IN ('running', 'done', 'failed')", name=op.f("ck_evolve_steps_state")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_evolve_steps_attempts")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_evolve_steps_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evolve_steps")),
        sa.UniqueConstraint("run_id", "round", "step", name=op.f("uq_evolve_steps_run_id_round_step")),
    )


def downgrade() -> None:
    # Versions of the new kinds cannot go back into the old schema: the kind check fails
    # on them, and the downgrade with it, rather than dropping lineage silently.
    op.drop_table("evolve_steps")
    op.drop_table("model_promotions")
    op.drop_index("uq_model_versions_promoted_kind", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint(op.f("ck_model_versions_status"), type_="check")
        batch.drop_constraint(op.f("ck_model_versions_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_model_versions_kind"), "kind IN ('policy', 'ppm')")
        for column in ("promoted_at", "train_config", "datasets", "status", "base"):
            batch.drop_column(column)
