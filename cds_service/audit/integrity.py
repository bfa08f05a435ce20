"""`audit verify`: every table the audit API, the PDCA report and the cards read, checked in one pass.

- `decisions`: the hash chain, each record's own seq/prevHash, and the indexed columns re-derived from
  the record.
- `cards` and `rule_outcomes`: re-derived per decision from the chained record
  (DecisionRecord.card_rows()/outcome_rows()) and compared with the table: a row edited, missing, or
  not derivable from any chained record (inserted) fails.
- `rule_sets`: each set a decision names (its `rule_set` column, itself re-derived from the record) must
  have members that hash to its id: a member edited, added or deleted fails.
- `feedback` and `llm_outputs`: their own chains (audit/chain.py); feedback's link to the card's rule
  is also compared with the card index.
- Each chain's head row, and optionally heads kept outside the database (``--expect-head``).

Every problem names its table and row; the walk goes on past a problem so one run lists them all (up to
`max_problems`), in constant memory (batches by seq).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Connection, Engine

from ..canonical import standard_json
from .chain import (
    DECISIONS,
    FEEDBACK_CHAIN,
    GENESIS,
    LLM_CHAIN,
    Chain,
    ChainedTable,
    ExpectedHead,
    chain_hash,
    latest_anchor,
    stored_head,
)
from .record import DecisionRecord, rule_set_id
from .storage import cards, decisions, rule_outcomes, rule_set_members


@dataclass
class Problem:
    table: str
    row: str  # how to find the row: "seq 3", "card_uuid …", "id 17"
    problem: str
    seq: int | None = None  # for chained tables

    def __str__(self) -> str:
        return f"{self.table} {self.row}: {self.problem}"


@dataclass
class VerifyReport:
    ok: bool
    checked: int  # decisions walked
    first_bad_seq: int | None = None  # first problem in the decisions chain
    first_bad_id: str | None = None
    problem: str | None = None  # the first problem, in words
    head_hash: str | None = None  # the decisions chain's head
    problems: list[Problem] = field(default_factory=list)
    truncated: bool = False  # more problems than listed
    counts: dict[str, int] = field(default_factory=dict)  # rows verified per table
    heads: dict[str, str] = field(default_factory=dict)  # chain -> "chain:seq:hash", to keep elsewhere


class _Findings:
    def __init__(self, limit: int):
        self.items: list[Problem] = []
        self.limit = limit
        self.truncated = False

    def add(self, table: str, row: str, problem: str, seq: int | None = None) -> None:
        if len(self.items) < self.limit:
            self.items.append(Problem(table, row, problem, seq))
        else:
            self.truncated = True


def verify(
    engine: Engine,
    batch: int = 1000,
    max_problems: int = 100,
    expect: list[ExpectedHead] | None = None,
) -> VerifyReport:
    found = _Findings(max_problems)
    counts: dict[str, int] = {}
    heads: dict[str, str] = {}
    # One snapshot for the whole walk, so appends committed meanwhile (the service keeps running) cannot
    # make a head disagree with the rows read: SQLite's read transaction is one; PostgreSQL needs
    # REPEATABLE READ (its default READ COMMITTED gives each statement a new snapshot).
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        checked, last = _verify_decisions(conn, batch, found, counts)
        if last:
            heads[DECISIONS.name] = f"{DECISIONS.name}:{last[0]}:{last[1]}"
        for spec in (FEEDBACK_CHAIN, LLM_CHAIN):
            tail = _verify_chained_table(conn, spec, batch, found, counts)
            if tail:
                heads[spec.chain.name] = f"{spec.chain.name}:{tail[0]}:{tail[1]}"
        for expected in expect or []:
            _check_expected(conn, expected, found)
    problems = found.items
    first = next((p for p in problems if p.table == decisions.name), None)
    return VerifyReport(
        ok=not problems,
        checked=checked,
        first_bad_seq=first.seq if first else None,
        first_bad_id=_decision_id_of(first),
        problem=str(problems[0]) if problems else None,
        head_hash=last[1] if last and not problems else None,
        problems=problems,
        truncated=found.truncated,
        counts=counts,
        heads=heads,
    )


def _decision_id_of(problem: Problem | None) -> str | None:
    if problem is None or "(decision " not in problem.row:
        return None
    return problem.row.split("(decision ", 1)[1].rstrip(")")


# -- decisions and the indexes derived from them -----------------------------------------------------


def _verify_decisions(conn: Connection, batch: int, found: _Findings, counts: dict) -> tuple[int, tuple]:
    anchor = latest_anchor(conn, DECISIONS)
    head = stored_head(conn, DECISIONS)
    start = anchor.after_seq if anchor else 0
    expected_prev, expected_seq = (anchor.hash if anchor else GENESIS), start + 1
    last: tuple = (anchor.after_seq, anchor.hash) if anchor else ()
    for row in conn.execute(select(decisions.c.seq, decisions.c.id).where(decisions.c.seq <= start)):
        found.add(
            "decisions",
            f"seq {row.seq} (decision {row.id})",
            f"before the chain start (seq {start + 1}): inserted, or left by a broken purge",
            row.seq,
        )
    checked = n_cards = n_outcomes = 0
    after = start
    named_sets: set[str] = set()
    while True:
        rows = (
            conn.execute(
                select(decisions).where(decisions.c.seq > after).order_by(decisions.c.seq).limit(batch)
            )
            .mappings()
            .all()
        )
        if not rows:
            break
        ids = [r["id"] for r in rows]
        card_rows = _group(conn, cards, ids)
        outcome_rows = _group(conn, rule_outcomes, ids)
        named_sets.update(r["rule_set"] for r in rows if r["rule_set"] is not None)
        for row in rows:
            name = f"seq {row['seq']} (decision {row['id']})"
            problem, record = _check_decision(row, expected_prev, expected_seq)
            if problem:
                found.add("decisions", name, problem, row["seq"])
            checked += 1
            expected_prev, expected_seq = row["hash"], row["seq"] + 1
            last = (row["seq"], row["hash"])
            actual_cards = card_rows.get(row["id"], [])
            actual_outcomes = outcome_rows.get(row["id"], [])
            n_cards += len(actual_cards)
            n_outcomes += len(actual_outcomes)
            if record is None:
                continue
            try:
                derived = DecisionRecord(record)
                want_cards, want_outcomes = derived.card_rows(), derived.outcome_rows()
            except (KeyError, TypeError, AttributeError) as exc:
                found.add(
                    "decisions", name, f"record cannot be read ({type(exc).__name__}: {exc})", row["seq"]
                )
                continue
            _compare_cards(row["id"], want_cards, actual_cards, found)
            _compare_outcomes(row["id"], want_outcomes, actual_outcomes, found)
        after = rows[-1]["seq"]
    _check_head(DECISIONS.name, "decisions", head, last, checked, found)
    _orphans(conn, cards, cards.c.card_uuid, start, found)
    _orphans(conn, rule_outcomes, rule_outcomes.c.id, start, found)
    _check_rule_sets(conn, named_sets, found)
    counts.update(decisions=checked, cards=n_cards, rule_outcomes=n_outcomes, rule_sets=len(named_sets))
    return checked, last


def _check_rule_sets(conn: Connection, named: set[str], found: _Findings) -> None:
    """Every rule set the decisions name: its members still hash to its id (one set per rulebook version)."""
    for set_id, rules in rule_set_members(conn, named).items():
        if not rules:
            found.add("rule_sets", f"set_id {set_id}", "missing: decisions name this set of rules")
        elif rule_set_id(rules) != set_id:
            found.add("rule_sets", f"set_id {set_id}", "edited: its members do not hash to its id")


def _check_decision(row, expected_prev: str, expected_seq: int) -> tuple[str | None, dict | None]:
    """The first thing wrong with one decisions row, and its record if it could be read."""
    try:
        record = json.loads(row["record"])
    except ValueError:
        return "record is not valid JSON", None
    if not isinstance(record, dict):
        return "record is not a JSON object", None
    if row["seq"] != expected_seq:
        return f"expected seq {expected_seq}, found {row['seq']} (a record is missing or reordered)", record
    if row["prev_hash"] != expected_prev:
        return "prev_hash does not match the previous record's hash (deleted, inserted or reordered)", record
    if record.get("seq") != row["seq"] or record.get("prevHash") != row["prev_hash"]:
        return "record's own seq/prevHash differ from the row", record
    body = standard_json(record)  # re-derived by the standard library, not the writer's fast path
    if chain_hash(row["prev_hash"], body) != row["hash"] or body != row["record"]:
        return "hash does not match the record content (edited)", record
    try:
        derived = DecisionRecord(record).columns()
    except (KeyError, TypeError, AttributeError) as exc:
        return f"record cannot be read ({type(exc).__name__}: {exc})", None
    for key, value in derived.items():
        if row[key] != value:
            return f"column {key} differs from the record (edited)", record
    return None, record


def _group(conn: Connection, table, ids: list[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in conn.execute(select(table).where(table.c.decision_id.in_(ids))).mappings():
        out.setdefault(row["decision_id"], []).append(dict(row))
    return out


def _differences(want: dict, have: dict, source: str = "the record") -> str:
    return ", ".join(
        f"{k} is {have.get(k)!r}, {source} says {v!r}" for k, v in want.items() if have.get(k) != v
    )


def _compare_cards(decision_id: str, want: list[dict], have: list[dict], found: _Findings) -> None:
    by_uuid = {r["card_uuid"]: r for r in have}
    for expected in want:
        actual = by_uuid.pop(expected["card_uuid"], None)
        name = f"card_uuid {expected['card_uuid']} (decision {decision_id})"
        if actual is None:
            found.add("cards", name, "missing: the decision's record has this card (deleted or moved)")
        elif diff := _differences(expected, actual):
            found.add("cards", name, f"edited: {diff}")
    for uuid in by_uuid:
        found.add(
            "cards",
            f"card_uuid {uuid} (decision {decision_id})",
            "not in the decision's record (inserted or moved)",
        )


def _compare_outcomes(decision_id: str, want: list[dict], have: list[dict], found: _Findings) -> None:
    fields = sorted({k for w in want for k in w})

    def key(row: dict) -> tuple:
        return tuple(row.get(f) for f in fields)

    unmatched = Counter(key(w) for w in want)  # a rule may in principle appear twice: a multiset
    extra = []
    for actual in have:
        if unmatched[key(actual)] > 0:
            unmatched[key(actual)] -= 1
        else:
            extra.append(actual)
    missing = []
    for expected in want:
        if unmatched[key(expected)] > 0:
            unmatched[key(expected)] -= 1
            missing.append(expected)
    for actual in extra:
        twin = next((m for m in missing if m.get("rule_id") == actual.get("rule_id")), None)
        name = f"id {actual['id']} (decision {decision_id}, rule {actual.get('rule_id')})"
        if twin is not None:
            missing.remove(twin)
            found.add("rule_outcomes", name, f"edited: {_differences(twin, actual)}")
        else:
            found.add("rule_outcomes", name, "not in the decision's record (inserted or moved)")
    for expected in missing:
        found.add(
            "rule_outcomes",
            f"(decision {decision_id}, rule {expected.get('rule_id')})",
            "missing: the decision's record evaluated this rule (deleted or moved)",
        )


def _orphans(conn: Connection, table, label, start: int, found: _Findings) -> None:
    """Index rows whose decision is not in the verified chain."""
    walked = select(decisions.c.id).where(decisions.c.seq > start)
    rows = conn.execute(
        select(label, table.c.decision_id).where(table.c.decision_id.not_in(walked)).limit(found.limit + 1)
    )
    for value, decision_id in rows:
        found.add(
            table.name,
            f"{label.name} {value} (decision {decision_id})",
            "belongs to no decision in the chain (inserted, or its decision was deleted)",
        )


# -- the chains of rows not derivable from decisions -------------------------------------------------


def _verify_chained_table(
    conn: Connection, spec: ChainedTable, batch: int, found: _Findings, counts: dict
) -> tuple:
    table, chain = spec.table, spec.chain
    anchor = latest_anchor(conn, chain)
    head = stored_head(conn, chain)
    start = anchor.after_seq if anchor else 0
    expected_prev, expected_seq = (anchor.hash if anchor else GENESIS), start + 1
    last: tuple = (anchor.after_seq, anchor.hash) if anchor else ()
    label = table.c[spec.label]
    for row in conn.execute(
        select(table.c.seq, label)
        .where(or_(table.c.seq.is_(None), table.c.seq <= start))
        .limit(found.limit + 1)
    ):
        found.add(
            table.name,
            f"{spec.label} {row[1]}",
            "outside the chain (inserted)"
            if row.seq is None
            else f"before the chain start (seq {start + 1})",
            row.seq,
        )
    checked = 0
    after = start
    while True:
        rows = (
            conn.execute(select(table).where(table.c.seq > after).order_by(table.c.seq).limit(batch))
            .mappings()
            .all()
        )
        if not rows:
            break
        links = _card_links(conn, rows) if chain is FEEDBACK_CHAIN.chain else {}
        for row in rows:
            name = f"seq {row['seq']} ({spec.label} {row[spec.label]})"
            if row["seq"] != expected_seq:
                found.add(
                    table.name,
                    name,
                    f"expected seq {expected_seq} (a row is missing or reordered)",
                    row["seq"],
                )
            elif row["prev_hash"] != expected_prev:
                found.add(
                    table.name,
                    name,
                    "prev_hash does not match the previous row's hash (deleted, inserted or reordered)",
                    row["seq"],
                )
            elif spec.digest(row) != row["hash"]:
                found.add(table.name, name, "hash does not match the row's content (edited)", row["seq"])
            card = links.get(row.get("card_uuid"))
            if card is not None and (
                diff := _differences(
                    {k: card[k] for k in ("decision_id", "rule_id", "rule_version", "service_id")},
                    dict(row),
                    "the card index",
                )
            ):
                found.add(table.name, name, f"does not match the card it is about: {diff}", row["seq"])
            checked += 1
            expected_prev, expected_seq = row["hash"], row["seq"] + 1
            last = (row["seq"], row["hash"])
        after = rows[-1]["seq"]
    _check_head(chain.name, table.name, head, last, checked, found)
    counts[table.name] = checked
    return last


def _check_head(chain_name: str, table: str, head, last: tuple, checked: int, found: _Findings) -> None:
    """The stored head must be the last row walked: else the tail was cut, or rows appended outside."""
    last_seq, last_hash = last if last else (None, None)
    if head is None:
        if checked:
            found.add("chain_head", chain_name, f"the {chain_name} chain's head row is missing")
        return
    if head.seq == last_seq and head.hash == last_hash:
        return
    if head.seq == last_seq:
        found.add(
            table,
            f"seq {last_seq}",
            "the chain head's hash differs from this last row's: the row or the head was altered",
            last_seq,
        )
    elif last_seq is not None and head.seq < last_seq:
        found.add(
            table,
            f"seq {head.seq + 1}",
            f"the chain head says seq {head.seq} but rows go on to seq {last_seq}: rows after the head were "
            "inserted outside the service, or the head was altered",
            head.seq + 1,
        )
    else:
        found.add(
            table,
            f"seq {(last_seq or 0) + 1}",
            f"the chain head says seq {head.seq} ({head.hash[:12]}…) but the last row is seq {last_seq}: "
            "rows after it were deleted, or the head was altered",
            (last_seq or 0) + 1,
        )


def _card_links(conn: Connection, rows) -> dict[str, dict]:
    uuids = [r["card_uuid"] for r in rows]
    return {
        r["card_uuid"]: dict(r)
        for r in conn.execute(select(cards).where(cards.c.card_uuid.in_(uuids))).mappings()
    }


def _check_expected(conn: Connection, expected: ExpectedHead, found: _Findings) -> None:
    chains: dict[str, tuple[Chain, object]] = {
        DECISIONS.name: (DECISIONS, decisions),
        FEEDBACK_CHAIN.chain.name: (FEEDBACK_CHAIN.chain, FEEDBACK_CHAIN.table),
        LLM_CHAIN.chain.name: (LLM_CHAIN.chain, LLM_CHAIN.table),
    }
    chain, table = chains[expected.chain]
    name = f"seq {expected.seq} (expected head)"
    row = conn.execute(select(table.c.hash).where(table.c.seq == expected.seq)).first()
    if row is not None:
        if row.hash != expected.hash:
            found.add(
                table.name,
                name,
                f"hash is {row.hash}, the kept head says {expected.hash}: the chain was rewritten",
            )
        return
    anchor = latest_anchor(conn, chain)
    if anchor is not None and anchor.after_seq == expected.seq and anchor.hash == expected.hash:
        return
    count = conn.execute(
        select(func.count()).select_from(table).where(table.c.seq > expected.seq)
    ).scalar_one()
    found.add(
        table.name,
        name,
        "no such row: "
        + ("purged or deleted" if count or anchor is not None else "the chain is shorter than the kept head")
        + "; the kept head cannot be confirmed",
    )
