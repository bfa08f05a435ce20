"""The patient-view chart summary, composed deterministically from the facts.

Used when the configured model has not earned free text (its grounding figures are below the thresholds
in reasoning/capabilities.py) or no model runs: every line is a fact of the record with its date or
source, nothing is generated. Sections: active problems, high-alert medicines (ISMP list for
community/ambulatory care, value set `high-alert-medications`), abnormal recent laboratory results with
their dates, allergies, and what the clinical notes assert (quoted, with document and date).
"""

from __future__ import annotations

from .facts import NOTE, Facts, Observation, within_days
from .mentions import PRESENT
from .terminology import LOINC

HIGH_ALERT = "high-alert-medications"
LAB_DAYS = 90
MAX_LINES = 8  # per section; the record holds everything
_ABNORMAL = {"H", "HH", "L", "LL", "A", "AA", "HU", "LU", "POS", "DET"}
_INTERPRETATION_WORD = {"H": "high", "HH": "critically high", "L": "low", "LL": "critically low"}


def _date(when) -> str:
    return when.date().isoformat() if when else "undated"


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}".rstrip("0").rstrip(".")


def abnormal_labs(facts: Facts, days: int = LAB_DAYS) -> list[Observation]:
    """Laboratory results of the last `days` days flagged abnormal by the lab (interpretation), newest
    first, one per test (the latest)."""
    seen, out = set(), []
    for o in facts.observations:  # newest first
        if not within_days(facts, o.when, days) or o.component_of:
            continue
        test = next((c for s, c in o.codes if s == LOINC), o.name)
        if test in seen:
            continue
        seen.add(test)
        if {c.upper() for _, c in o.interpretation} & _ABNORMAL:
            out.append(o)
    return out


def summary_lines(facts: Facts) -> dict[str, list[str]]:
    problems = sorted(
        {
            f"{c.name}" + (" (from a note)" if c.provenance == NOTE else "")
            for c in facts.conditions
            if c.active
        }
    )
    high_alert = sorted(
        {
            m.name + (" (reported in a note)" if m.provenance == NOTE else "")
            for m in facts.active_medications
            if HIGH_ALERT in m.classes
        }
    )
    labs = []
    for o in abnormal_labs(facts):
        flag = ", ".join(
            _INTERPRETATION_WORD.get(c.upper(), c) for _, c in o.interpretation if c.upper() in _ABNORMAL
        )
        value = (
            _number(o.value) + (f" {o.unit}" if o.unit else "") if o.value is not None else o.value_text or ""
        )
        labs.append(f"{o.name}: {value} ({flag}) on {_date(o.when)}")
    allergies = sorted(
        {
            a.name + (f" ({a.criticality} criticality)" if a.criticality else "")
            for a in facts.allergies
            if a.active and a.provenance != NOTE
        }
    )
    notes = []  # what the notes add to the coded record (mentions already coded are in the record only)
    for mention, use, _ in facts.note_uses:
        if use != "used":
            continue
        what = {"allergy": "allergy to", "medication": "takes", "condition": ""}[mention.kind]
        status = "" if mention.status == PRESENT else f" ({mention.status})"
        quote = " ".join(mention.sentence.split())
        source = f"{mention.document_title}, {_date(mention.document_date)}, `{mention.document}`"
        notes.append(f"{what} {mention.label}{status}".strip() + f": “{quote}” ({source})")
    return {
        "Active problems": problems,
        "High-alert medicines": high_alert,
        f"Abnormal laboratory results (last {LAB_DAYS} days)": labs,
        "Allergies (coded)": allergies,
        "In the clinical notes, not coded": notes,
    }


def summary_markdown(sections: dict[str, list[str]], why: str) -> str:
    parts = []
    for title, lines in sections.items():
        shown = lines[:MAX_LINES] + ([f"and {len(lines) - MAX_LINES} more"] if len(lines) > MAX_LINES else [])
        parts.append(
            f"**{title}**: " + ("none recorded" if not lines else "\n" + "\n".join(f"- {x}" for x in shown))
        )
    parts.append(f"*Composed from the record by rules, not by a language model ({why}).*")
    return "\n\n".join(parts)
