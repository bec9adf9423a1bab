"""Request and response schemas of the REST API (validation and OpenAPI both come from here)."""

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from engine.definitions import ACTIVITY_NAME

Status = Literal["running", "waiting", "succeeded", "failed", "cancelled"]
# Strings the engine stores in text columns or compares with them: PostgreSQL refuses NUL there.
NO_NUL = r"^[^\x00]*$"
Key = Field(default=None, min_length=1, max_length=255, pattern=NO_NUL)
# An activity's name, as the engine checks it (ACTIVITY_NAME, matched whole).
ACTIVITY = {"type": "string", "pattern": f"^{ACTIVITY_NAME.pattern}$", "maxLength": 200,
            "description": "1-200 letters, digits or _.:-, starting with a letter or digit"}
# Deeper data would be stored, then fail to be read back (Python's recursion limit).
MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_data(value):
    """Refuse data nested more than MAX_DEPTH levels, or holding a lone surrogate (JSON lets
    "\\ud800" through, but no UTF-8 page or client can show it)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PydanticCustomError("too_deep", "nested more than {max_depth} levels deep",
                                      {"max_depth": MAX_DEPTH})
        children = list(item.values()) + list(item) if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, str) and _SURROGATE.search(child):
                raise PydanticCustomError("lone_surrogate", "holds a lone surrogate: not Unicode text")
    return value


def _iso_time(value):
    # pydantic would also take epoch seconds ("1700000000"): the document says an ISO 8601 time.
    if isinstance(value, str) and not re.match(r"\d{4}-\d{2}-\d{2}", value):
        raise PydanticCustomError("iso_time", "must be an ISO 8601 time, like 2026-01-31T12:00:00Z")
    return value


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _json_integer(value):
    # JSON has one number type: 2.0 is the integer 2 (as the document's "integer" says), true is not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer in a JSON body (the models are strict: no bools, no strings).
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
# A JSON object for a run's data, nested at most MAX_DEPTH levels.
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_data)]
# An ISO 8601 time; without an offset it is UTC (the API's own times are all UTC).
Time = Annotated[datetime | None, BeforeValidator(_iso_time), AfterValidator(_utc)]


class Strict(BaseModel):
    """A JSON request body: unknown fields and values of another JSON type (true for a number,
    "5" for an integer) are refused, as the document's schema says, rather than converted."""

    model_config = ConfigDict(extra="forbid", strict=True)


# -- requests ----------------------------------------------------------------------

class StartRun(Strict):
    data: JsonObject = Field(default_factory=dict, description=f"the run's data (a JSON object, nested at most "
                                                                f"{MAX_DEPTH} levels)")
    business_key: str | None = Key
    version: Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_json_integer)] = Field(
        default=None, description="default: the latest version")
    priority: JsonInt = Field(default=0, ge=-1000, le=1000, description=(
        "higher first where its steps wait for a slot of a concurrency limit (it also gains one level "
        "per minute of waiting, so low priorities are not starved)"))


class SendEvent(Strict):
    event: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    data: JsonObject = Field(default_factory=dict, description=f"the event's data: callbacks take its keys by name "
                                                              f"(nested at most {MAX_DEPTH} levels)")
    queue: bool = Field(default=False, description="to a paused run: keep the event and apply it on resume "
                                                   "(otherwise a paused run refuses it with 409 run-paused)")


class CancelRun(Strict):
    reason: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)


class Empty(Strict):
    pass


class PauseRun(Strict):
    reason: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)


class PauseWorkflow(Strict):
    version: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                description="only this version (default: every version)")
    reason: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)


class ResumeWorkflow(Strict):
    version: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                description="the pause of this version (default: the one of every version)")


