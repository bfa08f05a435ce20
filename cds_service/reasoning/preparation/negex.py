"""The NegEx/ConText assertion kit as evaluation data: rows, a stratified sample, per-label scores.

The kit (Chapman et al., Apache-2.0; vendored under benchmarks/negex/, see its README) gives each
sentence one target phrase, written in upper case inside the sentence, and three reference labels:
negation (Affirmed/Negated), temporality (Recent/Historical/Not particular) and experiencer
(Patient/Family member/Other). A mention's status is one answer (clinical/mentions.py), so each label
is scored as a yes/no question on that answer: negation = "negated", historical = "historical",
hypothetical ("Not particular") = "hypothetical", experiencer (not the patient) = "someone-else".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class KitRow:
    number: int
    note: str  # the annotators' remark ("missing section header" ...), mostly empty
    phrase: str
    raw_sentence: str  # as in the kit: the target in upper case
    negation: str
    temporality: str
    experiencer: str

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

    def located(self) -> tuple[str, int, int] | None:
        """(sentence, start, end) with the target back in ordinary case, as a note would have it; None when
        the phrase is not in the sentence (the kit flags such rows: phrase longer than the sentence)."""
        words = self.phrase.split()
        match = words and re.search(r"\s+".join(map(re.escape, words)), self.raw_sentence, re.IGNORECASE)
        if not match:
            return None
        start, end = match.span()
        target = self.raw_sentence[start:end].lower()
        if start == 0:
            target = target[:1].upper() + target[1:]
        return self.raw_sentence[:start] + target + self.raw_sentence[end:], start, end


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
