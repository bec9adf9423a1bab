"""The Dramatiq broker, built from the settings before the step actor is declared on it.

Each runtime builds its own broker and declares its own actor on it explicitly, so
no actor ever binds to Dramatiq's implicit global broker.
"""

import logging
import time

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, ShutdownNotifications, TimeLimit

from .errors import ConfigurationError

log = logging.getLogger(__name__)

ACTOR_NAME = "interlock_step"
# A delayed message's due time in milliseconds on the database's clock (see DatabaseClockEta).
DB_ETA = "interlock_db_eta"


class DatabaseClockEta(Middleware):
    """Delayed messages fall due by the database's clock, not by their hosts' clocks.

    Dramatiq stamps a delayed message's ``eta`` with the sender's clock and holds it until the
    receiver's clock reaches it: between two hosts whose clocks differ by S seconds, a step
    retry would run S seconds early or late. The sender adds the due time on the database's
    clock; the receiver turns it back into its own clock's before Dramatiq holds the message.
    """

    def __init__(self, clock):
        self.clock = clock

    def before_enqueue(self, broker, message, delay):
        # Also called again when RabbitMQ's send is retried: stamped once.
        if delay and "eta" in message.options and DB_ETA not in message.options:
            message.options[DB_ETA] = message.options["eta"] + round(self.clock.offset * 1000)

    def before_delay_message(self, broker, message):
        due = message.options.pop(DB_ETA, None)
        if due is not None:
            message.options["eta"] = due - round(self.clock.offset * 1000)


def build_broker(url: str, clock=None, priorities: int = 0) -> dramatiq.Broker:
    """The broker of ``url``; ``priorities``: levels of message priority where the broker has
    them (RabbitMQ's x-max-priority queues), 0 for none."""
    middleware = [TimeLimit(), ShutdownNotifications()]
    if clock is not None:
        middleware.append(DatabaseClockEta(clock))
    if url in ("memory://", "memory", "stub://"):
        return StubBroker(middleware=middleware)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker

        from .workers import REDIS_HEARTBEAT_TIMEOUT_MS, REDIS_MAINTENANCE_CHANCE

        # A killed consumer's unacknowledged messages come back in seconds, not a minute.
        return RedisBroker(url=url, middleware=middleware, heartbeat_timeout=REDIS_HEARTBEAT_TIMEOUT_MS,
                           maintenance_chance=REDIS_MAINTENANCE_CHANCE)
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        # Publisher confirms: a step message is on the broker's disk before we move on.
        return RabbitmqBroker(url=url, middleware=middleware, confirm_delivery=True, max_priority=priorities or None)
    raise ConfigurationError(
        f"unsupported broker URL {url!r}: use memory://, redis://host:port/db or amqp://user:pass@host:port/")


def time_limit_monitor(broker):
    """The thread that enforces Dramatiq's time limits, for threads of ours to use too."""
    return next((m.manager for m in broker.middleware if isinstance(m, TimeLimit)), None)


def is_in_memory(broker) -> bool:
    return isinstance(broker, StubBroker)


def broker_level(priority: int, levels: int) -> int:
    """A run's priority (-1000 to 1000, 0 by default) as one of the broker's ``levels + 1``
    levels: 0 in the middle, each level up or down twice the priority of the one before (1, 2-3,
    4-7, ...), so that the small priorities people give stay apart and the order is kept."""
    middle = levels // 2
    steps = min(abs(priority).bit_length(), levels - middle if priority > 0 else middle)
    return middle + steps if priority > 0 else middle - steps


class Dispatcher:
    """Sends committed tasks to the step actor.

    ``delivers`` says whether a send from this process reaches a worker: always for a
    real broker; for the in-memory broker only when this process runs a worker.
    Otherwise tasks stay in the outbox table until a worker's reconciler sends them.
    """

    def __init__(self, broker, queue: str, execute):
        self.broker = broker
        self.actor = dramatiq.Actor(execute, broker=broker, actor_name=ACTOR_NAME, queue_name=queue,
                                    priority=0, options={"max_retries": 0})
        self.delivers = not is_in_memory(broker)
        self.levels = getattr(broker, "max_priority", None) or 0

    def check_queue(self) -> None:
        """Declare the step queue now (a worker at start): RabbitMQ refuses to declare a queue
        again with other arguments, such as one an engine made without priorities."""
        if not self.levels:
            return
        from dramatiq.errors import ConnectionClosed

        try:
            self.broker.declare_queue(self.actor.queue_name, ensure=True)
        except ConnectionClosed as exc:
            if "PRECONDITION_FAILED" not in str(exc):
                raise
            name = self.actor.queue_name
            raise ConfigurationError(
                f"RabbitMQ queue {name!r} exists without {self.levels} priority levels (x-max-priority): "
                f"once it is empty, delete {name}, {name}.DQ and {name}.XQ (rabbitmqctl delete_queue), or set "
                f"INTERLOCK_BROKER_PRIORITIES to the queue's own levels (0: none)") from None

    def is_redis(self) -> bool:
        return type(self.broker).__name__ == "RedisBroker"

    def server(self) -> tuple[str, float] | None:
        """(the broker server's id, seconds since it started) where a restart loses its messages: Redis
        here keeps nothing on disk. None for RabbitMQ (durable queues, persistent messages
        survive a restart), the in-memory broker, or when the server cannot be asked."""
        if not self.is_redis():
            return None
        try:
            info = self.broker.client.info("server")
        except Exception:  # noqa: BLE001 - the next heartbeat asks again
            return None
        return str(info["run_id"]), float(info["uptime_in_seconds"])

    def touch(self) -> None:
        """A Redis command through Dramatiq's script, which renews this process's heartbeat
        there: a worker busy with long steps and no message traffic does not look dead."""
        if not self.is_redis():
            return
        try:
            self.broker.do_qsize(self.actor.queue_name)
        except Exception:  # noqa: BLE001 - the next heartbeat tries again
            log.debug("could not reach the broker", exc_info=True)

    def send(self, task_id: str, delay: float = 0.0, time_limit: float | None = None, priority: int = 0) -> bool:
        """Send the task's message (``priority``: its run's); False if the broker did not take it."""
        options = {}
        if time_limit:
            options["time_limit"] = int(time_limit * 1000)
        if self.levels:
            options["broker_priority"] = broker_level(priority, self.levels)
        try:
            self.actor.send_with_options(args=(task_id,), delay=int(delay * 1000) or None, **options)
            return True
        except Exception:
            # The task is committed: the reconciler sends it again, so this is not fatal.
            log.warning("could not send task %s to the broker; the reconciler will retry", task_id,
                        exc_info=True, extra={"task_id": task_id})
            return False
