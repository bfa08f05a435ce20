"""PDCA review: what each rule version did (Do) and what clinicians made of it (Check), so the CDS
committee can tune, shadow or retire it (Act).

Per rule and version: calls evaluated, fired, cards shown, shadow firings, cards accepted and
overridden, override reasons, acceptance rate; and a list of rules to review. Reads the decision log's
rule sets, its rule-outcome index and the feedback table; pure rendering to Markdown or HTML (with a
PNG chart).

Feedback is counted per card, by the card's latest outcome (outcomeTimestamp, then arrival order): a
client may report a card accepted and later overridden (the CDS Hooks Sandbox allows both), and such a
card is counted once and listed as a conflict. An override reason sent as a bare code (the Sandbox sends
only `reason.code`) is shown with the display the card offered, read from the card as the decision log
kept it; the feedback row itself keeps what the client sent.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import Connection, Engine, Row

from .storage import decisions, feedback, rule_outcomes, rule_set_members

# Review thresholds (documented in the report itself).
OVERRIDE_REVIEW_RATE = 0.80
OVERRIDE_REVIEW_MIN_CARDS = 20
SHADOW_FIRE_REVIEW_RATE = 0.20
SHADOW_REVIEW_MIN_CALLS = 20
SKIP_REVIEW_RATE = 0.50

DECISIONS_PER_QUERY = 500  # decision records read at once to find the cards code-only reasons came from


@dataclass(frozen=True)
class FeedbackConflict:
    """A card reported both accepted and overridden; it is counted by the last of `outcomes`."""

    card_uuid: str
    outcomes: tuple[tuple[str, str], ...]  # (outcome, outcomeTimestamp as received), in time order


@dataclass
class RuleStats:
    rule_id: str
    version: str
    status: str  # status at evaluation time
    title: str = ""
    evaluated: int = 0
    fired: int = 0
    shown: int = 0
    shadow_fired: int = 0
    skipped: int = 0
    errors: int = 0
    accepted: int = 0
    overridden: int = 0
    override_reasons: Counter = field(default_factory=Counter)
    conflicts: list[FeedbackConflict] = field(default_factory=list)

    @property
    def with_feedback(self) -> int:
        return self.accepted + self.overridden

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.with_feedback if self.with_feedback else None

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.with_feedback if self.with_feedback else None


@dataclass(frozen=True)
class ReviewItem:
    rule_id: str
    version: str
    reason: str
    action: str


def collect(engine: Engine, since: str | None = None, rulebook=None) -> list[RuleStats]:
    ro = rule_outcomes
    where = [ro.c.recorded_at >= since] if since else []
    # rule_outcomes holds every outcome but not-fired (migration 0003): evaluations are counted from the
    # rule set each decision names, the rest from the outcomes.
    stmt = (
        select(
            ro.c.rule_id,
            ro.c.rule_version,
            ro.c.rule_status,
            func.sum(case((and_(ro.c.outcome == "fired", ro.c.rule_status == "active"), 1), else_=0)),
            func.sum(ro.c.cards_shown),
            func.sum(case((and_(ro.c.outcome == "fired", ro.c.rule_status == "shadow"), 1), else_=0)),
            func.sum(case((ro.c.outcome.in_(("skipped", "unevaluable")), 1), else_=0)),
            func.sum(case((ro.c.outcome == "error", 1), else_=0)),
        )
        .where(*where)
        .group_by(ro.c.rule_id, ro.c.rule_version, ro.c.rule_status)
    )
    # One row per rule version and status: a shadow trial and the live period are read apart.
    stats: dict[tuple[str, str, str], RuleStats] = {}
    fb_where = [feedback.c.received_at >= since] if since else []
    with engine.connect() as conn:
        for key, evaluated in _evaluations(conn, since).items():
            stats[key] = RuleStats(*key, evaluated=evaluated)
        for rule_id, version, status, fired, shown, shadow, skipped, errors in conn.execute(stmt):
            item = stats.setdefault((rule_id, version, status), RuleStats(rule_id, version, status))
            item.fired, item.shown, item.shadow_fired = fired or 0, shown or 0, shadow or 0
            item.skipped, item.errors = skipped or 0, errors or 0
        by_card: dict[str, list[Row]] = {}
        for row in conn.execute(
            select(
                feedback.c.id,
                feedback.c.card_uuid,
                feedback.c.decision_id,
                feedback.c.rule_id,
                feedback.c.rule_version,
                feedback.c.outcome,
                feedback.c.override_system,
                feedback.c.override_code,
                feedback.c.override_display,
                feedback.c.outcome_timestamp,
            )
            .where(feedback.c.rule_id.is_not(None), *fb_where)
            .order_by(feedback.c.id)
        ):
            by_card.setdefault(row.card_uuid, []).append(row)
        latest = {}
        for card_uuid, entries in by_card.items():
            # Time order by instant, not by text (offsets differ); the feedback id is the arrival order.
            entries.sort(key=lambda r: (datetime.fromisoformat(r.outcome_timestamp), r.id))
            latest[card_uuid] = entries[-1]
        code_only = {
            r.card_uuid: r.decision_id
            for r in latest.values()
            if r.outcome == "overridden" and r.override_code and not r.override_display
        }
        offered = _offered_reasons(conn, code_only)
        for card_uuid, last in latest.items():
            key = (last.rule_id, last.rule_version, "active")
            item = stats.setdefault(key, RuleStats(last.rule_id, last.rule_version, "active"))
            if last.outcome == "accepted":
                item.accepted += 1
            else:
                item.overridden += 1
                label = _reason_label(last, offered)
                if label:
                    item.override_reasons[label] += 1
            entries = by_card[card_uuid]
            if len({e.outcome for e in entries}) > 1:
                item.conflicts.append(
                    FeedbackConflict(card_uuid, tuple((e.outcome, e.outcome_timestamp) for e in entries))
                )
    if rulebook is not None:
        titles = {r.id: r.title for r in rulebook.rules}
        for rule in rulebook.rules:
            if not any(k[0] == rule.id and k[1] == rule.version for k in stats):
                stats[(rule.id, rule.version, rule.status)] = RuleStats(rule.id, rule.version, rule.status)
        for item in stats.values():
            item.title = titles.get(item.rule_id, "")
    return sorted(stats.values(), key=lambda s: (s.rule_id, s.version, s.status))


def _evaluations(conn: Connection, since: str | None) -> Counter:
    """(rule id, version, status) -> calls that evaluated it: decisions counted per rule set, each set's
    members read once."""
    where = [decisions.c.rule_set.is_not(None)] + ([decisions.c.recorded_at >= since] if since else [])
    counted = select(decisions.c.rule_set, func.count()).where(*where).group_by(decisions.c.rule_set)
    per_set = {set_id: n for set_id, n in conn.execute(counted)}
    out: Counter = Counter()
    for set_id, members in rule_set_members(conn, per_set).items():
        for key in members:
            out[key] += per_set[set_id]
    return out


def _offered_reasons(conn: Connection, decision_of: dict[str, str]) -> dict[str, list[dict]]:
    """card uuid -> the overrideReasons that card offered, read from its decision record (the only place
    the card as sent is kept). A card whose record was purged (retention) is absent."""
    out: dict[str, list[dict]] = {}
    ids = sorted(set(decision_of.values()))
    for start in range(0, len(ids), DECISIONS_PER_QUERY):
        chunk = ids[start : start + DECISIONS_PER_QUERY]
        for (body,) in conn.execute(select(decisions.c.record).where(decisions.c.id.in_(chunk))):
            for card in json.loads(body).get("response", {}).get("cards") or []:
                if card.get("uuid") in decision_of:
                    out[card["uuid"]] = card.get("overrideReasons") or []
    return out


def _reason_label(row: Row, offered: dict[str, list[dict]]) -> str | None:
    """How an override reason is shown: the display the client sent, else the display the card offered
    for that code, else the code with why no display could be given."""
    if row.override_display:
        return row.override_display
    if not row.override_code:
        return None  # a comment only
    if row.card_uuid not in offered:
        return f"{row.override_code} (display unknown: the card is no longer in the decision log)"
    for reason in offered[row.card_uuid]:
        if reason.get("code") == row.override_code and (
            not row.override_system or reason.get("system") == row.override_system
        ):
            return reason.get("display") or row.override_code
    return f"{row.override_code} (not among the reasons the card offered)"


def review(stats: list[RuleStats]) -> list[ReviewItem]:
    out = []
    for s in stats:
        if s.with_feedback >= OVERRIDE_REVIEW_MIN_CARDS and (s.override_rate or 0) > OVERRIDE_REVIEW_RATE:
            top = ", ".join(f"{r} ({n})" for r, n in s.override_reasons.most_common(2)) or "no reason given"
            out.append(
                ReviewItem(
                    s.rule_id,
                    s.version,
                    f"overridden {s.overridden} of {s.with_feedback} cards ({s.override_rate:.0%}); "
                    f"top reasons: {top}",
                    "tune the condition or text, shadow it, or retire it",
                )
            )
        if (
            s.status == "shadow"
            and s.evaluated >= SHADOW_REVIEW_MIN_CALLS
            and (s.shadow_fired / s.evaluated) > SHADOW_FIRE_REVIEW_RATE
        ):
            out.append(
                ReviewItem(
                    s.rule_id,
                    s.version,
                    f"in shadow it would fire on {s.shadow_fired} of {s.evaluated} calls "
                    f"({s.shadow_fired / s.evaluated:.0%})",
                    "too noisy to activate as is: narrow it before go-live",
                )
            )
        if s.errors:
            out.append(ReviewItem(s.rule_id, s.version, f"{s.errors} evaluation errors", "fix the rule file"))
        if s.evaluated and s.skipped / s.evaluated > SKIP_REVIEW_RATE:
            out.append(
                ReviewItem(
                    s.rule_id,
                    s.version,
                    f"not evaluated on all data in {s.skipped} of {s.evaluated} calls (missing, unreadable)",
                    "check the service's prefetch and the EHR's data feed",
                )
            )
    return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


COLUMNS = (
    "Rule",
    "Version",
    "Status",
    "Evaluated",
    "Fired",
    "Cards shown",
    "Shadow fired",
    "Accepted",
    "Overridden",
    "Acceptance",
    "Top override reasons",
)


def _row(s: RuleStats) -> tuple:
    reasons = "; ".join(f"{r} ({n})" for r, n in s.override_reasons.most_common(3))
    return (
        s.rule_id,
        s.version,
        s.status,
        s.evaluated,
        s.fired,
        s.shown,
        s.shadow_fired,
        s.accepted,
        s.overridden,
        _pct(s.acceptance_rate),
        reasons,
    )


def _thresholds_text() -> str:
    return (
        f"Review when: overridden on more than {OVERRIDE_REVIEW_RATE:.0%} of at least "
        f"{OVERRIDE_REVIEW_MIN_CARDS} cards with feedback; a shadow rule would fire on more than "
        f"{SHADOW_FIRE_REVIEW_RATE:.0%} of at least {SHADOW_REVIEW_MIN_CALLS} calls; any evaluation error; "
        f"not evaluated (missing data) on more than {SKIP_REVIEW_RATE:.0%} of calls."
    )


CONFLICTS_TEXT = (
    "Cards reported both accepted and overridden. Each is counted once above, by its latest outcome "
    "(outcomeTimestamp, then arrival order); the outcomes are listed in that order."
)


def _conflicts(stats: list[RuleStats]) -> list[tuple[RuleStats, FeedbackConflict, str]]:
    return [
        (s, c, " → ".join(f"{outcome} ({at})" for outcome, at in c.outcomes))
        for s in stats
        for c in s.conflicts
    ]


def render_markdown(stats: list[RuleStats], items: list[ReviewItem], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in stats:
        lines.append("| " + " | ".join(str(v).replace("|", "/") for v in _row(s)) + " |")
    lines += ["", "## Rules to review", "", _thresholds_text(), ""]
    lines += [f"- **{i.rule_id}@{i.version}**: {i.reason} → {i.action}" for i in items] or ["- none"]
    lines += ["", "## Conflicting feedback", "", CONFLICTS_TEXT, ""]
    lines += [
        f"- **{s.rule_id}@{s.version}** card `{c.card_uuid}`: {order}" for s, c, order in _conflicts(stats)
    ] or ["- none"]
    return "\n".join(lines) + "\n"


def chart_png(stats: list[RuleStats]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in stats if s.shown or s.shadow_fired or s.with_feedback]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(shown) + 2), 4.5), dpi=100)
    labels = [f"{s.rule_id}\n{s.version}" for s in shown]
    x = range(len(shown))
    width = 0.2
    ax.bar(
        [i - 1.5 * width for i in x], [s.shown for s in shown], width, label="cards shown", color="#4c72b0"
    )
    ax.bar(
        [i - 0.5 * width for i in x], [s.accepted for s in shown], width, label="accepted", color="#55a868"
    )
    ax.bar(
        [i + 0.5 * width for i in x],
        [s.overridden for s in shown],
        width,
        label="overridden",
        color="#c44e52",
    )
    ax.bar(
        [i + 1.5 * width for i in x],
        [s.shadow_fired for s in shown],
        width,
        label="shadow fired",
        color="#8c8c8c",
    )
    ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("count")
    ax.set_title("Cards and clinician feedback per rule version")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def render_html(stats: list[RuleStats], items: list[ReviewItem], title: str) -> str:
    png = base64.b64encode(chart_png(stats)).decode()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in _row(s)) + "</tr>" for s in stats
    )
    review_items = (
        "".join(
            f"<li><b>{html.escape(i.rule_id)}@{html.escape(i.version)}</b>: {html.escape(i.reason)} "
            f"&rarr; {html.escape(i.action)}</li>"
            for i in items
        )
        or "<li>none</li>"
    )
    conflicts = (
        "".join(
            f"<li><b>{html.escape(s.rule_id)}@{html.escape(s.version)}</b> card "
            f"<code>{html.escape(c.card_uuid)}</code>: {html.escape(order)}</li>"
            for s, c, order in _conflicts(stats)
        )
        or "<li>none</li>"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<img alt='cards and feedback per rule' src='data:image/png;base64,{png}'>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<h2>Rules to review</h2><p>{html.escape(_thresholds_text())}</p><ul>{review_items}</ul>"
        f"<h2>Conflicting feedback</h2><p>{html.escape(CONFLICTS_TEXT)}</p><ul>{conflicts}</ul>"
        "</body></html>"
    )
