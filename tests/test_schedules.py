"""Schedules on SQLite and PostgreSQL: one run per tick however many workers race, daily ticks
across DST changes, the catch-up and overlap policies, declared schedules, and the API, CLI and
web page over them. Time is driven by passing ``now`` to the reconciler's duty, not by waiting."""

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from engine import schedules
from engine.errors import InvalidData, ScheduleExists, ScheduleNotFound, WorkflowNotFound
from engine.models import runs, schedule_ticks
from engine.models import schedules as schedules_table
from engine.runtime import Interlock
from engine.schedule_times import local, schedule

from .conftest import _runtime

WORKFLOWS = "tests.schedule_workflows"
UTC = timezone.utc
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()  # a Monday, noon
HOUR = 3600.0


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request):
    fixture = "sqlite_settings" if request.param == "sqlite" else "pg_settings"
    return request.getfixturevalue(fixture).replace(workflows=WORKFLOWS)


@pytest.fixture
def rt(db_settings):
    yield from _runtime(db_settings)


def at(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def runs_of(rt, name) -> list[dict]:
    """The runs the schedule's ticks started, by fire time."""
    with rt.db.read() as conn:
        found = conn.execute(select(schedule_ticks.c.fire_time, schedule_ticks.c.status, runs.c.id, runs.c.status)
                             .join(runs, runs.c.id == schedule_ticks.c.run_id)
                             .where(schedule_ticks.c.schedule == name)
                             .order_by(schedule_ticks.c.fire_time)).all()
    return [{"fire_time": t, "tick": tick, "run": run_id, "status": status} for t, tick, run_id, status in found]


def tick_statuses(rt, name) -> list[str]:
    return [t["status"] for t in reversed(schedules.ticks(rt, name, limit=100))]


def test_four_workers_racing_start_exactly_one_run_per_tick(db_settings):
    workers = [Interlock(db_settings) for _ in range(4)]
    try:
        schedules.create(workers[0], now=T0, name="race", workflow="report", every=60, overlap="allow")
        ticks = [T0 + 60 * k for k in range(1, 9)]
        barrier, errors = threading.Barrier(len(workers)), []

        def work(rt):
            try:
                for now in ticks:
                    barrier.wait(10)
                    schedules.fire_due(rt, now=now)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(rt,)) for rt in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        started = runs_of(workers[0], "race")
        assert [r["fire_time"] for r in started] == ticks
        with workers[0].db.read() as conn:
            assert conn.execute(select(func.count()).select_from(runs)).scalar() == len(ticks)
        assert schedules.get(workers[0], "race")["next_fire_at"] == ticks[-1] + 60
    finally:
        for rt in workers:
            rt.close()


def test_daily_tick_fires_once_on_each_day_across_both_dst_changes(rt):
    """02:30 Europe/Amsterdam: on 29 March 2026 that wall time does not exist (02:00 -> 03:00), on
    25 October it happens twice (03:00 -> 02:00). Driven hour by hour through both weeks."""
    for start, name in ((at(2026, 3, 27), "spring"), (at(2026, 10, 23), "autumn")):
        schedules.create(rt, now=start, name=name, workflow="report", cron="30 2 * * *",
                         timezone="Europe/Amsterdam", overlap="allow", catchup="none")
        now = start
        while (now := min(now + HOUR, schedules.get(rt, name)["next_fire_at"] + 5)) < start + 5 * 24 * HOUR:
            schedules.fire_due(rt, now=now)  # a pass every hour, and one 5 s after each tick is due
        fired = [local(r["fire_time"], "Europe/Amsterdam") for r in runs_of(rt, name)]
        assert len({r["run"] for r in runs_of(rt, name)}) == len(fired)
        if name == "spring":
            assert fired == ["2026-03-27 02:30 CET", "2026-03-28 02:30 CET", "2026-03-29 03:00 CEST",
                             "2026-03-30 02:30 CEST", "2026-03-31 02:30 CEST"]
        else:
            assert fired == ["2026-10-23 02:30 CEST", "2026-10-24 02:30 CEST", "2026-10-25 02:30 CEST",
                             "2026-10-26 02:30 CET", "2026-10-27 02:30 CET"]


