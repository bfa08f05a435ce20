"""What a clinical note says about the patient, as data: mentions with their assertion status.

A `Mention` is one safety-relevant concept found in one sentence of one document (a DocumentReference
note or a DiagnosticReport), with the verbatim sentence and character offsets, and an assertion status
saying whether the text asserts it of this patient now. Rules never read mentions directly: facts.py
turns the mentions asserted of the patient into note-derived facts (provenance ``note``) that carry their
mention as evidence, and only rules that allow note evidence (`noteEvidence: allowed`) see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Assertion statuses (the ConText dimensions folded into one answer, most specific first):
PRESENT = "present"  # asserted of the patient, now
NEGATED = "negated"  # "denies chest pain", "no known drug allergies"
POSSIBLE = "possible"  # "possible pneumonia", "cannot rule out a bleed"
HISTORICAL = "historical"  # "history of peptic ulcer", "GI bleed in 2019"
HYPOTHETICAL = "hypothetical"  # "return if bleeding", "consider ibuprofen"
SOMEONE_ELSE = "someone-else"  # "mother had breast cancer"
STATUSES = (PRESENT, NEGATED, POSSIBLE, HISTORICAL, HYPOTHETICAL, SOMEONE_ELSE)

# Mention kinds: what the concept is to the rules.
ALLERGY = "allergy"  # a drug (ingredient or class) the patient reacted to; `reaction` when stated
MEDICATION = "medication"  # a medicine the patient takes (prescribed, over the counter, herbal)
CONDITION = "condition"  # a finding in a value set the rules use (pregnancy, GI bleed, ...)
KINDS = (ALLERGY, MEDICATION, CONDITION)

# Which component decided the assertion status (recorded per mention and in the decision record).
BASELINE = "baseline"  # the ConText/NegEx-style rule baseline (clinical/assertion.py)
LLM = "llm"  # the on-premises model under grammar-constrained decoding (reasoning/tasks.py)
COMBINATION = "combination"  # baseline where it found a trigger, else the LLM


@dataclass(frozen=True)
class Mention:
    kind: str  # ALLERGY | MEDICATION | CONDITION
    concept: str  # "ingredient:<name>" | "class:<drug-class value set id>" | "<value set id>"
    label: str  # what the note called it, as written ("Aleve")
    display: str  # the concept's name ("naproxen", "Pregnancy")
    status: str  # one of STATUSES
    sentence: str  # the verbatim sentence
    start: int  # offsets of the matched phrase in the document text
    end: int
    sentence_start: int  # offset of the sentence in the document text
    document: str  # "DocumentReference/<id>" or "DiagnosticReport/<id>"
    document_title: str
    document_date: datetime | None
    decided_by: str = BASELINE  # BASELINE, LLM or COMBINATION
    model_id: str | None = None  # the model, when the LLM took part in deciding the status
    triggers: tuple[str, ...] = ()  # the baseline's trigger phrases that decided the status
    reaction: str | None = None  # ALLERGY: the reaction named in the sentence ("hives")
    codes: tuple[tuple[str, str], ...] = ()  # (system, code) the concept stands for, when it has one

    @property
    def asserted(self) -> bool:
        """True when the note asserts the concept of the patient: now, or in the past for a condition (a
        history of GI bleeding counts) and for an allergy (a reaction is always in the past). A medicine
        taken in the past is not taken now."""
        return self.status == PRESENT or (self.status == HISTORICAL and self.kind in (CONDITION, ALLERGY))

    @property
    def ai_assisted(self) -> bool:
        return self.decided_by != BASELINE

    def as_record(self) -> dict:
        """The decision record's view: everything but the sentence is short; the sentence is the evidence."""
        out = {
            "kind": self.kind,
            "concept": self.concept,
            "label": self.label,
            "status": self.status,
            "decidedBy": self.decided_by,
            "document": self.document,
            "offsets": [self.start, self.end],
            "sentence": self.sentence,
        }
        if self.document_date:  # an undated note has no date element (cards carry no nulls)
            out["documentDate"] = self.document_date.isoformat()
        if self.model_id:
            out["modelId"] = self.model_id
        if self.triggers:
            out["triggers"] = list(self.triggers)
        if self.reaction:
            out["reaction"] = self.reaction
        return out
