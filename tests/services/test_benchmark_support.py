"""The pieces the benchmarks stand on: the request log with timings, the engine-mode
setting, the launcher's wait for a stopped stack, and the benchmark's own arithmetic."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes import ScriptedPolicy
from rstar_cli.launcher import _group_alive
from rstar_core.ports import GenerationRequest
from rstar_policy.engine import enforce_eager_from_env
from rstar_policy.recording import RecordingPolicy, read_request_log, read_request_timings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from search_bench import PeakMemory, median_run, occupancy  # noqa: E402


def _three_samples(prompt: str, call: int):
    return [("# a\nx = 1", "\n#"), ("# b\ny = 2", "\n#"), ("# c\nz = 3", "\n#")]


def test_request_log_records_prompt_lengths_and_timings(tmp_path):
    log = tmp_path / "requests.jsonl"
    policy = RecordingPolicy(ScriptedPolicy(_three_samples, sample_delay_s=0.02), log)

    async def run():
        request = GenerationRequest(prompt="P", n=3, temperature=0.7)
        async for _ in policy.generate_stream(request):
            pass
        await policy.generate(GenerationRequest(prompt="Q", n=2, temperature=0.0))

    before = time.time()
    asyncio.run(run())
    policy.close()

    lengths = [max(1, len(t) // 4) for t, _ in _three_samples("", 0)]
    assert read_request_log(log) == [("P", 0.7, lengths), ("Q", 0.0, lengths[:2])]
    (start_p, done_p), (start_q, done_q) = read_request_timings(log)
    assert before - 0.01 <= start_p <= done_p[0] <= done_p[1] <= done_p[2] <= start_q
    # Streamed samples finish one after another; a plain call finishes all at once.
    assert done_p[2] - done_p[0] >= 0.03
    assert len(done_q) == 2 and done_q[0] == done_q[1]


def test_request_log_in_memory_keeps_timings_beside_entries():
    policy = RecordingPolicy(ScriptedPolicy(_three_samples))
    asyncio.run(policy.generate(GenerationRequest(prompt="P", n=2, temperature=0.5)))
    assert policy.entries == [("P", 0.5, [2, 2])]
    [(start, finished)] = policy.timings
    assert len(finished) == 2 and all(t >= start for t in finished)


@pytest.mark.parametrize("value, default, expected", [
    ("", False, False), ("", True, True), ("1", False, True), ("yes", False, True),
    ("TRUE", False, True), ("0", True, False), ("no", True, False), (" false ", True, False),
])
def test_enforce_eager_from_env(value, default, expected):
    env = {"RSTAR_ENFORCE_EAGER": value} if value else {}
    assert enforce_eager_from_env(env, default=default) is expected


def test_enforce_eager_rejects_other_values():
    with pytest.raises(ValueError, match="RSTAR_ENFORCE_EAGER.*'maybe'"):
        enforce_eager_from_env({"RSTAR_ENFORCE_EAGER": "maybe"}, default=True)


def test_group_alive_follows_every_process_of_a_group():
    # A leader that starts a child in its own group, then exits: the group lives on in the child.
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess; subprocess.Popen(['sleep', '30'])"],
                              start_new_session=True)
    leader.wait()
    try:
        assert _group_alive(leader.pid), "the child still runs in the leader's group"
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _group_alive(leader.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(leader.pid)


def test_occupancy_is_the_time_weighted_number_of_samples_in_flight():
    # Two samples over [0, 10]: one runs 0-10, one 0-5 -> 2 in flight for half the time, 1 after.
    result = occupancy([(0.0, [10.0, 5.0])], 0.0, 10.0, slices=2)
    assert result == {"mean": 1.5, "by_tenth": [2.0, 1.0]}
    # Samples outside the window are clipped to it.
    assert occupancy([(-5.0, [20.0])], 0.0, 10.0, slices=5)["by_tenth"] == [1.0] * 5


def test_median_run_picks_the_middle_run():
    runs = [{"r": 0.9, "k": "a"}, {"r": 0.7, "k": "b"}, {"r": 0.8, "k": "c"}]
    assert median_run(runs, "r")["k"] == "c"
    assert median_run(runs[:2], "r")["k"] == "b"  # even count: the lower middle


def test_policy_service_compiles_by_default_and_embedded_mode_runs_eager(monkeypatch):
    from rstar_cli.embedded import EmbeddedSettings
    from rstar_policy.service import PolicyServiceSettings

    assert PolicyServiceSettings.from_env({}).engine("m").enforce_eager is False
    assert PolicyServiceSettings.from_env({"RSTAR_ENFORCE_EAGER": "1"}).enforce_eager is True
    monkeypatch.delenv("RSTAR_ENFORCE_EAGER", raising=False)
    assert EmbeddedSettings.from_env().enforce_eager is True
    monkeypatch.setenv("RSTAR_ENFORCE_EAGER", "0")
    assert EmbeddedSettings.from_env().enforce_eager is False


def test_machine_line_names_cpu_cores_and_memory():
    from search_bench import machine_line

    line = machine_line()
    assert f"{os.cpu_count()} cores" in line and "GiB" in line
    assert len(line.split(", ")) >= 4  # architecture, CPU model, cores, memory


def test_write_record_replaces_one_benchmark_and_keeps_the_others(tmp_path):
    from search_bench import read_records, write_record

    path = tmp_path / "docs" / "benchmarks.json"
    assert read_records(path) == {}
    write_record(path, "search", {"ratio": 0.9})
    write_record(path, "pipeline", {"ratio": 0.7})
    write_record(path, "search", {"ratio": 0.8})
    assert read_records(path) == {"search": {"ratio": 0.8}, "pipeline": {"ratio": 0.7}}


def test_peak_memory_counts_children_started_after_sampling_began():
    # A small parent that, once sampling has begun, starts a child holding 200 MB for a
    # moment. (Measured on the test process itself, the peak would depend on how much
    # memory pytest happens to give back meanwhile.)
    hold = ("import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            "time.sleep(1.5)")
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; time.sleep(0.5); "
                               f"subprocess.run([sys.executable, '-c', {hold!r}], check=True)"])
    with PeakMemory(pids=[parent.pid], interval_s=0.05, refresh_s=0.1) as mem:
        assert parent.wait(timeout=30) == 0
    assert mem.peak >= 200 * 2**20


# -- bench/step_trace.py: splitting the search's extra time ----------------------------------

def _steps(rows, cost=lambda decoding, prefill: 10 + 2 * decoding + 0.5 * prefill):
    return [{"decoding": d, "prefill_tokens": p, "generated": d, "ms": cost(d, p)} for d, p in rows]


def test_step_cost_fit_recovers_a_linear_engine():
    from step_trace import fit_step_cost

    coef = fit_step_cost(_steps([(1, 0), (200, 0), (50, 300), (120, 40), (8, 2000)]))
    assert coef == pytest.approx([10, 2, 0.5])


def test_split_puts_low_occupancy_steps_under_more_steps_and_contention_under_slower():
    from step_trace import summary

    replay = _steps([(200, 100), (250, 0), (120, 40), (60, 300), (5, 0)])
    chain = _steps([(3, 0)] * 40)  # the same tokens spread thin: many cheap steps
    busy_r = sum(s["ms"] for s in replay) / 1000
    busy_s = sum(s["ms"] for s in chain) / 1000
    split = summary(chain, replay, search_wall=busy_s + 0.3, replay_wall=busy_r + 0.1)["split_of_difference_s"]
    assert split["slower_steps"] == pytest.approx(0, abs=0.01)
    assert split["more_steps"] == pytest.approx(busy_s - busy_r, abs=0.01)
    assert split["idle"] == pytest.approx(0.2, abs=0.01)
    # Every step 20 % dearer than the replay's engine would make it: contention.
    slow = [{**s, "ms": s["ms"] * 1.2} for s in chain]
    split = summary(slow, replay, search_wall=busy_s * 1.2, replay_wall=busy_r)["split_of_difference_s"]
    assert split["slower_steps"] == pytest.approx(busy_s * 0.2, abs=0.01)


def test_step_recorder_keeps_real_steps_inside_the_window():
    from types import SimpleNamespace

    from step_trace import StepRecorder, by_batch

    recorder = StepRecorder()
    details = dict(iteration_index=1, num_ctx_requests=2, num_ctx_tokens=40, num_generation_requests=7,
                   num_generation_tokens=7, elapsed_ms=12.5)
    recorder.add(SimpleNamespace(**details, is_dummy=False))
    recorder.add(SimpleNamespace(**details, is_dummy=True))
    recorder.add(None)
    now = time.time()
    assert [s["decoding"] for s in recorder.take((now - 5, now))] == [7]
    assert recorder.take((now - 5, now)) == []  # taken once
    rows = by_batch(_steps([(0, 500), (1, 0), (7, 0), (7, 0), (256, 0)]))
    assert [r["decoding"] for r in rows][:3] == ["0 (prefill only)", "1-1", "2-4"]
    assert [r["steps"] for r in rows] == [1, 1, 0, 2, 0, 0, 1]
