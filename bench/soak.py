"""Load and faults: a large batch through the distributed stack while it is broken on purpose (`make soak`).

1. Starts a local stack of its own with the launcher, isolated the way
   tests/integration/test_distributed.py isolates one (own PostgreSQL database, queue
   prefix and ports): the policy service, one executor, no reward service, `--workers`
   Celery worker processes (2).
2. Enqueues `--problems` GSM8K test problems (1000; the file is cycled under new ids when
   that is more than it holds) at once through `rstar enqueue`, with a small search
   (width 2, 1 rollout, depth 2, 32 tokens per step): each problem is cheap, the run is
   about load and recovery, not accuracy.
3. While they run: every `--sample-s` seconds the ready messages of the search queue (a
   passive queue declare), the RSS of every stack process tree (pids from the stack's
   state file), of the broker and of the database, and the run's progress from the store.
4. Injects the `--faults` (default: all five) one at a time, each when the finished count
   crosses its fraction of the problems (`SCHEDULE`): kill -9 a worker and start it again
   with `spawn_worker` (twice, one worker each time), restart RabbitMQ (`rabbitmqctl
   stop_app` / `start_app`), restart PostgreSQL (`pg_ctlcluster ... restart`), freeze the
   executor's process tree for `--executor-stop-s` seconds (SIGSTOP, then SIGCONT: a hung
   service, not a refused connection) and restart the policy service (`roll_service`, the
   launcher's drain-and-restart). Each fault records when it came, what was done, the
   done/failed counts before and after, how long the outage lasted and how long until the
   done count moved again.
5. When every task is done or failed (or at `--timeout-s`, or after `--stall-s` without
   progress), checks the database: no task left queued or running, every failed task
   with its reason, one task per problem, at most one result per task, a result for every
   done task and none for another; and summarises memory per process (peak, final, early
   against late, MB per 100 finished tasks).
6. Stops the stack, drops its database and queues, writes the "soak" record of
   docs/reliability.json and the Soak section of docs/reliability.md.

The RabbitMQ and PostgreSQL faults restart the servers this machine shares with everything
else: run them where nothing else uses those servers, or leave them out
(`--faults worker,executor,policy`).
Not here: the sandbox against hostile code (the static section of docs/reliability.md),
accuracy, speed comparisons (`make bench`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from search_bench import machine_line, replace_section, total_rss, write_record

REPO = Path(__file__).resolve().parents[1]
COMMAND = "make soak"
FAULTS = ("worker", "rabbitmq", "postgres", "executor", "policy")
# (fault, fraction of the problems finished when it comes): spread over the run, the broker
# and database early enough that a stuck queue still shows before the end.
SCHEDULE = (("worker", 0.10), ("rabbitmq", 0.25), ("executor", 0.40), ("worker", 0.55),
            ("postgres", 0.70), ("policy", 0.85))
# How long after its outage a fault may take to show progress before the next one comes anyway.
RECOVERY_WAIT_S = 600.0
# Window for the finishing rate before a fault and after its recovery.
RATE_WINDOW_S = 120.0
# Progress is read this often; RSS and queue depth every --sample-s.
TICK_S = 2.0
PRINT_EVERY_S = 30.0
# The line a Celery worker logs when a task returned, with its return value.
RETURNED = re.compile(r"succeeded in [0-9.]+s: '(\w+)'")
# Memory "grew" when the late median exceeds the early one by this much (and by 10 %).
GROWTH_MB = 50.0
# The first seconds of a process's life are left out of that comparison: a worker's first
# search builds its clients and event loop (about 60 MB), which is not growth.
WARMUP_S = 60.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma list of {', '.join(FAULTS)} (default: all); '' for none")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=12, help="searches at once per worker process")
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=1)
    parser.add_argument("--max-depth", type=int, default=2)
    parser.add_argument("--max-tokens-per-step", type=int, default=32)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--executor-stop-s", type=float, default=30.0)
    parser.add_argument("--timeout-s", type=float, default=6 * 3600.0, help="give up on the run after this long")
    parser.add_argument("--stall-s", type=float, default=900.0,
                        help="end the run when nothing finished for this long (and no fault is running)")
    parser.add_argument("--data", default=None, help="GSM8K_test.json (default: $RSTAR_DATA_DIR/eval/)")
    parser.add_argument("--run-dir", default=None, help="logs and state of the stack (default: a temp dir, kept)")
    parser.add_argument("--out-json", default=str(REPO / "docs" / "reliability.json"))
    parser.add_argument("--out-md", default=str(REPO / "docs" / "reliability.md"))
    args = parser.parse_args(argv)
    args.fault_list = [f for f in (s.strip() for s in args.faults.split(",")) if f]
    unknown = sorted(set(args.fault_list) - set(FAULTS))
    if unknown:
        parser.error(f"--faults: unknown {', '.join(unknown)} (choose from {', '.join(FAULTS)})")
    if args.problems < 1 or args.workers < 1 or args.concurrency < 1:
        parser.error("--problems, --workers and --concurrency must be at least 1")
    return args


def command_line(args: argparse.Namespace) -> str:
    """`make soak` for the defaults, else the exact invocation (output paths aside)."""
    defaults = vars(parse_args([]))
    changed = [k for k, v in vars(args).items() if k not in ("out_json", "out_md") and defaults.get(k) != v]
    if not changed:
        return COMMAND
    return " ".join([".venv/bin/python bench/soak.py", *map(shlex.quote, sys.argv[1:])])


# --- the stack ---------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port() -> int:
    """A launcher base port whose gRPC ports (base, +1, +2) and metrics ports (+10000) are all free."""
    for base in range(53000 + (os.getpid() % 40) * 20, 63000, 20):
        if all(_port_free(p) and _port_free(p + 10000) for p in (base, base + 1, base + 2)):
            return base
    raise RuntimeError("no free base port between 53000 and 63000")


def problem_file(path: Path, data: Path, n: int) -> Path:
    """The first `n` GSM8K test problems, cycled under new ids when `n` exceeds the file."""
    records = json.loads(data.read_text())
    with path.open("w") as out:
        for k in range(n):
            record = records[k % len(records)]
            cycle = k // len(records)
            pid = f"gsm8k-{record['index']}" + (f"-c{cycle}" if cycle else "")
            out.write(json.dumps({"id": pid, "question": record["question"], "answer": record["answer"]}) + "\n")
    return path


def read_state(run_dir: Path) -> dict:
    # The launcher rewrites the file on every (re)start; a read can meet it half written.
    for _ in range(20):
        try:
            return json.loads((run_dir / "stack.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    return {"pids": {}}


def admin_url(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False)


# --- measuring ---------------------------------------------------------------------------


def tree_rss(pid: int) -> int | None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    return total_rss(procs)


class QueueDepth:
    """Ready messages and consumers of one queue, by passive declare; reconnects after a broker restart."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.broker_url, self.queue = broker_url, queue
        self._conn = None

    def read(self) -> tuple[int, int] | None:
        from kombu import Connection

        try:
            if self._conn is None:
                self._conn = Connection(self.broker_url, connect_timeout=5)
                self._conn.ensure_connection(max_retries=1)
            ok = self._conn.default_channel.queue_declare(queue=self.queue, passive=True)
            return ok.message_count, ok.consumer_count
        except Exception:  # noqa: BLE001 - the broker down or restarting: no reading this time
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close
                pass
            self._conn = None