class RunsQuery(BaseModel):
    workflow: str | None = Field(default=None, min_length=1, max_length=200)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    status: Status | None = None
    state: str | None = Field(default=None, min_length=1, max_length=200)
    business_key: str | None = Key
    created_after: Time = Field(default=None, description="ISO 8601; UTC unless it has an offset")
    created_before: Time = Field(default=None, description="ISO 8601; UTC unless it has an offset")
    cursor: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description="`next` of the previous page")
    limit: int = Field(default=50, ge=1, le=500)


# GET /api/runs filters on the search fields workflows declare (`search = {...}`): a family of
# parameters no query model can name.
SEARCH_PARAMETERS = [
    {"name": "search.{field}", "description": (
        "Runs whose search field `{field}` (declared by a loaded workflow's `search`) equals the value: "
        "`search.customer=ACME`; `true`/`false` for a bool field, an ISO 8601 time for a datetime. Given "
        "twice, both must hold. A field no loaded workflow declares (or, with `workflow`, that one), or a "
        "value not of its type, is a 400 problem of type urn:interlock:problem:invalid-search."),
     "schema": {"type": "string", "maxLength": 255}},
    {"name": "search.{field}.{op}", "description": (
        "A comparison on search field `{field}`: `{op}` is `eq`, `gt`, `gte`, `lt` or `lte` (int, float and "
        "datetime fields: `search.total.gte=10&search.total.lt=100`) or `prefix` (str fields, case-sensitive: "
        "`search.customer.prefix=AC`). Combined with every other filter and the cursor. Another operator, or "
        "one the field's type has not, is a 400 problem of type urn:interlock:problem:invalid-search."),
     "schema": {"type": "string", "maxLength": 255}},
]


class ChildrenQuery(BaseModel):
    status: Status | None = None
    workflow: str | None = Field(default=None, min_length=1, max_length=200)
    state: str | None = Field(default=None, min_length=1, max_length=200,
                              description="the parent's state that started them")
    cursor: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description="`next` of the previous page")
    limit: int = Field(default=50, ge=1, le=500)


class MapItemsQuery(BaseModel):
    entry_seq: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                  description="the state entry the map belongs to (default: its latest)")
    after: int | None = Field(default=None, ge=0, le=2**31 - 1, description="`next` of the previous page")
    limit: int = Field(default=100, ge=1, le=1000)


class WorkflowQuery(BaseModel):
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)


# -- responses ---------------------------------------------------------------------

class RunOut(BaseModel):
    """A run."""

    id: str
    workflow: str
    version: int
    status: Status
    state: str
    configuration: list[str]
    data: dict[str, Any]
    business_key: str | None
    idempotency_key: str | None
    last_seq: int
    created_at: str
    updated_at: str
    priority: int = Field(0, description="higher first where steps wait for a slot")
    finished_at: str | None
    parent_id: str | None = Field(None, description="the parent run, for a run a parent's state started")
    parent_state: str | None = Field(None, description="the parent's state that started this run")
    paused_at: str | None = Field(None, description="when an operator paused the run (null: not paused); "
                                                     "a paused run starts no step and fires no timer")
    admission_since: str | None = Field(None, description="since when the run waits in its initial state for a "
                                                          "slot of its workflow's max_active (null: admitted)")


class RunPage(BaseModel):
    """A page of runs, newest first."""

    runs: list[RunOut]
    next: str | None


class ChildPage(BaseModel):
    """A page of the run's child runs, newest first."""

    runs: list[RunOut]
    next: str | None = Field(description="the cursor of the next page; null on the last one")


class HistoryEntryOut(BaseModel):
    """One entry of a run's history."""

    seq: int
    at: str
    kind: str
    event: str | None
    source: str | None
    target: str | None
    cause: str | None
    data: dict[str, Any] | None
    detail: dict[str, Any] | None


class EventOption(BaseModel):
    event: str
    to: list[str]
    from_: str = Field(alias="from")
    guards: list[str] | None = None
    reason: str | None = None


class TimerOut(BaseModel):
    name: str
    kind: str
    event: str | None
    state: str
    status: str
    due_at: str
    fires_in_seconds: float


