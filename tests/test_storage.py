"""SQLite history (the specification's table, WAL, idempotent rows) and Redis session state (keys, TTL)."""

from __future__ import annotations

import sqlite3

import redis

from gateway.history import HistoryStore
from gateway.sessions import SessionStore

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
