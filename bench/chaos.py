"""Chaos run (issue 6): thousands of runs while workers, the API, the broker and the database
connections are killed on a schedule; then every invariant is checked from the database alone.

    .venv/bin/python bench/chaos.py                      # both brokers, 2,000 runs each, ~16 faults each
    .venv/bin/python bench/chaos.py --quick              # a few hundred runs, a few faults, < 3 minutes
    .venv/bin/python bench/chaos.py --broker redis --runs 500 --seed 7

For each broker (Redis, RabbitMQ) it creates a PostgreSQL database, migrates it, starts
`interlock serve` and N `interlock worker` processes, and starts runs of the example
workflows (cargo, orders) and of bench/chaos_workflows.py (an activity, a long flaky step,
a step that breaks until retried, timers read from the data; parents of child runs and of a
Map, bench/chaos_composition.py) through the REST API. What
each run meets is planned from its seed and stored in its data (``data["chaos"]``): flaky
attempts, timers set seconds ahead, external events this script sends through the API
(engine.client.Client), cancels, operator retries of failed runs, operator pauses and resumes
(events meanwhile sent with queue=True: bench/chaos_pauses.py), schedules ticking every second or
two under each overlap policy (bench/chaos_schedules.py), one of them issuing runs that
retention archives and deletes two seconds after they end (bench/chaos_retention.py), a bulk
cancel of the runs a search field selects (bench/chaos_batches.py), runs started on version 1
of a workflow and moved to version 2 mid-flight by a migration plan made and applied through the
API (bench/chaos_migrations.py), calls under a concurrency limit per account
(bench/chaos_limits.py), and activity tasks that
ActivityPollers do (one more receiver drops one task per run on the floor).

Meanwhile, on the printed schedule: SIGKILL a random worker and restart it, SIGKILL the API
(gunicorn master and worker) and restart it, restart the broker server (Redis keeps nothing
on disk here: queued messages are really lost; RabbitMQ: stop_app/start_app), and terminate
the engine's PostgreSQL backends (pg_terminate_backend; this script's own connection is
spared). Then it waits until every run has ended and checks (bench/chaos_checks.py):
final states allowed by the definitions and the plans, contiguous history, one transition
per state entry, each step result applied once, timers only in their state entry, and no
step function executed twice except after an injected fault (bench/duplicates.py counts
them; each is put down to the fault it overlapped). One line per invariant, a summary, and
exit status 1 when any invariant is violated.

Only 127.0.0.1 is contacted. Restarting the broker restarts the shared local server.
"""

import argparse
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (chaos_batches, chaos_composition, chaos_limits, chaos_migrations, chaos_pauses, chaos_retention,
                   chaos_schedules, duplicates)
from bench import measure as m
from bench.chaos_checks import check
from engine.client import ActivityPoller, ApiError, Client, ClientError
from engine.registry import Registry

WORKFLOWS = "workflows,bench.chaos_workflows"
BROKERS = {"redis": ("PostgreSQL + Redis", m.REDIS_URL, 6379), "rabbitmq": ("PostgreSQL + RabbitMQ", m.AMQP_URL, 5672)}
FAULTS = ("kill_worker", "kill_api", "restart_broker", "drop_db")
APP_NAME = "interlock-chaos"
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
               "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"]


class InspectionFailed(Exception):
    """The activity worker's simulated failure (its run's data asks for it)."""


@dataclass
class Config:
    runs: int = 2000
    workers: int = 3
    threads: int = 8
    load_seconds: float = 100.0  # runs are started evenly over this long
    faults: list = field(default_factory=list)  # [(seconds after the first start, kind)]
    settle_timeout: float = 240.0  # after the last fault, how long the runs get to end
    seed: int = 1
    keep_db: bool = False
    worker_module: str = "engine.cli"  # tests swap in a deliberately broken worker
    lease_seconds: float = 3.0
    # The safety re-send interval: long enough that the runs' re-sends come from the faults
    # (a dead sender, a restarted broker), short enough to recover within the settle timeout.
    resend_after: float = 10.0
    poll_interval: float = 0.2
    batch_chunk: int = 2


def schedule(count: int, first: float, every: float, rng: random.Random, kinds=FAULTS) -> list:
    """``count`` faults ``every`` seconds from ``first``: each kind once, then at random."""
    weights = {k: w for k, w in {"kill_worker": 4, "drop_db": 3, "kill_api": 2, "restart_broker": 2}.items()
               if k in kinds}
    kinds = list(weights)
    rng.shuffle(kinds)
    while len(kinds) < count:
        kinds.append(rng.choices(list(weights), list(weights.values()))[0])
    return [(round(first + i * every + rng.uniform(-0.3, 0.3) * every, 1), kind)
            for i, kind in enumerate(kinds[:count])]


