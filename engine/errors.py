"""One error tree for everything Interlock raises on purpose.

Each error carries a stable ``code`` (used as the problem ``type`` by the API)
and the facts a caller needs to react, as attributes.
"""


class InterlockError(Exception):
    """Base of every error Interlock raises on purpose."""

    code = "interlock-error"
    status = 400

    def to_dict(self) -> dict:
        return {"type": self.code, "detail": str(self)}


class DefinitionError(InterlockError):
    """A workflow definition is wrong (found when its module is imported)."""

    code = "definition-error"


class ConfigurationError(InterlockError):
    """A setting is missing or malformed."""

    code = "configuration-error"


class SchemaOutOfDate(InterlockError):
    """The database is behind the latest migration."""

    code = "schema-out-of-date"
    status = 503

    def __init__(self, current, head):
        self.current, self.head = current, head
        super().__init__(
            f"database schema is at {current or 'nothing'}, the code needs {head}: "
            "run `interlock db upgrade`"
        )


class WorkflowNotFound(InterlockError):
    code = "workflow-not-found"
    status = 404

    def __init__(self, name, version=None):
        self.name, self.version = name, version
        label = name if version is None else f"{name} v{version}"
        super().__init__(f"unknown workflow {label!r}")


class RunNotFound(InterlockError):
    code = "run-not-found"
    status = 404

    def __init__(self, run_id):
        self.run_id = run_id
        super().__init__(f"unknown run {run_id!r}")


class MapNotFound(InterlockError):
    code = "map-not-found"
    status = 404

    def __init__(self, run_id, name, entry_seq=None):
        self.run_id, self.name, self.entry_seq = run_id, name, entry_seq
        at = f" at state entry {entry_seq}" if entry_seq is not None else ""
        super().__init__(f"run {run_id!r} has no map {name!r}{at}")


class InvalidData(InterlockError):
    """Input that is not what the engine accepts (data not a JSON object, say)."""

    code = "invalid-data"
    status = 422

    def __init__(self, message, field=None):
        self.field = field
        super().__init__(message)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "field": self.field}


class InvalidMapping(InvalidData):
    """A state mapping between two versions (``old=new``) that names a state one of them lacks,
    maps two states onto one, or is not ``old=new`` at all. Nothing was compared or changed."""

    code = "invalid-mapping"

    def __init__(self, message):
        super().__init__(message, field="map")


class InvalidTransition(InterlockError):
    """The event is not accepted by the run in its current state."""

    code = "invalid-transition"
    status = 409

    def __init__(self, run_id, event, states, allowed, reason=None):
        self.run_id, self.event = run_id, event
        self.states, self.allowed = list(states), list(allowed)
        self.reason = reason
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"run {run_id} cannot take event {event!r} in state "
            f"{', '.join(self.states) or '-'}{why}; allowed now: {', '.join(self.allowed) or 'none'}"
        )

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "run_id": self.run_id,
            "event": self.event,
            "states": self.states,
            "allowed_events": self.allowed,
        }


class RunNotActive(InterlockError):
    """The run has ended (or is failed) and cannot take this action."""

    code = "run-not-active"
    status = 409

    def __init__(self, run_id, status, action):
        self.run_id, self.status_value, self.action = run_id, status, action
        super().__init__(f"run {run_id} is {status}: cannot {action}")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "run_id": self.run_id, "run_status": self.status_value}


class RunPaused(InterlockError):
    """The run is paused: it takes no events until resumed (unless sent with ``queue=True``)."""

    code = "run-paused"
    status = 409

    def __init__(self, run_id, action):
        self.run_id = run_id
        super().__init__(f"run {run_id} is paused: cannot {action} (resume it first, or send the event "
                         "with queue=true to have it applied on resume)")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "run_id": self.run_id}


class CallbackError(InterlockError):
    """A workflow callback raised; the transition was rolled back."""

    code = "callback-error"
    status = 422

    def __init__(self, run_id, event, error):
        self.run_id, self.event, self.error = run_id, event, error
        super().__init__(f"run {run_id}: event {event!r} failed in a callback: {error!r}")


class StaleTaskToken(InterlockError):
    """An activity task token that names no running attempt (any more): nothing was changed.

    ``reason`` is ``unknown``, ``expired`` (the visibility timeout ended), or the task's
    status: ``queued`` (this attempt is over; the task waits to be received again),
    ``succeeded``, ``failed``, ``superseded`` (the run left the state) or ``cancelled``.
    """

    code = "stale-task-token"
    status = 410

    def __init__(self, reason, message):
        self.reason = reason
        super().__init__(message)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "reason": self.reason}


class ScheduleNotFound(InterlockError):
    code = "schedule-not-found"
    status = 404

    def __init__(self, name):
        self.name = name
        super().__init__(f"unknown schedule {name!r}")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "schedule": self.name}


class ScheduleExists(InterlockError):
    """A schedule with this name exists already: nothing was changed."""

    code = "schedule-exists"
    status = 409

    def __init__(self, name):
        self.name = name
        super().__init__(f"a schedule named {name!r} exists already")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "schedule": self.name}


class InvalidSearch(InterlockError):
    """A search-field filter the loaded workflows cannot answer: an undeclared field, an
    operator its type has not, or a value not of its type. Nothing was read."""

    code = "invalid-search"
    status = 400

    def __init__(self, message, field=None):
        self.field = field
        super().__init__(message)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "field": self.field}


class BatchNotFound(InterlockError):
    code = "batch-not-found"
    status = 404

    def __init__(self, batch_id):
        self.batch_id = batch_id
        super().__init__(f"unknown batch {batch_id!r}")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "batch_id": self.batch_id}


class BindingError(InterlockError):
    """A model bound to a workflow (engine/bindings.py) is declared or used in a way that cannot work."""

    code = "binding-error"


class StateColumnWritten(BindingError):
    """The application wrote a bound model's state column: only the run's transitions write it."""

    code = "state-column-written"
    status = 409

    def __init__(self, model: str, column: str, key, value):
        self.model, self.column, self.key, self.value = model, column, key, value
        which = f"{model} {key!r}" if key is not None else f"{model} rows"
        super().__init__(
            f"{which}: {column} is the state of its run and only the run's transitions write it "
            f"(the application set it to {value!r}); send the run an event instead "
            f"(order.workflow.send(...))")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "model": self.model, "column": self.column}


class PlanNotFound(InterlockError):
    code = "migration-plan-not-found"
    status = 404

    def __init__(self, plan_id):
        self.plan_id = plan_id
        super().__init__(f"unknown migration plan {plan_id!r}")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "plan_id": self.plan_id}


class MigrationRefused(InterlockError):
    """A run cannot move to the plan's version now (engine/moving.py): nothing about it changed."""

    code = "migration-refused"
    status = 409

    def __init__(self, run_id, reason):
        self.run_id, self.reason = run_id, reason
        super().__init__(f"run {run_id} cannot be migrated: {reason}")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "run_id": self.run_id, "reason": self.reason}
