"""The public NegEx/ConText test kit: reading it and scoring assertion predictions against it.

The kit (benchmarks/negex/, or /work/shared/benchmarks/negex/; see its README) has 2,376 sentences with
one target phrase each, written in upper case inside the sentence, and three reference labels: negation
(Affirmed / Negated), temporality (Recent / Historical / Not particular) and experiencer (Patient /
Family member / Other).

    from negex_kit import load_kit, score, predicted_labels
    rows = load_kit(KIT)
    gold = [row.labels for row in rows]
    scores = score(gold, [predicted_labels(ctx) for ctx in contexts])

For benchmark scripts (benchmarks/negex_assertion.py) and tests/test_assertion.py; no I/O but reading the kit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_KIT_FILE = "rsAnnotations-1-120-random.txt"
# The copy vendored in the repository, else the shared one beside the checkout.
KIT = next(
    (
        p
        for p in (
            Path(__file__).resolve().parent / "negex" / _KIT_FILE,
            Path("/work/shared/benchmarks/negex") / _KIT_FILE,
        )
        if p.is_file()
    ),
    Path(__file__).resolve().parent / "negex" / _KIT_FILE,
)

# Scored labels (the positive class of each one-vs-rest comparison) and the kit column each comes from.
NEGATED = "Negated"
HISTORICAL = "Historical"
NOT_PARTICULAR = "Not particular"  # ConText's hypothetical
OTHER_EXPERIENCER = "Not patient"  # experiencer "Family member" or "Other"
LABELS = (NEGATED, HISTORICAL, NOT_PARTICULAR, OTHER_EXPERIENCER)

# How a target was located in its sentence (offsets are only approximate for the last two).
EXACT = "exact"  # the upper-case phrase, case-sensitively
IGNORE_CASE = "ignore-case"  # the phrase, case-insensitively (annotator typed it in another case)
PARTIAL = "partial"  # the phrase runs past the sentence (kit note "plts"): its longest leading part found
WHOLE = "whole"  # not found at all: the whole sentence


@dataclass(frozen=True)
class KitRow:
    number: int
    note: str  # annotator's note; non-empty for the 36 rows the kit flags as imperfect
    phrase: str  # the target phrase as the kit gives it (lower case as annotated)
    sentence: str
    start: int  # target offsets in sentence
    end: int
    located: str  # EXACT | IGNORE_CASE | PARTIAL | WHOLE
    negation: str  # Affirmed | Negated
    temporality: str  # Recent | Historical | Not particular
    experiencer: str  # Patient | Family member | Other

    @property
    def flagged(self) -> bool:
        return bool(self.note)

    @property
    def labels(self) -> frozenset[str]:
        """The scored labels this row carries."""
        out = set()
        if self.negation == "Negated":
            out.add(NEGATED)
        if self.temporality in (HISTORICAL, NOT_PARTICULAR):
            out.add(self.temporality)
        if self.experiencer != "Patient":
            out.add(OTHER_EXPERIENCER)
        return frozenset(out)


def predicted_labels(context) -> frozenset[str]:
    """An assertion Context (cds_service.clinical.assertion) as kit labels; each dimension on its own."""
    out = set()
    if context.negated:
        out.add(NEGATED)
    if context.hypothetical:
        out.add(NOT_PARTICULAR)
    elif context.historical:
        out.add(HISTORICAL)  # temporality is one column: hypothetical wins, as in the status precedence
    if context.someone_else:
        out.add(OTHER_EXPERIENCER)
    return frozenset(out)


def _phrase_regex(phrase: str, flags=0) -> re.Pattern:
    words = phrase.split()
    return re.compile(r"\s+".join(re.escape(w) for w in words), flags)


def locate(phrase: str, sentence: str) -> tuple[int, int, str]:
    """Offsets of the target in its sentence.

    The target is the upper-case phrase, matched case-sensitively (whitespace runs may differ). When it
    occurs more than once, the first whole-word occurrence that is not a section header ("UTI:  The
    patient was noted to have a UTI") is taken: a header names the section, the finding is in the text.
    """
    candidates = list(_phrase_regex(phrase.upper()).finditer(sentence))
    located = EXACT
    if not candidates:
        candidates = list(_phrase_regex(phrase, re.IGNORECASE).finditer(sentence))
        located = IGNORE_CASE
    if candidates:

        def rank(m: re.Match) -> tuple[int, int]:
            s, e = m.span()
            whole_word = (s == 0 or not sentence[s - 1].isalnum()) and (
                e == len(sentence) or not (sentence[e].isalnum() or sentence[e] == "'")
            )
            header = sentence[e : e + 1] == ":"
            return (0 if whole_word and not header else 1, s)

        best = min(candidates, key=rank)
        return best.start(), best.end(), located
    words = phrase.split()
    for n in range(len(words) - 1, 0, -1):  # the phrase runs past the sentence: its longest head
        m = _phrase_regex(" ".join(words[:n]), re.IGNORECASE).search(sentence)
        if m:
            return m.start(), m.end(), PARTIAL
    return 0, len(sentence), WHOLE


def load_kit(path: Path | str = KIT) -> list[KitRow]:
    rows = []
    for line in Path(path).read_text(encoding="ascii").splitlines():
        if not line.strip():
            continue
        number, note, phrase, sentence, negation, temporality, experiencer = line.split("\t")
        start, end, located = locate(phrase, sentence)
        rows.append(
            KitRow(
                int(number),
                note.strip(),
                phrase,
                sentence,
                start,
                end,
                located,
                negation,
                temporality,
                experiencer,
            )
        )
    return rows


@dataclass(frozen=True)
class LabelScore:
    label: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
        }


def score(gold, predicted, labels=LABELS) -> dict[str, LabelScore]:
    """Precision, recall and F1 per label, one-vs-rest; gold and predicted are parallel sets of labels."""
    gold, predicted = list(gold), list(predicted)
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold rows but {len(predicted)} predictions")
    out = {}
    for label in labels:
        tp = sum(label in g and label in p for g, p in zip(gold, predicted, strict=True))
        fp = sum(label not in g and label in p for g, p in zip(gold, predicted, strict=True))
        fn = sum(label in g and label not in p for g, p in zip(gold, predicted, strict=True))
        out[label] = LabelScore(label, tp, fp, fn, len(gold) - tp - fp - fn)
    return out