# -- what the runs meet ---------------------------------------------------------------------

def plan_run(i: int, rng: random.Random, now: float) -> tuple[str, dict]:
    """A workflow and its data (the plan is in ``data["chaos"]``, read back by the checks)."""
    chaos = {"i": i}
    if rng.random() < 0.05:
        chaos["cancel_after"] = round(rng.uniform(0.3, 8.0), 2)
    kind = rng.choices(["cargo", "orders", "chaos_parcel", "composed"], [30, 30, 22, 18])[0]
    if kind == "composed":
        kind, data = chaos_composition.plan(i, rng, now)
    elif kind == "cargo":
        chaos["plan"] = rng.choices(["deliver", "lost", "race_lost"], [80, 10, 10])[0]
        if chaos["plan"] != "deliver":
            chaos["lost_after"] = round(rng.uniform(0.0, 1.5), 2)
        data = {"container": f"CHAOS{i:06d}", "origin": "Shanghai", "destination": "Rotterdam",
                "manifest": ["parts"], "check_every_seconds": rng.choice([0.2, 0.5, 1.0]),
                "arrives_after_checks": 10**9 if chaos["plan"] == "lost" else rng.randint(1, 3),
                "customs_outages": rng.randint(0, 2), "customs_holds": rng.choice([0, 0, 1])}
    elif kind == "orders":
        large = rng.random() < 0.2
        price = 700.0 if large else round(rng.uniform(1, 60), 2)
        data = {"order_id": f"CHAOS-{i}", "customer": f"c{i}@example.com",
                "card": "declined" if rng.random() < 0.1 else "4242",
                "items": [{"sku": f"SKU-{rng.randint(1, 99)}", "qty": rng.randint(2, 3) if large else 1,
                           "price": price}],
                "gateway_timeouts": rng.choice([0, 0, 1, 2, 3])}
        if large:
            chaos["decision"] = rng.choice(["approve", "approve", "reject"])
    else:
        chaos["pickup"] = rng.choices(["pickup", "race", "no_pickup"], [60, 25, 15])[0]
        data = {"inspect_failures": rng.choice([0, 0, 1, 2]),
                "work_seconds": rng.choice([0, 0, 0.05, 0.3, 1.2, 2.0]),
                "sort_failures": rng.choice([0, 0, 1, 2]),
                "broken_until": round(now + rng.uniform(1, 6), 3) if rng.random() < 0.25 else 0,
                "label_deadline": round(now + (3600 if rng.random() < 0.5 else rng.uniform(2, 8)), 3),
                "pickup_deadline": round(now + (3600 if chaos["pickup"] == "pickup" else rng.uniform(4, 12)), 3)}
    kind, data = chaos_migrations.plan(kind, data, chaos, i)
    kind, data = chaos_limits.plan(kind, data, chaos, i)
    chaos_pauses.plan(chaos, kind, i)
    chaos_batches.plan(chaos, kind, data, i)
    data["chaos"] = chaos
    return kind, data


# (workflow, state, statuses) -> what the outside world does to a run waiting there
def external_action(run: dict):
    if run["workflow"] == chaos_migrations.WORKFLOW:
        return chaos_migrations.external_action(run)
    plan = run["data"].get("chaos") or {}
    key = (run["workflow"], run["state"])
    if key == ("cargo", "booked"):
        return ("event", "depart")
    if key == ("cargo", "at_port"):
        return ("event", "inspect")
    if key == ("orders", "review"):
        return ("event", "approve" if plan.get("decision") == "approve" else "reject")
    if key == ("chaos_parcel", "awaiting_pickup") and plan.get("pickup") in ("pickup", "race"):
        return ("event", "picked_up")
    if key == ("cargo", "in_transit") and plan.get("plan") in ("lost", "race_lost"):
        return ("fast_forward", plan.get("lost_after", 0.0))
    return None


WATCHED = [("cargo", "booked", "waiting"), ("cargo", "at_port", "waiting"), ("orders", "review", "waiting"),
           ("chaos_parcel", "awaiting_pickup", "waiting"), ("cargo", "in_transit", "running"),
           ("cargo", "in_transit", "waiting"), *chaos_migrations.WATCHED]


