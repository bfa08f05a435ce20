"""Prompts, built only from the facts of the call and the rule findings (never raw FHIR, never ids).

Short and fact-only, because a small on-premises model (SmolLM2-135M) reasons weakly and drifts when
given room; the grounding guard checks whatever comes back against the same text.
"""

from __future__ import annotations

from datetime import timedelta

from ..clinical.facts import Facts

NOTABLE_LABS = {  # LOINC -> short name, the labs a summary is worth
    "2823-3": "potassium",
    "6298-4": "potassium",
    "2951-2": "sodium",
    "2947-0": "sodium",
    "2160-0": "creatinine",
    "38483-4": "creatinine",
    "33914-3": "eGFR",
    "62238-1": "eGFR",
    "98979-8": "eGFR",
    "4548-4": "hemoglobin A1c",
    "6301-6": "INR",
    "34714-6": "INR",
    "718-7": "hemoglobin",
    "777-3": "platelets",
    "2093-3": "cholesterol",
    "18262-6": "LDL cholesterol",
    "2089-1": "LDL cholesterol",
    "44261-6": "PHQ-9 score",
    "39156-5": "BMI",
}
SUMMARY_SYSTEM = (
    "You summarise a patient's record for a busy clinician. Use only the facts given. Do not add any "
    "diagnosis, drug, dose, test or number that is not in the facts. Write two or three short sentences."
)
EXPLAIN_SYSTEM = (
    "You are a clinical pharmacist. Use only the facts given. Do not add any drug, dose, test or number "
    "that is not in the facts. In two short sentences say why the alert matters for this patient and "
    "what to consider instead."
)


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.1f}".rstrip("0").rstrip(".")


def fact_lines(facts: Facts, *, max_items: int = 8, lab_days: int = 365) -> list[str]:
    lines = []
    who = ", ".join(
        p for p in (f"{facts.age} years old" if facts.age is not None else "", facts.sex or "") if p
    )
    lines.append(f"Patient: {who or 'age and sex unknown'}.")
    problems = sorted({c.name for c in facts.conditions if c.active})[:max_items]
    lines.append("Active problems: " + ("; ".join(problems) if problems else "none recorded") + ".")
    meds = sorted({m.name for m in facts.active_medications})[:max_items]
    lines.append("Active medications: " + ("; ".join(meds) if meds else "none recorded") + ".")
    allergies = sorted({a.name for a in facts.allergies if a.active})[:max_items]
    if allergies:
        lines.append("Allergies: " + "; ".join(allergies) + ".")
    labs, seen = [], set()
    cutoff = facts.now - timedelta(days=lab_days)
    for obs in facts.observations:  # newest first: the first of each kind is the latest
        name = next((NOTABLE_LABS[c] for _, c in obs.codes if c in NOTABLE_LABS), None)
        if name is None or name in seen or obs.value is None or obs.when is None or obs.when < cutoff:
            continue
        seen.add(name)
        labs.append(
            f"{name} {_number(obs.value)}{(' ' + obs.unit) if obs.unit else ''} on "
            f"{obs.when.date().isoformat()}"
        )
    lines.append("Recent labs: " + ("; ".join(labs) if labs else "none in the last year") + ".")
    return lines


def summary_messages(facts: Facts) -> list[dict]:
    return [
        {"role": "system", "content": SUMMARY_SYSTEM},
        {"role": "user", "content": "Facts:\n" + "\n".join(fact_lines(facts)) + "\nWrite the summary."},
    ]


def explanation_messages(facts: Facts, card: dict) -> list[dict]:
    alert = card["summary"]
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {
            "role": "user",
            "content": "Facts:\n" + "\n".join(fact_lines(facts)) + f"\nAlert: {alert}\n"
            "Write the explanation.",
        },
    ]


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)
