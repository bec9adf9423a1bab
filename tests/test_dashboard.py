"""The dashboard's figures, computed by the database (SQLite and PostgreSQL): runs started and
finished per hour by status, and nearest-rank percentiles of step durations."""

import pytest
from sqlalchemy import insert, select

from api.web import dashboard
from engine.models import history, runs


@pytest.fixture(params=["sqlite", "postgres"])
def rt(request):
    return request.getfixturevalue(f"{'pg' if request.param == 'postgres' else 'sqlite'}_interlock")


def test_runs_per_hour_by_status_and_step_duration_percentiles(rt):
    ids = [rt.start("test_pipeline", {"n": 1}).id for _ in range(20)]
    for run_id in ids[:3]:
        rt.cancel(run_id, "not needed")
    now = rt.clock.now()
    with rt.db.write() as conn:
        for i, run_id in enumerate(ids):
            seq = conn.execute(select(runs.c.last_seq).where(runs.c.id == run_id)).scalar()
            for k in range(5):
                seq += 1
                conn.execute(insert(history).values(run_id=run_id, seq=seq, at=now, kind="step_succeeded",
                                                    cause="step", detail={"step": "fetch", "duration": i * 5 + k + 1.0}))
            conn.execute(runs.update().where(runs.c.id == run_id).values(last_seq=seq))

    counts = dashboard.hourly(rt, now)
    assert counts["started"][-1] == {"running": 17, "cancelled": 3}
    assert counts["finished"][-1] == {"cancelled": 3}
    assert all(not hour for hour in counts["started"][:-1])

    [fetch] = [row for row in dashboard.step_durations(rt, now) if row["step"] == "fetch"]
    assert fetch == {"workflow": "test_pipeline", "step": "fetch", "count": 100,
                     "p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