def test_fire_times_in_a_gap_and_in_a_repeated_hour():
    tz = "Europe/Amsterdam"
    every_20 = schedule("*/20 2 * * *", workflow="report", timezone=tz)
    assert [local(t, tz) for t in every_20.next_times(at(2026, 3, 28, 23), 2)] == \
        ["2026-03-29 03:00 CEST", "2026-03-30 02:00 CEST"]  # 02:00, 02:20 and 02:40 do not exist: once, after
    hourly = schedule("0 * * * *", workflow="report", timezone=tz)
    assert [local(t, tz) for t in hourly.next_times(at(2026, 10, 24, 23), 3)] == \
        ["2026-10-25 02:00 CEST", "2026-10-25 03:00 CET", "2026-10-25 04:00 CET"]  # wall times fire once


@pytest.mark.parametrize("catchup, window, fired, timing", [
    ("none", timedelta(days=1), [], {"cron": "0 * * * *"}),
    ("last", timedelta(days=1), [5], {"cron": "0 * * * *"}),
    ("last", timedelta(days=1), [5], {"every": HOUR}),
    ("all", timedelta(hours=3), [3, 4, 5], {"cron": "0 * * * *"}),
    ("all", timedelta(hours=3), [3, 4, 5], {"every": HOUR}),
    ("all", timedelta(days=1), [1, 2, 3, 4, 5], {"cron": "0 * * * *"}),
], ids=["none", "last", "last-interval", "all-3h", "all-3h-interval", "all-1d"])
def test_catch_up_after_the_worker_stopped(rt, catchup, window, fired, timing):
    """An hourly schedule whose worker stopped after the tick at T0 and ran again at T0 + 5 h 10 min."""
    schedules.create(rt, now=T0 - 1, name="hourly", workflow="report", overlap="allow",
                     catchup=catchup, catchup_window=window, **timing)
    schedules.fire_due(rt, now=T0 + 5)
    schedules.fire_due(rt, now=T0 + 5 * HOUR + 600)
    started = [round((r["fire_time"] - T0) / HOUR) for r in runs_of(rt, "hourly")]
    assert started == [0, *fired]
    row = schedules.get(rt, "hourly")
    assert row["next_fire_at"] == T0 + 6 * HOUR and row["missed"] == 5 - len(fired)
    schedules.fire_due(rt, now=T0 + 6 * HOUR + 1)  # running again: on time, whatever the policy
    assert round((runs_of(rt, "hourly")[-1]["fire_time"] - T0) / HOUR) == 6


def test_a_long_catch_up_goes_on_over_several_passes_in_order(rt, monkeypatch):
    monkeypatch.setattr(schedules, "MAX_TICKS", 3)
    schedules.create(rt, now=T0 - 1, name="m", workflow="report", every=60, overlap="allow", catchup="all")
    schedules.fire_due(rt, now=T0 + 1)
    for _ in range(3):  # nine missed ticks, three a pass; the on-time one after them
        schedules.fire_due(rt, now=T0 + 605)
    assert [(r["fire_time"] - T0) / 60 for r in runs_of(rt, "m")] == list(range(11))
    assert schedules.get(rt, "m")["next_fire_at"] == T0 + 660


def test_a_tick_a_little_late_is_on_time_not_missed(rt):
    schedules.create(rt, now=T0 - 1, name="late", workflow="report", every=HOUR, catchup="none")
    schedules.fire_due(rt, now=T0 + 30)
    assert [r["fire_time"] for r in runs_of(rt, "late")] == [T0]


def finish(rt, run_id):
    rt.send(run_id, "finish")


@pytest.mark.parametrize("overlap, statuses, active", [
    ("skip", ["started", "skipped", "skipped"], 1),
    ("allow", ["started", "started", "started"], 3),
    ("buffer_one", ["started", "buffered", "skipped"], 1),
    ("cancel_previous", ["started", "started", "started"], 1),
])
def test_overlap_policies_while_the_previous_run_is_active(rt, overlap, statuses, active):
    schedules.create(rt, now=T0 - 1, name="o", workflow="report", every=60, overlap=overlap)
    for k in range(3):
        schedules.fire_due(rt, now=T0 + 60 * k + 1)
    assert tick_statuses(rt, "o") == statuses
    started = runs_of(rt, "o")
    assert sum(r["status"] in ("running", "waiting") for r in started) == active
    if overlap == "cancel_previous":
        assert [r["status"] for r in started] == ["cancelled", "cancelled", "waiting"]
    if overlap == "buffer_one":
        finish(rt, started[0]["run"])
        schedules.fire_due(rt, now=T0 + 150)  # not a tick: the buffered one starts now its run ended
        after = runs_of(rt, "o")
        assert [(r["fire_time"] - T0, r["status"]) for r in after] == [(0, "succeeded"), (60, "waiting")]
        assert schedules.get(rt, "o")["buffered_at"] is None


