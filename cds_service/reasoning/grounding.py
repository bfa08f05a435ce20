"""The grounding guard: LLM text may only name what the facts hold.

Prompts are built only from the patient's facts and the rule findings, so "grounded in the facts"
is checked as "grounded in the prompt": every medication (any ingredient, brand or drug-class name
the terminology knows), every lab test and every condition from the lexicons below, and every number
in the output must also appear in the prompt (numbers must match exactly, after normalising 5.60 to
5.6); so must words shaped like diagnoses (-itis, -osis, -emia, -pathy, -oma ...) and acronyms.
Output that is empty, cut short or repetitive is rejected too. A rejected text is dropped and
recorded with its reasons; it is never shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..clinical.terminology import Terminology

# Lab tests a summary might name (lower case; matched on word boundaries).
LAB_TERMS = (
    "potassium",
    "sodium",
    "chloride",
    "bicarbonate",
    "creatinine",
    "egfr",
    "gfr",
    "glomerular filtration",
    "urea",
    "bun",
    "inr",
    "prothrombin",
    "hemoglobin a1c",
    "hba1c",
    "a1c",
    "glucose",
    "hemoglobin",
    "hematocrit",
    "platelet",
    "platelets",
    "white blood cell",
    "wbc",
    "neutrophil",
    "cholesterol",
    "ldl",
    "hdl",
    "triglyceride",
    "triglycerides",
    "tsh",
    "thyroxine",
    "alt",
    "ast",
    "bilirubin",
    "albumin",
    "magnesium",
    "calcium",
    "phosphate",
    "bnp",
    "nt-probnp",
    "troponin",
    "lactate",
    "ferritin",
    "vitamin d",
    "psa",
    "urine drug screen",
    "phq-9",
    "phq9",
    "blood pressure",
    "heart rate",
    "oxygen saturation",
    "body mass index",
    "bmi",
)
# Conditions a summary might name.
CONDITION_TERMS = (
    "diabetes",
    "prediabetes",
    "hypertension",
    "hypotension",
    "chronic kidney disease",
    "kidney disease",
    "ckd",
    "renal failure",
    "kidney failure",
    "acute kidney injury",
    "heart failure",
    "atrial fibrillation",
    "coronary artery disease",
    "coronary heart disease",
    "myocardial infarction",
    "heart attack",
    "angina",
    "stroke",
    "transient ischemic attack",
    "asthma",
    "copd",
    "emphysema",
    "bronchitis",
    "pneumonia",
    "sepsis",
    "depression",
    "depressive",
    "anxiety",
    "bipolar",
    "schizophrenia",
    "dementia",
    "alzheimer",
    "parkinson",
    "epilepsy",
    "seizure",
    "seizures",
    "cancer",
    "carcinoma",
    "tumor",
    "tumour",
    "lymphoma",
    "leukemia",
    "hypothyroidism",
    "hyperthyroidism",
    "obesity",
    "anemia",
    "anaemia",
    "cirrhosis",
    "hepatitis",
    "hiv",
    "osteoporosis",
    "osteoarthritis",
    "arthritis",
    "rheumatoid",
    "gout",
    "hyperlipidemia",
    "hypercholesterolemia",
    "sleep apnea",
    "hyperkalemia",
    "hypokalemia",
    "hyponatremia",
    "hypernatremia",
    "hypoglycemia",
    "hyperglycemia",
    "pregnancy",
    "pregnant",
    "sickle cell",
    "opioid use disorder",
    "substance use",
    "alcohol use",
    "overdose",
    "suicidal",
    "suicide",
    "self-harm",
    "fracture",
    "infection",
    "bleeding",
    "hemorrhage",
    "thrombosis",
    "embolism",
    "deep vein thrombosis",
    "pulmonary embolism",
    "migraine",
)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?(?![\w])")


def _terms_pattern(terms) -> re.Pattern:
    ordered = sorted(set(terms), key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(re.escape(t) for t in ordered) + r")(?![a-z0-9])")


_LABS = _terms_pattern(LAB_TERMS)
_CONDITIONS = _terms_pattern(CONDITION_TERMS)
# Beyond the lexicon: words shaped like diagnoses (cardiomyopathy, myeloma, sinusitis ...) and
# acronyms (ARVC, COPD) must also appear in the record.
_DIAGNOSIS_SHAPED = re.compile(
    r"\b[a-z]+(?:itis|osis|emia|aemia|pathy|oma|algia|plegia|trophy|ectomy|uria)\b"
)
_ACRONYM = re.compile(r"\b[A-Z]{2,6}\b")
# A causal claim ("anemia due to chronic sinusitis") links two facts in a way the record may not: allowed
# only when the record says the same (SNOMED displays such as "Anemia due to chronic kidney disease").
_CAUSAL = re.compile(
    r"((?:[\w'-]+\s+){1,3})(due to|secondary to|caused by|as a result of)((?:\s+[\w'-]+){1,3})"
)


def _numbers(text: str) -> set[str]:
    out = set()
    for raw in _NUMBER.findall(text):
        value = raw.replace(",", ".")
        if "." in value:
            value = value.rstrip("0").rstrip(".")
        out.add(value.lstrip("0") or "0")
    return out


@dataclass
class Verdict:
    accepted: bool
    reasons: list[str] = field(default_factory=list)


class GroundingGuard:
    def __init__(self, terminology: Terminology):
        self.terminology = terminology

    def _medication_names(self, text: str) -> set[str]:
        low = text.lower()
        names = set(self.terminology.ingredients([], [low]))
        names |= {f"class:{c}" for c in self.terminology.named_classes([low])}
        return names

    def check(self, output: str, prompt: str) -> Verdict:
        reasons: list[str] = []
        text = " ".join(output.split())
        if len(text) < 20:
            reasons.append("output empty or too short")
        words = re.findall(r"[a-z']+", text.lower())
        if len(words) >= 12 and len(set(words)) / len(words) < 0.45:
            reasons.append("output is repetitive")
        prompt_low, text_low = prompt.lower(), text.lower()
        extra_meds = self._medication_names(text) - self._medication_names(prompt)
        if extra_meds:
            reasons.append(
                "names medications not in the record: "
                + ", ".join(sorted(m.replace("class:", "") for m in extra_meds))
            )
        for label, pattern in (("lab tests", _LABS), ("conditions", _CONDITIONS)):
            named = {m.group(1) for m in pattern.finditer(text_low)}
            missing = {
                term
                for term in named
                if not re.search(r"(?<![a-z0-9])" + re.escape(term) + r"(?![a-z0-9])", prompt_low)
            }
            if missing:
                reasons.append(f"names {label} not in the record: {', '.join(sorted(missing))}")
        shaped = {w for w in _DIAGNOSIS_SHAPED.findall(text_low) if w not in prompt_low}
        if shaped:
            reasons.append(f"names conditions not in the record: {', '.join(sorted(shaped))}")
        acronyms = {
            a for a in _ACRONYM.findall(text) if a.lower() not in prompt_low and a not in ("AI", "OK")
        }
        if acronyms:
            reasons.append(f"uses abbreviations not in the record: {', '.join(sorted(acronyms))}")
        causal = [
            m.group(0).strip()
            for m in _CAUSAL.finditer(text_low)
            if (m.group(1).split()[-1] + " " + m.group(2) + " " + m.group(3).split()[0]) not in prompt_low
        ]
        if causal:
            reasons.append(f"states causes the record does not: {'; '.join(causal)}")
        extra_numbers = _numbers(text) - _numbers(prompt)
        if extra_numbers:
            reasons.append(f"numbers not in the record: {', '.join(sorted(extra_numbers))}")
        return Verdict(not reasons, reasons)


def tidy(text: str) -> str:
    """Keep whole sentences only (generation stops at a token budget, often mid-sentence)."""
    text = " ".join(text.split())
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")):
        return text
    return text[: cut + 1] if cut > 0 else text