# -- processes ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def kill_group(child) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        child.proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    if not child._log.closed:
        child._log.close()


class Scenario:
    """One broker's chaos run: set up, drive and break, settle, check, clean up."""

    def __init__(self, broker: str, cfg: Config, out=print, tmp: Path | None = None):
        self.broker, self.cfg, self.out = broker, cfg, out
        self.label, self.broker_url, self.broker_port = BROKERS[broker]
        self.rng = random.Random(f"{cfg.seed}-{broker}")
        self.dbname = f"interlock_chaos_{os.getpid()}_{broker}"
        self.queue = f"chaos_{os.getpid()}_{broker}"
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix=f"interlock-chaos-{broker}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = m.env_with(
            INTERLOCK_DATABASE_URL=m.pg_url(self.dbname, "postgresql+psycopg"), INTERLOCK_BROKER_URL=self.broker_url,
            INTERLOCK_WORKFLOWS=WORKFLOWS, INTERLOCK_QUEUE=self.queue, INTERLOCK_LEASE_SECONDS=cfg.lease_seconds,
            INTERLOCK_RESEND_AFTER=cfg.resend_after, INTERLOCK_POLL_INTERVAL=cfg.poll_interval,
            INTERLOCK_WORKER_THREADS=cfg.threads, INTERLOCK_ARCHIVE_DIR=self.tmp / "archive",
            # Batches of a few runs a chunk: the bulk cancel and the migration take several
            # chunks, leased and handed over between workers while the faults go on.
            INTERLOCK_BATCH_CHUNK=cfg.batch_chunk)
        self.registry = Registry().load_modules(WORKFLOWS.split(","))
        self.api = None
        self.workers: list = [None] * cfg.workers
        self.launches = Counter()
        self.stop = threading.Event()
        self.load_done = threading.Event()  # the last run started and the last fault injected
        self.batches_done = threading.Event()  # every bulk cancel created is done
        self.migrations_done = threading.Event()  # the migration plan's batch is done
        self.lock = threading.Lock()
        self.started: dict = {}  # run id -> (plan index, monotonic start)
        self.stats = Counter()
        self.faults: list = []  # (seconds, kind, what, seconds to restore)
        self.t0 = None
        self.abandoned: set = set()
        self.local = threading.local()
        self.db_conn = None

    # -- small helpers --------------------------------------------------------------------

    def t(self) -> float:
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def say(self, text):
        self.out(f"[{self.broker} +{self.t():6.1f}s] {text}")

    def client(self) -> Client:
        c = getattr(self.local, "client", None)
        if c is None:
            c = self.local.client = Client(self.url, timeout=10)
        return c

    def sql(self, query, params=None):
        import psycopg

        with self.lock:
            if self.db_conn is None or self.db_conn.closed:
                self.db_conn = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.dbname,
                                               autocommit=True, application_name=APP_NAME)
            try:
                cur = self.db_conn.execute(query, params)
            except psycopg.OperationalError:
                self.db_conn = None
                raise
            return cur.fetchall() if cur.description else cur.rowcount

    # -- processes --------------------------------------------------------------------------

    def start_api(self):
        self.launches["api"] += 1
        self.api = m.Child([sys.executable, "-m", "engine.cli", "serve", "--port", str(self.port),
                            "--threads", "64"], env=self.env, log_path=self.tmp / f"api-{self.launches['api']}.log")

    def wait_api(self, timeout=90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.client().request("GET", "/api/workflows")
                return
            except ClientError:
                if self.api.proc.poll() is not None:
                    raise RuntimeError(f"interlock serve exited: {self.api.tail()}")
                time.sleep(0.1)
        raise RuntimeError(f"interlock serve not answering after {timeout}s: {self.api.tail()}")

    def start_worker(self, slot):
        self.launches[f"worker{slot}"] += 1
        self.workers[slot] = m.Child(
            [sys.executable, "-m", self.cfg.worker_module, "worker", "--threads", str(self.cfg.threads)],
            env=self.env, log_path=self.tmp / f"worker{slot}-{self.launches[f'worker{slot}']}.log")

    def set_up(self):
        for name, port in (("PostgreSQL", 5432), (self.label.split(" + ")[1], self.broker_port)):
            if not port_open(port):
                raise RuntimeError(f"{name} is not running on 127.0.0.1:{port}")
        m.drop_stale_databases("interlock_chaos_")
        m.create_database(self.dbname)
        done = subprocess.run([sys.executable, "-m", "engine.cli", "db", "upgrade"], env=self.env, cwd=m.ROOT,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError("interlock db upgrade failed: " + done.stderr[-500:])
        chaos_limits.set_up(self.env["INTERLOCK_DATABASE_URL"])
        self.start_api()
        for slot in range(self.cfg.workers):
            self.start_worker(slot)
        self.wait_api()
        for worker in self.workers:
            worker.wait_for("worker ready", timeout=90)

    def tear_down(self):
        self.stop.set()
        for child in [self.api, *self.workers]:
            if child is not None:
                child.stop()
        if self.db_conn is not None:
            self.db_conn.close()
        try:
            if self.broker == "redis":
                m.delete_redis_queue(self.queue)
            else:
                m.delete_rabbitmq_queue(self.queue)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on
            self.out(f"warning: could not delete queue {self.queue}: {exc}")
        if not self.cfg.keep_db:
            m.drop_database(self.dbname)

    # -- faults -------------------------------------------------------------------------------

    def inject(self, kind) -> str:
        rng = self.rng
        if kind == "kill_worker":
            slot = rng.randrange(len(self.workers))
            victim = self.workers[slot]
            kill_group(victim)
            time.sleep(rng.uniform(0.2, 2.0))
            self.start_worker(slot)
            return f"SIGKILL worker {slot} (pid {victim.pid}), restarted"
        if kind == "kill_api":
            victim = self.api
            kill_group(victim)
            time.sleep(rng.uniform(0.3, 1.5))
            self.start_api()
            self.wait_api()
            return f"SIGKILL interlock serve (pid {victim.pid} and its gunicorn worker), restarted"
        if kind == "drop_db":
            rows = m.pg("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid() AND application_name <> %s AND backend_type = 'client backend'",
                        (self.dbname, APP_NAME))
            return f"pg_terminate_backend on {len(rows)} engine connections"
        if kind == "restart_broker":
            return restart_broker(self.broker, down_for=rng.uniform(0.5, 2.0))
        raise ValueError(kind)

    def injector(self):
        for at, kind in self.cfg.faults:
            while self.t() < at:
                if self.stop.wait(0.05):
                    return
            began, began_at = time.monotonic(), time.time()
            try:
                what = self.inject(kind)
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                what = f"FAILED to inject: {type(exc).__name__}: {exc}"
                self.stats["fault errors"] += 1
            took = time.monotonic() - began
            self.faults.append((self.t(), kind, what, took, began_at, time.time()))
            self.say(f"fault {len(self.faults)}/{len(self.cfg.faults)} {kind}: {what} ({took:.1f}s)")

    # -- the outside world ----------------------------------------------------------------------

    def call(self, what, request):
        """``request(client)``, which may fail while the API is down: True done, False try again later."""
        try:
            request(self.client())
            self.stats[what] += 1
            return True
        except ApiError as exc:
            if exc.retryable:
                self.stats["api errors (retried)"] += 1
                return False
            self.stats[f"{what} refused ({exc.status})"] += 1
            return True
        except ClientError:
            self.stats["api unreachable (retried)"] += 1
            return False

    def starter(self, plans):
        began = time.monotonic()
        spacing = self.cfg.load_seconds / max(1, len(plans))

        def start(item):
            i, (workflow, data) = item
            delay = began + i * spacing - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            while not self.stop.is_set():
                try:
                    run = self.client().start(workflow, data, idempotency_key=f"chaos-{i}",
                                              version=chaos_migrations.version(workflow))
                    with self.lock:
                        self.started[run["id"]] = (i, time.monotonic())
                    return
                except ApiError as exc:
                    if not exc.retryable:
                        raise
                except ClientError:
                    pass
                self.stats["start retried"] += 1
                self.stop.wait(0.2)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(start, enumerate(plans)))

    def list_runs(self, **params):
        out, cursor = [], None
        while True:
            query = {k: v for k, v in {**params, "limit": 500, "cursor": cursor}.items() if v is not None}
            page = self.client().request("GET", "/api/runs", params=query)
            out.extend(page["runs"])
            cursor = page.get("next")
            if not cursor:
                return out

    def pump(self, plans):
        """Sends the events, retries, cancels and timer fast-forwards the plans ask for."""
        done = set()  # (run id, last seq) handled
        seen_at = {}  # run id -> when first seen in in_transit
        cancelled, paused, ever_paused = set(), set(), set()
        busy = set()
        pool = ThreadPoolExecutor(8)

        def act(key, run_id, func, *args):
            try:
                if func(*args):
                    done.add(key)
            finally:
                busy.discard(run_id)

        def submit(key, run_id, func, *args):
            if key in done or run_id in busy:
                return
            busy.add(run_id)
            pool.submit(act, key, run_id, func, *args)

        try:
            while not self.stop.wait(0.3):
                try:
                    for workflow, state, status in WATCHED:
                        for run in self.list_runs(workflow=workflow, state=state, status=status):
                            action = external_action(run)
                            if action is None:
                                continue
                            key = (run["id"], run["last_seq"])
                            if action[0] == "event":  # queued if the run is paused now
                                plan = run["data"].get("chaos") or {}
                                if chaos_pauses.hold_events(plan, run["id"] in ever_paused) or \
                                        chaos_batches.hold_decision(plan, self.batches_done.is_set()) or \
                                        chaos_migrations.hold(run, self.migrations_done.is_set()):
                                    continue
                                submit(key, run["id"], self.call, f"event {action[1]}",
                                       lambda c, r=run["id"], e=action[1]: c.send(r, e, queue=True))
                            elif action[0] == "fast_forward":
                                first = seen_at.setdefault(run["id"], time.monotonic())
                                if time.monotonic() - first >= action[1]:
                                    submit(("ff", run["id"]), run["id"], self.fast_forward, run["id"])
                    for run in self.list_runs(status="failed"):
                        cls = self.registry.get(run["workflow"], run["version"])
                        if not cls.states_map[run["state"]].final:
                            submit(("retry", run["id"], run["last_seq"]), run["id"], self.call, "retry",
                                   lambda c, r=run["id"]: c.retry(r))
                except ClientError:
                    self.stats["api unreachable (retried)"] += 1
                    continue
                now = time.monotonic()
                with self.lock:
                    started = list(self.started.items())
                for run_id, (i, at) in started:
                    after = plans[i][1]["chaos"].get("cancel_after")
                    if after is not None and run_id not in cancelled and now - at >= after:
                        submit(("cancel", run_id), run_id, self._cancel, run_id, cancelled)
                    what = chaos_pauses.due(plans[i][1]["chaos"], now - at, run_id in paused, run_id in ever_paused)
                    if what is not None:
                        submit((what, run_id), run_id, self._pause, run_id, what, paused, ever_paused)
        finally:
            pool.shutdown(wait=True)

    def schedule_ticks(self):
        """Create the schedules through the API, then pause them once the load is over (so the
        runs can end). A create that is refused (409: a retried create that did land) is done."""
        specs = [*chaos_schedules.SCHEDULES, chaos_retention.SCHEDULE]
        for spec in specs:
            while not self.stop.is_set() and not self.call(
                    "schedule created", lambda c, s=spec: c.request("POST", "/api/schedules", json=s)):
                self.stop.wait(0.2)
        self.load_done.wait()
        for spec in specs:
            while not self.stop.is_set() and not self.call(
                    "schedule paused", lambda c, s=spec: c.request("POST", f"/api/schedules/{s['name']}/pause", json={})):
                self.stop.wait(0.2)

    def bulk_cancel(self):
        """Create the batch (bench/chaos_batches.py) part way through the load. A create whose
        answer was lost (the API killed) is retried: a second batch then finds those runs done."""
        if self.stop.wait(chaos_batches.AT * self.cfg.load_seconds):
            return
        while not self.stop.is_set() and not self.call(
                "batch created", lambda c: c.request("POST", "/api/batches", json=chaos_batches.BATCH)):
            self.stop.wait(0.2)
        while not self.stop.wait(0.5):  # then the runs no batch took get their decision
            try:
                listed = self.client().request("GET", "/api/batches")["batches"]
            except (ApiError, ClientError):
                continue
            listed = [b for b in listed if b["action"] == "cancel"]
            if listed and all(b["status"] == "done" for b in listed):
                self.batches_done.set()
                return

    def _pause(self, run_id, what, paused, ever_paused):
        """Pause or resume the run (a run that ended meanwhile refuses the pause: nothing to do)."""
        ok = self.call(what, lambda c: c.pause(run_id, "chaos plan") if what == "pause" else c.resume(run_id))
        if ok:
            (paused.add if what == "pause" else paused.discard)(run_id)
            ever_paused.add(run_id)
        return ok

    def _cancel(self, run_id, cancelled):
        ok = self.call("cancel", lambda c: c.cancel(run_id, "chaos plan"))
        if ok:
            cancelled.add(run_id)
        return ok

    def fast_forward(self, run_id):
        """The 30 days of the cargo's ``timeout`` pass now: the reconciler fires it."""
        try:
            n = self.sql("UPDATE timers SET due_at = %s WHERE run_id = %s AND name = 'timeout' AND status = 'armed'",
                         (time.time(), run_id))
        except Exception:  # noqa: BLE001 - the database connection was dropped: next round
            return False
        self.stats["timer fast-forwards"] += n
        return True

    def activity_worker(self, idx):
        def inspect(task):
            if task.attempt <= task.data.get("inspect_failures", 0):
                raise InspectionFailed(f"scanner {idx} could not read the label (attempt {task.attempt})")
            return "inspected", {"inspector": f"poller-{idx}"}

        poller = ActivityPoller(self.client(), "chaos_inspect", idle_timeout=None, max_messages=5,
                                wait_time_seconds=2, visibility_timeout=4, backoff=0.1, max_backoff=2.0)
        self.pollers.append(poller)
        while not self.stop.is_set():
            try:
                stats = poller.poll(inspect)
                self.stats["activity tasks completed"] += stats.completed
                self.stats["activity tasks failed"] += stats.failed
            except ClientError as exc:
                self.stats["activity poller restarted"] += 1
                self.say(f"activity poller {idx} stopped ({exc}); restarting it")
                self.stop.wait(0.5)

    def abandoner(self):
        """An activity worker that dies with its task: each run loses one attempt this way."""
        while not self.stop.wait(0.05):
            try:
                for task in self.client().receive("chaos_inspect", 1, 1, visibility_timeout=2):
                    if task.run_id in self.abandoned:
                        self.call("activity tasks completed", lambda c, t=task.token: c.complete(t, "inspected"))
                    else:
                        self.abandoned.add(task.run_id)
                        self.stats["activity tasks abandoned"] += 1
            except ClientError:
                pass

    def progress(self, planned):
        while not self.stop.wait(5.0):
            try:
                rows = self.sql("SELECT status, count(*) FROM runs GROUP BY status")
            except Exception:  # noqa: BLE001, S112 - dropped by the fault injector: next time
                continue
            counts = dict(rows)
            self.say(f"started {len(self.started)}/{planned}; " +
                     ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))

    # -- the whole run ------------------------------------------------------------------------------

    def quiet(self, planned) -> bool:
        if len(self.started) < planned:
            return False
        try:
            rows = self.sql("SELECT workflow, version, state, status FROM runs WHERE status IN ('running', 'waiting', 'failed')")
        except Exception:  # noqa: BLE001
            return False
        for workflow, version, state, status in rows:
            if status != "failed" or not self.registry.get(workflow, version).states_map[state].final:
                return False
        try:  # the ends of children, queued events: applied to runs that have ended too
            return not self.sql("SELECT id FROM signals WHERE status = 'pending' LIMIT 1")
        except Exception:  # noqa: BLE001
            return False

    def run(self) -> dict:
        cfg = self.cfg
        self.out(f"== {self.label}: {cfg.runs} runs, {cfg.workers} workers x {cfg.threads} threads, "
                 f"{len(cfg.faults)} faults, seed {cfg.seed}; database {self.dbname}")
        self.out("   fault schedule: " + ", ".join(f"+{at:.0f}s {kind}" for at, kind in cfg.faults))
        began = time.monotonic()
        self.set_up()
        now = time.time()
        plans = [plan_run(i, self.rng, now + i * cfg.load_seconds / max(1, cfg.runs)) for i in range(cfg.runs)]
        self.pollers = []
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.starter, args=(plans,), name="starter"),
                   threading.Thread(target=self.pump, args=(plans,), name="pump"),
                   threading.Thread(target=self.injector, name="injector"),
                   threading.Thread(target=self.activity_worker, args=(1,), name="poller-1"),
                   threading.Thread(target=self.activity_worker, args=(2,), name="poller-2"),
                   threading.Thread(target=self.abandoner, name="abandoner"),
                   threading.Thread(target=self.progress, args=(cfg.runs,), name="progress"),
                   threading.Thread(target=self.bulk_cancel, name="batches"),
                   threading.Thread(target=chaos_migrations.drive, args=(self, self.migrations_done),
                                    name="migrations"),
                   threading.Thread(target=self.schedule_ticks, name="schedules")]
        for th in threads:
            th.daemon = True
            th.start()
        result = {"broker": self.broker, "label": self.label}
        try:
            threads[0].join()
            threads[2].join()
            self.load_done.set()
            threads[-1].join()
            last_fault = self.faults[-1] if self.faults else None
            settle_from = time.monotonic()
            deadline = settle_from + cfg.settle_timeout
            quiet_at = None
            while time.monotonic() < deadline:
                if self.quiet(cfg.runs):
                    quiet_at = time.monotonic()
                    break
                time.sleep(0.5)
            if quiet_at is None:
                self.say(f"runs still active {cfg.settle_timeout:.0f}s after the last fault: checking anyway")
            chaos_limits.settle(m.pg_url(self.dbname, "postgresql+psycopg"))
        finally:
            self.stop.set()
            for poller in self.pollers:
                poller.stop()
            for th in threads:
                th.join(30)
            for child in [self.api, *self.workers]:
                if child is not None:
                    child.stop()
        report = check(m.pg_url(self.dbname, "postgresql+psycopg"), self.registry, archive_dir=self.tmp / "archive")
        executions = duplicates.count(m.pg_url(self.dbname, "postgresql+psycopg"))
        report.invariants.append(duplicates.attribute(executions, self.faults, cfg.resend_after))
        result.update(
            runs=report.runs, children=report.children, scheduled=report.scheduled, transitions=report.transitions, violations=report.violations,
            invariants=[{"name": i.name, "checked": i.checked, "what": i.checked_what, "violations": i.violations,
                         "problems": dict(i.problems), "notes": i.notes} for i in report.invariants],
            duplicates={"steps": executions.steps, "extra_executions": executions.extra,
                        "by_fault": dict(report.invariants[-1].attributed), "lost_attempts": len(executions.lost),
                        "lost_by_fault": dict(report.invariants[-1].lost_to)},
            outcomes=dict(sorted(report.outcomes.items())), faults=[f[:4] for f in self.faults],
            fault_counts=dict(Counter(f[1] for f in self.faults)),
            last_fault=last_fault[1] if last_fault else None,
            last_fault_restored_in=last_fault[3] if last_fault else None,
            quiet_after_last_fault=(quiet_at - (self.t0 + last_fault[0])) if quiet_at and last_fault else None,
            quiet=quiet_at is not None, stats=dict(self.stats), elapsed=time.monotonic() - began)
        self.out(render(result, report))
        return result


