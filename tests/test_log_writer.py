"""The decision-log writer process of a `serve` instance: every worker's records, one chain, no loss."""

from __future__ import annotations

import logging
import threading

import pytest
from test_decision_log import _fake_record

from cds_service.audit import log_writer
from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.log_writer import WriterAddress, WriterClient
from cds_service.audit.storage import init_schema, make_engine


@pytest.fixture
def writer(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    init_schema(make_engine(url))
    proc = log_writer.start(url)
    assert proc is not None, "the writer did not start"
    yield url, proc
    log_writer.stop()  # its stop pipe reaches end of file: it leaves
    proc.wait(timeout=10)


@pytest.mark.slow
def test_appends_from_many_threads_go_through_the_writer_onto_one_chain(writer):
    url, proc = writer
    client = log_writer.worker_client()
    assert client is not None
    log = DecisionLog(make_engine(url), writer=client)
    records, errors = [], []

    def append_many():
        try:
            for i in range(15):
                record = _fake_record(i)
                appended = log.append(record)
                records.append((record, appended))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(a.seq for _, a in records) == list(range(1, 121))
    for record, appended in records[:10]:  # the caller's record carries what was stored
        assert record.data["seq"] == appended.seq
        assert log.get(appended.id)["prevHash"] == record.data["prevHash"]
    report = DecisionLog(make_engine(url)).verify()
    assert report.ok and report.checked == 120
    assert proc.poll() is None  # still serving while this process (its "master") lives


@pytest.mark.slow
def test_the_writer_leaves_when_its_master_is_gone(writer):
    _, proc = writer
    log_writer.stop()
    assert proc.wait(timeout=10) == 0


def test_a_worker_writes_its_record_itself_when_the_writer_cannot_be_reached(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    engine = make_engine(url)
    init_schema(engine)
    nobody = WriterClient(WriterAddress("\0cds-decision-log-nobody-listens", b"k" * 32))
    log = DecisionLog(engine, writer=nobody)
    with caplog.at_level(logging.WARNING):
        first, second = log.append(_fake_record(0)), log.append(_fake_record(1))
    assert (first.seq, second.seq) == (1, 2) and log.verify().ok
    assert caplog.text.count("decision-log writer unavailable") == 1  # said once, not per call


@pytest.mark.slow
def test_a_client_without_the_key_is_refused(writer):
    url, _ = writer
    stranger = WriterClient(WriterAddress(log_writer._inherited.address, b"x" * 32))
    with pytest.raises(log_writer.WriterUnavailable):
        stranger.append(object())
    assert DecisionLog(make_engine(url)).count() == 0


def test_a_lost_answer_is_an_error_not_a_second_write(tmp_path):
    """The writer took the record and its answer never came: it may be written, so the worker must not
    write it again (the call fails instead of the chain getting the same decision twice)."""
    from multiprocessing.connection import Listener

    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    engine = make_engine(url)
    init_schema(engine)
    where = WriterAddress(f"\0cds-decision-log-test-{id(tmp_path)}", b"k" * 32)
    listener = Listener(where.address, family="AF_UNIX", authkey=where.authkey)

    def take_and_hang_up():
        with listener.accept() as conn:
            conn.recv()  # the record arrives; no answer is sent

    server = threading.Thread(target=take_and_hang_up)
    server.start()
    log = DecisionLog(engine, writer=WriterClient(where))
    with pytest.raises(log_writer.WriterFailed, match="answer was lost"):
        log.append(_fake_record(0))
    server.join(timeout=10)
    listener.close()
    assert log.count() == 0  # not written a second time here
