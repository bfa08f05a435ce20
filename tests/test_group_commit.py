"""Group commit: appends of one process share transactions, each caller still waits for its own commit."""

from __future__ import annotations

import json
import threading
import time

import pytest
from test_decision_log import _fake_record

from cds_service.audit import storage
from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.group_commit import GroupCommitter
from cds_service.audit.storage import init_schema, make_engine


def test_concurrent_appends_share_transactions_and_keep_one_chain(tmp_path, monkeypatch):
    engine = make_engine(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    init_schema(engine)
    log = DecisionLog(engine)
    transactions = []
    real = storage.write_transaction

    def counted(e):
        transactions.append(1)
        return real(e)

    monkeypatch.setattr("cds_service.audit.decision_log.write_transaction", counted)
    appended, errors = [], []

    def append_many():
        try:
            for i in range(20):
                appended.append(log.append(_fake_record(i)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append_many) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    seqs = sorted(a.seq for a in appended)
    assert seqs == list(range(1, 321))  # every caller got its own seq back, none repeated
    report = log.verify()
    assert report.ok and report.checked == 320
    # 16 threads queueing while a commit (and its fsync) is in flight: fewer transactions than appends
    assert len(transactions) < 320
    for a in appended[:5]:  # what append returned is what was stored
        assert log.get(a.id)["seq"] == a.seq


def test_an_append_returns_only_after_its_record_is_readable(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    init_schema(engine)
    log = DecisionLog(engine)
    record = _fake_record(0)
    appended = log.append(record)
    fresh = make_engine(f"sqlite:///{tmp_path / 'log.sqlite3'}")  # another connection, as after a crash
    assert DecisionLog(fresh, group_commit=False).get(appended.id)["seq"] == appended.seq == 1


def test_one_failing_item_does_not_fail_the_others_queued_with_it():
    release = threading.Event()
    batches: list[list[str]] = []

    def write(items):
        batches.append(list(items))
        if items[0] == "first":
            release.wait(10)  # hold the writer so the next items queue up together
        if "bad" in items:
            raise ValueError("bad item")
        return [f"ok:{item}" for item in items]

    committer = GroupCommitter(write, "test-writer")
    results: dict[str, object] = {}

    def submit(item):
        try:
            results[item] = committer.submit(item)
        except ValueError as exc:
            results[item] = exc

    first = threading.Thread(target=submit, args=("first",))
    first.start()
    while not batches:
        time.sleep(0.01)
    others = [threading.Thread(target=submit, args=(item,)) for item in ("good-1", "bad", "good-2")]
    for t in others:
        t.start()
    while committer._queue.qsize() < 3:
        time.sleep(0.01)
    release.set()
    for t in [first, *others]:
        t.join(timeout=10)
    assert results["first"] == "ok:first"
    assert results["good-1"] == "ok:good-1" and results["good-2"] == "ok:good-2"
    assert isinstance(results["bad"], ValueError)
    assert sorted(batches[1]) == ["bad", "good-1", "good-2"]  # tried together first, then each alone
    assert ["good-1"] in batches and ["bad"] in batches and ["good-2"] in batches


@pytest.mark.parametrize("group_commit", [True, False])
def test_a_database_error_reaches_the_caller(tmp_path, group_commit):
    engine = make_engine(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    init_schema(engine)
    log = DecisionLog(engine, group_commit=group_commit)
    record = _fake_record(0)
    log.append(record)
    duplicate = _fake_record(1)
    duplicate.data["id"] = record.data["id"]  # the unique id is taken: this append must fail, loudly
    with pytest.raises(Exception, match="UNIQUE"):
        log.append(duplicate)
    assert log.append(_fake_record(2)).seq == 2  # and the log goes on


def test_the_stored_text_is_the_canonical_json_of_the_record_whatever_it_holds(tmp_path):
    """The record is serialised before the lock with stand-ins for seq and prevHash: content that looks
    like them (nested keys of the same name, the stand-ins' prefix) must come back unchanged."""
    engine = make_engine(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    init_schema(engine)
    log = DecisionLog(engine)
    first = log.append(_fake_record(0))
    record = _fake_record(1)
    record.data["data"] = [{"seq": "cds-seq-", "prevHash": "cds-prev-", "note": '"cds-seq-" 0'}]
    expected = json.loads(json.dumps(record.data))
    appended = log.append(record)
    stored = log.get(appended.id)
    assert stored["data"] == expected["data"]
    assert stored["seq"] == record.data["seq"] == 2
    assert stored["prevHash"] == record.data["prevHash"] == first.hash
    report = log.verify()  # recomputes canonical JSON and the hash of every stored record
    assert report.ok and report.checked == 2
