"""The NegEx/ConText assertion kit as evaluation data: rows, their targets, a stratified sample, scores.

The kit (Chapman et al., Apache-2.0; vendored under benchmarks/negex/, see its README) gives each
sentence one target phrase, written in upper case inside the sentence, and three reference labels:
negation (Affirmed/Negated), temporality (Recent/Historical/Not particular) and experiencer
(Patient/Family member/Other). Each label is scored as a yes/no question, two ways:

* per status (`score`): a mention's status is one answer (clinical/mentions.py), so negation =
  "negated", historical = "historical", hypothetical ("Not particular") = "hypothetical", experiencer (not
  the patient) = "someone-else". This is how the components (rules, LLM, both) are compared.
* per ConText dimension (`score_dimensions`): each dimension on its own, as clinical/assertion.py's Context
  carries them (a row may be negated AND historical): the rule baseline's own figure.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ...clinical.mentions import HISTORICAL, HYPOTHETICAL, NEGATED, PRESENT, SOMEONE_ELSE

KIT_FILE = "rsAnnotations-1-120-random.txt"
LABELS = ("negation", "historical", "hypothetical", "experiencer")
LABEL_STATUS = {
    "negation": NEGATED,
    "historical": HISTORICAL,
    "hypothetical": HYPOTHETICAL,
    "experiencer": SOMEONE_ELSE,
}

# How a target was found in its sentence (offsets are only approximate for the last two).
EXACT = "exact"  # the upper-case phrase, case-sensitively
IGNORE_CASE = "ignore-case"  # the phrase, case-insensitively (annotator typed it in another case)
PARTIAL = "partial"  # the phrase runs past the sentence (kit note "plts"): its longest leading part
WHOLE = "whole"  # not found at all: the whole sentence


@dataclass(frozen=True)
class Target:
    start: int
    end: int
    how: str  # EXACT | IGNORE_CASE | PARTIAL | WHOLE


def _phrase_regex(phrase: str, flags=0) -> re.Pattern:
    return re.compile(r"\s+".join(re.escape(w) for w in phrase.split()), flags)


def find_target(phrase: str, sentence: str) -> Target:
    """Where the target phrase is in its kit sentence.

    The target is the upper-case phrase, matched case-sensitively (whitespace runs may differ): a
    case-insensitive search would take "mi" in "admitted" for MI. When it occurs more than once, the first
    whole-word occurrence that is not a section header ("UTI:  The patient was noted to have a UTI") is
    taken: a header names the section, the finding is in the text.
    """
    candidates = list(_phrase_regex(phrase.upper()).finditer(sentence))
    how = EXACT
    if not candidates:
        candidates = list(_phrase_regex(phrase, re.IGNORECASE).finditer(sentence))
        how = IGNORE_CASE
    if candidates:

        def rank(m: re.Match) -> tuple[int, int]:
            s, e = m.span()
            whole_word = (s == 0 or not sentence[s - 1].isalnum()) and (
                e == len(sentence) or not (sentence[e].isalnum() or sentence[e] == "'")
            )
            header = sentence[e : e + 1] == ":"
            return (0 if whole_word and not header else 1, s)

        best = min(candidates, key=rank)
        return Target(best.start(), best.end(), how)
    words = phrase.split()
    for n in range(len(words) - 1, 0, -1):  # the phrase runs past the sentence: its longest head
        m = _phrase_regex(" ".join(words[:n]), re.IGNORECASE).search(sentence)
        if m:
            return Target(m.start(), m.end(), PARTIAL)
    return Target(0, len(sentence), WHOLE)


@dataclass(frozen=True)
class KitRow:
    number: int
    note: str  # the annotators' remark ("plts: phrase is longer than sentence" ...), mostly empty
    phrase: str
    raw_sentence: str  # as in the kit: the target in upper case
    negation: str  # Affirmed | Negated
    temporality: str  # Recent | Historical | Not particular
    experiencer: str  # Patient | Family member | Other

    @property
    def flagged(self) -> bool:
        """The kit marks the row as imperfect (36 rows)."""
        return bool(self.note)

    def gold(self, label: str) -> bool:
        return {
            "negation": self.negation == "Negated",
            "historical": self.temporality == "Historical",
            "hypothetical": self.temporality == "Not particular",
            "experiencer": self.experiencer != "Patient",
        }[label]

    @property
    def status(self) -> str:
        """The one status that best describes the row (for stratifying and exact-match accuracy)."""
        if self.gold("experiencer"):  # the same precedence as clinical/assertion.py's Context.status
            return SOMEONE_ELSE
        if self.gold("hypothetical"):
            return HYPOTHETICAL
        if self.gold("negation"):
            return NEGATED
        if self.gold("historical"):
            return HISTORICAL
        return PRESENT

    @cached_property
    def target(self) -> Target:
        return find_target(self.phrase, self.raw_sentence)

    def located(self) -> tuple[str, int, int] | None:
        """(sentence, start, end) with the target back in ordinary case, as a note would have it; None when
        no part of the phrase is in the sentence (a few rows the kit flags: phrase longer than sentence)."""
        t = self.target
        if t.how == WHOLE:
            return None
        target = self.raw_sentence[t.start : t.end].lower()
        if t.start == 0:
            target = target[:1].upper() + target[1:]
        return self.raw_sentence[: t.start] + target + self.raw_sentence[t.end :], t.start, t.end


def find_kit(explicit: Path | None = None) -> Path | None:
    """--kit, else the copy vendored in the repository (found from this file in a checkout, or from the
    working directory for an installed package run in the repository), else the shared folder beside it."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    for repo in (Path(__file__).resolve().parents[3], Path.cwd()):
        for candidate in (
            repo / "benchmarks" / "negex" / KIT_FILE,
            repo.parent / "shared" / "benchmarks" / "negex" / KIT_FILE,
        ):
            if candidate.is_file():
                return candidate
    return None


