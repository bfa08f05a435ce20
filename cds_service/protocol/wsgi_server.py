"""gunicorn, embedded: ``cds-service serve`` runs the app with the production WSGI server."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication


class CdsGunicorn(BaseApplication):
    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        # Each worker builds its own app: rules, HTTP session, database pool and LLM pipeline per process.
        from .app import create_app

        return create_app(strict=True)


def run(host: str, port: int, workers: int, threads: int) -> None:
    CdsGunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 60,
            "graceful_timeout": 20,
            "keepalive": 5,
            "accesslog": "-",
            # No query strings or bodies in the access log: paths here carry no patient data.
            "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms',
            "preload_app": False,
        }
    ).run()
