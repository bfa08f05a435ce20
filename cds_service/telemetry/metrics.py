"""Prometheus metrics: the metric objects and the `observe_*` calls the pipeline, the FHIR client and
the reasoner make, and `/metrics` rendering.

Under `cds-service serve` every gunicorn worker writes its values to files in PROMETHEUS_MULTIPROC_DIR
(telemetry/serving.py sets it before the workers fork) and `/metrics`, answered by any one worker, adds
up all of them; in a single process (tests, `create_app` elsewhere) the default registry is served.

Label values are bounded: service and rule ids from the loaded content, HTTP statuses, the indicator
scale, FHIR resource type names, LLM task names. Never a patient or user id, a URL or a token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from ..indicators import INDICATORS
from . import MULTIPROC_ENV

if TYPE_CHECKING:
    from ..audit.record import DecisionRecord
    from ..protocol.pipeline import HookCall
    from ..reasoning.backends import Generation

disable_created_metrics()  # no `_created` series: the multiprocess mode has none, one process need not either

# Around the response budget (CDS_RESPONSE_BUDGET_MS, 450 ms by default; 500 ms is the usual CDS aim).
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.45, 0.5, 0.75, 1.0, 2.5, 5.0)
# A fetch shares the call's FHIR deadline (CDS_FHIR_DEADLINE_MS, 3 s by default).
_FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.45, 1.0, 2.0, 3.0, 5.0)
# An append is a database write: sub-millisecond when commits are grouped, an fsync when not.
_APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A generation on the CPU; past the budget it finishes in the background.
_LLM_BUCKETS = (0.05, 0.1, 0.25, 0.45, 1.0, 2.5, 5.0, 10.0, 30.0)

hook_calls = Histogram(
    "cds_hook_request_duration_seconds",
    "Hook calls to a CDS Service, from the request's arrival until its decision is logged",
    ["service", "status"],
    buckets=_CALL_BUCKETS,
)
cards_issued = Counter("cds_cards_issued_total", "Cards answered to the CDS client", ["service", "indicator"])
rule_firings = Counter(
    "cds_rule_firings_total",
    "Rules that fired (shadow rules too: they fire without a card)",
    ["rule", "rule_status"],
)
decision_log_append = Histogram(
    "cds_decision_log_append_seconds", "Appending one decision record to the log", buckets=_APPEND_BUCKETS
)
fhir_fetches = Histogram(
    "cds_fhir_fetch_duration_seconds",
    "FHIR queries sent to the EHR's server (every page of a search included)",
    ["resource_type"],
    buckets=_FETCH_BUCKETS,
)
fhir_fetch_errors = Counter(
    "cds_fhir_fetch_errors_total", "FHIR queries that failed, by why", ["resource_type", "error"]
)
llm_generations = Histogram(
    "cds_llm_generation_duration_seconds", "LLM generations", ["task"], buckets=_LLM_BUCKETS
)
llm_tokens = Counter("cds_llm_tokens_generated_total", "Tokens the LLM generated", ["task"])
llm_deadline_misses = Counter(
    "cds_llm_deadline_misses_total",
    "LLM answers not ready within the response budget (they finish in the background)",
    ["task"],
)
llm_failures = Counter("cds_llm_failures_total", "LLM generations that failed", ["task"])


def observe_call(call: "HookCall", record: "DecisionRecord", append_seconds: float) -> None:
    """One hook call, once its decision is logged: latency, cards, the rules that fired."""
    service = call.service_id  # the registry answers 404 before the pipeline for an unknown id
    hook_calls.labels(service, str(call.status)).observe(call.watch.total() / 1000)  # from arrival
    decision_log_append.observe(append_seconds)
    for card in record.data["response"].get("cards") or ():
        indicator = card.get("indicator")
        cards_issued.labels(service, indicator if indicator in INDICATORS else "other").inc()
    for rule in record.data.get("rules") or ():  # what `outcome_rows` indexes, read without building rows
        if rule["outcome"] == "fired":
            rule_firings.labels(rule["id"], rule["status"]).inc()


@contextmanager
def fhir_fetch(query: str) -> Iterator[None]:
    """Times one FHIR query (``Observation?patient=...``, all its pages) and counts its failure by the
    exception's class (FhirUnreachable, FhirDeadlineExceeded...); labelled by resource type only."""
    rtype = resource_type_label(query)
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        fhir_fetch_errors.labels(rtype, type(exc).__name__).inc()
        raise
    finally:
        fhir_fetches.labels(rtype).observe(time.perf_counter() - started)


def observe_generation(task: str, generation: "Generation") -> None:
    llm_generations.labels(task).observe(generation.seconds)
    if generation.new_tokens:
        llm_tokens.labels(task).inc(generation.new_tokens)


def observe_llm_failure(task: str) -> None:
    llm_failures.labels(task).inc()


def observe_deadline_miss(task: str) -> None:
    llm_deadline_misses.labels(task).inc()


def resource_type_label(query: str) -> str:
    """The resource type a relative query starts with, if FHIR has such a resource; else "other". A
    query's type comes from the service's templates or from references in the data, so it is checked
    against FHIR's own names to keep the label set bounded."""
    from ..ehr.validation import known_type

    first = query.split("?", 1)[0].strip("/").split("/", 1)[0]
    return first if known_type(first) else "other"


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """Every worker's values under gunicorn, this process's otherwise; in the Prometheus text format, or
    OpenMetrics when the scraper's Accept asks for it."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
