"""Flow control: a run's priority, and the concurrency limits' keys in use (engine/limits.py)."""

from typing import Literal

from flask import Blueprint
from pydantic import BaseModel, Field

from engine import admission, limit_views

from . import schemas as s
from .context import engine
from .openapi import API

blueprint = Blueprint("limits", __name__, url_prefix="/api")


class SetPriority(s.Strict):
    priority: s.JsonInt = Field(ge=-1000, le=1000, description="higher first where steps wait for a slot")


class LimitKey(BaseModel):
    kind: Literal["step", "workflow"] = Field(
        "step", description="step: a step's concurrency (slots held by tasks); workflow: a workflow's "
                            "max_active (slots held by runs from their admission until they end)")
    name: str = Field(description="the limit's name (workflow.step, the name given to Limit, or the workflow)")
    key: str | None
    slots: int
    in_use: int
    waiting: int = Field(description="tasks (step) or runs (workflow) waiting for a slot of this key, holding "
                                     "no thread or message")


class LimitList(BaseModel):
    limits: list[LimitKey]


class LimitsQuery(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=s.NO_NUL)
    limit: int = Field(default=100, ge=1, le=500)


@API.route(blueprint, "/runs/<run_id>/priority", "POST",
           summary="Change a run's priority: its steps waiting for a slot move in the queue at once",
           body=SetPriority, responses={200: s.RunOut}, write=True)
def set_priority(run_id, body: SetPriority):
    return engine().set_priority(run_id, body.priority).to_dict()


@API.route(blueprint, "/limits", "GET", summary="Limits' keys: steps' concurrency and workflows' max_active: "
                                               "slots, in use, waiting (busiest first, steps then workflows)",
           query=LimitsQuery, responses={200: LimitList})
def list_limits(query: LimitsQuery):
    steps = [{"kind": "step", **row} for row in limit_views.list_limits(engine(), name=query.name, limit=query.limit)]
    return {"limits": steps + admission.list_slots(engine(), name=query.name, limit=query.limit)}