def test_buffer_one_starts_the_buffered_tick_before_a_later_one(rt):
    schedules.create(rt, now=T0 - 1, name="b", workflow="report", every=60, overlap="buffer_one")
    schedules.fire_due(rt, now=T0 + 1)
    schedules.fire_due(rt, now=T0 + 61)  # buffered: the first run is active
    finish(rt, runs_of(rt, "b")[0]["run"])
    # A reconciler that found the schedule due, and no buffered tick to start (it read before the
    # run ended), fires the next tick: the buffered one still goes first.
    schedules._locked(rt, "b", lambda s, conn, row: schedules._Ticking(rt, s, conn, row, T0 + 121).fire_due())
    assert tick_statuses(rt, "b") == ["started", "started", "buffered"]
    assert [(r["fire_time"] - T0, r["status"]) for r in runs_of(rt, "b")] == [(0, "succeeded"), (60, "waiting")]
    assert schedules.get(rt, "b")["buffered_at"] == T0 + 120


def test_skip_starts_again_once_the_previous_run_ended(rt):
    schedules.create(rt, now=T0 - 1, name="s", workflow="report", every=60)
    schedules.fire_due(rt, now=T0 + 1)
    finish(rt, runs_of(rt, "s")[0]["run"])
    schedules.fire_due(rt, now=T0 + 61)
    assert tick_statuses(rt, "s") == ["started", "started"]


def test_paused_schedules_do_not_fire_and_resume_from_now(rt):
    schedules.create(rt, now=T0 - 1, name="p", workflow="report", every=60, overlap="allow", catchup="all")
    schedules.pause(rt, "p", now=T0 - 1)
    schedules.fire_due(rt, now=T0 + 300)
    assert runs_of(rt, "p") == []
    assert schedules.resume(rt, "p", now=T0 + 301)["next_fire_at"] == T0 + 360
    schedules.fire_due(rt, now=T0 + 361)
    assert [r["fire_time"] for r in runs_of(rt, "p")] == [T0 + 360]


def test_trigger_now_starts_a_run_under_the_overlap_policy(rt):
    schedules.create(rt, now=T0, name="t", workflow="report", cron="0 6 * * *")
    first = schedules.trigger(rt, "t", now=T0 + 1.5)
    assert first["status"] == "started" and first["cause"] == "manual"
    assert rt.get(first["run_id"]).data == {}
    assert schedules.trigger(rt, "t", now=T0 + 2)["status"] == "skipped"  # the first run is active


def test_declared_schedules_are_synced_and_keep_being_paused(rt):
    schedules.sync_declared(rt, now=T0)
    names = [s["name"] for s in schedules.list_all(rt)]
    assert names == ["hourly-report", "report"]
    morning = schedules.get(rt, "report")
    assert (morning["origin"], morning["cron"], morning["data"]) == ("code", "0 6 * * MON-FRI", {"kind": "morning"})
    assert local(morning["next_fire_at"], "Europe/Amsterdam") == "2026-03-03 06:00 CET"
    schedules.pause(rt, "report")
    schedules.create(rt, now=T0, name="mine", workflow="report", every=60)
    schedules.sync_declared(rt, now=T0 + 10)
    assert {s["name"]: s["status"] for s in schedules.list_all(rt)} == \
        {"hourly-report": "active", "report": "paused", "mine": "active"}


def test_refused_input_changes_nothing(rt):
    schedules.create(rt, now=T0, name="one", workflow="report", every=60)
    cases = [({"cron": "61 * * * *"}, InvalidData), ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"}, InvalidData),
             ({"every": 0}, InvalidData), ({"every": 60, "overlap": "sometimes"}, InvalidData),
             ({"every": 60, "workflow": "nope"}, WorkflowNotFound), ({"every": 60, "name": "one"}, ScheduleExists),
             ({"every": 60, "name": "a b"}, InvalidData), ({"cron": "0 6 * * *", "every": 60}, InvalidData)]
    for fields, error in cases:
        with pytest.raises(error):
            schedules.create(rt, now=T0, **{"name": "two", "workflow": "report", **fields})
    assert [s["name"] for s in schedules.list_all(rt)] == ["one"]
    for action in (schedules.get, schedules.pause, schedules.resume, schedules.trigger, schedules.remove):
        with pytest.raises(ScheduleNotFound):
            action(rt, "missing")
        with pytest.raises(InvalidData, match="schedule name"):
            action(rt, "no spaces")


