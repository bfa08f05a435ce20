"""Assertion status of a phrase in a clinical sentence: the deterministic ConText baseline.

ConText (Harkema H, Dowling JN, Thornblade T, Chapman WW. ConText: an algorithm for determining negation,
experiencer, and temporal status from clinical reports. J Biomed Inform 2009;42(5):839-851) extends
NegEx (Chapman WW et al. J Biomed Inform 2001;34(5):301-310) from negation to four dimensions. For each
dimension a lexicon of *trigger* terms sets the dimension for a target phrase inside the trigger's scope:

* a pre-trigger ("denies", "history of") scopes forward from the trigger, a post-trigger ("was ruled
  out", "unlikely") backwards; the scope ends at the sentence end, at a *termination* term ("but",
  "however", "presents", ...) or after a window of words (the window is per trigger; None = no limit);
* *pseudo-triggers* contain a trigger but do not trigger ("no change", "gram negative", "not only"):
  a trigger inside a pseudo-trigger of its dimension is dropped;
* a trigger inside the target phrase does not count ("abdomen soft without tenderness" is affirmed);
  a trigger that is the target ("NKDA") or starts before it and reaches into it does.

The lexicon below is written from the published NegEx/ConText term lists and general clinical phrasing,
extended for what this service reads (medicines stopped or held, allergy lines, pregnancy, substance
use), not fitted to one corpus. Choices a reader could make differently, and why they are made so:

* Stopping verbs ("stopped", "discontinued", "held", "off", "no longer") negate: for a medicine the
  question is "does the patient take it now", and the answer is no. Things that did happen and are over
  ("resolved", "quit smoking", "former smoker", "ex-smoker") are historical: a resolved GI bleed is
  still a GI bleed in the history, which the NSAID rules care about. (The NegEx kit labels some of these
  Negated, which costs a few points there.)
* "Unlikely", "doubt" make a finding possible, not negated: a rule should not treat a hedge as a denial.
* "Social history" is not a historical trigger: substance use under it is usually current.
* "Advised to avoid X", "do not take X", "may take X" are hypothetical: advice, not a fact about use.
* A colon terminates a scope ("Allergies: NKDA  Medications: aspirin") except when it is the colon of
  the trigger's own header ("Past medical history: PUD", "Pregnancy test: negative") or announces a
  list ("call if any of the following occur: ..."). Inline enumerations ("1) ... 2) ...") terminate.
* Clause verbs ("takes", "uses", "drinks") end a negation scope unless they follow the trigger
  directly: "No GI bleed, takes ibuprofen" (ibuprofen present) but "Denies taking ibuprofen" (negated).
* PRN use ("ibuprofen if needed") is use: "if" only scopes forward.
* A period followed by a capital letter inside a "sentence" (sentence_spans keeps "400 mg. Then" whole,
  as abbreviation-safe splitting must) terminates every scope, titles such as "Dr." excepted.

Status precedence (the Mention status folds the dimensions): someone-else > hypothetical > negated >
possible > historical > present.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

from cds_service.clinical.mentions import HISTORICAL, HYPOTHETICAL, NEGATED, POSSIBLE, PRESENT, SOMEONE_ELSE

NEGATION = "negated"
UNCERTAINTY = "uncertain"
HISTORY = "historical"
HYPOTHESIS = "hypothetical"
EXPERIENCER = "someone_else"
DIMENSIONS = (NEGATION, UNCERTAINTY, HISTORY, HYPOTHESIS, EXPERIENCER)


@dataclass(frozen=True)
class Context:
    negated: bool = False
    uncertain: bool = False
    historical: bool = False
    hypothetical: bool = False
    someone_else: bool = False
    triggers: tuple[str, ...] = ()  # trigger phrases (lower case, as found) that set a dimension

    @property
    def status(self) -> str:
        if self.someone_else:
            return SOMEONE_ELSE
        if self.hypothetical:
            return HYPOTHETICAL
        if self.negated:
            return NEGATED
        if self.uncertain:
            return POSSIBLE
        if self.historical:
            return HISTORICAL
        return PRESENT


# --- Lexicon -------------------------------------------------------------------------------------------
# Phrases are case-insensitive and "|"-separated; a space matches any run of whitespace or a hyphen
# ("status post" = "status-post"); word-character ends must sit on word boundaries. Regular expressions
# go in separate tuples (they may contain "|").
PRE, POST = "pre", "post"


def _terms(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split("|") if t.strip())


@dataclass(frozen=True)
class _Entry:
    dimension: str
    direction: str  # PRE: scope runs forward from the trigger; POST: backwards
    window: int | None  # most words between trigger and target; None: up to termination / sentence end
    phrases: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    anchors: tuple[str, ...] = ()  # words one of which any match of the regexes contains (a fast pre-check)
    stops: tuple[str, ...] = ()  # extra termination terms for this entry only


_GAP = "\x00"  # a space inside a phrase: any run of whitespace or hyphens


def _trie_regex(phrases) -> str:
    """One regex for many literal phrases, factored by common prefix so the engine does not try every
    alternative at every position (a flat alternation of ~100 phrases is ~10x slower)."""
    trie: dict = {}
    for phrase in phrases:
        node = trie
        for ch in _GAP.join(phrase.lower().split()):
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        ends = "" in node
        branches = [
            (r"[\s-]+" if ch == _GAP else re.escape(ch)) + emit(child)
            for ch, child in sorted(node.items())
            if ch != ""
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends:  # a phrase ends here; longer ones are tried first (greedy), so "no evidence of" beats "no"
            return f"(?:{body})?" if len(branches) > 1 or len(body) > 1 else body + "?"
        return body

    return emit(trie)


_RELATIVES = _terms(
    """mother | mom | father | dad | parent | parents | sister | sisters | brother | brothers | sibling |
    siblings | daughter | daughters | son | sons | aunt | aunts | uncle | uncles | grandmother |
    grandmothers | grandfather | grandfathers | grandparent | grandparents | grandma | grandpa | cousin |
    cousins | niece | nieces | nephew | nephews | wife | husband | spouse | children | twin | relative |
    relatives | family member | family members"""
)
_RELATIVE = r"(?<!\w)" + _trie_regex(_RELATIVES)
_PAST_YEAR = r"(?<!\w)(?:in|during)\s+(?:(?:early|late|mid)[\s-]+)?(?:19|20)\d\d(?!\w)"

_ENTRIES: tuple[_Entry, ...] = (
    # Negation: NegEx / ConText definite negation.
    _Entry(
        NEGATION,
        PRE,
        8,
        _terms(
            """no | not | nor | neither | never | never had | denies | denied | deny | denying | without |
            w/o | negative for | neg for | -ve for | free of | absence of | no evidence of |
            no evidence for | no sign of | no signs of | no symptoms of | no signs or symptoms of |
            no history of | no hx of | no known | not known to have | ruled out | rules out |
            ruled out for | fails to reveal | failed to reveal | did not reveal | not demonstrate |
            unremarkable for"""
        ),
    ),
    # Medicines stopped, held, refused: not taken now (module docstring: negated, not historical).
    _Entry(
        NEGATION,
        PRE,
        5,
        _terms(
            """no longer | no longer takes | no longer taking | not taking | not on | stopped |
            stopped taking | has stopped | discontinued | discontinue | d/c'd | held | holding | hold |
            withheld | withholding | came off | taken off | refuses | refused | declined | declines"""
        ),
        # "Stopped warfarin for GI bleeding": the reason is not negated.
        stops=_terms(
            "for | because | because of | after | since | when | given | secondary to | 2/2 | due to"
        ),
    ),
    _Entry(NEGATION, PRE, 2, ("off", "off of")),  # "off aspirin"; short, "off" is a common word
    # Allergy lines negate the allergy and what directly qualifies it ("NKDA to penicillin"), not the
    # rest of the line.
    _Entry(
        NEGATION,
        PRE,
        3,
        _terms("nkda | nka | nkma | no known drug allergies | no known allergies | no drug allergies"),
        stops=(",",),
    ),
    _Entry(
        NEGATION,
        POST,
        4,
        _terms(
            """is negative | was negative | are negative | were negative | was ruled out | is ruled out |
            ruled out | has been ruled out | have been ruled out | were ruled out | was excluded |
            has been excluded | is absent | was absent | are absent | not seen | not present | not noted |
            not identified | not found | not appreciated | not detected | not demonstrated |
            not visualized | not evident | not observed | not elicited | not given | not started |
            not taken | not prescribed | discontinued | was discontinued | stopped | was stopped | held |
            was held | on hold | withheld | no longer"""
        ),
    ),
    # "Pregnancy test negative", "Chest pain: denied", "Allergies: NKDA", "Smoking: no".
    _Entry(
        NEGATION,
        POST,
        1,
        _terms("negative | neg | -ve | absent | denied | denies | none | free | nkda | nka"),
        (r":\s*(?:no|nil)(?=\s*(?:[.,;)]|$))",),
        anchors=("no", "nil"),
    ),
    # Uncertainty.
    _Entry(
        UNCERTAINTY,
        PRE,
        6,
        _terms(
            """possible | possibly | probable | probably | likely | most likely | suspected | suspect |
            suspicion of | suspicious for | suspicious of | concern for | concerning for | worrisome for |
            suggestive of | suggests | may | might | could | could be | may be | might be | questionable |
            question of | presumed | presumably | perhaps | cannot rule out | can not rule out |
            cannot exclude | can not exclude | could not rule out | not rule out | rule out | r/o |
            rule-out | to rule out | evaluate for | evaluation for | to evaluate for | assess for |
            differential diagnosis | ddx | uncertain | unclear | unlikely | doubt | not certain | not sure |
            equivocal | ?"""
        ),
    ),
    _Entry(
        UNCERTAINTY,
        POST,
        4,
        _terms(
            """is possible | was possible | is suspected | was suspected | is likely | is probable |
            is questionable | unlikely | less likely | is unlikely | cannot be excluded |
            can not be excluded | cannot be ruled out | can not be ruled out | not excluded |
            not ruled out | not been ruled out | not been excluded | is uncertain | is unclear | versus |
            vs | or not | ?"""
        ),
    ),
    # Historical: headers and "history of" run over lists ("PMH: HTN, DM, PUD").
    _Entry(
        HISTORY,
        PRE,
        None,
        _terms(
            """history of | hx of | h/o | past history | medical history | past medical history |
            past surgical history | surgical history | pmh | pmhx | psh | remote history of"""
        ),
    ),
    _Entry(HISTORY, PRE, 8, _terms("status post | s/p | in the past")),
    _Entry(
        HISTORY,
        PRE,
        3,
        _terms(
            """previous | previously | prior | remote | formerly | former | ex | quit | used to | had been |
            was taking | were taking | had been taking | was on | were on | had been on"""
        ),
        (r"(?<![\w-])old(?![\w-])",),
        anchors=("old",),
    ),
    _Entry(HISTORY, PRE, 6, regexes=(_PAST_YEAR,), anchors=("in", "during")),
    _Entry(
        HISTORY,
        POST,
        6,
        _terms(
            """in the past | history | previously | resolved | has resolved | have resolved | now resolved |
            since resolved | remote | as a child | in childhood"""
        ),
        (
            r"(?<!\w)\d+\s*(?:years?|yrs?|months?)\s+ago(?!\w)",
            _PAST_YEAR,
            r"(?<!\w)until\s+(?:recently|yesterday|last\s+\w+|\w+\s+\w+\s+ago|(?:\w+\s+)?(?:19|20)\d\d)(?!\w)",
        ),
        anchors=("ago", "in", "during", "until"),
    ),
    # Hypothetical: conditions, instructions, plans, risks, advice.
    _Entry(
        HYPOTHESIS,
        PRE,
        None,
        _terms(
            """if | as if | in case | in the event of | unless | return if | return for | call for |
            call if | call also for | alert the physician if | seek medical attention if |
            seek medical attention for"""
        ),
    ),
    _Entry(
        HYPOTHESIS,
        PRE,
        8,
        _terms(
            """watch for | monitor for | monitoring for | look out for | discussed | counseled on |
            education on"""
        ),
    ),
    _Entry(
        HYPOTHESIS,
        PRE,
        4,
        _terms(
            """should | should not | would | risk of | risks of | risk for | at risk for | to prevent |
            prevention of | consider | considering | plan to start | plan to | plans to | planning to |
            will start | will begin | to start | to begin | advised to avoid | advised not to |
            instructed to avoid | instructed not to | counseled to avoid | told to avoid | avoid |
            avoiding | should avoid | do not take | do not use | may take | may use | may resume |
            may continue | can take | screening for | screen for | start | begin | initiate | trial of |
            before starting | prior to starting | whether | is it safe | safe to take"""
        ),
    ),
    _Entry(
        HYPOTHESIS,
        POST,
        4,
        _terms(
            """prophylaxis | precautions | was discussed | were discussed | was considered | is planned |
            to be started | will be started | screening"""
        ),
    ),
    # Experiencer: a family-history header runs over its list; a relative's scope ends at a comma
    # ("Lives alone, 2 daughters, drinks socially": the drinking is the patient's).
    _Entry(EXPERIENCER, PRE, 10, _terms("family history | family hx | fh | fhx | family history of")),
    _Entry(
        EXPERIENCER,
        PRE,
        8,
        _terms("maternal | paternal | in the family"),
        (_RELATIVE + r"(?:'s)?(?!\w)",),
        stops=(",",),
        anchors=_RELATIVES,
    ),
    _Entry(
        EXPERIENCER,
        POST,
        6,
        _terms("in family | in the family | runs in the family | family history"),
        (
            r"(?<!\w)in\s+(?:his|her|their|the|a|(?:the\s+)?patient's)\s+(?:(?:maternal|paternal)\s+)?"
            + _RELATIVE
            + r"(?!\w)",
        ),
        anchors=("in",),
    ),
)

# Pseudo-triggers per dimension: they contain a trigger and must not trigger.
_PSEUDO: dict[str, tuple[str, ...]] = {
    NEGATION: _terms(
        # NegEx's pseudo-negations, then phrases that hold "not"/"no"/"off" without denying anything.
        """no increase | no significant increase | no change | no significant change | no interval change |
        no definite change | no suspicious change | not extend | not cause | not drain |
        not significant change | not significantly changed | not only | not necessarily | gram negative |
        rh negative | without difficulty | without incident | no doubt | not certain | not sure |
        not clear | not likely | not rule out | cannot rule out | can not rule out | could not rule out |
        cannot be ruled out | can not be ruled out | not been ruled out | not ruled out | not excluded |
        not been excluded | cannot be excluded | can not be excluded | cannot exclude | on and off |
        off and on | time off | off work | off duty | fell off | cut off | drop off | dropped off |
        hold off | does not deny | did not deny | not deny | cannot deny | can not deny"""
    ),
    UNCERTAINTY: _terms("may be due to | likely due to | likely secondary to | most likely due to"),
    HISTORY: _terms(
        # Report sections and phrases about the history taking, not about a past event; social history
        # is current (substance use); medication and allergy histories list current facts.
        """history of present illness | history of the present illness | history and physical |
        history & physical | history and exam | history and examination | history taking |
        history obtained | history provided | history is provided | history from | history was obtained |
        social history | family history | family hx | clinical history | patient history |
        medication history | drug history | allergy history | as previously | previously noted |
        previously described | previously seen | previously reported | than previously |
        compared to previous | compared with previous | compared to prior | compared with prior |
        previous study | previous exam | previous examination | prior study | prior exam |
        prior examination | prior studies | history of allergy | history of allergies | prior to admission |
        prior to arrival | prior to presentation | prior to surgery | prior to the procedure |
        prior to procedure | year old | years old | month old | months old | week old | day old"""
    )
    # "a 3-day history of", "several week history of": how long the present complaint has lasted.
    + (
        r"(?<!\w)(?:\d+|one|two|three|four|five|six|seven|several|few)[\s-]+(?:day|week|hour)s?[\s-]+history",
    ),
    HYPOTHESIS: _terms(
        """should be noted | would like | risk factors | start of | started | starting | begin of |
        since the start"""
    ),
    EXPERIENCER: (
        r"(?:lives|living|lived|resides|stays)\s+with\s+(?:(?:his|her|their|the|a)\s+)?" + _RELATIVE,
        r"(?:accompanied|brought(?:\s+in)?|driven|visited|seen)\s+by\s+(?:(?:his|her|their|the|a)\s+)?"
        + _RELATIVE,
        r"(?:per|according\s+to|information\s+from|history\s+from|with)\s+(?:his|her|their)\s+" + _RELATIVE,
        _RELATIVE + r"\s+(?:states|stated|reports|reported|says|said|notes|noted|called|is\s+at|at\s+bedside|"
        r"present|provides|provided|relates|gave|gives)",
        r"(?<!\w)(?:mother|father)\s+of",  # "mother of three" is the patient
    ),
}

# Termination terms: NegEx's conjunctions for every dimension, then per dimension. A term that is part of
# a trigger does not cut that trigger's own scope.
_TERMINATION_COMMON = _terms(
    """but | however | although | though | nevertheless | yet | still | except | except for | aside from |
    apart from | other than | which | whose | secondary to | due to | because of | as the cause of |
    as the source of | as the reason for | as the etiology of | cause of | causes of | source of |
    etiology of | reason for | origin of | ; | :"""
) + (r"(?<![\w.])\d{1,2}\)", r"(?<=\s)\d{1,2}\.(?=\s)")  # inline enumerations: "1) ... 2) ..."
_TERMINATION: dict[str, tuple[str, ...]] = {
    NEGATION: _terms(
        """presents | presented | presenting | complains of | complaining of | complained of | c/o |
        reports | reported | endorses | endorsed | admits to | positive | positive for | notable for |
        significant for | remarkable for | who | now | currently | continues | continued | takes | taking |
        is taking | uses | using | started | tolerates | tolerating | drinks | smokes"""
    ),
    UNCERTAINTY: _terms("presents | presented | who | complains of | c/o | reports"),
    HISTORY: _terms(
        """presents | presented | presenting | coming in | comes in | came in | complains of |
        complaining of | c/o | who | now | currently | current | today | recent | recently | admitted |
        here for | here with | this admission | at this time | on exam | on | takes | taking | is taking"""
    ),
    HYPOTHESIS: _terms("otherwise | now | currently | today | is taking | takes | has been taking"),
    EXPERIENCER: _terms("patient | pt | he | she | him | the patient | patient's | who | denies | reports"),
}


def _norm(text: str) -> str:
    return re.sub(r"[\s-]+", " ", text.lower())


def _alternation(phrases=(), regexes=()) -> str:
    """Literal phrases (word-character ends on word boundaries) and regexes as one alternation; in a
    phrase list, entries starting "(" are regexes."""
    literal = [p for p in phrases if not p.startswith("(")]
    regexes = [p for p in phrases if p.startswith("(")] + list(regexes)
    words = [p for p in literal if re.match(r"\w", p)]
    parts = []
    if words:
        # The trailing boundary is tested after the trie, so backtracking can fall back to a shorter
        # phrase ("no" when "no evidence of" is not there).
        parts.append(r"(?<!\w)" + _trie_regex(words) + r"(?!\w)")
    for phrase in literal:
        if not re.match(r"\w", phrase):  # ";", ":", "?": few, no trie
            tail = r"(?!\w)" if re.search(r"\w$", phrase) else ""
            parts.append(r"[\s-]+".join(re.escape(w) for w in phrase.split()) + tail)
    parts += regexes
    return "|".join(f"(?:{p})" for p in parts)


def _compile(phrases=(), regexes=()) -> re.Pattern:
    return re.compile(_alternation(phrases, regexes), re.IGNORECASE)


@dataclass(frozen=True)
class _Scanner:
    """One dimension's pseudo-triggers and triggers in one pattern. The pseudo-triggers come first in the
    alternation, so at any position a pseudo-trigger is consumed whole and the trigger inside it is never
    reported; a literal trigger is looked up by its text (one phrase may belong to a pre and a post
    entry), a regex trigger by its named group."""

    dimension: str
    pattern: re.Pattern
    literal: dict  # normalised phrase -> entries
    regex_entry: dict  # group name -> entries
    stops: re.Pattern  # the dimension's termination terms
    anchor_words: frozenset  # a sentence with none of these words (or characters) has no trigger
    anchor_chars: str

    def may_match(self, words: set[str], sentence: str) -> bool:
        return not self.anchor_words.isdisjoint(words) or any(c in sentence for c in self.anchor_chars)


def _scanner(dimension: str) -> _Scanner:
    entries = [e for e in _ENTRIES if e.dimension == dimension]
    literal: dict[str, list[_Entry]] = {}
    for entry in entries:
        for phrase in entry.phrases:
            literal.setdefault(_norm(phrase), []).append(entry)
    regex_entries: dict[str, list[_Entry]] = {}  # one regex may serve a pre and a post entry
    for entry in entries:
        for rx in entry.regexes:
            regex_entries.setdefault(rx, []).append(entry)
    regex_entry = {f"r{i}": owners for i, owners in enumerate(regex_entries.values())}
    phrases = sorted({p for e in entries for p in e.phrases})
    parts = [f"(?P<pseudo>{_alternation(_PSEUDO[dimension])})", f"(?P<lit>{_alternation(phrases)})"]
    parts += [f"(?P<r{i}>{rx})" for i, rx in enumerate(regex_entries)]
    first_words = [re.match(r"\w*", phrase).group().lower() for phrase in phrases]
    anchors = {w for w in first_words if w} | {_norm(a).split()[0] for e in entries for a in e.anchors}
    chars = "".join(sorted({p[0] for p, w in zip(phrases, first_words, strict=True) if not w}))
    return _Scanner(
        dimension,
        re.compile("|".join(parts), re.IGNORECASE),
        literal,
        regex_entry,
        _compile(_TERMINATION_COMMON + _TERMINATION[dimension]),
        frozenset(anchors),
        chars,
    )


assert all(e.anchors for e in _ENTRIES if e.regexes), "a regex entry needs anchors for the pre-check"
_SCANNERS = tuple(_scanner(d) for d in DIMENSIONS)
_EXTRA_STOPS = {e.stops: _compile(e.stops) for e in _ENTRIES if e.stops}
# A period and a capital inside a sentence: a soft boundary ("Aspirin 81 mg. Warfarin held."). Case
# matters here, so this one is not case-insensitive; titles and initials are excepted.
_SOFT_BOUNDARY = re.compile(r"(?<=\.)\s+(?=[A-Z])")
_TITLE = re.compile(r"(?:(?<!\w)(?:dr|mr|mrs|ms|st|prof)|(?<!\w)[a-z])\.$", re.IGNORECASE)
_WORD = re.compile(r"\w+")
# Terms that end a scope only when something stands between them and the trigger: the header colon,
# "previously on warfarin", "denies taking ibuprofen" (but "No GI bleed, takes ibuprofen").
_ADJACENT_OK = frozenset(
    {":", "on", "takes", "taking", "is taking", "uses", "using", "started", "drinks", "smokes"}
)
_ANNOUNCES_LIST = re.compile(r"(?<!\w)(?:following|follows)(?:\s+\w+){0,3}\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class _Trigger:
    dimension: str
    direction: str
    window: int | None
    start: int
    end: int
    text: str
    stops: tuple[tuple[int, int], ...]  # sorted termination spans that cut this trigger's scope (shared)
    stop_starts: tuple[int, ...]  # their start offsets, for bisection


@dataclass(frozen=True)
class _Analysis:
    triggers: tuple[_Trigger, ...]
    word_starts: tuple[int, ...]  # offsets where words start: words in a gap are counted by bisection


def _soft_boundaries(sentence: str) -> list[tuple[int, int]]:
    return [
        (m.start() - 1, m.start())
        for m in _SOFT_BOUNDARY.finditer(sentence)
        if not _TITLE.search(sentence, max(0, m.start() - 6), m.start())
    ]


@lru_cache(maxsize=4096)
def _analyse(sentence: str) -> _Analysis:
    """Triggers, termination spans and word offsets of one sentence (cached: a sentence has several
    targets). Termination lists are shared between triggers, so the work stays linear in the sentence."""
    word_spans = [m.span() for m in _WORD.finditer(sentence)]
    words = {sentence[s:e].lower() for s, e in word_spans}
    soft = None
    shared: dict = {}

    def stops_for(scanner: _Scanner, extra: tuple[str, ...]) -> tuple:
        nonlocal soft
        key = (scanner.dimension, extra)
        if key not in shared:
            soft = _soft_boundaries(sentence) if soft is None else soft
            spans = [t.span() for t in scanner.stops.finditer(sentence)] + soft
            if extra:
                spans += [t.span() for t in _EXTRA_STOPS[extra].finditer(sentence)]
            spans.sort()
            shared[key] = (tuple(spans), tuple(s for s, _ in spans))
        return shared[key]

    triggers = []
    for scanner in _SCANNERS:
        if not scanner.may_match(words, sentence):
            continue
        for m in scanner.pattern.finditer(sentence):
            kind = m.lastgroup
            if kind == "pseudo" or m.start() == m.end():
                continue
            entries = scanner.literal[_norm(m.group())] if kind == "lit" else scanner.regex_entry[kind]
            for entry in entries:
                stops, starts = stops_for(scanner, entry.stops)
                triggers.append(
                    _Trigger(
                        entry.dimension,
                        entry.direction,
                        entry.window,
                        m.start(),
                        m.end(),
                        m.group().lower(),
                        stops,
                        starts,
                    )
                )
    return _Analysis(tuple(triggers), tuple(s for s, _ in word_spans))


def _blocked(sentence: str, lo: int, hi: int, trigger: _Trigger) -> bool:
    """True when a termination term lies in the gap [lo, hi) between trigger and target."""
    for i in range(bisect_left(trigger.stop_starts, lo), len(trigger.stops)):
        s, e = trigger.stops[i]
        if s >= hi:
            break
        if e > hi or (s < trigger.end and e > trigger.start):
            continue
        term = _norm(sentence[s:e])
        if term in _ADJACENT_OK:
            # The colon of the trigger's own header ("Past medical history: PUD", "Pregnancy test:
            # negative"), "on" right after it ("previously on warfarin").
            if trigger.direction == PRE and not sentence[trigger.end : s].strip():
                continue
            if trigger.direction == POST and not sentence[e : trigger.start].strip():
                continue
        if term == ":" and _ANNOUNCES_LIST.search(sentence, max(0, s - 60), s):
            continue  # "call if any of the following occur: bleeding, ..." the list is in scope
        return True
    return False


def _applies(sentence: str, analysis: _Analysis, trigger: _Trigger, start: int, end: int) -> bool:
    if trigger.start == start and trigger.end == end:
        return True  # the target is the trigger: "NKDA"
    if trigger.start >= start and trigger.end <= end:
        return False  # inside the target: the finding's own wording ("abdomen soft without tenderness")
    if trigger.direction == PRE:
        if trigger.start >= start:
            return False
        lo, hi = min(trigger.end, start), start
    else:
        if trigger.end <= end:
            return False
        lo, hi = end, max(trigger.start, end)
    if trigger.window is not None:
        words = bisect_left(analysis.word_starts, hi) - bisect_left(analysis.word_starts, lo)
        if words > trigger.window:
            return False
    return not _blocked(sentence, lo, hi, trigger)


def assess(sentence: str, start: int, end: int) -> Context:
    """The ConText dimensions of the target phrase sentence[start:end]."""
    if not 0 <= start <= end <= len(sentence):
        raise ValueError(f"target offsets {start}:{end} outside a sentence of {len(sentence)} characters")
    analysis = _analyse(sentence)
    found = dict.fromkeys(DIMENSIONS, False)
    triggers: list[str] = []
    for trigger in analysis.triggers:
        if _applies(sentence, analysis, trigger, start, end):
            found[trigger.dimension] = True
            if trigger.text not in triggers:
                triggers.append(trigger.text)
    return Context(
        negated=found[NEGATION],
        uncertain=found[UNCERTAINTY],
        historical=found[HISTORY],
        hypothetical=found[HYPOTHESIS],
        someone_else=found[EXPERIENCER],
        triggers=tuple(triggers),
    )


# --- Sentences -----------------------------------------------------------------------------------------
# Tokens ending in "." that do not end a sentence: titles, Latin, dosing and units. Compared lower case,
# without the final period.
_ABBREVIATIONS = frozenset(
    """dr mr mrs ms prof st sr jr vs etc e.g i.e eg ie cf approx appt apt dept est no nos fig inc
    a.m p.m b.i.d t.i.d q.i.d q.d q.o.d q.h.s h.s p.o p.r p.r.n prn q.a.m q.p.m a.c p.c
    bid tid qid qd qod qhs po pr sq sc im iv subq
    mg mcg ug g kg lb lbs oz ml l cc mm cm in ft hr hrs min mins sec wk wks mo mos yr yrs
    tab tabs cap caps susp sol inj amp""".split()
)
_BREAK = re.compile(r"[.!?]+(?=\s|$)|\n(?:[ \t]*\n)*")
_BULLET = re.compile(r"[ \t]*(?:[-*\u2022\u25cf\u25aa>]|\d{1,2}[.)]|[a-zA-Z][.)])\s")
_HEADER_ONLY = re.compile(r"^[ \t]*[A-Za-z][A-Za-z /&()-]{0,60}:[ \t]*$")
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")  # b.i.d, q.h.s, e.g, u.s
_LOOK = 200  # characters looked at around a candidate break (keeps splitting linear in the text length)


def _line_is_header(line: str) -> bool:
    return bool(_HEADER_ONLY.match(line))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentence (start, end) offsets in text, whitespace trimmed; text[start:end] is the sentence.

    A sentence ends at ".", "!" or "?" followed by whitespace and a capital, digit, bullet or line break
    (not after an abbreviation such as "Dr." or "b.i.d.", an initial or a list number; "2.5" has no space),
    at a blank line, and at a line break, except inside wrapped prose (a long line continued in lower
    case). A header alone on its line ("Allergies:") stays with the next line, as in "Allergies:
    penicillin", unless a bullet list follows. Semicolons and inline colons do not split: assess() ends
    trigger scopes there.
    """
    cuts = [0]
    n = len(text)
    for m in _BREAK.finditer(text):
        s, e = m.span()
        if text[s] == "\n":
            if m.group().count("\n") > 1 or _newline_breaks(text, s, e):
                cuts.append(e)  # a blank line always ends a sentence
        elif e < n and _period_breaks(text, s, e):
            cuts.append(e)
    cuts.append(n)
    spans = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            spans.append((a, b))
    return spans


