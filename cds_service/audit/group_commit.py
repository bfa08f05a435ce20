"""Group commit: the decision-log appends of one process share transactions.

Request threads hand their record to one writer thread and wait for it. The writer takes every record
queued while its previous transaction was committing and writes them all in one transaction: one lock
acquisition and one fsync per batch instead of one per call. No delay is added to gather a batch: under
light load a batch is one record, under load it is what queued up meanwhile. A call is answered only after
the transaction holding its record has committed, so every acknowledged decision is as durable as before
(tests/test_durability.py kills the server with SIGKILL under load).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH = 128  # bounds one transaction's size and how long the lock is held


class GroupCommitter(Generic[Item, Result]):
    """`submit(item)` returns `write([... item ...])`'s result for that item, written by one thread per
    process together with whatever else was submitted meanwhile."""

    def __init__(
        self, write: Callable[[Sequence[Item]], list[Result]], name: str, max_batch: int = MAX_BATCH
    ):
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.SimpleQueue | None = None

    def submit(self, item: Item) -> Result:
        future: Future = Future()
        self._ensure_writer().put((item, future))
        return future.result()

    def _ensure_writer(self) -> queue.SimpleQueue:
        # Started on first use and again in a forked child: a thread does not survive fork (gunicorn workers).
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    threading.Thread(
                        target=self._run, args=(self._queue,), name=self._name, daemon=True
                    ).start()
                    self._pid = os.getpid()
        return self._queue

    def _run(self, pending: queue.SimpleQueue) -> None:
        while True:
            batch = [pending.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(pending.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[tuple[Item, Future]]) -> None:
        try:
            results = self._write([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            # One bad item must not fail the calls queued with it: write each on its own.
            log.warning("%s: a batch of %d failed; writing each on its own", self._name, len(batch))
            for entry in batch:
                self._commit([entry])
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