# -- over the API -------------------------------------------------------------------------------

@pytest.fixture
def api(rt):
    import requests

    from .apitools import serving

    with serving(rt) as base, requests.Session() as http:
        yield rt, base, http


def test_api_creates_lists_pauses_resumes_triggers_and_deletes(api):
    rt, base, http = api
    created = http.post(f"{base}/api/schedules", json={
        "name": "weekday-report", "workflow": "report", "cron": "0 6 * * MON-FRI", "timezone": "Europe/Amsterdam",
        "data": {"kind": "morning"}, "overlap": "buffer_one", "catchup": "all", "catchup_window": 7200}, timeout=10)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["origin"] == "api" and body["status"] == "active" and len(body["next_fire_times"]) == 5
    assert body["next_fire_at"] == body["next_fire_times"][0] and body["ticks"] == []
    listed = http.get(f"{base}/api/schedules", timeout=10).json()["schedules"]
    assert [s["name"] for s in listed] == ["weekday-report"]
    paused = http.post(f"{base}/api/schedules/weekday-report/pause", json={}, timeout=10).json()
    assert paused["status"] == "paused" and paused["next_fire_times"] == []
    assert http.post(f"{base}/api/schedules/weekday-report/resume", timeout=10).json()["status"] == "active"
    tick = http.post(f"{base}/api/schedules/weekday-report/trigger", timeout=10).json()
    assert (tick["cause"], tick["status"], tick["run_status"]) == ("manual", "started", "waiting")
    assert rt.get(tick["run_id"]).data == {"kind": "morning"}
    shown = http.get(f"{base}/api/schedules/weekday-report", timeout=10).json()
    assert [t["run_id"] for t in shown["ticks"]] == [tick["run_id"]]
    assert http.delete(f"{base}/api/schedules/weekday-report", timeout=10).status_code == 204
    assert http.get(f"{base}/api/schedules", timeout=10).json() == {"schedules": []}
    assert rt.get(tick["run_id"]).status == "waiting"  # the runs stay


REFUSED = [
    ({"cron": "0 25 * * *"}, 422, "invalid-data", "cron"),
    ({"cron": "0 6 * * *", "timezone": "Europe/Atlantis"}, 422, "invalid-data", "timezone"),
    ({"cron": "0 6 * * *", "every": 60}, 422, "invalid-data", "cron"),
    ({}, 422, "invalid-data", "cron"),
    ({"every": 0.5}, 422, "validation-error", "every"),
    ({"every": 60, "overlap": "queue"}, 422, "validation-error", "overlap"),
    ({"every": 60, "name": "no spaces"}, 422, "validation-error", "name"),
    ({"every": 60, "surprise": 1}, 422, "validation-error", "surprise"),
    ({"every": 60, "workflow": "nope"}, 404, "workflow-not-found", None),
    ({"every": 60, "name": "taken"}, 409, "schedule-exists", None),
]


def test_api_refuses_bad_schedules_with_a_problem_and_changes_nothing(api):
    from .apitools import PROBLEM, dump

    rt, base, http = api
    schedules.create(rt, name="taken", workflow="report", every=60)
    before = dump(rt)
    for body, status, problem, field in REFUSED:
        response = http.post(f"{base}/api/schedules", json={"name": "new", "workflow": "report", **body},
                             timeout=10)
        assert response.status_code == status, (body, response.text)
        assert response.headers["Content-Type"] == PROBLEM
        found = response.json()
        assert found["type"] == f"urn:interlock:problem:{problem}" and found["detail"], body
        assert found.get("field") == field or field is None, (body, found)
    assert dump(rt) == before


