"""Closed-answer tasks for the LLM: the model picks one of a few labels, under grammar-constrained decoding.

The assertion task: given a sentence of a clinical note and a phrase in it, does the sentence say the
patient has it now, that it is absent, possible, past, hypothetical, or about someone else? The answer
can only be one of `ASSERTION_OPTIONS` (backends' ``choose``), each mapped to a status of
clinical/mentions.py. Whether the answer is used at all is decided by measurement (capabilities.py).

The examples are general note language written for this prompt, not taken from any benchmark kit, so
a benchmark on the NegEx/ConText kit stays held out.
"""

from __future__ import annotations

from ..clinical.mentions import HISTORICAL, HYPOTHETICAL, NEGATED, POSSIBLE, PRESENT, SOMEONE_ELSE

ASSERTION_TASK = "assertion"
# Plain words a small model knows, rather than the status codes themselves ("someone-else").
ASSERTION_LABELS = {
    "present": PRESENT,
    "absent": NEGATED,
    "possible": POSSIBLE,
    "past": HISTORICAL,
    "hypothetical": HYPOTHETICAL,
    "other person": SOMEONE_ELSE,
}
ASSERTION_OPTIONS = tuple(ASSERTION_LABELS)
ASSERTION_MAX_NEW_TOKENS = 8  # the longest option is 2-4 tokens

EXAMPLES = (
    ("The patient reports a dry cough for three days.", "dry cough", "present"),
    ("She denies fever or chills.", "fever", "absent"),
    ("No evidence of fracture is seen.", "fracture", "absent"),
    ("Findings may represent early pneumonia.", "pneumonia", "possible"),
    ("He had a gastric ulcer ten years ago.", "gastric ulcer", "past"),
    ("Return to the clinic if the rash spreads.", "rash", "hypothetical"),
    ("His father died of a heart attack.", "heart attack", "other person"),
)
# The examples sit in the system message, one line each, rather than as earlier chat turns: ~230 prompt
# tokens instead of ~390, and on SmolLM2 no worse (a 150-sentence probe on the kit). The system message is
# the same for every question, so a server with prefix caching reuses it.
ASSERTION_SYSTEM = (
    "Label how a sentence from a clinical note speaks of a phrase: present (the patient has it now), "
    "absent (denied, negative or ruled out), possible (suspected, not confirmed), past (history only), "
    "hypothetical (only if, should or in the future), other person (about someone else, such as a "
    "relative). Answer with the label only. Examples:\n"
    + "\n".join(f'"{sentence}" {phrase}: {label}' for sentence, phrase, label in EXAMPLES)
)


def _question(sentence: str, phrase: str) -> str:
    return f'Sentence: "{" ".join(sentence.split())}"\nPhrase: "{" ".join(phrase.split())}"\nLabel:'


def assertion_messages(sentence: str, phrase: str) -> list[dict]:
    """The fixed system message (labels and examples), then the question."""
    return [
        {"role": "system", "content": ASSERTION_SYSTEM},
        {"role": "user", "content": _question(sentence, phrase)},
    ]


def assertion_status(label: str) -> str:
    """The mention status an allowed label stands for (KeyError for anything else)."""
    return ASSERTION_LABELS[label]
