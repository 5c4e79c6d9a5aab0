"""`rstar eval --distributed` without a broker: the real worker task runs each published search.

The broker is replaced by a publisher that calls the real `rstar.search` task eagerly
(`Task.apply`), against the same SQLite store, with the scripted policy, the in-process
executor and the fixed PPM of the in-process tests behind the worker's clients. So the
enqueue path, the seed offsets, the hidden gold answer, the waiting and the rows are the
real ones; the real broker, services and model are `tests/integration/test_eval_end_to_end.py`'s.
"""

import asyncio
import json
import threading

import pytest

from fakes import FixedReward, InlineExecutor, ScriptedPolicy
from test_eval_cmd import _eval, _rows, _script, fake_engine, no_models  # noqa: F401 - fixtures


class _Versioned:
    """What the worker asks of its clients beyond the core ports."""

    async def refresh_model_version(self) -> str:
        return self.model_version


class _Policy(_Versioned, ScriptedPolicy):
    pass


class _Reward(_Versioned, FixedReward):
    pass


@pytest.fixture
def broker(fake_engine, monkeypatch):
    """Publishing runs the worker's task at once; records what was published and the policy's requests."""
    from rstar_store import Store
    from rstar_worker import tasks

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    policy = _Policy(_script)
    shared = tasks._Shared(loop=loop, policy=policy, reward=_Reward(lambda item: 0.5), executor=InlineExecutor())
    store = Store.from_url(f"sqlite:///{fake_engine['out'].parent}/rstar.db")
    monkeypatch.setattr(tasks, "_state", lambda: shared)
    monkeypatch.setattr(tasks, "store", lambda: store)
    published = []

    def publish(task_ids, queue, priority):
        published.append((list(task_ids), queue, priority))
        for task_id in task_ids:
            tasks.search.apply(args=[task_id])

    async def served(*, with_reward):
        return {"policy": "fake-policy@1", "ppm": "fake-ppm@1" if with_reward else None}

    monkeypatch.setattr("rstar_cli.main.publish_searches", publish)
    monkeypatch.setattr("rstar_cli.eval_distributed._ask_services", served)
    monkeypatch.setattr("rstar_cli.eval_distributed.POLL_S", 0.01)
    yield {**fake_engine, "published": published, "policy": fake_engine["policy"], "worker_policy": policy,
           "store": store}
    store.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _comparable(rows):
    return sorted((json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in rows))


def test_distributed_rows_equal_the_in_process_ones_and_resume(broker, capsys):
    env = broker
    code, _, err = _eval(capsys, env, "--method", "maj", "--n", "1,3")
    assert code == 0, err
    in_process = _rows(env)
    (_, _, local_policy), = env["started"]
    (env["out"] / "items.jsonl").unlink()

    code, out, err = _eval(capsys, env, "--method", "maj", "--n", "1,3", "--distributed")
    assert code == 0, err
    assert "maj@3: 50.0 % (1/2" in out and any("9 searches, 0 already done, 9 published" in line for line in err)
    # The same samples: the same seeds asked of the policy, the same picks, tokens and answers.
    assert sorted(r.seed for r in env["worker_policy"].requests) == sorted(r.seed for r in local_policy.requests)
    assert _comparable(_rows(env)) == _comparable(in_process)
    (task_ids, queue, priority), = env["published"]
    assert queue == "eval" and priority == 7 and len(task_ids) == 9
    # The gold answer never reached the search: the tasks' problems have none.
    specs = [env["store"].task_spec(t) for t in task_ids]
    assert all(s.problem.answer is None for s in specs)
    assert sorted({(s.round, s.config["seed_offset"]) for s in specs}) == [(1, 0), (2, 1), (3, 2)]
    assert all(s.config["expansion_width"] == 1 for s in specs)

    # Again: nothing missing, nothing published.
    code, _, err = _eval(capsys, env, "--method", "maj", "--n", "1,3", "--distributed")
    assert code == 0 and "resuming: 3 of 3 items already" in err[0] and len(env["published"]) == 1
    # Rows lost after the searches finished: the stored trees are read again, nothing is searched.
    (env["out"] / "items.jsonl").unlink()
    requests = len(env["worker_policy"].requests)
    code, _, err = _eval(capsys, env, "--method", "maj", "--n", "1,3", "--distributed")
    assert code == 0 and any("9 already done, 0 published" in line for line in err)
    assert len(env["worker_policy"].requests) == requests and _comparable(_rows(env)) == _comparable(in_process)


def test_ppm_method_records_the_services_versions(broker, capsys):
    env = broker
    code, _, err = _eval(capsys, env, "--method", "mcts", "--n", "2", "--ppm", env["ppm"], "--set",
                         "expansion_width=2", "--distributed")
    assert code == 0, err
    rows = _rows(env)
    assert len(rows) == 3 and {r["prediction"] for r in rows if r["id"] == "a"} == {"7"}
    assert all(r["versions"] == {"policy": "fake-policy@1", "ppm": "fake-ppm@1"} and r["score"] == 0.5 for r in rows)


def test_a_failed_task_fails_its_item_and_a_rerun_retries_it(broker, capsys):
    env = broker
    file = env["out"].parent / "failing.jsonl"
    file.write_text(json.dumps({"id": "x", "question": "What is 99 + 1?", "answer": "100"}) + "\n"
                    + json.dumps({"id": "a", "question": "What is 3 + 4?", "answer": "7"}) + "\n")
    argv = ["--benchmark", str(file), "--method", "greedy", "--distributed"]
    code, _, err = _eval(capsys, env, *argv)
    assert code == 1 and any("[x] FAILED: search task" in line and "engine fell over" in line for line in err)
    assert [r["id"] for r in _rows(env) if r["benchmark"] == "failing"] == ["a"]
    code, _, err = _eval(capsys, env, *argv)
    assert code == 1 and any("1 published" in line and "1 failed before" in line for line in err)
    assert len(env["published"][-1][0]) == 1


def test_the_services_must_serve_the_named_versions(broker, capsys, tmp_path):
    env = broker
    other = tmp_path / "other-policy"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "rstar_model.json").write_text(json.dumps({"version": "other-policy@2"}))
    code, _, err = _eval(capsys, env, "--method", "greedy", "--distributed", "--policy", str(other))
    assert code == 2 and "the policy service serves 'fake-policy@1', but --policy" in err[-1]
    assert env["published"] == []
