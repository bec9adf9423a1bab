"""Request and response schemas of the migration plans API (api/migrations.py)."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from .schemas import NO_NUL, BatchFilter, BatchOut, JsonInt, Strict

Outcome = Literal["clean", "mapped", "impossible"]
StateId = Field(min_length=1, max_length=200, pattern=NO_NUL)


class PlanFilter(BatchFilter):
    """Which runs of the version to judge: the filters of GET /api/runs (workflow and version are the plan's)."""

    status: Literal["running", "waiting", "failed"] | None = None


class CreatePlan(Strict):
    from_version: JsonInt = Field(alias="from", ge=1, le=2**31 - 1, description="the version the runs are on")
    to_version: JsonInt = Field(alias="to", ge=1, le=2**31 - 1, description="the version to move them to")
    map: dict[str, str] = Field(default_factory=dict, description=(
        "states renamed or split: {old state id: new state id}; the other states keep their ids"))
    filter: PlanFilter = Field(default_factory=PlanFilter)


class Shape(BaseModel):
    """A verdict the plan gave, and how many runs were in that situation."""

    shape: int
    outcome: Outcome
    reason: str | None = Field(description="why the runs cannot move (impossible)")
    configuration: list[str] = Field(description="the states the runs will be in, in the new version")
    renamed: dict[str, str]
    changes: list[str] = Field(description="what moving does: tasks kept or queued, timers kept, re-armed, "
                                           "cancelled or armed, events no longer or newly taken")
    runs: int


class PlanOut(BaseModel):
    """A migration plan: each active run of one version judged against another."""

    id: str
    workflow: str
    from_version: int
    to_version: int
    mapping: dict[str, str]
    filter: dict[str, Any]
    counts: dict[Outcome, int]
    status: Literal["planning", "ready"]
    batch_id: str | None = Field(description="the batch applying it, once applied")
    created_at: str
    shapes: list[Shape]
    samples: dict[Outcome, list[str]] = Field(description="up to 10 run ids per outcome")
    batch: BatchOut | None


class PlanSummary(BaseModel):
    id: str
    workflow: str
    from_version: int
    to_version: int
    mapping: dict[str, str]
    counts: dict[Outcome, int]
    status: Literal["planning", "ready"]
    batch_id: str | None
    created_at: str


class PlanList(BaseModel):
    plans: list[PlanSummary]


class PlansQuery(BaseModel):
    workflow: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)
    limit: int = Field(default=50, ge=1, le=500)


class PlanRunsQuery(BaseModel):
    outcome: Outcome | None = None
    after: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description="`next` of the previous page")
    limit: int = Field(default=100, ge=1, le=500)


class PlanRun(BaseModel):
    run_id: str
    last_seq: int = Field(description="the run's last history entry when it was planned")
    outcome: Outcome
    reason: str | None
    configuration: list[str]
    renamed: dict[str, str]
    changes: list[str]


class PlanRunsPage(BaseModel):
    runs: list[PlanRun]
    next: str | None


class ApplyPlan(Strict):
    dry_run: bool = Field(default=False, description="say what applying would do to each run now: nothing changes")


class Sample(BaseModel):
    run_id: str
    reason: str | None


class PlanDryRun(BaseModel):
    """What applying the plan would do now, run by run (nothing changed)."""

    dry_run: bool
    plan: str
    counts: dict[Literal["applied", "refused", "skipped"], int]
    samples: dict[Literal["applied", "refused", "skipped"], list[Sample]]
    shapes: list[dict[str, Any]]
