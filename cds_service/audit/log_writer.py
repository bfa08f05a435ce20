"""One decision-log writer process per `serve` instance: the workers' appends share its transactions.

Why: with a writer thread in every gunicorn worker, the workers took turns on the database's write
lock, and each held it far longer than the write needs, its writer thread waiting for the GIL among
the worker's busy request threads (lock held 9 ms at p50 for ~2 records under 16 clients, against
2-3 ms alone). A process that does nothing else holds the lock only for the write, and batches the
records of every worker in one transaction (audit/group_commit.py).

`serve` starts it before forking the workers (`start`); workers send each prepared record over a
Unix socket (abstract namespace, HMAC-authenticated by `multiprocessing.connection` with a key only
the master and its workers hold) and are answered once it is committed, so every acknowledged
decision is durable as before. If the writer cannot be reached, a worker writes the record itself
(the same chain, under the same lock): a lost writer slows the service down, it never loses a record.
The writer ignores SIGTERM and SIGINT and leaves when the master and every worker have gone (a pipe
they all hold reaches end of file), so the calls a graceful shutdown lets finish are still written.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener

log = logging.getLogger(__name__)


class WriterUnavailable(Exception):
    """The writer process cannot be reached: the caller writes the record itself."""


class WriterFailed(Exception):
    """The writer reached the database and the write failed (the caller must not write it again)."""


@dataclass(frozen=True)
class WriterAddress:
    address: str  # abstract Unix socket name ("\0..."): no path length limit, nothing left on disk
    authkey: bytes


_inherited: WriterAddress | None = None  # set in the master before the workers fork
_stop_write: int | None = None  # the master's end of the pipe whose end of file stops the writer


def start(url: str, timeout_s: float = 60.0) -> subprocess.Popen | None:
    """Start the writer for the database at `url`; the workers forked after this call use it.
    Returns None (workers write themselves) when it does not come up."""
    global _inherited, _stop_write
    where = WriterAddress(f"\0cds-decision-log-{secrets.token_hex(8)}", secrets.token_bytes(32))
    stop_read, stop_write = os.pipe()  # the master and the workers keep stop_write open while they live
    # The key and the URL (it may hold a database password) go in its environment, never on the command line.
    env = {**os.environ, "CDS_LOG_WRITER_KEY": where.authkey.hex(), "CDS_LOG_WRITER_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cds_service.audit.log_writer", where.address[1:], str(stop_read)],
        pass_fds=(stop_read,),
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    os.close(stop_read)
    ready = _read_line(proc, timeout_s)
    if ready != "ready":
        log.warning("decision-log writer did not start (%s): each worker writes its own records", ready)
        proc.kill()
        os.close(stop_write)
        return None
    os.set_inheritable(stop_write, False)  # forked workers inherit it anyway; exec'd programs do not
    _inherited, _stop_write = where, stop_write
    return proc


def stop() -> None:
    """Let the writer leave once no forked worker holds the pipe either (tests; the master just exits)."""
    global _inherited, _stop_write
    if _stop_write is not None:
        os.close(_stop_write)
    _inherited = _stop_write = None


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline().strip()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0] if result else "no answer"


class WriterClient:
    """A worker's side: one connection per thread, so concurrent calls reach the writer together."""

    def __init__(self, where: WriterAddress):
        self.where = where
        self._local = threading.local()

    def append(self, prepared):
        """(Appended, prev_hash) once committed. WriterUnavailable: the record never reached the writer
        (the caller may write it); WriterFailed: the database refused it, or the answer was lost after
        the record was sent (it may be written: writing it again would only be refused as a duplicate)."""
        conn = self._connection()
        try:
            conn.send(prepared)
        except (OSError, EOFError) as exc:
            self._local.conn = None
            raise WriterUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            status, *value = conn.recv()
        except (OSError, EOFError) as exc:
            self._local.conn = None
            raise WriterFailed(f"the writer's answer was lost ({type(exc).__name__})") from exc
        if status != "ok":
            raise WriterFailed(value[0])
        return value[0], value[1]

    def _connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = Client(self.where.address, family="AF_UNIX", authkey=self.where.authkey)
            except (OSError, EOFError, AuthenticationError) as exc:
                raise WriterUnavailable(f"{type(exc).__name__}: {exc}") from exc
            self._local.conn = conn
        return conn


def worker_client() -> WriterClient | None:
    """The writer this process's master started, if any (None in tests, the CLI and single processes)."""
    return WriterClient(_inherited) if _inherited is not None else None


# -- the writer process ----------------------------------------------------------------------------


def _serve_connection(conn: Connection, decision_log) -> None:
    with conn:
        while True:
            try:
                prepared = conn.recv()
            except (EOFError, OSError):
                return
            try:
                appended = decision_log.append_prepared(prepared)
                reply = ("ok", appended, prepared.record.data["prevHash"])
            except Exception as exc:  # the database refused it: the worker answers the error
                log.exception("decision-log write failed")
                reply = ("error", f"{type(exc).__name__}: {exc}")
            try:
                conn.send(reply)
            except OSError:
                return


def main(argv: list[str]) -> None:
    name, stop_fd = argv[0], int(argv[1])
    url, authkey = os.environ.pop("CDS_LOG_WRITER_URL"), bytes.fromhex(os.environ.pop("CDS_LOG_WRITER_KEY"))
    # A signal to the whole process group (Ctrl-C, `kill -TERM -pgid`) must not stop the writer before
    # the workers have answered their last calls: it leaves when they all have (see `_leave_with_master`).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..settings import Settings
    from ..telemetry.logs import configure
    from .decision_log import DecisionLog
    from .storage import make_engine

    settings = Settings.load()
    configure(settings.log_format, settings.log_level)
    decision_log = DecisionLog(make_engine(url))
    listener = Listener("\0" + name, family="AF_UNIX", authkey=authkey)

    def _leave_with_master() -> None:
        while os.read(stop_fd, 4096):  # EOF once the master and every worker have exited
            pass
        os._exit(0)  # every acknowledged record is committed: answers go out only after the commit

    threading.Thread(target=_leave_with_master, daemon=True).start()
    print("ready", flush=True)
    while True:
        try:
            conn = listener.accept()
        except Exception:  # a failed handshake (wrong key) or a dropped connection: keep serving
            continue
        threading.Thread(target=_serve_connection, args=(conn, decision_log), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
