"""The HMAC-chained audit log on both backends: append, verify (edits, insertions, deletions,
truncation), the secret guard and the CSV export's formula escaping."""

from __future__ import annotations

import csv
import io
import itertools
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from handlers.model import Event, EventType
from provisioning import audit, store
from provisioning.store import Database
from tests.fakes.db_fixtures import AUDIT_KEY

pytest_plugins = ["tests.fakes.db_fixtures"]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
events_t = store.audit_events


def event(n: int, **data: object) -> Event:
    return Event(EventType.STEP_SUCCEEDED, f"R{n % 3}", T0 + timedelta(seconds=n, microseconds=n), "UADMIN",
                 {"n": n, "step": f"Profile/team-{n}", "nested": {"list": [1, 2.5, None, "x"]}, **data})


def append(db: Database, *evs: Event) -> None:
    with db.uow() as uow:
        uow.audit.append(list(evs))
        uow.commit()


def fill(db: Database, rows: int = 10) -> None:
    append(db, *(event(n) for n in range(1, rows // 2 + 1)))
    append(db, *(event(n) for n in range(rows // 2 + 1, rows + 1)))  # chains across appends


def execute(db: Database, statement: sa.Executable) -> None:
    with db.engine.begin() as conn:
        conn.execute(statement)


def test_appended_events_verify(database: Database) -> None:
    empty = audit.verify(database, AUDIT_KEY)
    assert (empty.ok, empty.rows, empty.head) == (True, 0, audit.GENESIS_MAC)
    fill(database)
    result = audit.verify(database, AUDIT_KEY)
    assert result.ok and result.rows == 10 and result.first_bad_seq is None and result.problem == ""
    with database.reader() as conn:
        rows = conn.execute(sa.select(events_t).order_by(events_t.c.seq)).all()
        head = conn.execute(sa.select(store.audit_head.c.seq, store.audit_head.c.mac)).one()
    assert [r.seq for r in rows] == list(range(1, 11))
    assert rows[0].prev_mac == audit.GENESIS_MAC
    assert all(b.prev_mac == a.mac for a, b in itertools.pairwise(rows))
    assert tuple(head) == (10, rows[-1].mac) and result.head == rows[-1].mac
    assert rows[3].at == T0 + timedelta(seconds=4, microseconds=4)
    # A verify with the wrong key fails at the first row.
    assert audit.verify(database, b"another key").first_bad_seq == 1


def test_verify_accepts_a_connection(database: Database) -> None:
    fill(database, 3)
    with database.reader() as conn:
        assert audit.verify(conn, AUDIT_KEY).ok


def test_an_edited_row_is_named(database: Database) -> None:
    fill(database)
    execute(database, sa.update(events_t).where(events_t.c.seq == 4).values(data={"n": 4, "step": "forged"}))
    result = audit.verify(database, AUDIT_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "edited" in result.problem


@pytest.mark.parametrize("column", ["actor", "type", "at", "request_id"])
def test_an_edit_to_any_column_is_named(database: Database, column: str) -> None:
    fill(database, 6)
    value = T0 if column == "at" else "someone-else"
    execute(database, sa.update(events_t).where(events_t.c.seq == 5).values({column: value}))
    assert audit.verify(database, AUDIT_KEY).first_bad_seq == 5


def test_a_deleted_middle_row_is_named(database: Database) -> None:
    fill(database)
    execute(database, sa.delete(events_t).where(events_t.c.seq == 6))
    result = audit.verify(database, AUDIT_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "missing" in result.problem


def test_a_deleted_and_renumbered_row_is_named(database: Database) -> None:
    fill(database)
    execute(database, sa.delete(events_t).where(events_t.c.seq == 6))
    for seq in range(7, 11):  # close the gap, one row at a time (seq is the primary key)
        execute(database, sa.update(events_t).where(events_t.c.seq == seq).values(seq=seq - 1))
    execute(database, sa.update(store.audit_head).values(seq=9))
    result = audit.verify(database, AUDIT_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_a_forged_row_inserted_in_the_middle_is_named(database: Database) -> None:
    fill(database)
    for seq in range(10, 5, -1):  # make room after row 5
        execute(database, sa.update(events_t).where(events_t.c.seq == seq).values(seq=seq + 1))
    with database.reader() as conn:
        row5 = conn.execute(sa.select(events_t).where(events_t.c.seq == 5)).one()
    forged_mac = audit.compute_mac(b"guessed key", seq=6, at=T0, request_id="R1", type_="request.approved",
                                   actor="UMALLORY", data={}, prev_mac=row5.mac)
    execute(database, sa.insert(events_t).values(seq=6, at=T0, request_id="R1", type="request.approved",
                                                 actor="UMALLORY", data={}, prev_mac=row5.mac,
                                                 mac=forged_mac))
    result = audit.verify(database, AUDIT_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_a_forged_row_appended_behind_the_log_is_named(database: Database) -> None:
    fill(database)
    with database.reader() as conn:
        last = conn.execute(sa.select(events_t).where(events_t.c.seq == 10)).one()
    execute(database, sa.insert(events_t).values(seq=11, at=T0, request_id=None, type="request.approved",
                                                 actor="UMALLORY", data={}, prev_mac=last.mac, mac="0" * 64))
    result = audit.verify(database, AUDIT_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 11)


def test_a_forged_row_before_the_first_is_named(database: Database) -> None:
    fill(database, 3)
    execute(database, sa.insert(events_t).values(seq=0, at=T0, request_id=None, type="request.approved",
                                                 actor="UMALLORY", data={}, prev_mac="0" * 64, mac="1" * 64))
    result = audit.verify(database, AUDIT_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 0)


def test_a_truncated_tail_is_caught_only_with_the_expected_head(database: Database) -> None:
    fill(database)
    logged_head = audit.verify(database, AUDIT_KEY).head  # what `kfbot audit verify` printed earlier
    # A careless truncation leaves the head row behind: caught without help.
    execute(database, sa.delete(events_t).where(events_t.c.seq > 8))
    careless = audit.verify(database, AUDIT_KEY)
    assert (careless.ok, careless.first_bad_seq) == (False, 9)
    # A careful one rewinds the head to the last remaining row: a valid, shorter chain...
    with database.reader() as conn:
        row8 = conn.execute(sa.select(events_t).where(events_t.c.seq == 8)).one()
    execute(database, sa.update(store.audit_head).values(seq=8, mac=row8.mac))
    assert audit.verify(database, AUDIT_KEY).ok
    # ...that the head logged earlier exposes.
    result = audit.verify(database, AUDIT_KEY, expect_head=logged_head)
    assert (result.ok, result.first_bad_seq) == (False, 9)
    assert "truncated" in result.problem


def test_an_older_expected_head_is_fine_once_the_log_has_grown(database: Database) -> None:
    fill(database, 4)
    earlier = audit.verify(database, AUDIT_KEY).head
    append(database, event(5), event(6))
    assert audit.verify(database, AUDIT_KEY, expect_head=earlier).ok
    assert audit.verify(database, AUDIT_KEY, expect_head="f" * 64).ok is False


def test_the_chain_survives_a_rolled_back_append(database: Database) -> None:
    append(database, event(1))
    with database.uow() as uow:
        uow.audit.append([event(2)])  # no commit: rolled back, head row included
    append(database, event(3))
    result = audit.verify(database, AUDIT_KEY)
    assert result.ok and result.rows == 2


@pytest.mark.parametrize("key", ["password", "new_password", "Token", "access_token", "client_secret",
                                 "password_hash", "kubeconfig"])
def test_secret_looking_keys_are_refused(database: Database, key: str) -> None:
    for data in ({key: "x"}, {"outer": {key: "x"}}, {"items": [{key: "x"}]}):
        with database.uow() as uow, pytest.raises(ValueError, match="secret"):
            uow.audit.append([Event(EventType.SECRET_REVEALED, None, T0, "UALICE", data)])
    assert audit.verify(database, AUDIT_KEY).rows == 0


def test_fingerprints_and_token_ids_are_allowed(database: Database) -> None:
    append(database, Event(EventType.SECRET_REVEALED, "R1", T0, "UALICE",
                           {"kind": "token", "fingerprint": "sha256:ab12", "token_id": "R1"}))
    assert audit.verify(database, AUDIT_KEY).rows == 1


def test_naive_event_times_are_refused(database: Database) -> None:
    with database.uow() as uow, pytest.raises(ValueError, match="naive"):
        uow.audit.append([Event(EventType.CREATED, "R1", datetime(2026, 1, 1), None, {})])


@pytest.mark.postgres
def test_concurrent_appends_never_fork_the_chain_on_postgres(postgres_url: str) -> None:
    db = Database(postgres_url, audit_key=AUDIT_KEY)
    db.migrate()
    try:
        start = threading.Barrier(4, timeout=60)  # bounds a hang: threads start late under load

        def writer(n: int) -> None:
            start.wait()
            for k in range(5):
                append(db, event(n * 100 + k), event(n * 100 + k + 50))

        threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads)
        result = audit.verify(db, AUDIT_KEY)
        assert result.ok and result.rows == 40
    finally:
        db.dispose()


# -- export ---------------------------------------------------------------------------------------


def test_export_jsonl_round_trips(database: Database) -> None:
    fill(database, 4)
    lines = list(audit.export(database, "jsonl"))
    assert len(lines) == 4 and all(line.endswith("\n") for line in lines)
    first = json.loads(lines[0])
    assert first["seq"] == 1 and first["type"] == "step.succeeded" and first["data"]["n"] == 1
    assert datetime.fromisoformat(first["at"]) == T0 + timedelta(seconds=1, microseconds=1)
    since = list(audit.export(database, "jsonl", since=T0 + timedelta(seconds=3)))
    assert [json.loads(line)["seq"] for line in since] == [3, 4]


def test_export_csv_defuses_formulas(database: Database) -> None:
    dangerous = ["=HYPERLINK(\"http://evil\")", "+1+1", "-2", "@SUM(A1)", "\tcmd", "\rcmd"]
    append(database, *(Event(EventType.REJECTED, f"R{i}", T0, value, {"reason": value})
                       for i, value in enumerate(dangerous)))
    append(database, Event(EventType.REJECTED, "R9", T0, "UALICE",
                           {"reason": "plain, with \"quotes\"\nand a newline"}))
    text = "".join(audit.export(database, "csv"))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["seq", "at", "request_id", "type", "actor", "data", "prev_mac", "mac"]
    actors = [row[4] for row in rows[1:]]
    assert actors[:-1] == ["'" + value for value in dangerous]
    assert actors[-1] == "UALICE"
    assert json.loads(rows[-1][5]) == {"reason": "plain, with \"quotes\"\nand a newline"}
    assert rows[1][5].startswith("{")  # JSON data cells start with a brace, never a formula character


def test_export_refuses_an_unknown_format(database: Database) -> None:
    with pytest.raises(ValueError, match="format"):
        audit.export(database, "xlsx")


@pytest.mark.postgres
def test_verify_while_others_append_never_raises_a_false_alarm(postgres_url: str) -> None:
    db = Database(postgres_url, audit_key=AUDIT_KEY)
    db.migrate()
    fill(db, 3)
    stop = threading.Event()

    def keep_appending() -> None:
        for n in itertools.count(100):
            if stop.is_set():
                return
            append(db, event(n))

    writer = threading.Thread(target=keep_appending, daemon=True)
    writer.start()
    try:
        results = [audit.verify(db, AUDIT_KEY) for _ in range(30)]
    finally:
        stop.set()
        writer.join(timeout=10)
        db.dispose()
    assert all(r.ok for r in results), [r.problem for r in results if not r.ok]
    assert results[-1].rows > 3, "the writer really appended during the verifications"
