"""Least-connections accepting across gunicorn's workers (used by `CdsThreadWorker`).

Every gthread worker takes new connections from the one listening socket, and a kept-alive connection
stays with the worker that took it. Which worker wins each accept is a race, so N clients that connect
at once can split 11 / 5 between two workers: measured with 16 load-benchmark clients, one worker ran
at 86 % of a core and the other at 52 % while requests queued in the first. Load balancers and EHR
interface engines hold connections open the same way.

So each worker publishes how many connections it holds in a table shared by the workers (anonymous
shared memory made by the master before it forks), and takes new ones only while it holds no more
than the least loaded live worker: a new connection goes to a worker with the fewest. The table is
advisory: a stale count costs one uneven accept, and a worker that stopped taking connections
re-checks within `RECHECK_S`, so a connection never waits long in the backlog.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os

SLOTS = 64  # workers per master that take part (more are served; they always accept): read on every loop turn
RECHECK_S = 0.05  # how soon a worker holding back re-reads the table when nothing else wakes it


class ConnectionTable:
    """(pid, connections) per worker slot, in memory shared by a master's forked workers."""

    def __init__(self, slots: int = SLOTS):
        self._cells = multiprocessing.RawArray(ctypes.c_long, 2 * slots)  # lock-free reads: advisory
        self._claim = multiprocessing.Lock()  # only claiming a slot is locked
        self.slots = slots

    def claim(self, pid: int) -> int | None:
        """A slot for this worker: a free one, or one a dead worker left behind (a SIGKILL skips
        `release`). None when all are taken by live workers."""
        with self._claim:
            owners = [self._cells[2 * slot] for slot in range(self.slots)]
            if pid in owners:
                return owners.index(pid)
            for slot, owner in enumerate(owners):
                if owner == 0 or not _alive(owner):
                    self._cells[2 * slot], self._cells[2 * slot + 1] = pid, 0
                    return slot
        return None

    def release(self, slot: int) -> None:
        self._cells[2 * slot + 1] = 0
        self._cells[2 * slot] = 0

    def publish(self, slot: int, connections: int) -> None:
        self._cells[2 * slot + 1] = connections

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The fewest connections any other live worker holds; None when this worker is alone."""
        fewest = None
        for other in range(self.slots):
            owner = self._cells[2 * other]
            if other == slot or owner == 0:
                continue
            held = self._cells[2 * other + 1]
            if (fewest is None or held < fewest) and _alive(owner):
                fewest = held
        return fewest

    def may_accept(self, slot: int, connections: int) -> bool:
        """Whether the worker in `slot`, holding `connections`, should take the next new one."""
        self.publish(slot, connections)
        fewest = self.fewest_elsewhere(slot)
        return fewest is None or connections <= fewest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reused the pid: not one of ours
        return False
    return True
