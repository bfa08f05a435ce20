"""Reading clinical notes for what the rules need: candidates by terminology, assertion by ConText.

Candidates come from a deterministic matcher over the project's terminology (fhir/terminology): every
ingredient name, synonym and brand name of the drug-class value sets ("Aleve" -> naproxen), every
drug-class name ("penicillins", "sulfa drugs"), and the phrases of the value sets marked as note findings
(fhir/terminology/note-findings: pregnancy, peptic ulcer or GI bleeding, renal or hepatic impairment, QT
prolongation, substance use, breastfeeding). One compiled regular expression with word boundaries, longest
phrase first — the same matching the terminology uses for medication names, so a name is recognised the
same way in an order and in a note. Nothing is generated: every mention is a span of the document's own
text, so extraction is grounded by construction.

A drug named in an allergy context (the sentence speaks of an allergy, anaphylaxis, hives ..., or the
section is headed "Allergies") is an allergy mention, with the reaction when one is named; otherwise it
is a medicine the patient takes. The assertion status of each mention (present, negated, possible,
historical, hypothetical, about someone else) comes from the ConText baseline (assertion.py); a section
headed "Family history" makes its mentions about someone else. The LLM may re-decide the status later
(pipeline), only where its measured figures earn it (reasoning/capabilities.py).
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass

from cachetools import LRUCache

from ..ehr.documents import DocumentText
from .assertion import assess, sentence_spans
from .mentions import ALLERGY, BASELINE, CONDITION, MEDICATION, SOMEONE_ELSE, Mention
from .terminology import RXNORM, Terminology

_ALLERGY_CUE = re.compile(
    r"\b(allerg\w*|anaphyla\w*|hives|urticaria\w*|angioedema|intoleran\w*|adverse (drug )?reaction|"
    r"reacted|reaction to|sensitivity to|rash (with|after|from|to)|stevens[- ]johnson|sjs)\b",
    re.IGNORECASE,
)
# Reactions worth carrying onto the card and into a suggested AllergyIntolerance (as written).
_REACTION = re.compile(
    r"\b(anaphyla\w*|hives|urticaria|angioedema|(facial |lip |tongue |throat )?swelling|rash|itching|"
    r"pruritus|wheez\w*|shortness of breath|bronchospasm|stevens[- ]johnson syndrome|sjs|toxic epidermal "
    r"necrolysis|nausea|vomiting|diarrh\w*|gi upset|dizziness|hypotension|blisters?)\b",
    re.IGNORECASE,
)
# Section headers at the start of a line ("ALLERGIES:", "Family history -") and what they imply.
_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z /&()-]{1,40}?)[ \t]*(:|-{1,2}|\n)", re.MULTILINE)
_ALLERGY_SECTION = re.compile(r"\ballerg|\badverse reactions?\b|\bintolerances?\b", re.IGNORECASE)
_FAMILY_SECTION = re.compile(r"\bfamily (history|hx)\b|^fh$|^fhx$", re.IGNORECASE)

# Within a sentence: clause breaks, and headers written inline ("Allergies: penicillin. Meds: aspirin").
_CLAUSE_BREAK = re.compile(r";|\bbut\b|\bhowever\b", re.IGNORECASE)
_INLINE_HEADER = re.compile(r"(?:^|(?<=[\s.,;]))([A-Z][A-Za-z /&-]{1,30}):(?=\s|$)")

MAX_MENTIONS_PER_DOCUMENT = 200  # a pasted formulary must not flood the facts


@dataclass(frozen=True)
class Term:
    kind: str  # "ingredient" | "class" | "finding"
    concept: str  # "ingredient:<name>" | "class:<vs id>" | "<vs id>"
    display: str
    codes: tuple[tuple[str, str], ...]


def _sections(text: str) -> list[tuple[int, str]]:
    """(offset, header) of each section header; a header governs the text up to the next one."""
    out = []
    for match in _HEADER.finditer(text):
        header = match.group(1).strip()
        if match.group(2) == "\n" and not header.isupper():
            continue  # a header alone on its line is written in capitals ("ALLERGIES")
        out.append((match.start(1), header))
    return out


def _section_at(sections: list[tuple[int, str]], offset: int) -> str:
    header = ""
    for start, name in sections:
        if start > offset:
            break
        header = name
    return header


def _reaction_of(match: re.Match, matches: list[re.Match], i: int, reactions: list[re.Match]) -> str | None:
    """The reaction written with this drug in a list ("PCN (hives), sulfa (rash)"): the first one after it
    and before the next drug, else the last one before it and after the previous drug."""
    after = matches[i + 1].start() if i + 1 < len(matches) else None
    before = matches[i - 1].end() if i > 0 else 0
    for r in reactions:
        if r.start() >= match.end() and (after is None or r.start() < after):
            return r.group(0)
    for r in reversed(reactions):
        if before <= r.start() and r.end() <= match.start():
            return r.group(0)
    return None


class NoteReader:
    """Built once at start-up from the terminology; `read` is pure and cached by document content."""

    def __init__(self, terminology: Terminology, cache_size: int = 2048):
        self.terms: dict[str, Term] = {}
        for name, vs_id in terminology.class_names.items():
            self.terms[name] = Term("class", f"class:{vs_id}", terminology.valuesets[vs_id].title, ())
        for name, canonical in terminology.ingredient_names.items():
            code = terminology.ingredient_codes.get(canonical)
            self.terms[name] = Term(
                "ingredient", f"ingredient:{canonical}", canonical, (code,) if code else ()
            )
        for name, (vs_id, coding, display) in terminology.finding_names.items():
            self.terms.setdefault(name, Term("finding", vs_id, display, (coding,)))
        names = sorted(self.terms, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<![a-z0-9])(" + "|".join(re.escape(n) for n in names) + r")(?![a-z0-9])", re.I)
            if names
            else None
        )
        self._cache: LRUCache = LRUCache(maxsize=cache_size)
        self._lock = threading.Lock()

    def read(self, document: DocumentText) -> tuple[Mention, ...]:
        key = hashlib.sha256(
            "\x00".join(
                (document.ref, document.part, document.title, str(document.date), document.text)
            ).encode("utf-8", "surrogatepass")
        ).digest()
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            found = self._read(document)
            with self._lock:
                self._cache[key] = found
        return found

    def _read(self, document: DocumentText) -> tuple[Mention, ...]:
        if self._pattern is None:
            return ()
        text = document.text
        sections = _sections(text)
        mentions: list[Mention] = []
        for s_start, s_end in sentence_spans(text):
            sentence = text[s_start:s_end]
            matches = list(self._pattern.finditer(sentence))
            if not matches:
                continue
            line_section = _section_at(sections, s_start)
            inline = [(h.start(), h.group(1)) for h in _INLINE_HEADER.finditer(sentence)]
            clauses = [c.start() for c in _CLAUSE_BREAK.finditer(sentence)] + [h for h, _ in inline]
            reactions = list(_REACTION.finditer(sentence))
            seen: set[tuple[str, str, str]] = set()
            for i, match in enumerate(matches):
                term = self.terms.get(match.group(1).lower())
                if term is None:
                    continue
                # The governing header: one written earlier in this sentence ("... Meds: aspirin"), else
                # the section's; an allergy cue counts only in the drug's own clause.
                section = next((name for at, name in reversed(inline) if at < match.start(1)), line_section)
                start = max([0] + [c for c in clauses if c <= match.start(1)])
                end = min([len(sentence)] + [c for c in clauses if c > match.start(1)])
                allergy_context = bool(
                    _ALLERGY_CUE.search(sentence, start, end) or _ALLERGY_SECTION.search(section)
                )
                family_section = bool(_FAMILY_SECTION.search(section))
                if term.kind == "finding":
                    kind = CONDITION
                elif allergy_context:
                    kind = ALLERGY
                else:
                    kind = MEDICATION
                context = assess(sentence, match.start(1), match.end(1))
                status = SOMEONE_ELSE if family_section else context.status
                if (kind, term.concept, status) in seen:  # "no melena; GI bleed in 2019": both kept
                    continue
                seen.add((kind, term.concept, status))
                codes = (
                    term.codes
                    if term.kind != "ingredient"
                    else tuple(c for c in term.codes if c[0] == RXNORM)
                )
                mentions.append(
                    Mention(
                        kind=kind,
                        concept=term.concept,
                        label=match.group(1),
                        display=term.display,
                        status=status,
                        sentence=sentence,
                        start=s_start + match.start(1),
                        end=s_start + match.end(1),
                        sentence_start=s_start,
                        document=document.ref,
                        document_title=document.title,
                        document_date=document.date,
                        decided_by=BASELINE,
                        triggers=context.triggers + (("section: " + section,) if family_section else ()),
                        reaction=_reaction_of(match, matches, i, reactions) if kind == ALLERGY else None,
                        codes=codes,
                    )
                )
                if len(mentions) >= MAX_MENTIONS_PER_DOCUMENT:
                    return tuple(mentions)
        return tuple(mentions)
