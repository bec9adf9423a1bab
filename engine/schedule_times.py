"""What a schedule is, and when it fires: ``schedule(...)`` declares one; ``fire_times`` lists its ticks.

A cron expression is read by ``croniter`` on the schedule's local wall clock (``zoneinfo``), then
each wall time is made an instant:

- a wall time that does not exist (spring forward: 02:30 on the night clocks jump from 02:00 to
  03:00) fires at the first instant after the gap (03:00 local): a daily tick is not skipped;
- a wall time that happens twice (fall back: 02:30 on the night clocks return from 03:00 to
  02:00) fires once, at its first occurrence: a daily tick is not doubled. An hourly
  expression therefore fires once in the repeated hour, not twice.

Several wall times in one gap map to the same instant: it fires once. An interval (``every``)
is counted in whole seconds from the Unix epoch and ignores time zones.
"""

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import InvalidData
from .transitions import check_data

OVERLAP = ("skip", "allow", "buffer_one", "cancel_previous")
CATCHUP = ("none", "last", "all")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
NAME_SCHEMA = {"type": "string", "pattern": f"^{NAME.pattern}$", "maxLength": 200,
               "description": "1-200 letters, digits or _.:-, starting with a letter or digit"}
DEFAULT_WINDOW = 86_400.0


@dataclass(frozen=True)
class Schedule:
    """A schedule as declared in code or created over the API (see ``schedule``)."""

    name: str
    workflow: str
    cron: str | None = None
    every: float | None = None  # seconds
    timezone: str = "UTC"
    data: dict = field(default_factory=dict)
    version: int | None = None
    overlap: str = "skip"
    catchup: str = "last"
    catchup_window: float = DEFAULT_WINDOW  # seconds

    def next_times(self, after: float, count: int) -> list[float]:
        out = []
        for t in fire_times(self, after):
            out.append(t)
            if len(out) == count:
                return out
        return out

    def describe(self) -> str:
        return self.cron if self.cron is not None else f"every {_seconds(self.every)}"

    def columns(self) -> dict:
        return {"name": self.name, "workflow": self.workflow, "version": self.version, "cron": self.cron,
                "every": self.every, "timezone": self.timezone, "data": self.data, "overlap": self.overlap,
                "catchup": self.catchup, "catchup_window": self.catchup_window}


def schedule(cron: str | None = None, *, workflow: str, every: timedelta | float | None = None,
             data: dict | None = None, timezone: str = "UTC", name: str | None = None,
             version: int | None = None, overlap: str = "skip", catchup: str = "last",
             catchup_window: timedelta | float = timedelta(days=1)) -> Schedule:
    """Declare a schedule at module level in a workflows module (``nightly = schedule(...)``).

    ``cron`` (five fields, read in ``timezone``) or ``every`` (an interval); ``name`` defaults to
    the workflow's. ``overlap``: what a tick does while the run of the previous one is active
    (skip it, allow both, buffer one to start when it ends, cancel the previous). ``catchup``:
    which ticks missed while no worker ran start when one runs again (none, the last one, all
    within ``catchup_window``). Wrong arguments raise ``InvalidData`` naming them.
    """
    return make(name=name if name is not None else workflow, workflow=workflow, cron=cron, every=every,
                data=data, timezone=timezone, version=version, overlap=overlap, catchup=catchup,
                catchup_window=catchup_window)


def make(*, name, workflow, cron=None, every=None, data=None, timezone="UTC", version=None,
         overlap="skip", catchup="last", catchup_window=DEFAULT_WINDOW) -> Schedule:
    """A checked ``Schedule``, or ``InvalidData`` naming the first wrong field."""
    check_name(name)
    if not isinstance(workflow, str) or not workflow or len(workflow) > 200 or "\x00" in workflow:
        raise InvalidData("workflow must be a workflow's name", field="workflow")
    if (cron is None) == (every is None):
        raise InvalidData("give a schedule either cron or every, not both or neither", field="cron")
    if cron is not None:
        if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise InvalidData(f"cron {cron!r} is not a five-field cron expression "
                              "(minute hour day-of-month month day-of-week)", field="cron")
    if every is not None:
        every = _seconds_of(every, "every")
        if every < 1 or not float(every).is_integer():
            raise InvalidData("every must be a whole number of seconds, at least 1", field="every")
    zone(timezone)
    if overlap not in OVERLAP:
        raise InvalidData(f"overlap must be one of {', '.join(OVERLAP)}", field="overlap")
    if catchup not in CATCHUP:
        raise InvalidData(f"catchup must be one of {', '.join(CATCHUP)}", field="catchup")
    window = _seconds_of(catchup_window, "catchup_window")
    if window <= 0:
        raise InvalidData("catchup_window must be positive", field="catchup_window")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidData("version must be a positive integer", field="version")
    return Schedule(name=name, workflow=workflow, cron=cron, every=every, timezone=timezone,
                    data=check_data(data, "data"), version=version, overlap=overlap, catchup=catchup,
                    catchup_window=window)


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidData(f"schedule name {name!r} must be 1-200 letters, digits or _.:-, "
                          "starting with a letter or digit", field="name")
    return name


def zone(name) -> ZoneInfo:
    try:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidData(f"unknown time zone {name!r} (an IANA name, like Europe/Amsterdam)",
                          field="timezone") from None


def _seconds_of(value, what) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InvalidData(f"{what} must be a timedelta or seconds", field=what)


def _seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


# -- fire times ------------------------------------------------------------------------------

def fire_times(spec: Schedule, after: float):
    """The schedule's fire times (epoch seconds) strictly after ``after``, in order, forever."""
    if spec.every is not None:
        t = (after // spec.every + 1) * spec.every
        while True:
            yield t
            t += spec.every
    tz = zone(spec.timezone)
    # Start the wall clock an hour early: after a fall back, ``after`` may be in the repeated
    # hour, whose wall times read earlier than the instants they name.
    start = datetime.fromtimestamp(after, tz).replace(tzinfo=None) - timedelta(hours=1)
    wall = croniter(spec.cron, start)
    last = after
    while True:
        t = instant(wall.get_next(datetime), tz)
        if t > last:
            yield t
            last = t


def instant(wall: datetime, tz: ZoneInfo) -> float:
    """The instant of local wall time ``wall`` (naive): its first occurrence, or for a time in
    a gap the first instant after the gap."""
    first = wall.replace(tzinfo=tz, fold=0)
    t = first.timestamp()
    if datetime.fromtimestamp(t, tz).replace(tzinfo=None) == wall:
        later = wall.replace(tzinfo=tz, fold=1).timestamp()
        return min(t, later)  # zoneinfo's fold=0 is the first occurrence; min() says so anyway
    # In a gap: fold=0 read it with the offset before the gap, fold=1 with the one after. The
    # gap's end is between them: the first instant whose wall time is not before ``wall``.
    low, high = sorted((t, wall.replace(tzinfo=tz, fold=1).timestamp()))
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= wall:
            high = mid
        else:
            low = mid
    return float(high)


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local(t: float, tz_name: str) -> str:
    return datetime.fromtimestamp(t, zone(tz_name)).strftime("%Y-%m-%d %H:%M %Z")