class Servers:
    """RSS of the broker (beam.smp) and the database (postgres) processes; re-found after restarts."""

    NAMES = {"beam.smp": "rabbitmq", "postgres": "postgres"}

    def __init__(self) -> None:
        self._procs: list[tuple[str, psutil.Process]] = []
        self._found = 0.0

    def rss(self) -> dict[str, int]:
        if time.monotonic() - self._found > 60 or any(not p.is_running() for _, p in self._procs):
            self._procs = [(self.NAMES[p.info["name"]], p) for p in psutil.process_iter(["name"])
                           if p.info["name"] in self.NAMES]
            self._found = time.monotonic()
        out: dict[str, int] = {}
        for label, proc in self._procs:
            try:
                out[label] = out.get(label, 0) + proc.memory_info().rss
            except psutil.Error:
                pass
        return out


def counts(store, run: str) -> dict | None:
    """Tasks per state, or None while the database cannot answer (a restart)."""
    from sqlalchemy.exc import DBAPIError

    try:
        return dict(store.run_progress(run).states)
    except DBAPIError:
        return None


# --- faults ------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    fraction: float
    # Filled in as it happens (times in seconds since the enqueue).
    at_s: float | None = None
    done_by: str = ""
    before: dict = field(default_factory=dict)
    after_outage: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    outage_s: float | None = None
    recovery_s: float | None = None
    rate_before_per_min: float | None = None
    rate_after_per_min: float | None = None
    note: str = ""
    error: str = ""
    extra: dict = field(default_factory=dict)
    # Monotonic clock, internal.
    _started: float | None = None
    _restored: float | None = None

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


