"""Workflows for the schedule tests: a report that waits for `finish` (so its run stays active
while later ticks come), and a schedule declared at module level."""

from datetime import timedelta

from engine import State, Workflow, schedule


class Report(Workflow):
    name, version = "report", 1

    compiling = State(initial=True)
    done = State(final=True)

    finish = compiling.to(done)


morning_report = schedule("0 6 * * MON-FRI", workflow="report", data={"kind": "morning"},
                          timezone="Europe/Amsterdam", overlap="allow", catchup="none")
hourly_report = schedule(workflow="report", name="hourly-report", every=timedelta(hours=1),
                         data={"kind": "hourly"})
