"""Activity workers: receive tasks (long poll), heartbeat, complete or fail them by token.

SQS semantics: a received task is invisible to other receivers for its visibility
timeout; a heartbeat extends it; a task not completed in time is received again.
A stale, unknown or repeated token gets a 410 ``stale-task-token`` problem and changes nothing.
"""

from flask import Blueprint

from engine import activities
from engine.timeparse import iso

from . import schemas as s
from .context import engine
from .openapi import API

blueprint = Blueprint("activities", __name__, url_prefix="/api")


@API.route(blueprint, "/activities/<name>/receive", "POST",
           summary="Receive up to max_messages tasks of an activity, waiting up to wait_time_seconds for one",
           body=s.ReceiveTasks, responses={200: s.ReceivedTasks}, write=True, path={"name": s.ACTIVITY})
def receive(name, body: s.ReceiveTasks):
    received = activities.receive(engine(), name, body.max_messages, body.wait_time_seconds,
                                  body.visibility_timeout)
    return {"tasks": [task.to_dict() for task in received]}


@API.route(blueprint, "/tasks/<token>/heartbeat", "POST",
           summary="Extend a received task's visibility timeout", body=s.Heartbeat,
           responses={200: s.HeartbeatOut}, write=True)
def heartbeat(token, body: s.Heartbeat):
    lease = activities.heartbeat(engine(), token, body.visibility_timeout)
    return {"lease_until": iso(lease["lease_until"]), "visibility_timeout": lease["visibility_timeout"]}


@API.route(blueprint, "/tasks/<token>/complete", "POST",
           summary="Complete a received task: its run takes the event (default: the activity's) with the data",
           body=s.CompleteTask, responses={200: s.RunOut}, write=True)
def complete(token, body: s.CompleteTask):
    return activities.complete(engine(), token, body.event, body.data).to_dict()


@API.route(blueprint, "/tasks/<token>/fail", "POST",
           summary="Fail a received task: it is received again when its visibility timeout ends, "
                   "until its last attempt", body=s.FailTask, responses={200: s.RunOut}, write=True)
def fail(token, body: s.FailTask):
    return activities.fail(engine(), token, body.error, body.traceback).to_dict()