def restart_broker(broker: str, down_for: float) -> str:
    if broker == "redis":
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], capture_output=True,
                       timeout=30, check=False)
        time.sleep(down_for)
        subprocess.run(REDIS_START, capture_output=True, timeout=30, check=True)
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis did not come back")
            time.sleep(0.1)
        return f"redis-server shut down without saving (queued messages lost), down {down_for:.1f}s, restarted"
    subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True, timeout=120, check=True)
    time.sleep(down_for)
    subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=120, check=True)
    return f"rabbitmqctl stop_app, down {down_for:.1f}s, start_app"


def ensure_broker_up(broker: str) -> None:
    """After an interrupted run: the broker this script stopped is started again."""
    port = BROKERS[broker][2]
    if port_open(port):
        return
    if broker == "redis":
        subprocess.run(REDIS_START, capture_output=True, timeout=30, check=False)
    else:
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=120, check=False)


def render(result, report) -> str:
    lines = [f"-- {result['label']}: invariants (from the database alone)", report.render()]
    outcomes = ", ".join(f"{k} {v}" for k, v in result["outcomes"].items())
    faults = ", ".join(f"{k} {v}" for k, v in sorted(result["fault_counts"].items())) or "none"
    lines.append(f"-- summary: {result['runs']} runs ({result['children']} started by a parent, {result['scheduled']} by a schedule), "
                 f"{result['transitions']} transitions, "
                 f"{len(result['faults'])} faults injected ({faults})")
    lines.append(f"   outcomes: {outcomes}")
    if result["last_fault"]:
        quiet = result["quiet_after_last_fault"]
        lines.append(f"   recovery after the last fault ({result['last_fault']}, injected and undone in "
                     f"{result['last_fault_restored_in']:.1f}s): every run ended "
                     f"{f'{quiet:.1f}s' if quiet is not None else 'NOT within the settle timeout'} after it")
    dups = result["duplicates"]
    lines.append(f"   duplicate executions: {dups['extra_executions']} in {dups['steps']} step attempts ("
                 + (", ".join(f"{n} after {k}" for k, n in sorted(dups["by_fault"].items())) or "none")
                 + f"); {dups['lost_attempts']} attempts lost with their worker ("
                 + (", ".join(f"{n} after {k}" for k, n in sorted(dups["lost_by_fault"].items())) or "none") + ")")
    lines.append("   driver: " + ", ".join(f"{k} {v}" for k, v in sorted(result["stats"].items())))
    verdict = "OK" if not result["violations"] else f"VIOLATIONS: {result['violations']}"
    lines.append(f"   {verdict} "
                 f"in {result['elapsed']:.0f}s")
    return "\n".join(lines)