def _newline_breaks(text: str, s: int, e: int) -> bool:
    line = text[max(text.rfind("\n", max(0, s - _LOOK), s) + 1, s - _LOOK) : s]
    next_end = text.find("\n", e, e + _LOOK)
    next_line = text[e : next_end if next_end >= 0 else e + _LOOK]
    nxt = next_line.lstrip(" \t")
    if not line.strip() or not nxt:
        return True
    if _line_is_header(line):
        return bool(_BULLET.match(next_line))  # "Allergies:\npenicillin" is one sentence; a list is not
    if _BULLET.match(next_line) or _line_is_header(next_line):
        return True
    stripped = line.rstrip()
    if stripped[-1] in ".!?:;":
        return True
    # Wrapped prose: a long line continued in lower case. Short lines are list items ("ibuprofen 400 mg").
    return not (nxt[0].islower() and len(stripped) >= 40)


def _period_breaks(text: str, s: int, e: int) -> bool:
    following = text[e : e + _LOOK].lstrip(" \t")
    if not following:
        return True
    first = following[0]
    if not (first.isupper() or first.isdigit() or first in "-*\u2022(\"'[\n\r"):
        return False  # "p.o. intake", "e.g. aspirin": lower case goes on
    if text[s] != ".":
        return True
    before = text[max(0, s - _LOOK) : s]
    last = before.split()[-1] if before.split() else ""
    word = last.lower().lstrip("([\"'")
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    if _DOTTED.fullmatch(word):
        return False
    if word.isdigit() and len(word) <= 2:
        # "1. Aspirin": a list number, when it opens a line or follows a colon.
        before = before[: len(before) - len(last)].rstrip(" \t")
        if not before or before.endswith(("\n", ":")):
            return False
    return True
