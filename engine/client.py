"""A Python client for the Interlock REST API, and an activity worker loop like SQS's QueuePoller.

    from engine.client import ActivityPoller, Client

    client = Client("http://127.0.0.1:8000", token="...")
    run = client.start("clearance", {"container": "MSCU1234565"}, business_key="MSCU1234565")
    final = client.wait_for_completion(run["id"], timeout=600)

    def review(task):                  # task.data, task.run_id, task.attempt, task.token...
        return "approve", {"officer": "ada"}

    stats = ActivityPoller(client, "customs_review", idle_timeout=60).poll(review)

Runs, pages and history entries are the API's JSON documents (dicts). Every error the
server answers is raised as :class:`ApiError` carrying its problem document; a request
that never got an answer raises :class:`TransportError`.
"""

import logging
import random
import threading
import time
import traceback
from dataclasses import dataclass, field, fields
from urllib.parse import quote

import requests

log = logging.getLogger(__name__)

ACTIVE = ("running", "waiting")
PROBLEM_PREFIX = "urn:interlock:problem:"
# The server holds a long poll at most this long (history: 30 s, receive: 20 s).
MAX_HISTORY_WAIT = 30.0
MAX_RECEIVE_WAIT = 20.0


# -- errors ------------------------------------------------------------------------------

class ClientError(Exception):
    """Base of everything this client raises."""


class TransportError(ClientError):
    """The request got no answer (connection refused or reset, timeout)."""


class ApiError(ClientError):
    """The server answered with a problem document (RFC 9457)."""

    def __init__(self, status: int, problem: dict):
        self.status, self.problem = status, problem
        self.type = problem.get("type") or "about:blank"
        self.code = self.type.removeprefix(PROBLEM_PREFIX)
        self.detail = problem.get("detail") or problem.get("title") or ""
        super().__init__(f"{status} {self.code}: {self.detail}")

    @property
    def retryable(self) -> bool:
        """Worth trying again as is: the server or something in front of it failed."""
        return self.status >= 500 or self.status in (408, 429)


class StaleToken(ApiError):
    """The task token names no running attempt any more (``reason``: expired, succeeded...)."""

    @property
    def reason(self) -> str | None:
        return self.problem.get("reason")


class WaitTimeout(ClientError):
    def __init__(self, run_id: str, timeout: float, run: dict):
        self.run = run
        super().__init__(f"run {run_id} did not end within {timeout}s "
                         f"(status {run['status']}, state {run['state']})")


_ERRORS = {"stale-task-token": StaleToken}


def _error(response) -> ApiError:
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"type": "about:blank", "title": response.reason or "error",
                   "status": response.status_code, "detail": response.text[:500]}
    code = str(problem.get("type", "")).removeprefix(PROBLEM_PREFIX)
    return _ERRORS.get(code, ApiError)(response.status_code, problem)


def _segment(value: str) -> str:
    return quote(str(value), safe="")


# -- the client ----------------------------------------------------------------------------

@dataclass
class Task:
    """A received activity task. Answer it (the poller does) before its lease ends."""

    token: str
    run_id: str
    workflow: str
    version: int
    state: str
    activity: str
    data: dict
    business_key: str | None
    attempt: int
    max_attempts: int
    visibility_timeout: float
    lease_until: str
    # Set by the poller when a heartbeat is refused: the run moved on, or the lease was lost.
    stale_reason: str | None = None

    @classmethod
    def from_dict(cls, doc: dict) -> "Task":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


