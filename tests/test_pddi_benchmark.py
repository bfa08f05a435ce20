"""benchmarks/pddi_cds_agreement.py: the HL7 PDDI CDS guide's example requests made valid and compared.

The date handling is tested always; the whole benchmark runs when a copy of github.com/HL7/PDDI-CDS is at
$PDDI_SRC (or the mirror path used to build it), else it is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "pddi_cds_agreement", ROOT / "benchmarks" / "pddi_cds_agreement.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules["pddi_cds_agreement"] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)

PDDI_SRC = Path(os.environ.get("PDDI_SRC", "/work/.mirror/HL7+PDDI-CDS/repo"))
TODAY = date(2026, 3, 31)


def test_cql_dates_of_the_guide_requests_are_evaluated_on_the_day():
    assert bench.cql_value("Today()", TODAY) == "2026-03-31"
    assert bench.cql_value("Today() - 90 days", TODAY) == "2025-12-31"
    assert bench.cql_value("Today() - 4 months", TODAY) == "2025-11-30"  # no 31 November: the month's end
    period = (
        "FHIR.Period { start: FHIR.dateTime { value: Today() - 10 days }, "
        "end: FHIR.dateTime { value: Today() } }"
    )
    assert bench.cql_value(period, TODAY) == {"start": "2026-03-21", "end": "2026-03-31"}
    with pytest.raises(ValueError):
        bench.cql_value("Now() - 1 year", TODAY)


def test_elements_written_as_cql_expressions_are_replaced_by_their_values():
    extension = {"extension": [{"url": bench.CQL_EXPRESSION, "valueString": "Today() - 10 days"}]}
    request = {
        "resourceType": "MedicationRequest",
        "_authoredOn": extension,
        "dispenseRequest": {
            "validityPeriod": {
                "extension": [
                    {
                        "url": bench.CQL_EXPRESSION,
                        "valueString": "FHIR.Period { start: FHIR.dateTime { value: Today() }, "
                        "end: FHIR.dateTime { value: Today() + 3 months } }",
                    }
                ]
            }
        },
    }
    assert bench.resolve_cql_dates(request, TODAY) == 2
    assert request["authoredOn"] == "2026-03-21" and "_authoredOn" not in request
    assert request["dispenseRequest"]["validityPeriod"] == {"start": "2026-03-31", "end": "2026-06-30"}


HAVE_GUIDE = (PDDI_SRC / "HEAD").exists() or (PDDI_SRC / ".git").exists()


@pytest.mark.skipif(not HAVE_GUIDE, reason="no copy of HL7/PDDI-CDS at $PDDI_SRC")
def test_every_counted_guide_request_agrees():
    expected = bench.json.loads((bench.BENCH / "expected.json").read_text(encoding="utf-8"))
    guide = bench.Guide(PDDI_SRC, expected["commit"])
    results = bench.run(guide, bench.datetime.now(bench.UTC).date())
    counted = [r for r in results if r.counted]
    assert len(counted) == 20 and len(results) - len(counted) == 4
    assert [f"{r.request} {r.interaction}" for r in counted if not r.agrees] == []