def test_api_answers_404_for_an_unknown_schedule(api):
    rt, base, http = api
    for method, path in (("GET", ""), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/trigger"), ("DELETE", "")):
        response = http.request(method, f"{base}/api/schedules/missing{path}", timeout=10)
        assert response.status_code == 404 and response.json()["type"].endswith("schedule-not-found"), path


def test_a_worker_fires_an_interval_schedule_by_itself(rt):
    from .conftest import wait_until

    schedules.create(rt, name="every-second", workflow="report", every=1, overlap="allow")
    with rt.worker(2):
        wait_until(lambda: len(runs_of(rt, "every-second")) >= 2, timeout=15, message="two ticks' runs")
    started = runs_of(rt, "every-second")
    assert len({r["run"] for r in started}) == len(started)
    assert all(b["fire_time"] - a["fire_time"] == 1 for a, b in zip(started, started[1:]))
    assert {s["name"] for s in schedules.list_all(rt)} >= {"report", "hourly-report"}  # synced at start


# -- the CLI ---------------------------------------------------------------------------------------

def test_cli_creates_triggers_and_refuses_with_one_line_and_exit_code_2(sqlite_settings):
    from .processes import env_for, interlock

    env = env_for(sqlite_settings.replace(workflows=WORKFLOWS))
    made = interlock("schedules", "create", "nightly", "--workflow", "report", "--cron", "30 2 * * *",
                     "--timezone", "Europe/Amsterdam", "--data", '{"kind": "nightly"}', env=env)
    assert made.returncode == 0 and made.stdout.startswith("nightly created: next "), made.stderr
    for args, message in ((["--cron", "99 * * * *"], "error: cron '99 * * * *' is not a five-field cron"),
                          (["--every", "60", "--timezone", "Nowhere/City"], "error: unknown time zone"),
                          (["--every", "60", "--workflow", "nope"], "error: unknown workflow 'nope'")):
        refused = interlock("schedules", "create", "nightly2", "--workflow", "report", *args, env=env)
        assert (refused.returncode, refused.stdout) == (2, ""), refused
        assert refused.stderr.startswith(message) and refused.stderr.count("\n") == 1, refused.stderr
    assert interlock("schedules", "pause", "missing", env=env).stderr == "error: unknown schedule 'missing'\n"
    triggered = interlock("schedules", "trigger", "nightly", env=env)
    assert triggered.returncode == 0 and "tick started, run " in triggered.stdout
    listed = interlock("schedules", "list", "--json", env=env)
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["data"], len(row["next_fire_times"])) == ("nightly", {"kind": "nightly"}, 5)
    assert interlock("schedules", "delete", "nightly", env=env).stdout == "nightly deleted\n"


# -- the web page ----------------------------------------------------------------------------------

def test_the_schedules_page_lists_next_five_fire_times_and_each_ticks_run(tmp_path):
    import requests

    from .test_web import CARGO, csrf_of, serve

    with serve(tmp_path) as site:
        rt = site.rt
        now = rt.clock.now()
        minute = now // 60 * 60  # created 119 s before it: the ticks a minute before and at it are due
        schedules.create(rt, now=minute - 119, name="cargo-every-minute", workflow="cargo", every=60, data=CARGO,
                         overlap="allow", catchup="all")
        schedules.create(rt, name="amsterdam-morning", workflow="cargo", cron="30 2 * * *",
                         timezone="Europe/Amsterdam", data=CARGO)
        schedules.fire_due(rt, now=now)
        started = runs_of(rt, "cargo-every-minute")
        assert len(started) == 2
        with requests.Session() as http:
            page = http.get(f"{site.url}/schedules", timeout=10)
            assert page.status_code == 200
            html = page.text
            assert 'href="/schedules"' in html  # in the navigation
            for name in ("cargo-every-minute", "amsterdam-morning"):
                assert f'data-schedule="{name}"' in html
            morning = html.split('data-schedule="amsterdam-morning"')[1].split("</section>")[0]
            expected = schedules.spec_of(schedules.get(rt, "amsterdam-morning")).next_times(rt.clock.now(), 5)
            assert [local(t, "Europe/Amsterdam") for t in expected] == \
                [part.split("</time>")[0].split(">")[-1] for part in morning.split("<li>")[1:]]
            assert "No tick has fired yet." in morning
            minute = html.split('data-schedule="cargo-every-minute"')[1].split("</section>")[0]
            for run in started:
                assert f'href="/runs/{run["run"]}"' in minute
            # Pause from the page: it says so, and lists no fire times.
            paused = http.post(f"{site.url}/schedules/amsterdam-morning/pause", data={"csrf_token": csrf_of(html)},
                               timeout=10)
            assert paused.status_code == 200 and "Paused amsterdam-morning" in paused.text
            assert schedules.get(rt, "amsterdam-morning")["status"] == "paused"
            triggered = http.post(f"{site.url}/schedules/cargo-every-minute/trigger",
                                  data={"csrf_token": csrf_of(html)}, timeout=10)
            assert "Triggered cargo-every-minute: tick started" in triggered.text
            assert http.post(f"{site.url}/schedules/missing/pause", data={"csrf_token": csrf_of(html)},
                             timeout=10).text.count("unknown schedule") == 1
            assert http.post(f"{site.url}/schedules/amsterdam-morning/delete", data={}, timeout=10).status_code == 403
            assert schedules.get(rt, "amsterdam-morning")["status"] == "paused"  # no CSRF token: nothing done


