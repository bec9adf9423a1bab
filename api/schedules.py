"""Schedules: list, create, inspect (next fire times, recent ticks), pause, resume, trigger, delete."""

from typing import Annotated, Any, Literal

from flask import Blueprint
from pydantic import BaseModel, BeforeValidator, Field

from engine import schedules
from engine.schedule_times import CATCHUP, NAME, NAME_SCHEMA, OVERLAP
from engine.timeparse import iso

from . import schemas as s
from .context import engine
from .openapi import API

blueprint = Blueprint("schedules", __name__, url_prefix="/api/schedules")
NEXT_TIMES = 5
TICKS = 20
PATH = {"name": NAME_SCHEMA}

Seconds = Annotated[float, BeforeValidator(lambda v: float(v) if isinstance(v, int) and not isinstance(v, bool)
                                           else v)]


class CreateSchedule(s.Strict):
    name: str = Field(pattern=f"^{NAME.pattern}$", max_length=200, description=NAME_SCHEMA["description"])
    workflow: str = Field(min_length=1, max_length=200, pattern=s.NO_NUL)
    version: Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(s._json_integer)] = Field(
        default=None, description="default: the newest version loaded when a tick fires")
    cron: str | None = Field(default=None, max_length=200, pattern=s.NO_NUL,
                             description="five fields (minute hour day-of-month month day-of-week), "
                                         "read in `timezone`; give cron or every")
    every: Seconds | None = Field(default=None, ge=1, description="an interval in whole seconds, "
                                                                  "counted from the Unix epoch")
    timezone: str = Field(default="UTC", max_length=64, pattern=s.NO_NUL, description="an IANA time zone")
    data: s.JsonObject = Field(default_factory=dict, description="each run's data")
    overlap: Literal[OVERLAP] = Field(default="skip", description="a tick while the previous tick's run "
                                                                  "is active: skip, allow, buffer one, "
                                                                  "or cancel the previous run")
    catchup: Literal[CATCHUP] = Field(default="last", description="ticks missed while no worker ran: "
                                                                  "none, the last one, or all in the window")
    catchup_window: Seconds = Field(default=86400.0, gt=0, description="seconds")


class Tick(BaseModel):
    """A tick: when it was due, why it fired, what it did, and the run it started."""

    fire_time: str
    cause: Literal["schedule", "catchup", "manual"]
    status: Literal["started", "skipped", "buffered", "failed"]
    run_id: str | None
    run_status: s.Status | None
    error: str | None
    started_at: str | None


class ScheduleOut(BaseModel):
    """A schedule."""

    name: str
    workflow: str
    version: int | None
    cron: str | None
    every: float | None
    timezone: str
    data: dict[str, Any]
    overlap: str
    catchup: str
    catchup_window: float
    status: Literal["active", "paused"]
    origin: Literal["code", "api"] = Field(description="declared in a workflow module, or created over the API")
    next_fire_at: str | None
    last_fire_at: str | None
    last_run_id: str | None
    missed: int = Field(description="ticks the catch-up policy dropped after downtime")
    next_fire_times: list[str] = Field(description=f"the next {NEXT_TIMES} fire times (UTC)")
    created_at: str
    updated_at: str


class ScheduleDetail(ScheduleOut):
    """A schedule with its latest ticks, newest first."""

    ticks: list[Tick]


class ScheduleList(BaseModel):
    """Every schedule, by name."""

    schedules: list[ScheduleOut]


def schedule_out(rt, row) -> dict:
    times = [] if row["status"] == "paused" else schedules.spec_of(row).next_times(rt.clock.now(), NEXT_TIMES)
    out = {k: row[k] for k in ScheduleOut.model_fields if k in row}
    out.update({k: iso(row[k]) for k in ("next_fire_at", "last_fire_at", "created_at", "updated_at")})
    out["next_fire_times"] = [iso(t) for t in times]
    return out


def tick_out(row) -> dict:
    return {"fire_time": iso(row["fire_time"]), "cause": row["cause"], "status": row["status"],
            "run_id": row["run_id"], "run_status": row["run_status"], "error": row["error"],
            "started_at": iso(row["started_at"])}


def detail(rt, name) -> dict:
    return {**schedule_out(rt, schedules.get(rt, name)),
            "ticks": [tick_out(t) for t in schedules.ticks(rt, name, TICKS)]}


@API.route(blueprint, "", "GET", summary="List the schedules", responses={200: ScheduleList})
def list_schedules():
    rt = engine()
    return {"schedules": [schedule_out(rt, row) for row in schedules.list_all(rt)]}


@API.route(blueprint, "", "POST", summary="Create a schedule (cron or interval)", body=CreateSchedule,
           responses={201: ScheduleDetail}, write=True)
def create_schedule(body: CreateSchedule):
    rt = engine()
    row = schedules.create(rt, **body.model_dump())
    return detail(rt, row["name"]), 201


@API.route(blueprint, "/<name>", "GET", summary="A schedule: its next fire times and latest ticks",
           responses={200: ScheduleDetail}, path=PATH)
def get_schedule(name):
    return detail(engine(), name)


@API.route(blueprint, "/<name>/pause", "POST", summary="Pause a schedule: no tick fires until it resumes",
           body=s.Empty, responses={200: ScheduleDetail}, write=True, path=PATH)
def pause_schedule(name, body: s.Empty):
    rt = engine()
    schedules.pause(rt, name)
    return detail(rt, name)


@API.route(blueprint, "/<name>/resume", "POST",
           summary="Resume a schedule from now on (ticks passed while paused do not fire)",
           body=s.Empty, responses={200: ScheduleDetail}, write=True, path=PATH)
def resume_schedule(name, body: s.Empty):
    rt = engine()
    schedules.resume(rt, name)
    return detail(rt, name)


@API.route(blueprint, "/<name>/trigger", "POST",
           summary="Fire a tick now, under the schedule's overlap policy",
           body=s.Empty, responses={200: Tick}, write=True, path=PATH)
def trigger_schedule(name, body: s.Empty):
    rt = engine()
    tick = schedules.trigger(rt, name)
    run_status = rt.get(tick["run_id"]).status if tick["run_id"] else None
    return tick_out({**tick, "run_status": run_status})


@API.route(blueprint, "/<name>", "DELETE",
           summary="Delete a schedule and its ticks (its runs stay; a declared one returns at the next worker start)",
           responses={204: None}, write=True, path=PATH)
def delete_schedule(name):
    schedules.remove(engine(), name)
    return "", 204
