"""The outbox publisher: delivers the notices the step engine recorded (``store/outbox.py``).

One per process (``Backend.start_worker``), leader-free: every replica's publisher claims rows
with a lease, so a notice left by a replica that died is delivered by another. It calls the same
``handlers.services.announce`` the engine called before, so who is told, the card moves and the
``notification.sent`` audit rows are what they were; only *when* changed: after the commit, at
Slack's pace, while the engine goes on applying. A delivery can wait on Slack's per-channel pace
(``bot.notify.ChannelPacer`` honours each 429's Retry-After) for longer than a lease, so a
heartbeat renews the lease while it runs. ``drain`` delivers everything now (``kfbot shell``,
tests: ``Engine.run_until_idle`` calls it, so the shell prints in the order it always did).
"""

from __future__ import annotations

import logging
import threading

from handlers import services
from handlers.ports import Clock, Notifier
from provisioning.settings import EngineSettings
from provisioning.store import Database, Notice, Outbox

log = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self, db: Database, notifier: Notifier, clock: Clock, settings: EngineSettings, *, worker_id: str
    ) -> None:
        self.db, self.notifier, self.clock, self.settings = db, notifier, clock, settings
        self.worker_id = worker_id
        self.outbox = Outbox(db)

    def publish_one(self) -> bool:
        """Claim the next deliverable notice and announce it. False when there was none."""
        now = self.clock.now()
        notice = self.outbox.claim(self.worker_id, now, now + self.settings.lease)
        if notice is None:
            return False
        stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(notice, stop), name=f"outbox-{notice.id}", daemon=True
        )
        beat.start()
        try:
            services.announce(
                self.db.core_uow,
                self.notifier,
                self.clock,
                notice.request,
                notice.events,
                notice.card,
                notice.threads,
            )
        except Exception:
            # The row stays claimed: it is tried again when the lease runs out (by us or another
            # replica), and the request's later notices wait behind it, so none overtakes it.
            log.exception(
                "could not announce %s; it is retried after its lease",
                notice.request.id,
                extra={"correlation_id": notice.request.correlation_id, "request_id": notice.request.id},
            )
            return True
        finally:
            stop.set()
            beat.join()
        self.outbox.finish(notice.id, self.worker_id)
        return True

    def _heartbeat(self, notice: Notice, stop: threading.Event) -> None:
        interval = max(self.settings.lease.total_seconds() / 3, 0.05)
        while not stop.wait(interval):
            try:
                if not self.outbox.renew(notice.id, self.worker_id, self.clock.now() + self.settings.lease):
                    return
            except Exception:
                log.warning("could not renew the lease on outbox row %s", notice.id, exc_info=True)

    def drain(self, limit: int = 100_000) -> int:
        """Deliver notices until none is deliverable now; how many were."""
        done = 0
        while done < limit and self.publish_one():
            done += 1
        return done

    def run_forever(self, stop: threading.Event) -> None:
        """Deliver until ``stop``; when idle, wait for the engine's signal (``Database.outbox_signal``)
        or the poll interval (rows another replica left behind)."""
        while not stop.is_set():
            try:
                busy = self.publish_one()
            except Exception:
                log.exception("outbox publisher failed; retrying")
                busy = False
            if not busy and not stop.is_set():
                self.db.outbox_signal.wait(self.settings.poll_interval)
