"""Route of administration of a medication, where it changes the clinical answer.

A topical diclofenac gel is not an oral NSAID for a patient on warfarin (HL7 PDDI CDS guide: "no special
precautions"), and an inhaled corticosteroid is not a systemic one for a bleeding-risk factor. The route
is read from ``dosage.route`` (SNOMED CT route codes, else its text) and, when the order does not say,
from the dose form in the RxNorm product name ("Diclofenac Sodium 10 MG/ML Topical Gel", "Fluticasone
Propionate 0.044 MG/ACTUAT Metered Dose Inhaler"). Unknown stays unknown (None): rules treat it as
systemic, the safe side for an interaction.
"""

from __future__ import annotations

import functools
import re

ROUTES = (
    "oral",
    "topical",
    "transdermal",
    "ophthalmic",
    "otic",
    "nasal",
    "inhaled",
    "rectal",
    "vaginal",
    "parenteral",
)
# Routes whose usual doses act where applied, with little systemic exposure.
LOCAL_ROUTES = frozenset({"topical", "ophthalmic", "otic", "nasal", "inhaled", "vaginal"})

# SNOMED CT route of administration (R4 value set route-codes) -> route group.
SNOMED_ROUTES = {
    "26643006": "oral",
    "37839007": "oral",  # sublingual
    "54471007": "oral",  # buccal
    "6064005": "topical",
    "359540000": "topical",  # cutaneous
    "448598008": "topical",  # cutaneous
    "45890007": "transdermal",
    "54485002": "ophthalmic",
    "10547007": "otic",
    "46713006": "nasal",
    "447694001": "inhaled",  # respiratory tract
    "18679011000001101": "inhaled",  # inhalation (UK extension, sent by some EHRs)
    "420641004": "inhaled",  # inhalation
    "37161004": "rectal",
    "16857009": "vaginal",
    "47625008": "parenteral",  # intravenous
    "78421000": "parenteral",  # intramuscular
    "34206005": "parenteral",  # subcutaneous
    "12130007": "parenteral",  # intra-articular
}

# Words of a route text or an RxNorm product name -> route group. RxNorm names end in a dose form that
# usually names the route ("Oral Tablet", "Topical Gel", "Transdermal System"): the route words are tried
# first, then dose-form words alone ("Metered Dose Inhaler", "Suppository", "Cream").
_ROUTE_WORDS = (
    (r"\btransdermal\b", "transdermal"),
    (r"\bophthalmic\b", "ophthalmic"),
    (r"\botic\b", "otic"),
    (r"\bnasal\b|\bintranasal\b", "nasal"),
    (r"\binhalation\b|\binhaled\b|\brespiratory\b", "inhaled"),
    (r"\brectal\b", "rectal"),
    (r"\bvaginal\b", "vaginal"),
    (r"\btopical\b|\bcutaneous\b", "topical"),
    (r"\binjection\b|\binjectable\b|\bintravenous\b|\bintramuscular\b|\bsubcutaneous\b", "parenteral"),
    (r"\boral\b|\bsublingual\b|\bbuccal\b|\bby mouth\b", "oral"),
)
_DOSE_FORM_WORDS = (
    (r"\bpatch(?:es)?\b", "transdermal"),
    (r"\beye drops?\b", "ophthalmic"),
    (r"\bear drops?\b", "otic"),
    (r"\binhalers?\b|\bnebuli[sz]|\bactuat\b|\bdry powder\b", "inhaled"),
    (r"\bsuppositor|\benema\b", "rectal"),
    (r"\bpessar", "vaginal"),
    (r"\bcreams?\b|\bointments?\b|\bgels?\b|\blotion\b|\bmedicated pad\b|\bfoam\b|\bshampoo\b", "topical"),
    (r"\bprefilled syringe\b|\bcartridge\b|\bauto-injector\b|\bpen injector\b|\biv\b|\bsubq\b", "parenteral"),
    (
        r"\btablets?\b|\bcapsules?\b|\bcaplets?\b|\bsyrup\b|\belixir\b|\bchewable\b|\blozenges?\b|\bpo\b",
        "oral",
    ),
)
_TIERS = tuple(
    tuple((re.compile(pattern, re.IGNORECASE), route) for pattern, route in tier)
    for tier in (_ROUTE_WORDS, _DOSE_FORM_WORDS)
)
_COMPILED = _TIERS[0] + _TIERS[1]


def route_of_text(text: str | None) -> str | None:
    return _route_of_text(text) if isinstance(text, str) and text else None


def route_of_sentence(text: str | None) -> str | None:
    """The route a note's sentence gives, only when it names one route group alone ("diclofenac gel on the
    knee"); "ibuprofen tablets and a diclofenac gel" names two and stays unknown (systemic)."""
    return _route_of_sentence(text) if isinstance(text, str) and text else None


# Both run a dozen regexes over a text that recurs on every call (a product name, a note's sentence): kept.
@functools.lru_cache(maxsize=8192)
def _route_of_text(text: str) -> str | None:
    for tier in _TIERS:
        for pattern, route in tier:
            if pattern.search(text):
                return route
    return None


@functools.lru_cache(maxsize=8192)
def _route_of_sentence(text: str) -> str | None:
    found = {route for pattern, route in _COMPILED if pattern.search(text)}
    return found.pop() if len(found) == 1 else None


def route_of(route_codings, route_texts, product_texts) -> str | None:
    """The route group of one medication: the coded dosage route, its text, else the product's dose form."""
    for system, code in route_codings:
        if system == "http://snomed.info/sct" and code in SNOMED_ROUTES:
            return SNOMED_ROUTES[code]
    for text in list(route_texts) + list(product_texts):
        route = route_of_text(text)
        if route is not None:
            return route
    return None


def is_systemic(route: str | None) -> bool:
    """Unknown counts as systemic: the safe side for an interaction or a contraindication."""
    return route not in LOCAL_ROUTES
