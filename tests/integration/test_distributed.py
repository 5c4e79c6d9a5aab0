"""The distributed stack end to end: real RabbitMQ, PostgreSQL, gRPC services and model.

One stack per module (policy service with the real small model, two executor replicas,
one Celery worker process), started by the same launcher as `make up`, isolated by its
own database, queue prefix and ports.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from sqlalchemy import text

from rstar_cli.launcher import StackSpec, metrics_port, spawn_service, spawn_worker, start_stack, stop_stack, wait_healthy
from rstar_store import Store
from tools import find_tool, free_port, needs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get("RSTAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PROBLEMS = [
    {"id": "eggs", "question": "A box holds 6 eggs. How many eggs are in 4 boxes?", "answer": "24"},
    {"id": "ben", "question": "Ben had 20 dollars. He spent 8 dollars on lunch. How many dollars are left?",
     "answer": "12"},
    {"id": "sara", "question": "Sara has 7 apples. She buys 5 more apples. How many apples does she have now?",
     "answer": "12"},
]
SMALL = ["--rollouts", "2", "--width", "2", "--set", "max_tokens_per_step=64", "--set", "max_depth=4"]


@pytest.fixture(scope="module")
def stack(model_dir, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    db_name = f"rstar_it_{tag}"
    spec = StackSpec(
        run_dir=tmp_path_factory.mktemp("stack"),
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}",
        workers=1,
        worker_concurrency=4,
        executors=2,
        with_reward=False,
        base_port=51000 + (os.getpid() % 50) * 20,
        env={"RSTAR_MODEL": model_dir, "RSTAR_QUEUE_PREFIX": f"it-{tag}-", "VLLM_CPU_KVCACHE_SPACE": "2",
             "RSTAR_EXECUTOR_DEADLINE_S": "60", "VLLM_LOGGING_LEVEL": "WARNING",
             # No reward service runs: a task that needs one fails fast and for good.
             "RSTAR_REWARD_DEADLINE_S": "3", "RSTAR_TASK_MAX_RETRIES": "1"},
    )
    start_stack(spec)
    try:
        wait_healthy(spec, timeout_s=300)
        yield spec
    finally:
        stop_stack(spec.run_dir, grace_s=10)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        _delete_queues(spec.env["RSTAR_QUEUE_PREFIX"])


@pytest.fixture(scope="module")
def searched(stack, tmp_path_factory):
    """The stack after one finished search, so that every service has served calls."""
    problems = _problem_file(tmp_path_factory.mktemp("searched"), PROBLEMS[:1])
    _cli(stack, "enqueue", problems, "--run", "searched", "--config", "demo", *SMALL)
    _wait_done(stack, "searched", 1)
    return stack


def _delete_queues(prefix):
    from kombu import Connection

    with Connection(StackSpec.broker_url) as conn:
        channel = conn.default_channel
        for name in ("search", "eval", "train"):
            channel.queue_delete(prefix + name)


def _cli(spec, *args, check=True):
    env = {**os.environ, **spec.env, "RSTAR_DATABASE_URL": spec.database_url, "RSTAR_BROKER_URL": spec.broker_url}
    result = subprocess.run([sys.executable, "-m", "rstar_cli.main", *args], env=env, capture_output=True,
                            text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def _problem_file(tmp_path, problems):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return str(path)


def _wait_done(spec, run, total, timeout_s=400):
    store = Store.from_url(spec.database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            progress = store.run_progress(run)
            if progress.states["done"] + progress.states["failed"] >= total:
                return progress
            time.sleep(1)
        raise AssertionError(f"run {run} did not finish: {store.run_progress(run)}")
    finally:
        store.close()


def _count(spec, sql, **params):
    store = Store.from_url(spec.database_url)
    try:
        with store.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()
    finally:
        store.close()


def test_enqueue_three_problems_all_complete(stack, tmp_path):
    out = _cli(stack, "enqueue", _problem_file(tmp_path, PROBLEMS), "--run", "three", "--config", "demo", *SMALL)
    assert "3 new tasks, 3 published" in out.stdout
    progress = _wait_done(stack, "three", 3)
    assert progress.states["done"] == 3 and progress.results == 3 and progress.tokens > 0
    status = _cli(stack, "status", "three")
    assert "done 3/3" in status.stdout
    results = tmp_path / "results.jsonl"
    _cli(stack, "results", "three", "--out", str(results))
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["problem_id"] for r in rows) == ["ben", "eggs", "sara"]
    # Enqueueing the same file again creates no new work.
    again = _cli(stack, "enqueue", _problem_file(tmp_path, PROBLEMS), "--run", "three", "--config", "demo", *SMALL)
    assert "0 new tasks, 0 published" in again.stdout


def test_both_executor_replicas_serve(searched):
    counts = []
    for port in json.loads((searched.run_dir / "stack.json").read_text())["ports"]["executor"]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(port)}/metrics", timeout=5).read().decode()
        total = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                    if line.startswith("rstar_executor_executions_total{"))
        counts.append(total)
    assert len(counts) == 2 and all(c > 0 for c in counts), counts


def _promql(port, query):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as exc:  # 400 for a query that does not parse
        raise AssertionError(f"{query}: {exc.read().decode()}") from exc
    assert body["status"] == "success", body
    return body["data"]["result"]


@needs("prometheus")
def test_prometheus_scrapes_the_stack_and_the_dashboard_queries_answer(searched, tmp_path):
    stack = searched
    # deploy/prometheus/local.yml as it is, pointed at this stack's run directory.
    config = yaml.safe_load((REPO / "deploy/prometheus/local.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(stack.run_dir / "prometheus-targets.json")]
    config["rule_files"] = [str(REPO / "deploy/prometheus" / name) for name in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        prometheus = subprocess.Popen(
            [find_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        up = []
        while time.monotonic() < deadline:
            time.sleep(1)
            try:  # 503 until its storage is open
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5).read()
            except OSError:
                continue
            up = _promql(port, "up == 1")
            if len(up) == 3 and len(_promql(port, "rstar_policy_generated_tokens_total")) == 1:
                break
        # One policy and two executor replicas, each under its service's job.
        assert sorted(r["metric"]["job"] for r in up) == ["executor", "executor", "policy"], up
        time.sleep(3)  # a rate() needs two scrapes
        dashboard = json.loads((REPO / "deploy/grafana/dashboards/rstar.json").read_text())
        queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        answered = 0
        for query in queries:
            result = _promql(port, query)  # every query parses
            # Those over the services in this stack (no reward, Flower or broker here) have data.
            if not any(other in query for other in ("rstar_reward", "flower_", "rabbitmq_")):
                assert result, query
                answered += 1
        assert answered >= 10
        tokens = _promql(port, "sum(rstar_policy_generated_tokens_total)")
        assert float(tokens[0]["value"][1]) > 0
        # The alerting rules load, and a healthy stack fires none of them.
        rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10).read())
        loaded = [rule for group in rules["data"]["groups"] for rule in group["rules"]]
        assert len(loaded) == 5 and all(rule["health"] == "ok" for rule in loaded), loaded
        assert all(rule["state"] == "inactive" for rule in loaded), loaded
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_killed_worker_task_is_redelivered_and_written_once(stack, tmp_path):
    _cli(stack, "enqueue", _problem_file(tmp_path, PROBLEMS[:2]), "--run", "kill", "--config", "demo",
         "--rollouts", "6", "--width", "3", "--set", "max_tokens_per_step=96")
    store = Store.from_url(stack.database_url)
    try:
        deadline = time.monotonic() + 120
        while store.run_progress("kill").states["running"] == 0:
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.2)
    finally:
        store.close()
    time.sleep(1.0)  # well inside a search
    pid = json.loads((stack.run_dir / "stack.json").read_text())["pids"]["worker-0"]
    os.killpg(pid, signal.SIGKILL)
    spawn_worker(stack, 0)
    progress = _wait_done(stack, "kill", 2)
    assert progress.states["done"] == 2
    rows = _count(stack, "SELECT count(*) FROM search_results r JOIN search_tasks t ON t.id = r.task_id "
                         "JOIN runs ON runs.id = t.run_id WHERE runs.name = 'kill'")
    assert rows == 2
    redelivered = _count(stack, "SELECT count(*) FROM search_tasks t JOIN runs ON runs.id = t.run_id "
                                "WHERE runs.name = 'kill' AND t.attempts >= 2")
    assert redelivered >= 1


def test_batch_completes_when_executors_stop_for_a_while(stack, tmp_path):
    state = json.loads((stack.run_dir / "stack.json").read_text())
    _cli(stack, "enqueue", _problem_file(tmp_path, PROBLEMS), "--run", "outage", "--config", "demo", *SMALL)
    time.sleep(2.0)
    for name in ("executor-0", "executor-1"):
        os.killpg(state["pids"][name], signal.SIGKILL)
    time.sleep(4.0)
    for replica in (0, 1):
        spawn_service(stack, "executor", replica)
    progress = _wait_done(stack, "outage", 3)
    assert progress.states["done"] == 3, progress


def test_task_that_keeps_failing_ends_failed_with_its_reason(stack, tmp_path):
    # use_ppm_init needs the reward service, which this stack does not run.
    _cli(stack, "enqueue", _problem_file(tmp_path, PROBLEMS[:1]), "--run", "broken", "--config", "demo",
         *SMALL, "--set", "use_ppm_init=true")
    progress = _wait_done(stack, "broken", 1, timeout_s=180)
    assert progress.states["failed"] == 1 and progress.results == 0
    reason = _count(stack, "SELECT t.last_error FROM search_tasks t JOIN runs ON runs.id = t.run_id "
                           "WHERE runs.name = 'broken'")
    assert "unavailable" in reason.lower()
    status = _cli(stack, "status", "broken")
    assert "failed 1" in status.stdout
