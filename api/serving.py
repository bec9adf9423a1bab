"""Serving the app: gunicorn for production, a threaded werkzeug server inside `interlock dev`.

Streams and long polls hold a thread each while they wait (a notifier Watch, no database
connection), so one gunicorn process with the gthread worker and ~1,100 threads holds
1,000+ open watchers.
"""

import ipaddress
import logging
import threading

from gunicorn.app.base import BaseApplication

log = logging.getLogger(__name__)

DEFAULT_THREADS = 1100


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GunicornServer(BaseApplication):
    """``interlock serve``: each worker process builds its own engine and notifier after the fork."""

    def __init__(self, settings, *, host, port, workers=1, threads=DEFAULT_THREADS, graceful_timeout=5):
        self.settings = settings
        self.options = {
            "bind": bind_address(host, port),
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            # gthread stops accepting at worker_connections (default 1,000); the extra ones
            # are idle keep-alive connections, which hold no thread.
            "worker_connections": threads * 2,
            # Streams never end by themselves: don't wait long for them on shutdown.
            "graceful_timeout": graceful_timeout,
            "keepalive": 5,
            "proc_name": "interlock-serve",
            "errorlog": "-",
            "worker_exit": _close_engine,
            # gunicorn >= 25 opens a control socket at one fixed path per user: two servers clash.
            "control_socket_disable": True,
        }
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            if key in self.cfg.settings:  # older gunicorn lacks some
                self.cfg.set(key, value)

    def load(self):
        from engine import tracing
        from engine.runtime import Interlock

        tracing.setup()  # here, in the server process: a span processor's thread does not survive a fork
        from . import create_app

        app = create_app(interlock=Interlock(self.settings))
        app.extensions["interlock"].notifier.start()
        _APPS.append(app)
        return app


_APPS: list = []


def _close_engine(server, worker):
    for app in _APPS:
        app.extensions["interlock"].close()


class ThreadedServer:
    """The app on werkzeug's threaded server in a background thread (``interlock dev``)."""

    def __init__(self, app, host="127.0.0.1", port=8000):
        from werkzeug.serving import make_server

        self.server = make_server(host, port, app, threaded=True)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="interlock-api", daemon=True)

    def start(self) -> "ThreadedServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(5)
        self.server.server_close()