class Injector:
    """Runs one fault's action in a thread, so that sampling goes on during outages."""

    def __init__(self, spec, store, run: str, args: argparse.Namespace, queue: QueueDepth) -> None:
        self.spec, self.store, self.run, self.args, self.queue = spec, store, run, args, queue
        self.worker_kills = 0
        self.thread: threading.Thread | None = None
        self._paused: list[psutil.Process] = []
        self._broker_stopped = False

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, fault: Fault, t0: float, before: dict) -> None:
        fault._started = time.monotonic()
        fault.at_s = round(fault._started - t0, 1)
        fault.before = before
        self.thread = threading.Thread(target=self._run, args=(fault,), name=f"fault-{fault.kind}")
        self.thread.start()

    def _run(self, fault: Fault) -> None:
        try:
            fault.done_by = getattr(self, f"_{fault.kind}")(fault)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the soak goes on
            fault.error = f"{type(exc).__name__}: {exc}"
        fault._restored = time.monotonic()
        fault.outage_s = round(fault._restored - fault._started, 1)
        # The database may still be coming back: wait for an answer, not for a guess.
        for _ in range(60):
            now = counts(self.store, self.run)
            if now is not None:
                fault.after_outage = now
                break
            time.sleep(1.0)

    def _worker(self, fault: Fault) -> str:
        from rstar_cli.launcher import spawn_worker

        index = self.worker_kills % self.spec.workers
        self.worker_kills += 1
        name = f"worker-{index}"
        pid = read_state(self.spec.run_dir)["pids"][name]
        orphans = self._running_on(pid)
        os.killpg(pid, signal.SIGKILL)
        _reap(pid)
        new = spawn_worker(self.spec, index)
        fault.extra = {"worker": name, "killed_pid": pid, "new_pid": new.pid, "orphaned_tasks": orphans}
        return (f"kill -9 of {name}'s process group (pid {pid}, {len(orphans)} searches running), "
                f"started again at once with spawn_worker (pid {new.pid})")

    def _running_on(self, pid: int) -> list[int]:
        from sqlalchemy import select

        from rstar_store.models import Run, SearchTask

        with self.store.engine.connect() as conn:
            return list(conn.execute(
                select(SearchTask.id).join(Run, Run.id == SearchTask.run_id)
                .where(Run.name == self.run, SearchTask.state == "running",
                       SearchTask.worker == f"{socket.gethostname()}:{pid}")).scalars())

    def _rabbitmq(self, fault: Fault) -> str:
        _sh(["rabbitmqctl", "stop_app"])
        self._broker_stopped = True
        try:
            stopped = time.monotonic()
            _sh(["rabbitmqctl", "start_app"])
        finally:
            self._broker_stopped = False
        # A connection of its own: the sampling thread uses the other one meanwhile.
        probe = QueueDepth(self.queue.broker_url, self.queue.queue)
        deadline = time.monotonic() + 300
        try:
            while probe.read() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("RabbitMQ did not accept connections within 300 s of start_app")
                time.sleep(0.5)
        finally:
            probe.close()
        fault.extra = {"down_s": round(time.monotonic() - stopped, 1)}
        return "rabbitmqctl stop_app, then start_app; waited until a client could declare the search queue"

    def _postgres(self, fault: Fault) -> str:
        import psycopg

        version = sorted(os.listdir("/etc/postgresql"))[-1]
        _sh(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"])
        deadline = time.monotonic() + 300
        while True:
            try:
                with psycopg.connect(admin_url(self.spec.database_url), connect_timeout=3) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise TimeoutError("PostgreSQL did not accept connections within 300 s of its restart")
                time.sleep(0.5)
        return (f"pg_ctlcluster --skip-systemctl-redirect {version} main restart; "
                "waited until it accepted connections")

    def _executor(self, fault: Fault) -> str:
        pid = read_state(self.spec.run_dir)["pids"]["executor-0"]
        root = psutil.Process(pid)
        self._paused = [root, *root.children(recursive=True)]
        for proc in self._paused:
            _signal(proc, signal.SIGSTOP)
        fault.extra = {"processes_stopped": len(self._paused)}
        try:
            time.sleep(self.args.executor_stop_s)
        finally:
            self.resume()
        return (f"SIGSTOP to the executor's process tree (service and sandbox workers) for "
                f"{self.args.executor_stop_s:g} s, then SIGCONT")

    def _policy(self, fault: Fault) -> str:
        from rstar_cli.launcher import roll_service

        if not roll_service(self.spec.run_dir, "policy", {}, grace_s=30.0, timeout_s=900.0):
            raise RuntimeError("no policy replica running")
        return "roll_service: SIGTERM (drain), start again on its port, wait until SERVING"

    def resume(self) -> None:
        """Undo what must not outlive the soak: a frozen executor, a stopped broker."""
        for proc in self._paused:
            _signal(proc, signal.SIGCONT)
        self._paused = []
        if self._broker_stopped:
            subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=300)
            self._broker_stopped = False