# -- the chaos invariant ---------------------------------------------------------------------------

def test_the_chaos_invariant_finds_no_tick_with_two_runs_and_finds_a_planted_one(rt):
    from sqlalchemy import insert, update

    from bench.chaos_checks import Invariant
    from bench.chaos_schedules import check

    schedules.create(rt, now=T0 - 1, name="c", workflow="report", every=60, overlap="allow")
    for k in range(3):
        schedules.fire_due(rt, now=T0 + 60 * k + 1)
    healthy = check(rt.settings.database_url, Invariant)
    assert [(i.name, i.checked, i.violations) for i in healthy] == [
        ("schedule ticks start one run each", 3, 0), ("no schedule tick lost", 1, 0), ("overlap policy kept", 1, 0)]
    first, second = runs_of(rt, "c")[:2]
    with rt.db.write() as conn:  # damage: the second tick names the first tick's run
        conn.execute(update(schedule_ticks).where(schedule_ticks.c.fire_time == second["fire_time"])
                     .values(run_id=first["run"]))
        conn.execute(insert(schedule_ticks).values(schedule="c", fire_time=T0 + 600, cause="schedule",
                                                   status="skipped", run_id=first["run"], created_at=T0))
    damaged, lost, _overlap = check(rt.settings.database_url, Invariant)
    assert dict(lost.problems) == {"a tick missing": 1}  # the planted tick is 8 minutes after the last
    assert dict(damaged.problems) == {"a tick's run has another tick's key": 1, "a skipped tick names a run": 1,
                                      "a run named by two ticks": 1}


def test_the_chaos_invariant_finds_runs_of_a_skip_schedule_active_at_once(rt):
    from sqlalchemy import update

    from bench.chaos_checks import Invariant
    from bench.chaos_schedules import check

    schedules.create(rt, now=T0 - 1, name="c", workflow="report", every=60, overlap="allow")
    for k in range(3):  # nothing runs the runs here: all three stay active
        schedules.fire_due(rt, now=T0 + 60 * k + 1)
    *_, allowed = check(rt.settings.database_url, Invariant)
    assert allowed.violations == 0 and "allow overlapped 2 times" in allowed.notes[0]
    with rt.db.write() as conn:  # damage: as if the schedule had said skip all along
        conn.execute(update(schedules_table).where(schedules_table.c.name == "c").values(overlap="skip"))
    *_, damaged = check(rt.settings.database_url, Invariant)
    assert dict(damaged.problems) == {"two runs of a skip schedule active at once": 2}


def test_workers_starting_together_sync_the_declared_schedules_once(db_settings):
    workers = [Interlock(db_settings) for _ in range(4)]
    try:
        barrier, errors = threading.Barrier(len(workers)), []

        def work(rt):
            try:
                barrier.wait(10)
                schedules.sync_declared(rt, now=T0)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(rt,)) for rt in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert [s["name"] for s in schedules.list_all(workers[0])] == ["hourly-report", "report"]
    finally:
        for rt in workers:
            rt.close()


def test_users_fire_a_declared_schedule_in_their_own_tests_without_waiting():
    from engine.testing import Harness, fire_schedule

    with Harness(WORKFLOWS) as h:
        (tick,) = fire_schedule(h.rt, "report")  # its next tick: a weekday at 06:00 in Amsterdam
        assert local(tick["fire_time"], "Europe/Amsterdam").endswith("06:00 CET") or \
            local(tick["fire_time"], "Europe/Amsterdam").endswith("06:00 CEST")
        assert h.rt.get(tick["run_id"]).data == {"kind": "morning"}
        (again,) = fire_schedule(h.rt, "report")
        assert again["fire_time"] > tick["fire_time"] and again["run_id"] != tick["run_id"]
