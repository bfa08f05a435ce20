"""Telemetry: Prometheus metrics (`metrics`), structured logs with a request id (`logs`), and what
`cds-service serve` adds to gunicorn for both (`serving`).

Labels stay bounded: service and rule ids come from the loaded content, statuses and indicators from
fixed sets; never a patient, user, URL or token.
"""

# prometheus_client's multiprocess directory, set by `serve` before its workers fork (telemetry/serving.py).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