class TaskOut(BaseModel):
    id: str
    kind: str
    name: str
    state: str
    status: str
    attempt: int
    max_attempts: int
    last_error: str | None
    next_attempt_at: str | None
    next_attempt_in_seconds: float | None
    lease_until: str | None
    limit: "LimitWait | None" = Field(None, description="status limited: the concurrency limit it waits for a slot of")
    rate_limit: str | None = Field(None, description="the rate limit that put its start off to next_attempt_at")


class LimitWait(BaseModel):
    limit: str = Field(description="the limit's name (workflow.step, or the name given)")
    key: str | None
    in_use: int
    slots: int
    waiters: int
    ahead: int = Field(description="waiters before this one (higher priority, or as high and older)")
    since: float


class ChildOut(BaseModel):
    """A child run the parent waits for."""

    id: str
    workflow: str
    version: int
    status: Status
    state: str = Field(description="the child's state")
    parent_state: str = Field(description="the parent's state that started it")


class MapOut(BaseModel):
    """A Map of a current state: a child run per item, and how far it has come."""

    name: str
    state: str
    status: Literal["running", "succeeded", "failed", "cancelled"]
    total: int
    succeeded: int
    failed: int
    running: int
    pending: int = Field(description="items whose child has not started yet (max_concurrency)")
    max_concurrency: int | None
    tolerated_failures: float | None = Field(description="a fraction of the items, or a count")


class MapItemOut(BaseModel):
    index: int
    status: Literal["pending", "running", "succeeded", "failed", "cancelled"]
    child_id: str | None = Field(description="the item's child run, once started")
    result: Any = Field(description="the child's final data, or its status and state when it did not succeed")


class MapItemsPage(BaseModel):
    """A page of a Map's items, in item order."""

    map: str
    state: str
    entry_seq: int
    status: Literal["running", "succeeded", "failed", "cancelled"]
    total: int
    succeeded: int
    failed: int
    running: int
    items: list[MapItemOut]
    next: int | None = Field(description="pass as `after` for the next page; null on the last")


class PauseOut(BaseModel):
    by: str = Field(description="run: the run itself is paused; workflow: its workflow (version) is")
    since: str
    reason: str | None = None
    text: str


class AdmissionOut(BaseModel):
    workflow: str
    key: str | None = Field(description="the max_active key the run counts under (null: one for the workflow)")
    active: int = Field(description="runs of the key admitted now (holding a slot until they end)")
    max_active: int | None
    ahead: int = Field(description="runs waiting that will be admitted before this one")
    since: str | None
    handed: bool = Field(description="a slot was handed to the run: its admission is on its way")


class Explanation(BaseModel):
    """What the run is waiting for."""

    run_id: str
    status: Status
    state: str
    paused: PauseOut | None = Field(None, description="set while the run, or its workflow, is paused")
    admission: AdmissionOut | None = Field(None, description="set while the run waits in its initial state for "
                                                             "a slot of its workflow's max_active")
    entered_at: str | None
    in_state_seconds: float | None
    accepted_events: list[EventOption]
    blocked_events: list[EventOption]
    timers: list[TimerOut]
    tasks: list[TaskOut]
    children: list[ChildOut] = Field(description="the child runs of the current states that may still end "
                                                 "(running, waiting, or failed: a failed run can be retried), "
                                                 "newest first, at most 100")
    maps: list[MapOut] = Field(default_factory=list, description="the Maps of the current states")
    waiting_for: str
    workflow_not_loaded: str | None = Field(
        None, description="set when this process has not loaded the run's workflow (version): why "
                          "the accepted events are unknown here and which worker the run waits for")
    version_loaded_nowhere: str | None = Field(
        None, description="set when worker processes run but none loads the run's workflow version: "
                          "nothing moves it until one does, or it is migrated to a loaded version")


