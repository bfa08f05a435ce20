"""Kidney function: the latest eGFR, measured or computed from serum creatinine (CKD-EPI 2021).

Inker LA et al. New creatinine- and cystatin C-based equations to estimate GFR without race.
N Engl J Med 2021;385:1737-49. doi:10.1056/NEJMoa2102953 (the race-free 2021 refit):

    eGFR = 142 x min(Scr/k, 1)^a x max(Scr/k, 1)^-1.200 x 0.9938^age [x 1.012 if female]
    k = 0.7 (female) / 0.9 (male); a = -0.241 (female) / -0.302 (male); Scr in mg/dL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# LOINC codes that carry an eGFR result (mL/min/1.73m2), any equation.
EGFR_LOINC = frozenset(
    {
        "33914-3",
        "48642-3",
        "48643-1",
        "50044-7",
        "50210-4",
        "62238-1",
        "69405-9",
        "70969-1",
        "77147-7",
        "88293-6",
        "88294-4",
        "94677-2",
        "98979-8",
        "98980-6",
    }
)
# Serum/plasma creatinine.
CREATININE_LOINC = frozenset({"2160-0", "38483-4", "14682-9", "59826-8", "77140-2"})
LOINC = "http://loinc.org"


def ckd_epi_2021(creatinine_mg_dl: float, age_years: float, sex: str) -> float:
    if creatinine_mg_dl <= 0 or age_years < 18 or sex not in ("female", "male"):
        raise ValueError("CKD-EPI 2021 needs creatinine > 0, age >= 18 and sex female|male")
    female = sex == "female"
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_mg_dl / kappa
    value = 142 * min(ratio, 1) ** alpha * max(ratio, 1) ** -1.200 * 0.9938**age_years
    return value * 1.012 if female else value


def creatinine_mg_dl(value: float, unit: str | None) -> float | None:
    unit = (unit or "mg/dL").replace(" ", "").lower()
    if unit in ("mg/dl",):
        return value
    if unit in ("umol/l", "µmol/l", "μmol/l", "micromol/l"):
        return value / 88.42
    return None


@dataclass(frozen=True)
class Egfr:
    value: float
    when: datetime | None
    source: str  # "measured" | "computed (CKD-EPI 2021)"
    ref: str  # the Observation it comes from
    creatinine: float | None = None

    @property
    def date(self) -> str:
        return self.when.date().isoformat() if self.when else "unknown date"


def latest_egfr(facts, within_days: float | None = None) -> Egfr | None:
    """The most recent kidney-function result: a reported eGFR, or one computed from a serum creatinine
    with the patient's age and sex.

    Which one counts never depends on the order the FHIR server listed them in:
    1. the newest effective time wins (observations without a time come last);
    2. at the same time, a reported eGFR before one computed from a creatinine (the laboratory's own
       figure, with its method, over our recomputation);
    3. among several of the same kind at the same time, the lowest value: the more cautious reading for
       a renal dose limit (and then the Observation id, for a stable choice).
    """
    from .facts import within_days as in_window

    best: Egfr | None = None
    best_key: tuple | None = None
    for obs in facts.observations:  # newest first (facts.observation_order)
        if best is not None and obs.when != best.when:
            break  # older than the chosen time: nothing further can win
        if obs.value is None or (within_days is not None and not in_window(facts, obs.when, within_days)):
            continue
        candidate = _egfr_of(obs, facts)
        if candidate is None:
            continue
        key = (candidate.source != "measured", candidate.value, candidate.ref)
        if best_key is None or key < best_key:
            best, best_key = candidate, key
    return best


def _egfr_of(obs, facts) -> Egfr | None:
    codes = {c for s, c in obs.codes if s == LOINC}
    if codes & EGFR_LOINC:
        return Egfr(obs.value, obs.when, "measured", obs.ref)
    adult = facts.age is not None and facts.age >= 18
    if codes & CREATININE_LOINC and adult and facts.sex in ("female", "male"):
        scr = creatinine_mg_dl(obs.value, obs.unit)
        if scr:
            return Egfr(
                round(ckd_epi_2021(scr, facts.age, facts.sex), 1),
                obs.when,
                "computed (CKD-EPI 2021)",
                obs.ref,
                creatinine=obs.value,
            )
    return None