class Client:
    """The REST API over one ``requests.Session`` (thread-safe enough for a poller and its
    heartbeat thread). ``timeout`` bounds each request, on top of any long-poll wait."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0,
                 session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self._history_waits: bool | None = None  # does the server have the long-poll history?

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, *, json=None, params=None, headers=None, wait: float = 0.0):
        try:
            response = self.session.request(method, self.url + path, json=json, params=params,
                                            headers=headers, timeout=self.timeout + wait)
        except requests.RequestException as exc:
            raise TransportError(f"{method} {path}: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        if not response.content:
            return None
        return response.json()

    # -- runs ---------------------------------------------------------------------------------

    def start(self, workflow: str, data: dict | None = None, business_key: str | None = None,
              idempotency_key: str | None = None, version: int | None = None) -> dict:
        """Start a run; a repeat with the same ``idempotency_key`` returns the first run."""
        body = {"data": data or {}}
        if business_key is not None:
            body["business_key"] = business_key
        if version is not None:
            body["version"] = version
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", f"/api/workflows/{_segment(workflow)}/runs", json=body, headers=headers)

    def send(self, run_id: str, event: str, data: dict | None = None, queue: bool = False) -> dict:
        """Send an event; to a paused run, refused (409 run-paused) unless ``queue``: then it is
        applied when the run is resumed."""
        body = {"event": event, "data": data or {}}
        if queue:
            body["queue"] = True
        return self.request("POST", f"/api/runs/{_segment(run_id)}/events", json=body)

    def get(self, run_id: str) -> dict:
        return self.request("GET", f"/api/runs/{_segment(run_id)}")

    def history(self, run_id: str, after: int = 0, wait: float = 0) -> dict:
        """``{"run_id", "status", "last_seq", "history": [entries after `after`]}``; with
        ``wait``, the server holds the request until there is something newer."""
        wait = min(wait, MAX_HISTORY_WAIT)
        return self.request("GET", f"/api/runs/{_segment(run_id)}/history",
                            params={"after": after, "wait": wait}, wait=wait)

    def cancel(self, run_id: str, reason: str | None = None) -> dict:
        return self.request("POST", f"/api/runs/{_segment(run_id)}/cancel", json={"reason": reason})

    def retry(self, run_id: str) -> dict:
        return self.request("POST", f"/api/runs/{_segment(run_id)}/retry", json={})

    def pause(self, run_id: str, reason: str | None = None) -> dict:
        """No step of the run starts and no timer fires until ``resume``."""
        return self.request("POST", f"/api/runs/{_segment(run_id)}/pause", json={"reason": reason})

    def resume(self, run_id: str) -> dict:
        return self.request("POST", f"/api/runs/{_segment(run_id)}/resume", json={})

    def wait_for_completion(self, run_id: str, timeout: float | None = None, poll_interval: float = 0.5) -> dict:
        """Block until the run is no longer running or waiting; return it.

        Long-polls the run's history, so the answer comes as soon as the run changes; a
        server without that endpoint is polled every ``poll_interval`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        run = self.get(run_id)
        while run["status"] in ACTIVE:
            left = MAX_HISTORY_WAIT if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(run_id, timeout, run)
            if not self._wait_for_change(run, min(left, MAX_HISTORY_WAIT)):
                time.sleep(min(poll_interval, left))
            run = self.get(run_id)
        return run

    def _wait_for_change(self, run: dict, wait: float) -> bool:
        """Hold until the run changes (True), or say the server cannot hold (False)."""
        if self._history_waits is False:
            return False
        began = time.monotonic()
        try:
            page = self.history(run["id"], after=run["last_seq"], wait=wait)
        except ApiError as exc:
            if exc.status == 404 and exc.code == "not-found":  # the route, not the run
                self._history_waits = False
                return False
            raise
        self._history_waits = True
        # An answer with nothing new that came at once: the server did not hold it.
        return bool(page.get("history")) or page.get("status") not in ACTIVE or \
            time.monotonic() - began >= wait / 2

    # -- activities ---------------------------------------------------------------------------

    def receive(self, activity: str, max_messages: int = 1, wait_time_seconds: float = 0,
                visibility_timeout: float | None = None) -> list[Task]:
        body = {"max_messages": max_messages, "wait_time_seconds": wait_time_seconds}
        if visibility_timeout is not None:
            body["visibility_timeout"] = visibility_timeout
        doc = self.request("POST", f"/api/activities/{_segment(activity)}/receive", json=body,
                           wait=wait_time_seconds)
        return [Task.from_dict(item) for item in doc["tasks"]]

    def heartbeat(self, token: str, visibility_timeout: float | None = None) -> dict:
        body = {} if visibility_timeout is None else {"visibility_timeout": visibility_timeout}
        return self.request("POST", f"/api/tasks/{_segment(token)}/heartbeat", json=body)

    def complete(self, token: str, event: str | None = None, data: dict | None = None) -> dict:
        body = {"data": data or {}}
        if event is not None:
            body["event"] = event
        return self.request("POST", f"/api/tasks/{_segment(token)}/complete", json=body)

    def fail(self, token: str, error: str, traceback: str | None = None) -> dict:
        body = {"error": error[:4000] or "error"}
        if traceback:
            body["traceback"] = traceback[-65536:]
        return self.request("POST", f"/api/tasks/{_segment(token)}/fail", json=body)


# -- the poller ------------------------------------------------------------------------------

@dataclass
class PollerStats:
    """What one ``poll`` did. ``errors``: requests that failed (and were retried or given up)."""

    received: int = 0
    completed: int = 0
    failed: int = 0
    errors: int = 0
    requests: int = 0
    elapsed: float = 0.0
    started_at: float = field(default_factory=time.time)
    last_received_at: float | None = None


class ActivityPoller:
    """Receives tasks of one activity and answers each with ``handler(task)``, as SQS's QueuePoller.

    The handler returns an event name, ``(event, data)``, a dict of data (the activity's
    default event) or None (the default event, no data); the task is completed with it.
    If the handler raises, the task is failed with the exception's text (it is received
    again when its visibility timeout ends). Long handlers are kept leased by heartbeats
    from a background thread. Network and server errors are retried with exponential
    backoff. ``poll`` returns its statistics after ``idle_timeout`` seconds without a task
    (None: only when ``stop()`` is called).
    """

    def __init__(self, client: Client, activity: str, *, idle_timeout: float | None = 60,
                 max_messages: int = 10, wait_time_seconds: float = 20, visibility_timeout: float = 30,
                 heartbeat_interval: float | None = None, backoff: float = 0.1, max_backoff: float = 30.0):
        self.client, self.activity = client, activity
        self.idle_timeout = idle_timeout
        self.max_messages = max_messages
        self.wait_time_seconds = min(wait_time_seconds, MAX_RECEIVE_WAIT)
        self.visibility_timeout = visibility_timeout
        self.heartbeat_interval = heartbeat_interval or visibility_timeout / 3
        self.backoff, self.max_backoff = backoff, max_backoff
        self._stop = threading.Event()
        self.stats: PollerStats | None = None  # the current (or last) poll's, updated as it goes

    def stop(self) -> None:
        """Make ``poll`` return once the tasks in hand are answered."""
        self._stop.set()

    def poll(self, handler) -> PollerStats:
        self._stop.clear()
        self.stats = stats = PollerStats()
        began = idle_since = time.monotonic()
        failures = 0
        beats = _Heartbeats(self.client, self.heartbeat_interval, self.visibility_timeout)
        try:
            while not self._stop.is_set():
                wait = self.wait_time_seconds
                if self.idle_timeout is not None:
                    left = idle_since + self.idle_timeout - time.monotonic()
                    if left <= 0:
                        break
                    wait = min(wait, left)
                try:
                    stats.requests += 1
                    received = self.client.receive(self.activity, self.max_messages, round(wait, 3),
                                                   self.visibility_timeout)
                except ClientError as exc:
                    if not _retryable(exc):
                        raise
                    stats.errors += 1
                    failures += 1
                    delay = self._delay(failures)
                    log.warning("receiving %s failed (%s); trying again in %.2fs", self.activity, exc, delay)
                    self._stop.wait(delay)
                    continue
                failures = 0
                if not received:
                    continue
                stats.received += len(received)
                stats.last_received_at = time.time()
                for task in received:
                    beats.add(task)
                for task in received:
                    self._handle(task, handler, beats, stats)
                idle_since = time.monotonic()
        finally:
            beats.stop()
            stats.elapsed = time.monotonic() - began
        return stats

    def _delay(self, failures: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)

    def _handle(self, task: Task, handler, beats: "_Heartbeats", stats: PollerStats) -> None:
        try:
            event, data = _answer_of(handler(task))
        except Exception as exc:
            beats.remove(task)
            self._fail(task, f"{type(exc).__name__}: {exc}", traceback.format_exc(), stats)
            return
        beats.remove(task)
        try:
            self._send(lambda: self.client.complete(task.token, event, data), task, stats, "succeeded")
            stats.completed += 1
        except ClientError as exc:
            if isinstance(exc, ApiError) and not isinstance(exc, StaleToken) and not exc.retryable:
                # The run refused the answer (an event it does not accept now, bad data): a failed attempt.
                self._fail(task, f"{exc.code}: {exc.detail}", None, stats)
                return
            stats.errors += 1
            log.warning("task %s of run %s was not completed: %s", task.activity, task.run_id, exc)

    def _fail(self, task, error, tb, stats) -> None:
        try:
            self._send(lambda: self.client.fail(task.token, error, tb), task, stats, "queued", "failed")
            stats.failed += 1
        except ClientError as exc:
            stats.errors += 1
            log.warning("task %s of run %s could not be failed: %s", task.activity, task.run_id, exc)

    def _send(self, call, task, stats, *settled) -> None:
        """``call()``, retried on network and server errors while the task's lease may still hold.

        After a retry, a stale token whose reason is in ``settled`` means an earlier try went
        through and only its answer was lost."""
        deadline = time.monotonic() + self.visibility_timeout
        failures = 0
        while True:
            try:
                call()
                return
            except StaleToken as exc:
                if failures and exc.reason in settled:
                    return
                raise
            except ClientError as exc:
                if not _retryable(exc) or time.monotonic() >= deadline:
                    raise
                stats.errors += 1
                failures += 1
                delay = self._delay(failures)
                log.warning("answering task %s of run %s failed (%s); trying again in %.2fs",
                            task.activity, task.run_id, exc, delay)
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))


def _retryable(exc: ClientError) -> bool:
    return isinstance(exc, TransportError) or (isinstance(exc, ApiError) and exc.retryable)


def _answer_of(value) -> tuple[str | None, dict]:
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value, {}
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, type(None))) \
            and isinstance(value[1], dict):
        return value
    if isinstance(value, dict):
        return None, value
    raise TypeError(f"the handler returned {value!r}: return an event name, (event, data), "
                    "a dict of data or None")


class _Heartbeats:
    """One thread that extends the lease of every task in hand every ``interval`` seconds.

    A task answered within ``interval`` of being received is never heartbeaten."""

    def __init__(self, client: Client, interval: float, visibility_timeout: float):
        self.client, self.interval, self.visibility_timeout = client, interval, visibility_timeout
        self._cond = threading.Condition()
        self._due: dict[str, list] = {}  # token -> [task, monotonic time of the next heartbeat]
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, task: Task) -> None:
        with self._cond:
            self._due[task.token] = [task, time.monotonic() + self.interval]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="interlock-heartbeat", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, task: Task) -> None:
        with self._cond:
            self._due.pop(task.token, None)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                due = [entry for entry in self._due.values() if entry[1] <= now]
                if not due:
                    wake = min((entry[1] for entry in self._due.values()), default=None)
                    self._cond.wait(None if wake is None else wake - now)
                    continue
                for entry in due:
                    entry[1] = now + self.interval
            for task, _ in due:
                self._beat(task)

    def _beat(self, task: Task) -> None:
        try:
            self.client.heartbeat(task.token, self.visibility_timeout)
        except StaleToken as exc:
            task.stale_reason = exc.reason
            self.remove(task)
        except ClientError as exc:
            log.warning("heartbeat for task %s of run %s failed (%s); trying again", task.activity,
                        task.run_id, exc)
            with self._cond:
                entry = self._due.get(task.token)
                if entry is not None:
                    entry[1] = min(entry[1], time.monotonic() + min(1.0, self.interval))
