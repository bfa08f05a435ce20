"""Warm-up: every service answers a synthetic patient once at worker start, unrecorded and without the LLM."""

from __future__ import annotations

from datetime import date

from cds_service.protocol.warm_up import synthetic_request, warm_up


def test_every_service_runs_the_synthetic_patient_without_error_and_nothing_is_recorded(app):
    runtime = app.extensions["cds_runtime"]
    registry, log = runtime.registry, runtime.storage.decision_log
    before = log.count()
    cards = {}
    for service in registry.services:
        body = synthetic_request(service, date.today())
        # warm() raises what the call would have answered as an error: a 4xx here means a wasted warm-up
        cards[f"{service.id}/{service.hook}"] = registry.pipeline.warm(
            service.id, registry.by_hook(service.id), body
        )
    assert log.count() == before
    # the card path (templates, validation) runs too: warfarin + ibuprofen, an opioid + a benzodiazepine
    fired = {c["extension"]["org.cds-service.rule"]["id"] for c in cards["medication-order-check/order-sign"]}
    assert {"ddi-warfarin-nsaid", "ddi-opioid-benzodiazepine"} <= fired


def test_warm_up_reports_each_service_and_survives_a_failing_one(app, monkeypatch, caplog):
    registry = app.extensions["cds_runtime"].registry
    real = registry.pipeline.warm

    def failing(service_id, candidates, body):
        if service_id == "patient-chart-review":
            raise RuntimeError("boom")
        return real(service_id, candidates, body)

    monkeypatch.setattr(registry.pipeline, "warm", failing)
    spent = warm_up(registry, app.extensions["cds_runtime"].storage.engine)
    assert set(spent) == {f"{s.id}/{s.hook}" for s in registry.services}
    assert "warm-up of patient-chart-review (patient-view) failed" in caplog.text


def test_order_select_warm_up_selects_one_draft(app):
    service = next(s for s in app.extensions["cds_runtime"].registry.services if s.hook == "order-select")
    body = synthetic_request(service, date.today())
    drafts = [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
    assert body["context"]["selections"] == [f"MedicationRequest/{drafts[0]['id']}"]