class StateOut(BaseModel):
    id: str
    name: str
    initial: bool
    final: bool
    status: str | None
    step: str | None
    activity: str | None
    timers: list[str]


class TransitionOut(BaseModel):
    event: str
    source: str
    target: str
    guards: list[str]


class StepOut(BaseModel):
    name: str
    state: str
    retries: int
    backoff: float
    max_backoff: float
    time_limit: float
    on_error: str | None
    default: str | None


class ActivityOut(BaseModel):
    name: str
    state: str
    retries: int
    visibility_timeout: float
    on_error: str | None
    default: str | None


class TimerSpecOut(BaseModel):
    name: str
    state: str
    send: str
    after: float | None
    at_field: str | None


class TriggerOut(BaseModel):
    name: str
    field: str
    send: str
    states: list[str]


class WorkflowVersion(BaseModel):
    """One version of a workflow definition."""

    name: str
    version: int
    description: str
    states: list[StateOut]
    events: list[str]
    transitions: list[TransitionOut]
    steps: list[StepOut]
    activities: list[ActivityOut]
    timers: list[TimerSpecOut]
    triggers: list[TriggerOut]
    diagram: str


class WorkflowSummary(BaseModel):
    name: str
    versions: list[int]
    latest: int
    description: str


class WorkflowList(BaseModel):
    """The loaded workflows."""

    workflows: list[WorkflowSummary]


class WorkflowDetail(BaseModel):
    """A workflow with each of its loaded versions."""

    name: str
    versions: list[WorkflowVersion]


def _listed(value):
    # One `map=` in the query arrives as a string, several as a list.
    return [value] if isinstance(value, str) else value


# `old:new`: state `old` of version `from` is state `new` of version `to`.
STATE_MAPPING = r"^[^:\x00]{1,200}:[^:\x00]{1,200}$"


class DiffQuery(BaseModel):
    from_: int = Field(alias="from", ge=1, le=2**31 - 1, description="the version compared from")
    to: int = Field(ge=1, le=2**31 - 1, description="the version compared to")
    map: Annotated[list[Annotated[str, Field(pattern=STATE_MAPPING)]], BeforeValidator(_listed)] = Field(
        default_factory=list, max_length=200,
        description="`old:new`, repeatable: state `old` of version `from` was renamed `new` in version `to` "
                    "(compared as one state). A state one version lacks, or two states mapped onto one, is a "
                    "422 problem of type urn:interlock:problem:invalid-mapping")


Changes = dict[str, Annotated[list[Any], Field(min_length=2, max_length=2)]]
CHANGES = Field(description="per field that differs: [old value, new value] (state ids as each version has them)")


class Renamed(BaseModel):
    from_: str = Field(alias="from")
    to: str


class StateChanged(BaseModel):
    id: str = Field(description="the state's id in the newer version")
    old_id: str = Field(description="its id in the older version (another one if renamed)")
    changes: Changes = CHANGES


class StatesDiff(BaseModel):
    added: list[str]
    removed: list[str]
    renamed: list[Renamed]
    changed: list[StateChanged]


class EventsDiff(BaseModel):
    added: list[str]
    removed: list[str]


class TransitionChanged(TransitionOut):
    old_source: str
    old_target: str
    changes: Changes = CHANGES


class TransitionsDiff(BaseModel):
    added: list[TransitionOut] = Field(description="in the newer version's state ids")
    removed: list[TransitionOut] = Field(description="in the older version's state ids")
    changed: list[TransitionChanged]


class SpecChanged(BaseModel):
    name: str
    state: str = Field(description="its state in the newer version")
    old_state: str = Field(description="its state in the older version")
    changes: Changes = CHANGES


class TriggerChanged(BaseModel):
    name: str
    changes: Changes = CHANGES


class ChildSpecOut(BaseModel):
    name: str
    state: str
    workflow: str
    version: int | None
    on_done: str | None
    on_error: str | None
    result: str | None
    parent_close: str


