"""SQLite history (the specification's table, WAL, idempotent rows) and Redis session state (keys, TTL)."""

from __future__ import annotations

import sqlite3

import redis

from actors.history import HistoryStore
from actors.sessions import SessionStore

SPEC_TABLE = """CREATE TABLE messages (
    message_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    sender TEXT NOT NULL, -- 'customer' | 'agent'
    content TEXT NOT NULL,
    route_trace TEXT, -- JSON array of steps taken
    payload TEXT -- Full enriched payload as JSON
)"""


async def test_history_schema_wal_and_idempotent_rows(tmp_path) -> None:
    path = tmp_path / "data" / "history.db"
    store = await HistoryStore(path).open()
    kwargs = dict(message_id="m1", session_id="s1", customer_text="where is it?", agent_text="on its way",
                  route_trace=["a", "b"], payload={"x": 1}, customer_at="2026-01-01T00:00:00")
    assert await store.record_exchange(**kwargs) == 2
    assert await store.record_exchange(**kwargs) == 0  # the step ran twice: still two rows
    assert not store.db.in_transaction  # each write is committed by itself (autocommit), none left open
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2  # seen by others
    rows = await store.history("s1")
    assert [(r["message_id"], r["sender"]) for r in rows] == [("m1", "customer"), ("m1:agent", "agent")]
    await store.close()

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    table = db.execute("SELECT sql FROM sqlite_master WHERE name='messages'").fetchone()[0]
    assert " ".join(table.split()) == " ".join(SPEC_TABLE.split())
    index = db.execute("SELECT sql FROM sqlite_master WHERE name='idx_session'").fetchone()[0]
    assert " ".join(index.split()) == "CREATE INDEX idx_session ON messages(session_id, timestamp)"
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2


async def test_session_keys_and_ttl(redis_url) -> None:
    sessions = SessionStore(redis_url, ttl_s=120)
    await sessions.set_state("abc", last_message_id="m9", status="resolved")
    await sessions.set_context("abc", {"customer_email": "user@example.com", "customer_id": "cust_001",
                                       "recent_orders": ["12345"], "last_order_id": "12345"})
    state = await sessions.get_state("abc")
    assert state["last_message_id"] == "m9" and state["status"] == "resolved" and state["last_activity"]
    assert (await sessions.get_context("abc"))["last_order_id"] == "12345"
    raw = redis.Redis.from_url(redis_url)
    for key in ("session:abc:state", "session:abc:context"):
        assert 0 < raw.ttl(key) <= 120
    await sessions.close()


def _seed(path, rows: list[tuple[str, str]]) -> None:
    """Rows (message_id, timestamp) written straight into the table, as an older aggregator left them."""
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO messages (message_id, session_id, timestamp, sender, content) VALUES (?, 's', ?, "
                   "'customer', 'hi')", rows)
    db.commit()
    db.close()


def _ids(path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT message_id FROM messages")}
    finally:
        db.close()


async def test_history_retention_deletes_old_rows_in_batches(tmp_path) -> None:
    from datetime import UTC, datetime, timedelta

    path = tmp_path / "history.db"
    store = await HistoryStore(path).open()
    now = datetime(2026, 6, 1, tzinfo=UTC)
    stamp = lambda days: (now - timedelta(days=days)).isoformat(timespec="microseconds")  # noqa: E731
    old = [(f"old{i}", stamp(91 + i)) for i in range(25)]
    kept = [("new0", stamp(1)), ("edge", stamp(89.9))]
    _seed(path, old + kept)

    assert await store.prune(0, now=now) == 0  # 0 keeps everything
    assert await store.prune(90, batch=7, now=now) == 25  # four batches of at most 7
    assert _ids(path) == {"new0", "edge"}
    assert await store.prune(90, batch=7, now=now) == 0
    await store.close()


async def test_response_aggregator_prunes_history_periodically(tmp_path, redis_url) -> None:
    import asyncio
    import time
    from datetime import UTC, datetime, timedelta

    from actors.response_aggregator import ResponseAggregator
    from config.settings import Settings

    path = tmp_path / "history.db"
    await (await HistoryStore(path).open()).close()
    settings = Settings(sqlite_path=str(path), redis_url=redis_url, history_retention_days=30,
                        history_prune_interval_s=0.2, history_prune_batch=2)
    actor = ResponseAggregator()
    await actor.start(settings)
    try:
        # Rows that grow old while the aggregator runs are deleted by a later round, without a restart.
        _seed(path, [(f"old{i}", (datetime.now(UTC) - timedelta(days=31)).isoformat()) for i in range(5)]
              + [("recent", datetime.now(UTC).isoformat())])
        deadline = time.monotonic() + 30
        while _ids(path) != {"recent"}:
            assert time.monotonic() < deadline, f"old rows still there: {_ids(path)}"
            await asyncio.sleep(0.05)
    finally:
        await actor.stop()
