"""The floor of benchmarks/load.py: the bare web stack the service runs on, doing no clinical work.

Flask behind gunicorn's gthread worker, with the same workers x threads as the service under test; the
hook view only parses the JSON body (as every hook call must) and answers no cards. Whatever the service
costs above this is its own. Served by gunicorn's CLI, as load.py starts it:

    python -m gunicorn --chdir benchmarks --worker-class gthread --workers 2 --threads 4 load_floor:app
"""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask("load_floor")


@app.post("/cds-services/<service_id>")
def hook_call(service_id: str):
    request.get_json(force=True)  # the JSON parse every hook call pays; the result is not used
    return jsonify({"cards": []})


@app.get("/readyz")
def readyz():
    return jsonify({"status": "ready"})