def _sh(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {(result.stderr or result.stdout)[-500:]}")


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def _reap(pid: int) -> None:
    """Wait until the killed process is gone (it is our child: collect it, or it stays a zombie)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not psutil.pid_exists(pid):
                return
        time.sleep(0.05)


# --- the run -----------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    import psycopg
    from sqlalchemy.engine import make_url

    from rstar_cli.launcher import DEFAULT_BROKER, DEFAULT_DB, StackSpec, start_stack, stop_stack, wait_healthy
    from rstar_models.store import prepare_model
    from rstar_store import Store

    data = Path(args.data or Path(os.environ.get("RSTAR_DATA_DIR", REPO.parent / "shared" / "data"))
                / "eval" / "GSM8K_test.json")
    tag = uuid.uuid4().hex[:8]
    db_name = f"rstar_soak_{tag}"
    prefix = f"soak-{tag}-"
    run = f"soak-{tag}"
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="rstar-soak-")) / "stack"
    database_url = make_url(os.environ.get("RSTAR_DATABASE_URL", DEFAULT_DB)).set(database=db_name).render_as_string(
        hide_password=False)
    spec = StackSpec(
        run_dir=run_dir,
        database_url=database_url,
        broker_url=os.environ.get("RSTAR_BROKER_URL", DEFAULT_BROKER),
        workers=args.workers,
        worker_concurrency=args.concurrency,
        executors=1,
        with_reward=False,
        base_port=free_base_port(),
        env={"RSTAR_MODEL": str(prepare_model()), "RSTAR_QUEUE_PREFIX": prefix,
             "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
             "VLLM_LOGGING_LEVEL": "WARNING"},
    )
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    problems = problem_file(run_dir.parent / "problems.jsonl", data, args.problems)
    say(f"stack in {run_dir} (database {db_name}, queues {prefix}*, base port {spec.base_port}); "
        f"{args.problems} problems, faults: {', '.join(args.fault_list) or 'none'}")
    started = time.monotonic()
    store = None
    queue = QueueDepth(spec.broker_url, prefix + "search")
    injector = None
    try:
        start_stack(spec)
        wait_healthy(spec, timeout_s=900)
        startup_s = time.monotonic() - started
        say(f"stack SERVING after {startup_s:.0f} s")
        store = Store.from_url(database_url)
        injector = Injector(spec, store, run, args, queue)
        outcome = soak(args, spec, store, run, problems, queue, injector)
        outcome["stack_startup_s"] = round(startup_s, 1)
        outcome["checks"] = database_checks(store, run, args.problems)
        outcome["worker_logs"] = worker_log_counts(run_dir)
        outcome["config"] = store.get_run(run).config
    finally:
        if injector is not None:
            if injector.thread is not None:
                injector.thread.join(timeout=900)
            injector.resume()
        queue.close()
        if store is not None:
            store.close()
        stop_stack(run_dir, grace_s=10)
        with psycopg.connect(admin_url(database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        delete_queues(spec.broker_url, prefix)
        say(f"stack stopped, database and queues dropped; logs kept in {run_dir}")

    record = {
        "command": command_line(args),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_line(),
        "stack": (f"policy (SmolLM2-135M-Instruct, vLLM CPU, {spec.env['VLLM_CPU_KVCACHE_SPACE']} GiB KV cache) and "
                  f"1 executor gRPC service, {args.workers} Celery worker processes (threads, concurrency {args.concurrency} each), no reward service; "
                  "RabbitMQ and PostgreSQL of this machine; all processes on this machine"),
        "problems": f"{args.problems} GSM8K test problems"
                    + (" (the file cycled under new ids)" if args.problems > len(json.loads(data.read_text())) else ""),
        "search": {"config": "demo", "width": args.width, "rollouts": args.rollouts, "max_depth": args.max_depth,
                   "max_tokens_per_step": args.max_tokens_per_step},
        "faults_requested": args.fault_list,
        **outcome,
    }
    write_record(Path(args.out_json), "soak", record)
    write_markdown(Path(args.out_md), record)
    verdict = "PASS" if record["checks"]["ok"] else "FAIL"
    say(f"{verdict}: done {record['counts']['done']}, failed {record['counts']['failed']} of {args.problems} "
        f"in {record['wall_s'] / 60:.1f} min; report in {args.out_md} and {args.out_json}")


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def soak(args, spec, store, run: str, problems: Path, queue: QueueDepth, injector: Injector) -> dict:
    """Enqueue, sample, inject the faults; returns everything measured."""
    schedule = [Fault(kind, fraction) for kind, fraction in SCHEDULE if kind in args.fault_list]
    servers = Servers()
    env = {**os.environ, **spec.env, "RSTAR_DATABASE_URL": spec.database_url, "RSTAR_BROKER_URL": spec.broker_url}
    enqueue = [sys.executable, "-m", "rstar_cli.main", "enqueue", str(problems), "--run", run, "--config", "demo",
               "--width", str(args.width), "--rollouts", str(args.rollouts), "--max-depth", str(args.max_depth),
               "--set", f"max_tokens_per_step={args.max_tokens_per_step}"]
    t0 = time.monotonic()
    result = subprocess.run(enqueue, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"rstar enqueue failed: {result.stderr[-2000:]}")
    enqueue_s = time.monotonic() - t0
    say(f"enqueued in {enqueue_s:.1f} s: {result.stdout.strip()}")

    n = args.problems
    progress: list[tuple[float, int, int]] = []  # (t, done, failed)
    samples: list[dict] = []
    pending = list(schedule)
    active: Fault | None = None
    announced: set[int] = set()
    last = {"done": 0, "failed": 0, "running": 0, "queued": n}
    last_change, last_finished = t0, -1
    next_sample = next_print = t0
    ended = "all tasks done or failed"
    while True:
        now = time.monotonic()
        states = counts(store, run)
        if states is not None:
            last = states
            progress.append((now - t0, states["done"], states["failed"]))
        finished = last["done"] + last["failed"]
        if finished != last_finished:
            last_finished, last_change = finished, now
        if now >= next_sample:
            samples.append(sample(now - t0, spec, queue, servers, last, injector.busy()))
            next_sample = now + args.sample_s
        if now >= next_print:
            say(progress_line(now - t0, last, samples[-1] if samples else None, n))
            next_print = now + PRINT_EVERY_S

        # One fault at a time: the next comes after the last one's recovery.
        if active is not None and active._restored is not None and id(active) not in announced:
            announced.add(id(active))
            say(f"fault {active.kind}: {active.done_by or 'not done'} (outage {active.outage_s} s)"
                + (f" [error: {active.error}]" if active.error else ""))
        if active is not None and not injector.busy() and active._restored is not None:
            if active.recovery_s is None and last["done"] > active.after_outage.get("done", math.inf):
                active.recovery_s = round(now - active._restored, 1)
                active.after = dict(last)
                say(f"fault {active.kind} recovered: done count moved {active.recovery_s} s after the outage "
                    f"(outage {active.outage_s} s); done/failed {active.after['done']}/{active.after['failed']}")
                active = None
            elif finished >= n:
                active.note = "the run finished before the done count moved again"
                active.after = dict(last)
                active = None
            elif now - active._restored > RECOVERY_WAIT_S:
                active.note = f"no task finished within {RECOVERY_WAIT_S:.0f} s of the outage"
                active.after = dict(last)
                say(f"fault {active.kind}: {active.note}; going on")
                active = None
        if active is None and pending and finished < n and finished >= pending[0].fraction * n:
            active = pending.pop(0)
            say(f"fault {active.kind} at done {last['done']} failed {last['failed']}")
            injector.start(active, t0, dict(last))

        if finished >= n and active is None:
            break
        if now - t0 > args.timeout_s:
            ended = f"timeout after {args.timeout_s:.0f} s"
            break
        if not injector.busy() and now - last_change > args.stall_s:
            ended = f"stalled: nothing finished for {args.stall_s:.0f} s"
            break
        time.sleep(TICK_S)

    wall = time.monotonic() - t0
    say(f"run ended ({ended}): {progress_line(wall, last, samples[-1] if samples else None, n)}")
    for fault in schedule:
        if fault.at_s is None:
            fault.note = "not injected: the run ended first"
        orphans = fault.extra.get("orphaned_tasks")
        if orphans:
            fault.extra["orphans_ended"] = orphan_states(store, orphans)
        rate_around(fault, progress)
    return {
        "ended": ended,
        "wall_s": round(wall, 1),
        "enqueue_s": round(enqueue_s, 1),
        "counts": last,
        "problems_per_min": round((last["done"] + last["failed"]) / wall * 60, 2) if wall > 0 else None,
        "faults": [f.public() for f in schedule],
        "memory": memory_summary(samples),
        "queue": queue_summary(samples, wall),
    }


def sample(t: float, spec, queue: QueueDepth, servers: Servers, states: dict, fault: bool) -> dict:
    pids = read_state(spec.run_dir)["pids"]
    rss = {name: tree_rss(pid) for name, pid in sorted(pids.items())}
    depth = queue.read()
    return {"t": round(t, 1), "pids": pids, "rss": rss, "servers": servers.rss(),
            "ready": depth[0] if depth else None, "consumers": depth[1] if depth else None,
            "finished": states["done"] + states["failed"], "fault": fault}


def progress_line(t: float, states: dict, last_sample: dict | None, n: int) -> str:
    line = (f"{t / 60:5.1f} min  done {states['done']} failed {states['failed']} running {states['running']} "
            f"queued {states['queued']} of {n}")
    if last_sample:
        ready = last_sample["ready"]
        line += f" | queue {'?' if ready is None else ready} ready"
        line += " | RSS MB " + " ".join(f"{name} {rss / 2**20:.0f}" for name, rss in last_sample["rss"].items()
                                        if rss is not None)
    finished = states["done"] + states["failed"]
    if t > 0:
        line += f" | {finished / t * 60:.2f}/min"
    return line


def rate_around(fault: Fault, progress: list[tuple[float, int, int]]) -> None:
    """Problems finished per minute in the window before the fault and after its recovery."""
    def finished_at(t: float) -> int | None:
        before = [d + f for s, d, f in progress if s <= t]
        return before[-1] if before else None

    if fault.at_s is None:
        return
    start, end = finished_at(fault.at_s - RATE_WINDOW_S), finished_at(fault.at_s)
    if start is not None and end is not None and fault.at_s >= RATE_WINDOW_S:
        fault.rate_before_per_min = round((end - start) / RATE_WINDOW_S * 60, 2)
    if fault.recovery_s is not None and fault.outage_s is not None:
        since = fault.at_s + fault.outage_s + fault.recovery_s
        if progress and progress[-1][0] >= since + RATE_WINDOW_S:
            a, b = finished_at(since), finished_at(since + RATE_WINDOW_S)
            fault.rate_after_per_min = round((b - a) / RATE_WINDOW_S * 60, 2)


def orphan_states(store, task_ids: list[int]) -> dict:
    """How the searches that were running on a killed worker ended: states and attempts."""
    from sqlalchemy import func, select

    from rstar_store.models import SearchTask

    with store.engine.connect() as conn:
        rows = conn.execute(select(SearchTask.state, func.count(), func.min(SearchTask.attempts),
                                   func.max(SearchTask.attempts))
                            .where(SearchTask.id.in_(task_ids)).group_by(SearchTask.state)).all()
    return {state: {"tasks": n, "attempts": [lo, hi]} for state, n, lo, hi in rows}


# --- the end -----------------------------------------------------------------------------


def database_checks(store, run: str, n: int) -> dict:
    """What the database says about the run: every task ended, with a reason, nothing twice."""
    from sqlalchemy import func, select

    from rstar_store.models import ProblemRow, Run, SearchResultRow, SearchTask, TrajectoryRow

    with store.engine.connect() as conn:
        run_id = conn.execute(select(Run.id).where(Run.name == run)).scalar_one()
        tasks = select(SearchTask).where(SearchTask.run_id == run_id).subquery()
        states = dict(conn.execute(select(tasks.c.state, func.count()).group_by(tasks.c.state)).all())

        def scalar(query) -> int:
            return int(conn.execute(query).scalar_one() or 0)

        problems = scalar(select(func.count()).select_from(ProblemRow).where(ProblemRow.run_id == run_id))
        per_problem = select(tasks.c.problem_id).group_by(tasks.c.problem_id, tasks.c.round).having(
            func.count() > 1).subquery()
        per_task = (select(SearchResultRow.task_id).join(tasks, tasks.c.id == SearchResultRow.task_id)
                    .group_by(SearchResultRow.task_id).having(func.count() > 1).subquery())
        results = scalar(select(func.count()).select_from(SearchResultRow)
                         .join(tasks, tasks.c.id == SearchResultRow.task_id))
        with_result = select(SearchResultRow.task_id)
        checks = {
            "tasks": sum(states.values()),
            "problems": problems,
            "states": states,
            "left_queued_or_running": states.get("queued", 0) + states.get("running", 0),
            "failed_without_reason": scalar(select(func.count()).select_from(tasks).where(
                tasks.c.state == "failed", func.coalesce(tasks.c.last_error, "") == "")),
            "problems_with_two_tasks": scalar(select(func.count()).select_from(per_problem)),
            "results": results,
            "tasks_with_two_results": scalar(select(func.count()).select_from(per_task)),
            "done_without_result": scalar(select(func.count()).select_from(tasks).where(
                tasks.c.state == "done", tasks.c.id.not_in(with_result))),
            "result_on_a_task_not_done": scalar(select(func.count()).select_from(tasks).where(
                tasks.c.state != "done", tasks.c.id.in_(with_result))),
            "trajectories_recorded_twice": scalar(select(func.count()).select_from(
                select(TrajectoryRow.result_id).join(SearchResultRow, SearchResultRow.id == TrajectoryRow.result_id)
                .join(tasks, tasks.c.id == SearchResultRow.task_id)
                .group_by(TrajectoryRow.result_id, TrajectoryRow.ordinal).having(func.count() > 1).subquery())),
            "attempts": {str(a): c for a, c in conn.execute(
                select(tasks.c.attempts, func.count()).group_by(tasks.c.attempts).order_by(tasks.c.attempts)).all()},
            "failure_reasons": [{"reason": r, "tasks": c} for r, c in conn.execute(
                select(func.left(tasks.c.last_error, 160).label("r"), func.count())
                .where(tasks.c.state == "failed").group_by("r").order_by(func.count().desc()).limit(5)).all()],
        }
    checks["ok"] = (checks["tasks"] == n and problems == n and checks["left_queued_or_running"] == 0
                    and states.get("cancelled", 0) == 0 and checks["failed_without_reason"] == 0
                    and checks["problems_with_two_tasks"] == 0 and checks["tasks_with_two_results"] == 0
                    and checks["done_without_result"] == 0 and checks["result_on_a_task_not_done"] == 0
                    and checks["trajectories_recorded_twice"] == 0 and results == states.get("done", 0))
    return checks


def worker_log_counts(run_dir: Path) -> dict:
    """What the Celery workers said about their tasks (their logs survive restarts: appended).

    `returned`: the task's return values ('done', 'duplicate': a redelivered search whose
    result was already written and was dropped, 'skipped', 'failed', ...).
    """
    patterns = {"retries": "] retry: ", "raised_unexpected": "raised unexpected",
                "broker_connection_lost": "Connection to broker lost", "cannot_connect": "Cannot connect to"}
    out: dict = dict.fromkeys(patterns, 0)
    returned: dict[str, int] = {}
    for log in sorted(run_dir.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            for key, needle in patterns.items():
                if needle in line:
                    out[key] += 1
            value = RETURNED.search(line)
            if value:
                returned[value.group(1)] = returned.get(value.group(1), 0) + 1
    out["returned"] = returned
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def memory_summary(samples: list[dict]) -> dict:
    """Per process: peak and final RSS, and whether its main incarnation grew with the work done.

    Growth is judged on the samples taken while no fault was being injected (a process
    being drained, killed or frozen says nothing about what the work costs), after the
    process's first `WARMUP_S`.
    """
    names = sorted({name for s in samples for name in s["rss"]} | {name for s in samples for name in s["servers"]})
    out = {}
    for name in names:
        series = []  # (t, pid, MB, finished, during a fault)
        for s in samples:
            rss = s["rss"].get(name) if name in s["rss"] else s["servers"].get(name)
            if rss is not None:
                series.append((s["t"], s["pids"].get(name), rss / 2**20, s["finished"], s["fault"]))
        if not series:
            continue
        lives: list[list] = []
        for point in series:
            if not lives or lives[-1][-1][1] != point[1]:
                lives.append([])
            lives[-1].append(point)
        # The incarnation that saw the most tasks finish: a process restarted near the end
        # is still loading in most of its samples.
        quiet = [[p for p in life if not p[4] and p[0] - life[0][0] >= WARMUP_S] or life for life in lives]
        life = max(quiet, key=lambda points: (points[-1][3] - points[0][3], len(points)))
        quarter = max(1, len(life) // 4)
        early, late = _median([p[2] for p in life[:quarter]]), _median([p[2] for p in life[-quarter:]])
        out[name] = {
            "peak_mb": round(max(p[2] for p in series)),
            "final_mb": round(series[-1][2]),
            "restarts": len(lives) - 1 if name in samples[-1]["pids"] else None,
            "early_mb": round(early),
            "late_mb": round(late),
            "mb_per_100_tasks": _slope([p[3] for p in life], [p[2] for p in life]),
            "grew": bool(late - early > max(GROWTH_MB, 0.1 * early)),
            "series": [[round(p[0]), round(p[2])] for p in _thin(series, 60)],
        }
    return out


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares MB per 100 finished tasks (None when fewer than 10 finished meanwhile)."""
    if len(xs) < 3 or max(xs) - min(xs) < 10:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx * 100, 1)


