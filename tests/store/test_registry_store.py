"""Model versions and evolve steps in the store, on SQLite and PostgreSQL.

Versions: idempotent registration, one promoted version per kind, promotion and rollback
history. Evolve steps: the self-evolution driver's start / finish / fail / restart cycle.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from rstar_store import EvolveStep, ModelVersionInfo, Store
from rstar_store.models import ModelPromotion, ModelVersion

DATASETS = {"sft": {"path": "/data/r1/sft.jsonl", "content_hash": "sha256:ab12", "examples": 40}}
TRAIN = {"lr": 1e-5, "epochs": 2}


def add(store: Store, version: str, kind: str = "policy", **kwargs) -> ModelVersionInfo:
    return store.add_model_version(version, kind, f"/store/{version}", **kwargs)


def history(store: Store, kind: str) -> list[tuple[str, str, str | None]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(ModelPromotion.action, ModelPromotion.version, ModelPromotion.previous)
            .where(ModelPromotion.kind == kind).order_by(ModelPromotion.id))]


# --- versions -------------------------------------------------------------------------


def test_add_model_version_records_a_candidate_with_its_lineage(store):
    store.get_or_create_run("evo")
    base = add(store, "base-policy")
    info = store.add_model_version("evo-r1-policy-0123456789", "policy", "/store/evo-r1-policy-0123456789",
                                   round=1, parent="base-policy", base="Qwen/Qwen2.5-Math-1.5B", run="evo",
                                   datasets=DATASETS, train_config=TRAIN, metrics={"loss": 0.5})

    assert base.status == "candidate" and base.run is None and base.datasets == {} and base.promoted_at is None
    assert (info.version, info.kind, info.path, info.round, info.parent, info.base, info.run, info.status) == (
        "evo-r1-policy-0123456789", "policy", "/store/evo-r1-policy-0123456789", 1, "base-policy",
        "Qwen/Qwen2.5-Math-1.5B", "evo", "candidate")
    assert (info.datasets, info.train_config, info.metrics) == (DATASETS, TRAIN, {"loss": 0.5})
    assert info.created_at.tzinfo is not None and info.promoted_at is None
    assert store.get_model_version(info.version) == info


def test_add_model_version_again_returns_the_stored_row_unchanged(store):
    first = add(store, "v1", metrics={"loss": 0.5})

    again = add(store, "v1", metrics={"loss": 0.1}, round=3)

    assert again == first
    with pytest.raises(ValueError, match="already recorded"):
        store.add_model_version("v1", "policy", "/elsewhere/v1")
    with pytest.raises(ValueError, match="already recorded"):
        store.add_model_version("v1", "ppm", "/store/v1")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"kind": "value"}, ValueError, "kind must be one of"),
    ({"version": "a/b"}, ValueError, "not a valid version name"),
    ({"version": ".incoming-x"}, ValueError, "not a valid version name"),
    ({"version": ""}, ValueError, "version must be"),
    ({"round": -1}, ValueError, "round must be"),
    ({"metrics": {"loss": float("nan")}}, ValueError, "metrics is not storable"),
    ({"datasets": ["sft"]}, ValueError, "datasets must be a mapping"),
    ({"parent": "missing"}, LookupError, "parent: no model version 'missing'"),
    ({"parent": "v"}, ValueError, "its own parent"),
    ({"run": "missing"}, LookupError, "no run named 'missing'"),
])
def test_add_model_version_rejects_bad_arguments(store, kwargs, error, match):
    args = {"version": "v", "kind": "policy", "path": "/store/v", **kwargs}

    with pytest.raises(error, match=match):
        store.add_model_version(args.pop("version"), args.pop("kind"), args.pop("path"), **args)
    assert store.list_model_versions() == []


def test_unknown_versions_and_kinds_are_errors(store):
    for call in (lambda: store.get_model_version("nope"), lambda: store.promote_model("nope"),
                 lambda: store.update_model_metrics("nope", {}), lambda: store.set_model_status("nope", "rejected")):
        with pytest.raises(LookupError, match="no model version 'nope'"):
            call()
    for call in (lambda: store.promoted_model("value"), lambda: store.rollback_model("value"),
                 lambda: store.list_model_versions(kind="value")):
        with pytest.raises(ValueError, match="kind must be one of"):
            call()
    with pytest.raises(LookupError, match="no run named"):
        store.list_model_versions(run="nope")


def test_list_model_versions_newest_first_by_kind_and_run(store):
    store.get_or_create_run("a")
    store.get_or_create_run("b")
    add(store, "p1", run="a", round=1)
    add(store, "m1", kind="ppm", run="a", round=1)
    add(store, "p2", run="b", round=2)
    add(store, "o1", kind="orm")

    assert [v.version for v in store.list_model_versions()] == ["o1", "p2", "m1", "p1"]
    assert [v.version for v in store.list_model_versions(kind="policy")] == ["p2", "p1"]
    assert [(v.version, v.run) for v in store.list_model_versions(run="a")] == [("m1", "a"), ("p1", "a")]
    assert store.list_model_versions(kind="pqm") == []


def test_update_model_metrics_merges(store):
    add(store, "v1", metrics={"loss": 0.5, "steps": 10})

    info = store.update_model_metrics("v1", {"gsm8k_acc": 0.42, "loss": 0.4})

    assert info.metrics == {"loss": 0.4, "steps": 10, "gsm8k_acc": 0.42}
    assert store.get_model_version("v1").metrics == info.metrics


def test_set_model_status_rejects_and_restores_but_never_promotes(store):
    add(store, "v1")

    assert store.set_model_status("v1", "rejected").status == "rejected"
    assert store.set_model_status("v1", "candidate").status == "candidate"
    with pytest.raises(ValueError, match="status must be one of"):
        store.set_model_status("v1", "promoted")
    store.promote_model("v1")
    with pytest.raises(ValueError, match="is the promoted policy"):
        store.set_model_status("v1", "rejected")
    assert store.get_model_version("v1").status == "promoted"


# --- promotion and rollback -----------------------------------------------------------


def test_promotion_moves_the_flag_within_a_kind(store):
    for version in ("p1", "p2"):
        add(store, version)
    add(store, "m1", kind="ppm")
    assert store.promoted_model("policy") is None

    first = store.promote_model("p1")
    store.promote_model("m1")
    second = store.promote_model("p2")

    assert first.status == "promoted" and first.promoted_at is not None
    assert second.status == "promoted" and second.promoted_at >= first.promoted_at
    assert store.promoted_model("policy") == second
    assert store.get_model_version("p1").status == "candidate"
    # Another kind keeps its own promoted version.
    assert store.promoted_model("ppm").version == "m1"
    assert history(store, "policy") == [("promote", "p1", None), ("promote", "p2", "p1")]


def test_promoting_the_promoted_version_changes_nothing(store):
    add(store, "p1")
    promoted = store.promote_model("p1")

    assert store.promote_model("p1") == promoted
    assert history(store, "policy") == [("promote", "p1", None)]


def test_promoting_a_rejected_version_clears_the_rejection(store):
    add(store, "p1")
    store.set_model_status("p1", "rejected")

    assert store.promote_model("p1").status == "promoted"


def test_the_database_refuses_a_second_promoted_version_of_a_kind(store):
    add(store, "p1")
    add(store, "p2")
    add(store, "m1", kind="ppm")
    store.promote_model("p1")
    store.promote_model("m1")  # another kind: allowed

    with pytest.raises(IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(update(ModelVersion).where(ModelVersion.version == "p2").values(status="promoted"))


def test_concurrent_promotions_leave_exactly_one_promoted(store):
    versions = [f"p{i}" for i in range(8)]
    for version in versions:
        add(store, version)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(store.promote_model, versions))

    promoted = [v.version for v in store.list_model_versions(kind="policy") if v.status == "promoted"]
    assert len(promoted) == 1
    assert promoted == [store.promoted_model("policy").version]
    # Every promotion names the one it replaced: the history is one chain.
    chain = history(store, "policy")
    assert [previous for _, _, previous in chain] == [None] + [version for _, version, _ in chain[:-1]]


def test_rollback_walks_the_promotion_history(store):
    for version in ("p1", "p2", "p3"):
        add(store, version)
        store.promote_model(version)

    back = store.rollback_model("policy")

    assert back.version == "p2" and back.status == "promoted"
    assert store.get_model_version("p3").status == "rejected"
    assert store.rollback_model("policy").version == "p1"
    assert [v.status for v in map(store.get_model_version, ("p1", "p2", "p3"))] == ["promoted", "rejected", "rejected"]
    with pytest.raises(ValueError, match="no earlier policy version to roll back to"):
        store.rollback_model("policy")
    assert store.promoted_model("policy").version == "p1"  # the failed rollback changed nothing
    assert history(store, "policy") == [("promote", "p1", None), ("promote", "p2", "p1"), ("promote", "p3", "p2"),
                                        ("rollback", "p2", "p3"), ("rollback", "p1", "p2")]


def test_rollback_skips_rejected_versions_and_needs_a_promoted_one(store):
    with pytest.raises(ValueError, match="no ppm version is promoted"):
        store.rollback_model("ppm")
    for version in ("m1", "m2", "m3"):
        add(store, version, kind="ppm")
        store.promote_model(version)
    store.set_model_status("m2", "rejected")

    assert store.rollback_model("ppm").version == "m1"
    # A version promoted again after a rollback is a new entry in the history.
    store.promote_model("m3")
    assert store.rollback_model("ppm").version == "m1"


# --- evolve steps ---------------------------------------------------------------------


def test_evolve_step_lifecycle(store):
    store.get_or_create_run("evo")
    assert store.get_evolve_step("evo", 1, "search") is None

    started = store.start_evolve_step("evo", 1, "search")
    assert isinstance(started, EvolveStep)
    assert (started.run, started.round, started.step, started.state, started.attempts, started.result,
            started.error, started.finished_at) == ("evo", 1, "search", "running", 1, {}, None, None)

    failed = store.fail_evolve_step("evo", 1, "search", "broker down")
    assert (failed.state, failed.error, failed.attempts) == ("failed", "broker down", 1)
    assert failed.finished_at is not None

    again = store.start_evolve_step("evo", 1, "search")
    assert (again.id, again.state, again.attempts, again.error, again.finished_at) == (
        started.id, "running", 2, None, None)

    done = store.finish_evolve_step("evo", 1, "search", {"tasks": 40, "solved": 12})
    assert (done.state, done.result, done.attempts) == ("done", {"tasks": 40, "solved": 12}, 2)
    assert store.get_evolve_step("evo", 1, "search") == done

    # A done step is never restarted, and a late failure report does not undo it.
    assert store.start_evolve_step("evo", 1, "search") == done
    assert store.fail_evolve_step("evo", 1, "search", "late") == done


def test_list_evolve_steps_by_round_then_start(store):
    store.get_or_create_run("evo")
    store.get_or_create_run("other")
    for round_, step in ((2, "search"), (1, "search"), (1, "train_sft"), (0, "bootstrap")):
        store.start_evolve_step("evo", round_, step)
    store.start_evolve_step("other", 1, "search")

    steps = store.list_evolve_steps("evo")

    assert [(s.round, s.step) for s in steps] == [(0, "bootstrap"), (1, "search"), (1, "train_sft"), (2, "search")]
    assert store.list_evolve_steps("other")[0].run == "other"


def test_evolve_step_errors(store):
    store.get_or_create_run("evo")
    with pytest.raises(LookupError, match="no run named"):
        store.start_evolve_step("nope", 1, "search")
    with pytest.raises(LookupError, match="has no evolve step 'train'"):
        store.finish_evolve_step("evo", 1, "train", {})
    with pytest.raises(LookupError, match="has no evolve step"):
        store.fail_evolve_step("evo", 1, "train", "x")
    with pytest.raises(ValueError, match="round must be"):
        store.start_evolve_step("evo", -1, "search")
    with pytest.raises(ValueError, match="step must be"):
        store.start_evolve_step("evo", 1, "x" * 65)
    store.start_evolve_step("evo", 1, "train")
    with pytest.raises(ValueError, match="result is not storable"):
        store.finish_evolve_step("evo", 1, "train", {"loss": float("inf")})
    assert store.get_evolve_step("evo", 1, "train").state == "running"


def test_a_deleted_run_takes_its_evolve_steps_along(store):
    from rstar_store.models import EvolveStepRow, Run

    store.get_or_create_run("evo")
    store.start_evolve_step("evo", 1, "search")
    with store.engine.begin() as conn:
        conn.execute(Run.__table__.delete().where(Run.name == "evo"))
        assert conn.execute(select(EvolveStepRow.id)).all() == []