class MapSpecOut(BaseModel):
    name: str
    state: str
    workflow: str
    version: int | None
    items: str = Field(description="the data key holding the items, or `name()` of the function giving them")
    max_concurrency: int | None
    tolerated_failures: float
    on_done: str | None
    on_error: str | None
    results: str | None
    parent_close: str


def _section(name, item):
    doc = f"{name} added (in the newer version), removed (from the older one) or changed"
    fields = {"added": (list[item], ...), "removed": (list[item], ...),
              "changed": (list[TriggerChanged if item is TriggerOut else SpecChanged], ...)}
    return create_model(f"{name.capitalize()}Diff", __doc__=doc, **fields)


StepsDiff = _section("steps", StepOut)
ActivitiesDiff = _section("activities", ActivityOut)
TimersDiff = _section("timers", TimerSpecOut)
TriggersDiff = _section("triggers", TriggerOut)
ChildrenDiff = _section("children", ChildSpecOut)
MapsDiff = _section("maps", MapSpecOut)


class WorkflowDiff(BaseModel):
    """What changed from one version of a workflow to another, read from the definitions."""

    workflow: str
    from_: int = Field(alias="from")
    to: int
    renames: dict[str, str] = Field(description="the mapping the diff was made with: old state id -> new one")
    identical: bool = Field(description="true when nothing differs (and nothing is renamed)")
    states: StatesDiff
    events: EventsDiff
    transitions: TransitionsDiff
    steps: StepsDiff
    activities: ActivitiesDiff
    timers: TimersDiff
    triggers: TriggersDiff
    children: ChildrenDiff
    maps: MapsDiff


# -- activities ----------------------------------------------------------------------

class ReceiveTasks(Strict):
    max_messages: JsonInt = Field(default=1, ge=1, le=10)
    wait_time_seconds: float = Field(default=0, ge=0, le=20,
                                     description="long poll: wait this long for a task when none is queued")
    visibility_timeout: float | None = Field(
        default=None, gt=0, le=43200, description="default: the activity's declared visibility timeout")


class Heartbeat(Strict):
    visibility_timeout: float | None = Field(
        default=None, gt=0, le=43200, description="from now; default: the attempt's current visibility timeout")


class CompleteTask(Strict):
    event: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL,
                              description="default: the activity's default event")
    data: JsonObject = Field(default_factory=dict, description=f"the event's data: callbacks take its keys by name "
                                                              f"(nested at most {MAX_DEPTH} levels)")
    queue: bool = Field(default=False, description="to a paused run: keep the event and apply it on resume "
                                                   "(otherwise a paused run refuses it with 409 run-paused)")


class FailTask(Strict):
    error: str = Field(min_length=1, max_length=4000, pattern=NO_NUL)
    traceback: str | None = Field(default=None, max_length=65536, pattern=NO_NUL)


class ActivityTaskOut(BaseModel):
    """A received activity task: answer it with its token before ``lease_until``."""

    token: str
    run_id: str
    workflow: str
    version: int
    state: str
    activity: str
    data: dict[str, Any]
    business_key: str | None
    attempt: int
    max_attempts: int
    visibility_timeout: float
    lease_until: str


class ReceivedTasks(BaseModel):
    """The tasks received (none when the wait ended first)."""

    tasks: list[ActivityTaskOut]


class HeartbeatOut(BaseModel):
    """The extended lease."""

    lease_until: str
    visibility_timeout: float


# -- the index -----------------------------------------------------------------------

class ApiRoute(BaseModel):
    method: str
    path: str = Field(description="a URI template: {name} stands for a path parameter")
    summary: str


class ApiIndex(BaseModel):
    """Where things are: the OpenAPI document, every route of the API, the web pages and the metrics."""

    title: str
    openapi: str
    web: str
    metrics: str
    routes: list[ApiRoute]