def _thin(items: list, most: int) -> list:
    if len(items) <= most:
        return items
    step = len(items) / most
    return [items[int(k * step)] for k in range(most)] + [items[-1]]


def queue_summary(samples: list[dict], wall: float) -> dict:
    points = [(s["t"], s["ready"]) for s in samples if s["ready"] is not None]
    if not points:
        return {}
    by_tenth = []
    for k in range(10):
        lo, hi = wall * k / 10, wall * (k + 1) / 10
        inside = [r for t, r in points if lo <= t < hi]
        by_tenth.append(round(_median(inside)) if inside else None)
    return {
        "first": points[0][1], "max": max(r for _, r in points), "last": points[-1][1],
        "median_by_tenth": by_tenth,
        "unreadable_samples": sum(1 for s in samples if s["ready"] is None),
        "series": [[round(t), r] for t, r in _thin(points, 100)],
    }


def delete_queues(broker_url: str, prefix: str) -> None:
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=10) as conn:
            channel = conn.default_channel
            for name in ("search", "eval", "train"):
                channel.queue_delete(prefix + name)
                channel.exchange_delete(prefix + name)
    except Exception as exc:  # noqa: BLE001 - reported, never hides the soak's own outcome
        say(f"could not delete the queues {prefix}*: {exc}")


