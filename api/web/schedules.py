"""The schedules page: every schedule with its next five fire times and the runs its ticks started;
pause, resume, trigger and delete (the same engine calls as the REST API)."""

from flask import abort, flash, jsonify, redirect, render_template, url_for

from engine import schedules
from engine.errors import InterlockError
from engine.schedule_times import local

from ..context import engine
from . import blueprint, problem_of, security, wants_json

NEXT_TIMES = 5
TICKS = 10


@blueprint.get("/schedules")
def schedules_page():
    rt = engine()
    now = rt.clock.now()
    items = []
    for row in schedules.list_all(rt):
        spec = schedules.spec_of(row)
        times = [] if row["status"] == "paused" else spec.next_times(now, NEXT_TIMES)
        items.append({**row, "when": spec.describe(), "window": row["catchup_window"],
                      "next": [(t, local(t, row["timezone"])) for t in times],
                      "ticks": [{**t, "local": local(t["fire_time"], row["timezone"])}
                                for t in schedules.ticks(rt, row["name"], TICKS)]})
    return render_template("schedules.html", items=items)


def _schedule_action(name, perform):
    security.check_csrf()
    if not security.may_write():
        abort(403, description="this token is read-only")
    try:
        message = perform()
    except InterlockError as exc:
        problem = problem_of(exc)
        if wants_json():
            return problem.response()
        flash(f"Refused ({problem.status} {problem.title}): {problem.detail}", "error")
        return redirect(url_for("web.schedules_page"), 303)
    if wants_json():
        return jsonify(ok=True, message=message)
    flash(message, "ok")
    return redirect(url_for("web.schedules_page"), 303)


@blueprint.post("/schedules/<name>/pause")
def pause_schedule(name):
    return _schedule_action(name, lambda: (schedules.pause(engine(), name), f"Paused {name}")[1])


@blueprint.post("/schedules/<name>/resume")
def resume_schedule(name):
    return _schedule_action(name, lambda: (schedules.resume(engine(), name), f"Resumed {name}")[1])


@blueprint.post("/schedules/<name>/trigger")
def trigger_schedule(name):
    def perform():
        tick = schedules.trigger(engine(), name)
        return f"Triggered {name}: tick {tick['status']}" + (f", run {tick['run_id']}" if tick["run_id"] else "")
    return _schedule_action(name, perform)


@blueprint.post("/schedules/<name>/delete")
def delete_schedule(name):
    return _schedule_action(name, lambda: (schedules.remove(engine(), name), f"Deleted {name}")[1])