def config_for(args, broker: str) -> Config:
    rng = random.Random(f"{args.seed}-{broker}-faults")
    if args.quick:
        runs = args.runs or 150
        load = args.load_seconds or 20.0
        count = args.faults if args.faults is not None else 5
        faults = schedule(count, 3.0, (load - 2.0) / max(1, count), rng, args.fault_kinds)
        return Config(runs=runs, workers=args.workers or 2, threads=args.threads, load_seconds=load, faults=faults,
                      settle_timeout=args.settle_timeout or 60.0, seed=args.seed, keep_db=args.keep_db,
                      worker_module=args.worker_module)
    runs = args.runs or 2000
    load = args.load_seconds or max(30.0, runs / 20)
    count = args.faults if args.faults is not None else max(4, int(load / 6))
    faults = schedule(count, 4.0, (load - 4.0) / max(1, count), rng, args.fault_kinds)
    return Config(runs=runs, workers=args.workers or 3, threads=args.threads, load_seconds=load, faults=faults,
                  settle_timeout=args.settle_timeout or 240.0, seed=args.seed, keep_db=args.keep_db,
                  worker_module=args.worker_module)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    p.add_argument("--quick", action="store_true", help="150 runs and 5 faults per broker (CI)")
    p.add_argument("--runs", type=int, default=None, help="runs per broker (default 2000; --quick 150)")
    p.add_argument("--faults", type=int, default=None, help="faults per broker (default one per 6 s of load)")
    p.add_argument("--fault-kinds", default=",".join(FAULTS),
                   help=f"comma-separated, of {', '.join(FAULTS)} (default: all)")
    p.add_argument("--load-seconds", type=float, default=None, help="runs are started over this long")
    p.add_argument("--settle-timeout", type=float, default=None, help="seconds the runs get to end after the last fault")
    p.add_argument("--workers", type=int, default=None, help="interlock worker processes (default 3; --quick 2)")
    p.add_argument("--threads", type=int, default=8, help="threads per worker (default 8)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-db", action="store_true", help="keep each broker's database (its name is printed)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the processes' logs of a run that passed (a failed run's are always kept)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    p.add_argument("--worker-module", default="engine.cli", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.fault_kinds = [k.strip() for k in args.fault_kinds.split(",") if k.strip()]
    unknown = [k for k in args.fault_kinds if k not in FAULTS]
    if unknown or not args.fault_kinds:
        p.error(f"unknown fault kind {', '.join(unknown)}: choose from {', '.join(FAULTS)}")
    return args


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv=None, out=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # The activity pollers' retries while the API is down are expected here: counted, not logged.
    logging.getLogger("engine.client").setLevel(logging.ERROR)
    out = out or (lambda text: print(text, flush=True))
    signal.signal(signal.SIGTERM, _interrupt)
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    results, failed = [], False
    command = "python bench/chaos.py " + " ".join(sys.argv[1:] if argv is None else argv)
    began = time.monotonic()
    for broker in brokers:
        scenario = Scenario(broker, config_for(args, broker), out)
        try:
            results.append(scenario.run())
        except KeyboardInterrupt:
            out("interrupted")
            failed = True
            break
        except Exception as exc:  # noqa: BLE001 - the other broker still runs; the exit status says it
            out(f"{broker}: chaos run crashed: {type(exc).__name__}: {exc}")
            failed = True
        finally:
            scenario.tear_down()
            ensure_broker_up(broker)
        passed = results and results[-1]["broker"] == broker and not results[-1]["violations"] \
            and results[-1]["quiet"]
        if passed and not args.keep_logs:
            shutil.rmtree(scenario.tmp, ignore_errors=True)
        else:
            out(f"{broker}: process logs kept in {scenario.tmp}")
    violations = sum(r["violations"] for r in results)
    unfinished = [r["broker"] for r in results if not r["quiet"]]
    out(f"== {command}: {len(results)} broker(s), {sum(r['runs'] for r in results)} runs, "
        f"{sum(len(r['faults']) for r in results)} faults, {violations} violations in {time.monotonic() - began:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "results": results}, indent=2, default=str))
    return 1 if failed or violations or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