def read_kit(path: Path) -> list[KitRow]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 7 or not parts[0].strip().isdigit():
            continue  # a header or a broken line
        number, note, phrase, sentence, negation, temporality, experiencer = parts[:7]
        rows.append(
            KitRow(
                int(number),
                note.strip(),
                phrase.strip(),
                sentence.strip(),
                negation.strip(),
                temporality.strip(),
                experiencer.strip(),
            )
        )
    return rows


def stratified_sample(rows: list[KitRow], size: int, seed: int = 0) -> list[KitRow]:
    """`size` rows in which every status is represented: each stratum first gets up to size/10 rows (all of
    a rarer one), the rest is shared in proportion to what is left. Deterministic for a seed; kit order."""
    if size >= len(rows):
        return list(rows)
    rng = random.Random(seed)
    strata: dict[str, list[KitRow]] = {}
    for row in rows:
        strata.setdefault(row.status, []).append(row)
    for members in strata.values():
        rng.shuffle(members)
    take = {s: min(len(m), size // 10) for s, m in strata.items()}
    left = size - sum(take.values())
    spare = {s: len(m) - take[s] for s, m in strata.items()}
    total_spare = sum(spare.values())
    if total_spare and left > 0:
        shares = {s: left * n / total_spare for s, n in spare.items()}
        extra = {s: int(v) for s, v in shares.items()}
        for s in sorted(shares, key=lambda s: shares[s] - extra[s], reverse=True)[
            : left - sum(extra.values())
        ]:
            extra[s] += 1  # largest remainders
        for s in take:
            take[s] += min(extra[s], spare[s])
    chosen = {id(r) for s, m in strata.items() for r in m[: take[s]]}
    return [r for r in rows if id(r) in chosen]


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "support": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def score(rows: list[KitRow], statuses: list[str | None]) -> dict:
    """Per-label precision/recall/F1 of predicted statuses (None: no answer, counts as no label), macro F1
    over the labels that have gold rows in `rows`, and exact-status accuracy."""
    if len(rows) != len(statuses):
        raise ValueError(f"{len(rows)} rows but {len(statuses)} predictions")
    pairs = list(zip(rows, statuses, strict=True))
    labels = {}
    for label in LABELS:
        wanted = LABEL_STATUS[label]
        tp = sum(1 for r, s in pairs if r.gold(label) and s == wanted)
        fp = sum(1 for r, s in pairs if not r.gold(label) and s == wanted)
        fn = sum(1 for r, s in pairs if r.gold(label) and s != wanted)
        labels[label] = _prf(tp, fp, fn)
    present = [m["f1"] for m in labels.values() if m["support"]]
    return {
        "labels": labels,
        "macroF1": round(sum(present) / len(present), 4) if present else 0.0,
        "accuracy": round(sum(1 for r, s in pairs if r.status == s) / len(pairs), 4) if pairs else 0.0,
    }


def context_labels(context) -> frozenset[str]:
    """The labels an assertion Context (clinical/assertion.py) carries, each dimension on its own."""
    out = set()
    if context.negated:
        out.add("negation")
    if context.hypothetical:
        out.add("hypothetical")
    elif context.historical:
        out.add("historical")  # temporality is one kit column: hypothetical wins, as in the status precedence
    if context.someone_else:
        out.add("experiencer")
    return frozenset(out)


def score_dimensions(rows: list[KitRow], predicted: list[frozenset[str]]) -> dict[str, dict]:
    """Per-label precision/recall/F1 when each prediction is a set of labels (context_labels), so a row
    may be right on negation and wrong on temporality at once."""
    if len(rows) != len(predicted):
        raise ValueError(f"{len(rows)} rows but {len(predicted)} predictions")
    pairs = list(zip(rows, predicted, strict=True))
    out = {}
    for label in LABELS:
        tp = sum(1 for r, p in pairs if r.gold(label) and label in p)
        fp = sum(1 for r, p in pairs if not r.gold(label) and label in p)
        fn = sum(1 for r, p in pairs if r.gold(label) and label not in p)
        out[label] = _prf(tp, fp, fn)
    return out