# --- the report --------------------------------------------------------------------------


def _fmt(value, unit: str = "") -> str:
    return "–" if value is None else f"{value}{unit}"


def write_markdown(path: Path, record: dict) -> None:
    c, k = record["checks"], record["counts"]
    s = record["search"]
    fault_rows = []
    for i, f in enumerate(record["faults"], 1):
        before = f"{f['before']['done']}/{f['before']['failed']}" if f["before"] else "–"
        after = f"{f['after']['done']}/{f['after']['failed']}" if f["after"] else "–"
        notes = "; ".join(x for x in (f["note"], f"error: {f['error']}" if f["error"] else "",
                                      _orphans_note(f["extra"])) if x)
        rates = f"{_fmt(f['rate_before_per_min'])} → {_fmt(f['rate_after_per_min'])}"
        at = "–" if f["at_s"] is None else f"{f['at_s'] / 60:.1f}"
        fault_rows.append(f"| {i} | {at} | {f['kind']} | {f['done_by'] or '–'} | {before} | {after} | "
                          f"{_fmt(f['outage_s'])} | {_fmt(f['recovery_s'])} | {rates} | {notes or '–'} |")
    memory_rows = [
        f"| {name} | {m['early_mb']} | {m['late_mb']} | {m['peak_mb']} | {m['final_mb']} | "
        f"{_fmt(m['mb_per_100_tasks'])} | {'**yes**' if m['grew'] else 'no'} | {_fmt(m['restarts'])} |"
        for name, m in record["memory"].items()]
    q = record["queue"]
    reasons = "; ".join(f"{r['tasks']}× `{r['reason']}`" for r in c["failure_reasons"]) or "none"
    logs = record["worker_logs"]
    verdict = "**all checks pass**" if c["ok"] else "**some checks FAIL** (see the table)"
    section = f"""<!-- soak:start -->
## Soak (`{record['command']}`)

{record['date']}, {record['machine']}; {record['stack']}. {record['problems']}, enqueued at once
with `rstar enqueue --config demo` (width {s['width']}, {s['rollouts']} rollouts, depth {s['max_depth']},
{s['max_tokens_per_step']} tokens per step). Stack start-up {record['stack_startup_s']} s, enqueue {record['enqueue_s']} s.

**Outcome**: {k['done']} done, {k['failed']} failed of {c['tasks']} tasks in {record['wall_s'] / 60:.1f} min
({record['problems_per_min']} problems/min, faults included); the run ended: {record['ended']}; {verdict}.

### Faults

One at a time, each when the finished count crossed its share of the problems, the next only after the
last one's recovery. *Outage*: from the start of the fault until the broken part was back (process
started again, server accepting connections, executor continued). *Recovery*: from then until the
done count moved again. *Rate*: problems finished per minute in the {RATE_WINDOW_S / 60:.0f} minutes
before the fault and after its recovery. Done/failed *after* is at the recovery.

| # | at min | fault | what was done | done/failed before | after | outage s | recovery s | rate before → after | notes |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(fault_rows) or '| – | – | none | – | – | – | – | – | – | – |'}

### Database checks (at the end)

| check | value | expected |
|---|---|---|
| tasks / problems in the run | {c['tasks']} / {c['problems']} | {record['problems'].split()[0]} each |
| tasks by state | {', '.join(f'{s_} {n_}' for s_, n_ in sorted(c['states'].items()))} | done or failed only |
| left queued or running | {c['left_queued_or_running']} | 0 |
| failed without a reason | {c['failed_without_reason']} | 0 |
| problems with two tasks | {c['problems_with_two_tasks']} | 0 |
| tasks with two results | {c['tasks_with_two_results']} | 0 (also a UNIQUE constraint) |
| results / done tasks | {c['results']} / {c['states'].get('done', 0)} | equal |
| done tasks without a result | {c['done_without_result']} | 0 |
| results on a task not done | {c['result_on_a_task_not_done']} | 0 |
| trajectories recorded twice | {c['trajectories_recorded_twice']} | 0 |
| tasks by attempts | {', '.join(f'{a}: {n_}' for a, n_ in c['attempts'].items())} | ≥ 2 only where a fault hit |
| failure reasons (top 5) | {reasons} | |
| worker logs: retries, results dropped as duplicates, tasks that raised | {logs['retries']}, {logs['returned'].get('duplicate', 0)}, {logs['raised_unexpected']} | |

### Memory (RSS in MB, each process with its children)

Sums of RSS, so pages shared between a process and its children (the policy's engine processes)
count more than once. `rabbitmq` and `postgres` are the whole servers, with every other user of them
on this machine.

*Early* and *late*: medians of the first and last quarter of the samples of the process's main
incarnation, the one during which the most tasks finished (a killed or restarted process starts a new
one), leaving out its first {WARMUP_S:.0f} s and the samples taken while a fault was being injected;
*MB per 100 tasks*: least-squares slope of RSS against finished tasks over those samples. *Grew*: late above early by more than {GROWTH_MB:.0f} MB and 10 %.

| process | early | late | peak | final | MB per 100 tasks | grew | restarts |
|---|---|---|---|---|---|---|---|
{chr(10).join(memory_rows)}

### Queue depth

Ready messages in the search queue (unacknowledged deliveries not counted): first {_fmt(q.get('first'))},
max {_fmt(q.get('max'))}, last {_fmt(q.get('last'))}; median by tenth of the run:
{' '.join(_fmt(x) for x in q.get('median_by_tenth', []))}; {_fmt(q.get('unreadable_samples'))} samples
could not read it (broker down). The series is in `docs/reliability.json`.
<!-- soak:end -->
"""
    if not path.exists():
        path.write_text("# Reliability\n\nEvery number here names the command that produced it.\n\n")
    replace_section(path, "soak", section)


def _orphans_note(extra: dict) -> str:
    ended = extra.get("orphans_ended")
    if not ended:
        return ""
    parts = ", ".join(f"{v['tasks']} {state} (attempts {v['attempts'][0]}-{v['attempts'][1]})"
                      for state, v in sorted(ended.items()))
    return f"searches running on the killed worker: {parts}"


if __name__ == "__main__":
    main()
