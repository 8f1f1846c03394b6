"""Signatures of accepted Slack requests (table ``slack_signatures``): the replay guard of HTTP mode.

Why: Slack's signature stays valid for its 5-minute window, and the inbox row that makes a
redelivery a no-op is deleted once the work is done; a captured request replayed after that would
be new work (a second reply, a second ``/kf retry``). The edge records each accepted request's
signature here *before* handing it on (``first``): the primary key makes the second copy lose,
on whichever replica it arrives. A row is kept until ``expires_at`` (the request's timestamp plus
the window plus clock skew between replicas); by then the signature check itself refuses the
request. Expired rows go a bounded batch at a time, in the insert's transaction, so no timer is
needed and an insert never waits on a large delete.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from provisioning.store.database import Database
from provisioning.store.schema import slack_signatures

PRUNE_BATCH = 100
"""Expired rows deleted per insert: more than arrive per insert on average, so the table stays
near one window's traffic."""


class SeenSignatures:
    """Each call is one short transaction of its own."""

    def __init__(self, db: Database, prune_batch: int = PRUNE_BATCH) -> None:
        self._db, self._prune_batch = db, prune_batch

    def first(self, signature: str, expires_at: datetime, *, now: datetime) -> bool:
        """Record ``signature`` until ``expires_at``; False when it is recorded already (a replay)."""
        expired = (
            sa.select(slack_signatures.c.signature)
            .where(slack_signatures.c.expires_at < now)
            .limit(self._prune_batch)
            .scalar_subquery()
        )
        # One transaction for both: a request pays for one round of BEGIN/COMMIT, not two. A replay
        # rolls its prune back with it, which only leaves that batch to the next insert.
        try:
            with self._db.edge_writer() as conn:
                conn.execute(sa.delete(slack_signatures).where(slack_signatures.c.signature.in_(expired)))
                conn.execute(sa.insert(slack_signatures).values(signature=signature, expires_at=expires_at))
        except IntegrityError:
            return False
        return True
