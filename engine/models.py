"""The database schema (SQLAlchemy Core). Alembic migrations are the only thing that create it.

Times are stored as epoch seconds (double precision): portable across SQLite,
PostgreSQL and MariaDB, and cheap to compare for due timers and leases.
"""

from sqlalchemy import (JSON, Column, Double, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, text)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

ID = String(32)
# Runs in more than one leaf state (a parallel state): their `state` is comma-joined.
PARALLEL = "state LIKE '%,%'"


def only_set(column: str) -> dict:
    """An index of the rows with ``column`` set (most leave it NULL): a row without it writes no
    page of the index. Queries compare the column, which proves ``IS NOT NULL`` to the planner.
    MariaDB has no partial index: a full one there."""
    where = text(f"{column} IS NOT NULL")
    return {"sqlite_where": where, "postgresql_where": where}


runs = Table(
    "runs", metadata,
    Column("id", ID, primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    # Leaf states, comma-joined: what people filter and read.
    Column("state", String(500), nullable=False),
    # Every active state (compound and parallel parents included), as stored by the machine.
    Column("configuration", JSON, nullable=False),
    # History seq at which each active state was entered: tasks and timers are bound to it.
    Column("entries", JSON, nullable=False),
    # What the workflow's history pseudo-states remember: {history state id: [state ids]}.
    Column("history_values", JSON),
    Column("data", JSON, nullable=False),
    Column("business_key", String(255)),
    Column("idempotency_key", String(255)),
    Column("last_seq", Integer, nullable=False),
    # Tasks queued or running: "running" vs "waiting" without a query.
    Column("open_tasks", Integer, nullable=False),
    # Timers armed or suspended: leaving a state without any sends no UPDATE for them.
    Column("open_timers", Integer, nullable=False, server_default="0"),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("finished_at", Double),
    # A child run: its parent, and the parent's state entry that started it.
    Column("parent_id", ID),
    Column("parent_state", String(200)),
    Column("parent_seq", Integer),
    # Paused by an operator (engine/pauses.py): no step starts and no timer fires until resumed.
    Column("paused_at", Double),
    # Higher first: its steps waiting for a slot of a limit (engine/limits.py), its messages on RabbitMQ.
    Column("priority", Integer, nullable=False, server_default="0"),
    # The start's span as a W3C traceparent (engine/tracing.py): the run's trace. NULL untraced.
    Column("trace_context", String(64)),
    # Waiting since then for a slot of its workflow's max_active (engine/admission.py): in its
    # initial state, no step sent, no timer armed. NULL: admitted, or its workflow has no max_active.
    Column("admission_since", Double),
    UniqueConstraint("workflow", "idempotency_key"),
    Index(None, "business_key"),
    Index(None, "status", "id"),
    Index(None, "workflow", "id"),
    # GET /api/runs?state=: an exact match walks this newest first...
    Index(None, "state", "id"),
    # ...and the parallel runs (comma-joined leaves) this one; MariaDB has no partial index.
    Index("ix_runs_parallel", "id", sqlite_where=text(PARALLEL), postgresql_where=text(PARALLEL)),
    # created_after / created_before of GET /api/runs: a day's runs without walking newer ones.
    Index(None, "created_at"),
    # A parent's children, newest first.
    Index(None, "parent_id", "id", **only_set("parent_id")),
    # Retention: a workflow version's runs finished before a time, oldest first.
    Index(None, "workflow", "version", "finished_at", **only_set("finished_at")),
    # The dashboard: runs finished per hour of the last day.
    Index(None, "finished_at", "status", **only_set("finished_at")),
)

history = Table(
    "history", metadata,
    Column("run_id", ID, primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Double, nullable=False),
    # started, transition, step_started, step_succeeded, step_failed, step_rechecked,
    # timer_fired, event_rejected, ignored, failed, cancelled, retried, data_updated, migrated
    Column("kind", String(32), nullable=False),
    Column("event", String(200)),
    Column("source", String(500)),
    Column("target", String(500)),
    Column("cause", String(32)),
    Column("data", JSON),
    Column("detail", JSON),
)

tasks = Table(
    "tasks", metadata,
    Column("id", ID, primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("state", String(200), nullable=False),
    Column("entry_seq", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    # queued, limited (waiting for a slot: engine/limits.py), running, succeeded, failed, superseded, cancelled
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("available_at", Double, nullable=False),
    Column("sent_at", Double),
    # The worker process that committed the task as sent (None: a process running no worker),
    # and how many times the current attempt was sent: a task is re-sent when its sender died.
    Column("sent_by", ID),
    Column("sends", Integer, nullable=False, server_default="0"),
    Column("claimed_at", Double),
    Column("lease_until", Double),
    # Activities: the receipt of the current attempt, and its visibility timeout in seconds.
    Column("token", String(64)),
    Column("visibility_timeout", Double),
    Column("last_error", Text),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    # A rate-limited attempt's reserved start (engine/limits.py); NULL until it is delivered.
    Column("rate_at", Double),
    # The slot of its step's concurrency limit it holds (engine/limits.py), once it took one.
    Column("slot", Integer),
    # The span of the change that created the task (W3C traceparent): its attempts' parent.
    Column("trace_context", String(64)),
    Index(None, "status", "available_at"),
    Index(None, "run_id"),
    Index(None, "token", **only_set("token")),  # activities only
    Index(None, "kind", "name", "status"),
)

timers = Table(
    "timers", metadata,
    Column("id", ID, primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("state", String(200), nullable=False),
    Column("entry_seq", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    # "timer" sends `event`; "recheck" runs the state's step again.
    Column("kind", String(16), nullable=False),
    Column("event", String(200)),
    Column("due_at", Double, nullable=False),
    # armed, fired, cancelled
    Column("status", String(16), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("fired_at", Double),
    Index(None, "status", "due_at"),
    Index(None, "run_id"),
)

# Cross-run effects (a child telling its parent it ended, a parent cancelling its child): written
# in the sender's transaction, applied exactly once by the receiver's own transition.
signals = Table(
    "signals", metadata,
    Column("id", ID, primary_key=True),
    Column("run_id", ID, nullable=False),  # the receiver
    # child_ended (payload: the child's status, state, data), parent_left (payload: why)
    Column("kind", String(32), nullable=False),
    Column("source_id", ID, nullable=False),  # the sending run
    # The receiver's state entry it is for: applied to another entry, it is stale.
    Column("state", String(200)),
    Column("entry_seq", Integer),
    Column("payload", JSON),
    # pending, applied, stale
    Column("status", String(16), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("applied_at", Double),
    Index(None, "status", "created_at"),
    Index(None, "run_id", "status"),
    # Retention: the signals a deleted run sent.
    Index(None, "source_id"),
)

# One row per worker process, with a heartbeat: the tasks a dead worker sent (or ran eagerly)
# are sent again; a stopped one's are not (it sent or finished them before stopping).
workers = Table(
    "workers", metadata,
    Column("id", ID, primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Double, nullable=False),
    Column("heartbeat_at", Double, nullable=False),
    Column("stopped_at", Double),
    Column("workflows", JSON),  # {name: [versions]} loaded by the process
)

# The broker server seen last (Redis's run id): a new one lost every message sent before it started.
brokers = Table(
    "brokers", metadata,
    Column("name", String(255), primary_key=True),
    Column("server_id", String(64), nullable=False),
    Column("started_at", Double, nullable=False),
)

# A Map: one row per parent state entry that fans out over items, and one per item.
maps = Table(
    "maps", metadata,
    Column("parent_id", ID, primary_key=True),
    Column("entry_seq", Integer, primary_key=True, autoincrement=False),
    Column("state", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("total", Integer, nullable=False),
    Column("running", Integer, nullable=False),
    Column("succeeded", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    # running, succeeded, failed (over the tolerated failures), cancelled (the parent left)
    Column("status", String(16), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

map_items = Table(
    "map_items", metadata,
    Column("parent_id", ID, primary_key=True),
    Column("entry_seq", Integer, primary_key=True, autoincrement=False),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("item", JSON),
    Column("child_id", ID),
    # pending, running, succeeded, failed, cancelled
    Column("status", String(16), nullable=False),
    Column("result", JSON),
    Column("updated_at", Double, nullable=False),
    Index(None, "child_id"),
    Index(None, "parent_id", "entry_seq", "status", "idx"),
)

# A whole workflow (version 0: every version) paused: no step of its runs starts and no timer
# fires until the row is deleted (engine/pauses.py); its runs' rows are not touched.
pauses = Table(
    "pauses", metadata,
    Column("workflow", String(200), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("reason", Text),
    Column("paused_at", Double, nullable=False),
)

# Schedules: declared in code (origin "code", synced at worker start) or created over the API.
# `next_fire_at` is the next tick to fire; a reconciler that finds it due locks the row, starts
# the tick's run and moves it on, in one transaction.
schedules = Table(
    "schedules", metadata,
    Column("name", String(200), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("version", Integer),  # None: the newest version loaded
    Column("cron", String(200)),
    Column("every", Double),  # seconds, when not a cron expression
    Column("timezone", String(64), nullable=False),
    Column("data", JSON, nullable=False),
    # skip, allow, buffer_one, cancel_previous
    Column("overlap", String(16), nullable=False),
    # none, last, all (within catchup_window seconds)
    Column("catchup", String(8), nullable=False),
    Column("catchup_window", Double, nullable=False),
    # active, paused
    Column("status", String(16), nullable=False),
    Column("origin", String(8), nullable=False),  # code, api
    Column("next_fire_at", Double),
    Column("last_fire_at", Double),
    Column("last_run_id", ID),  # the run the latest started tick started: what overlap looks at
    Column("buffered_at", Double),  # the fire time of the tick waiting for that run to end
    Column("missed", Integer, nullable=False, server_default="0"),  # ticks dropped by the catch-up policy
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Index(None, "status", "next_fire_at"),
)

# One row per tick that fired (its primary key makes a second one impossible), with the run it
# started: the run's idempotency key is made of the same two values.
schedule_ticks = Table(
    "schedule_ticks", metadata,
    Column("schedule", String(200), primary_key=True),
    Column("fire_time", Double, primary_key=True, autoincrement=False),
    # schedule, catchup, manual
    Column("cause", String(16), nullable=False),
    # started, skipped (overlap), buffered (waits for the previous run), failed (the start was refused)
    Column("status", String(16), nullable=False),
    Column("run_id", ID),
    Column("error", Text),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Index(None, "run_id"),
)

# Text compared by code point on every database, as Python compares strings: PostgreSQL's "C"
# (its default collation may ignore punctuation, and then a prefix is no range), MariaDB's
# binary one without padding (its default folds case and ignores trailing spaces); SQLite's
# default is already binary.
SEARCH_TEXT = String(255).with_variant(String(255, collation="C"), "postgresql").with_variant(
    String(255, collation="utf8mb4_nopad_bin"), "mysql", "mariadb")

# Search fields a workflow declares (engine/search.py): one row per run and field with a value,
# written with the run's data in the same transaction. A filter walks (field, value, run_id).
run_search = Table(
    "run_search", metadata,
    Column("run_id", ID, primary_key=True),
    Column("field", String(100), primary_key=True),
    Column("text_value", SEARCH_TEXT),
    Column("num_value", Double),
    Index(None, "field", "text_value", "run_id", **only_set("text_value")),
    Index(None, "field", "num_value", "run_id", **only_set("num_value")),
)

# Bulk actions (engine/batches.py): one row per batch, its filter and its cursor (the last run id
# it handled: the walk is newest first, ``runs.id < cursor``), its counters and the lease of the
# reconciler working it.
batches = Table(
    "batches", metadata,
    Column("id", ID, primary_key=True),
    Column("action", String(16), nullable=False),  # cancel, retry, send, pause, resume
    Column("filter", JSON, nullable=False),
    Column("args", JSON, nullable=False),  # event, data, reason
    # pending, running, done, cancelled
    Column("status", String(16), nullable=False),
    Column("cursor", ID),
    Column("total_estimate", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("refused", Integer, nullable=False),
    Column("skipped", Integer, nullable=False),
    Column("owner", ID),  # the worker process working it, until lease_until
    Column("lease_until", Double),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("finished_at", Double),
    # Planning (engine/batch_work.py): the lowest run id cut into chunks so far, and when the
    # last chunk was planned (NULL while runs remain to be cut).
    Column("planned", ID),
    Column("planned_at", Double),
    Index(None, "status", "created_at"),
)

# A batch's runs cut into chunks by id (``lo`` <= run id <= ``hi``, newest first), each leased to
# one reconciler at a time: several workers work one batch at once, and a dead worker's chunk is
# taken over once its lease has expired.
batch_chunks = Table(
    "batch_chunks", metadata,
    Column("batch_id", ID, primary_key=True),
    Column("hi", ID, primary_key=True),
    Column("lo", ID, nullable=False),
    Column("runs", Integer, nullable=False),  # selected when it was planned
    Column("status", String(16), nullable=False),  # pending, done
    Column("owner", ID),  # the worker process that holds it (until lease_until), or did it
    Column("lease_until", Double),
    Column("finished_at", Double),
    Index(None, "batch_id", "status", "hi"),
)

# One row per run a batch handled, written in the run's own transaction: its primary key is
# what makes a batch act on a run once, however often a chunk is worked again.
batch_items = Table(
    "batch_items", metadata,
    Column("batch_id", ID, primary_key=True),
    Column("run_id", ID, primary_key=True),
    Column("outcome", String(16), nullable=False),  # applied, refused, skipped
    Column("error", Text),
    Column("at", Double, nullable=False),
)

# Moving runs between versions of a workflow (engine/moving.py): a plan is a row, with the verdict
# for each kind of situation its runs were in (``shapes``: outcome, reason, what applying does)...
migration_plans = Table(
    "migration_plans", metadata,
    Column("id", ID, primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("from_version", Integer, nullable=False),
    Column("to_version", Integer, nullable=False),
    Column("mapping", JSON, nullable=False),  # {old state id: new state id}
    Column("filter", JSON, nullable=False),  # the runs filter it was made for (GET /api/runs's)
    Column("shapes", JSON, nullable=False),
    Column("counts", JSON, nullable=False),  # {clean, mapped, impossible}
    Column("status", String(16), nullable=False),  # planning, ready
    Column("batch_id", ID),  # the batch that applies it, once started
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

# ...and one row per run it looked at: the history seq it saw (a run that moved on since is
# refused) and which of the plan's shapes it was in.
migration_runs = Table(
    "migration_runs", metadata,
    Column("plan_id", ID, primary_key=True),
    Column("run_id", ID, primary_key=True),
    Column("last_seq", Integer, nullable=False),
    Column("shape", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # clean, mapped, impossible
    Index(None, "plan_id", "outcome", "run_id"),
)

# Concurrency limits (engine/limits.py): a row per slot of a limit's key, holding the task whose
# attempts use it (NULL: free); ``slot`` below the limit's n is usable.
limit_slots = Table(
    "limit_slots", metadata,
    Column("name", String(200), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("task_id", ID),
    Column("acquired_at", Double),
    Index(None, "task_id"),
)

# A task waiting for a slot (its status ``limited``): no thread, no message; the slot's release
# hands it over, highest priority first, then oldest.
limit_waiters = Table(
    "limit_waiters", metadata,
    Column("task_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("name", String(200), nullable=False),
    Column("key", String(255), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("since", Double, nullable=False),
    Column("time_limit", Double, nullable=False),
    Index(None, "name", "key", "priority", "since"),
)

# Rate limits: the time the next attempt of a key may start (evenly spaced, GCRA).
rate_buckets = Table(
    "rate_buckets", metadata,
    Column("name", String(200), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("next_at", Double, nullable=False),
)


# A workflow's max_active (engine/admission.py): a row per slot of a key, holding the run admitted
# to it (NULL: free) from its admission until it ends; ``slot`` below max_active is usable.
admission_slots = Table(
    "admission_slots", metadata,
    Column("workflow", String(200), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("run_id", ID),
    Column("acquired_at", Double),
    Index(None, "run_id"),
)

# A run waiting for a slot, in its initial state: the oldest of the highest priority is admitted next.
admission_waiters = Table(
    "admission_waiters", metadata,
    Column("run_id", ID, primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("key", String(255), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("since", Double, nullable=False),
    Index(None, "workflow", "key", "priority", "since"),
)
