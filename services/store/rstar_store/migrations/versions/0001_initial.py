"""Initial schema: runs, batches, problems, search tasks and results, trajectories, model versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Types are spelled out here rather than imported from `rstar_store.models`: a migration
must keep creating the schema of its own time after the models move on.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config_name", sa.String(200), nullable=True),
        sa.Column("config", _json, nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("created_at", _ts, nullable=False),
        sa.CheckConstraint("status IN ('active', 'cancelled', 'done')", name=op.f("ck_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("name", name=op.f("uq_runs_name")),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("config", _json, nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("n_problems", sa.Integer(), nullable=False),
        sa.Column("n_new_tasks", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.CheckConstraint("round >= 0", name=op.f("ck_batches_round")),
        sa.CheckConstraint("n_problems >= 0 AND n_new_tasks >= 0", name=op.f("ck_batches_counts")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_batches_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_run_id"), "batches", ["run_id"])
    op.create_table(
        "problems",
        sa.Column("id", _big_id, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("answer", _json, nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_problems_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_problems")),
        sa.UniqueConstraint("run_id", "external_id", name=op.f("uq_problems_run_id_external_id")),
        sa.UniqueConstraint("id", "run_id", name=op.f("uq_problems_id_run_id")),
    )
    op.create_table(
        "search_tasks",
        sa.Column("id", _big_id, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("problem_id", _big_id, nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("celery_id", sa.String(200), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("queued_at", _ts, nullable=False),
        sa.Column("started_at", _ts, nullable=True),
        sa.Column("finished_at", _ts, nullable=True),
        sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed', 'cancelled')",
                           name=op.f("ck_search_tasks_state")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_search_tasks_attempts")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_search_tasks_run_id_runs"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["problem_id", "run_id"], ["problems.id", "problems.run_id"],
                                name=op.f("fk_search_tasks_problem_id_run_id_problems"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_search_tasks_batch_id_batches"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_tasks")),
        sa.UniqueConstraint("run_id", "problem_id", "round", "seed",
                            name=op.f("uq_search_tasks_run_id_problem_id_round_seed")),
    )
    op.create_index(op.f("ix_search_tasks_batch_id"), "search_tasks", ["batch_id"])
    op.create_index("ix_search_tasks_run_round_state", "search_tasks", ["run_id", "round", "state"])
    op.create_table(
        "search_results",
        sa.Column("id", _big_id, nullable=False),
        sa.Column("task_id", _big_id, nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("any_correct", sa.Boolean(), nullable=True),
        sa.Column("difficulty", sa.String(16), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("rollouts", sa.Integer(), nullable=False),
        sa.Column("model_versions", _json, nullable=False),
        sa.Column("stats", _json, nullable=False),
        sa.Column("extra", _json, nullable=False),
        sa.Column("tree", _json, nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.CheckConstraint("difficulty IN ('easy', 'medium', 'hard', 'unknown')",
                           name=op.f("ck_search_results_difficulty")),
        sa.ForeignKeyConstraint(["task_id"], ["search_tasks.id"],
                                name=op.f("fk_search_results_task_id_search_tasks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_results")),
        sa.UniqueConstraint("task_id", name=op.f("uq_search_results_task_id")),
    )
    op.create_table(
        "trajectories",
        sa.Column("id", _big_id, nullable=False),
        sa.Column("result_id", _big_id, nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("node_ids", _json, nullable=False),
        sa.Column("steps", _json, nullable=False),
        sa.Column("q_values", _json, nullable=False),
        sa.Column("n_steps", sa.Integer(), nullable=False),
        sa.Column("mean_q", sa.Float(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("terminal", sa.String(32), nullable=False),
        sa.CheckConstraint("terminal IN ('answer', 'no_answer', 'too_many_errors', 'max_depth')",
                           name=op.f("ck_trajectories_terminal")),
        sa.ForeignKeyConstraint(["result_id"], ["search_results.id"],
                                name=op.f("fk_trajectories_result_id_search_results"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trajectories")),
        sa.UniqueConstraint("result_id", "ordinal", name=op.f("uq_trajectories_result_id_ordinal")),
    )
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("parent", sa.String(200), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("metrics", _json, nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.CheckConstraint("kind IN ('policy', 'ppm')", name=op.f("ck_model_versions_kind")),
        sa.ForeignKeyConstraint(["parent"], ["model_versions.version"],
                                name=op.f("fk_model_versions_parent_model_versions"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_model_versions_run_id_runs"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
    )
    op.create_index("ix_model_versions_kind_round", "model_versions", ["kind", "round"])


def downgrade() -> None:
    # Children before parents, so foreign keys never dangle.
    op.drop_table("model_versions")
    op.drop_table("trajectories")
    op.drop_table("search_results")
    op.drop_table("search_tasks")
    op.drop_table("problems")
    op.drop_table("batches")
    op.drop_table("runs")