class WorkflowPause(BaseModel):
    """A paused workflow: no step of its runs starts and no timer fires until it is resumed."""

    workflow: str
    version: int | None = Field(description="the version paused (null: every version)")
    reason: str | None
    paused_at: str


class PauseList(BaseModel):
    """The paused workflows."""

    pauses: list[WorkflowPause]


class Resumed(BaseModel):
    workflow: str
    version: int | None
    resumed: bool = Field(description="false: it was not paused")


# -- bulk actions (engine/batches.py) ------------------------------------------------

BatchAction = Literal["cancel", "retry", "send", "pause", "resume"]


class BatchFilter(Strict):
    """The runs to act on: the filters of GET /api/runs, or a selection of run ids."""

    workflow: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    status: Status | None = None
    state: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)
    business_key: str | None = Key
    created_after: Time = Field(default=None, description="ISO 8601; UTC unless it has an offset")
    created_before: Time = Field(default=None, description="ISO 8601; UTC unless it has an offset")
    search: dict[str, Any] | None = Field(default=None, description=(
        "search fields: {\"customer\": \"ACME\"} (equality), {\"total\": [\"gte\", 10]} or "
        "{\"total\": [[\"gte\", 10], [\"lt\", 100]]}; operators as GET /api/runs's search.<field>.<op>"))
    run_ids: list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]] | None = Field(
        default=None, min_length=1, max_length=1000, description="only these runs (a selection)")


class CreateBatch(Strict):
    action: BatchAction
    filter: BatchFilter
    event: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL,
                              description="the event to send (action send)")
    data: JsonObject | None = Field(default=None, description="the event's data (action send)")
    reason: str | None = Field(default=None, max_length=1000, pattern=NO_NUL, description="cancel and pause")
    dry_run: bool = Field(default=False, description="only count the runs the filter selects now: nothing "
                                                     "is created or changed")


class BatchOut(BaseModel):
    """A bulk action and its progress; the reconcilers work it in chunks."""

    id: str
    action: BatchAction | Literal["migrate"] = Field(
        description="migrate: a migration plan applied (POST /api/migrations/{plan_id}/apply)")
    filter: dict[str, Any] = Field(description="as stored: times in epoch seconds, created_before at most "
                                               "the batch's creation (runs started later are not its)")
    args: dict[str, Any]
    status: Literal["pending", "running", "done", "cancelled"]
    cursor: str | None = Field(description="the last run handled (runs are taken newest first)")
    total_estimate: int = Field(description="runs the filter selected when the batch was created")
    done: int = Field(description="runs the action was applied to")
    refused: int = Field(description="runs that refused it (see the items)")
    skipped: int = Field(description="runs it did not apply to (ended, already paused, not failed…)")
    handled: int
    owner: str | None
    created_at: str
    updated_at: str
    finished_at: str | None
    lease_until: str | None


class DryRun(BaseModel):
    """What a batch would act on (nothing created)."""

    dry_run: bool
    action: BatchAction
    filter: dict[str, Any]
    args: dict[str, Any]
    total_estimate: int
    sample: list[str] = Field(description="up to 20 of the runs, newest first")


class BatchPage(BaseModel):
    batches: list[BatchOut]
    next: str | None


class BatchesQuery(BaseModel):
    status: Literal["pending", "running", "done", "cancelled"] | None = None
    cursor: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description="`next` of the previous page")
    limit: int = Field(default=50, ge=1, le=500)


class BatchItemsQuery(BaseModel):
    outcome: Literal["applied", "refused", "skipped"] | None = None
    after: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description="`next` of the previous page")
    limit: int = Field(default=100, ge=1, le=500)


class BatchItemOut(BaseModel):
    run_id: str
    outcome: Literal["applied", "refused", "skipped"]
    error: str | None
    at: str


class BatchItemsPage(BaseModel):
    """The runs a batch handled, by run id."""

    items: list[BatchItemOut]
    next: str | None
