"""Pausing runs and whole workflows, and resuming them (engine/pauses.py)."""

from flask import Blueprint

from engine.timeparse import iso

from . import schemas as s
from .context import engine
from .openapi import API

blueprint = Blueprint("pauses", __name__, url_prefix="/api")


@API.route(blueprint, "/runs/<run_id>/pause", "POST",
           summary="Pause a run: no step starts and no timer fires until it is resumed; events are refused "
                   "(or queued with queue=true)",
           body=s.PauseRun, responses={200: s.RunOut}, write=True)
def pause_run(run_id, body: s.PauseRun):
    return engine().pause(run_id, body.reason).to_dict()


@API.route(blueprint, "/runs/<run_id>/resume", "POST",
           summary="Resume a paused run: held steps start, due timers fire, queued events apply in order",
           body=s.Empty, responses={200: s.RunOut}, write=True)
def resume_run(run_id, body: s.Empty):
    return engine().resume(run_id).to_dict()


@API.route(blueprint, "/workflows/<name>/pause", "POST",
           summary="Pause every run of a workflow (or of one version) without touching the runs",
           body=s.PauseWorkflow, responses={200: s.WorkflowPause}, write=True)
def pause_workflow(name, body: s.PauseWorkflow):
    return _shown(engine().pause_workflow(name, body.version, body.reason))


@API.route(blueprint, "/workflows/<name>/resume", "POST", summary="Resume a paused workflow",
           body=s.ResumeWorkflow, responses={200: s.Resumed}, write=True)
def resume_workflow(name, body: s.ResumeWorkflow):
    return {"workflow": name, "version": body.version, "resumed": engine().resume_workflow(name, body.version)}


@API.route(blueprint, "/pauses", "GET", summary="The paused workflows", responses={200: s.PauseList})
def list_pauses():
    return {"pauses": [_shown(p) for p in engine().paused_workflows()]}


def _shown(pause: dict) -> dict:
    return {**pause, "paused_at": iso(pause["paused_at"])}
