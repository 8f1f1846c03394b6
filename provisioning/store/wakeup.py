"""Waking the step engine when work becomes claimable, instead of waiting for its next poll.

* **In-process** (SQLite, and the replica that made the decision on PostgreSQL): a unit of work
  whose transaction made a request claimable (approved, auto-approved, retried; or released a
  request another one of its subject queues behind) calls ``WorkSignal.notify`` *after* its
  commit, so a worker woken by it sees the row.
* **Across processes** (PostgreSQL): the same transaction runs ``pg_notify('kfbot_work',
  current_schema())``. PostgreSQL delivers a notification only when its transaction commits, and
  never for one rolled back, so a listener is never woken for work it cannot see yet.
  ``PgWakeups`` holds one dedicated connection per process that ``LISTEN``s and turns each
  notification for its own schema (two deployments, or two test runs, may share a database) into
  ``WorkSignal.notify``.
* **Polling stays** as the fallback: a worker with nothing to do waits for a signal *or* the poll
  interval, whichever comes first. A notification is a hint, never the only copy of anything (the
  request row is), so a listener that lost its connection, a notification lost with it, or a
  deferred step whose retry time came all end in the next poll; on reconnecting the listener
  wakes every idle worker, for whatever was committed while it was not listening.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

WORK_CHANNEL = "kfbot_work"
"""The PostgreSQL notification channel; the payload is the schema the work was committed in."""


class WorkSignal:
    """Wake-up tokens idle workers wait on: ``notify`` wakes one waiting worker.

    One notification is one piece of work that may have become claimable, so it wakes one worker,
    not all of them (the others would only make empty claims: measured with bench.run
    --profile, those were most of the engine's CPU). A token nobody waits for yet is kept, so a
    worker between an empty claim and its wait comes straight back; tokens are capped at the
    number of waiting workers (at least one), since a busy worker looks again by itself before it
    waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tokens = 0
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Workers idle in ``wait`` right now (tests wait for the engine to be idle)."""
        with self._cond:
            return self._waiting

    def notify(self) -> None:
        with self._cond:
            self._tokens = min(self._tokens + 1, max(self._waiting, 1))
            self._cond.notify()

    def notify_all(self) -> None:
        """Wake every waiting worker (to see that it is asked to stop)."""
        with self._cond:
            self._tokens = max(self._tokens, self._waiting, 1)
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait for a token or ``timeout`` seconds; True if woken by a notification."""
        with self._cond:
            self._waiting += 1
            try:
                woken = self._cond.wait_for(lambda: self._tokens > 0, timeout)
                if woken:
                    self._tokens -= 1
                return woken
            finally:
                self._waiting -= 1


class PgWakeups:
    """``LISTEN kfbot_work`` on a dedicated autocommit connection, reconnecting on loss.

    ``connect`` opens a new psycopg connection with the deployment's options (its ``search_path``
    names the schema). ``listening`` is set while the connection is up (tests and readiness)."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[tuple[object, ...]]],
        signal: WorkSignal,
        *,
        check_every: float = 30.0,
        max_backoff: float = 30.0,
    ) -> None:
        self._connect, self._signal = connect, signal
        self._check_every, self._max_backoff = check_every, max_backoff
        self.listening = threading.Event()
        self.connections = 0
        """How many times a listening connection was opened (tests watch it reconnect)."""
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def run(self, stop: threading.Event) -> None:
        import psycopg  # noqa: PLC0415 - only a PostgreSQL deployment needs it

        backoff = 0.5
        while not stop.is_set():
            try:
                self._listen(stop)
            except psycopg.Error as exc:
                self.listening.clear()
                if stop.is_set():
                    return
                log.warning(
                    "work notifications lost their connection (%s); polling until it is back in %.1fs",
                    type(exc).__name__,
                    backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
            else:
                backoff = 0.5

    def _listen(self, stop: threading.Event) -> None:
        with self._connect() as conn:
            self._conn = conn
            try:
                conn.execute(f"LISTEN {WORK_CHANNEL}")
                row = conn.execute("SELECT current_schema()").fetchone()
                schema = None if row is None else row[0]
                self.connections += 1
                self.listening.set()
                # Whatever was committed while nobody listened here: every idle worker looks.
                self._signal.notify_all()
                checked = time.monotonic()
                while not stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        if note.payload == schema:
                            self._signal.notify()
                    if time.monotonic() - checked >= self._check_every:
                        # A half-open TCP connection delivers nothing and raises nothing: a round
                        # trip now and then finds it, and the except above reconnects.
                        conn.execute("SELECT 1")
                        checked = time.monotonic()
            finally:
                self.listening.clear()
                self._conn = None

    def backend_pid(self) -> int | None:
        """The listening connection's server process id (tests terminate it to prove the fallback)."""
        conn = self._conn
        return None if conn is None else conn.info.backend_pid
