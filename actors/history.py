"""Conversation history in SQLite (aiosqlite, WAL mode), with the specification's table exactly.

The connection is in autocommit mode and every write is one statement, so each write is one atomic transaction
and one trip to aiosqlite's thread (a statement and then a `commit` would be two).

Rows older than the retention (`SUPPORTMESH_HISTORY_RETENTION_DAYS`) are deleted by `prune`, which the response
aggregator runs periodically.

The response aggregator writes two rows per chat message — the customer's (`message_id`) and the agent's
(`<message_id>:agent`) — with INSERT OR IGNORE, so a step that runs twice after a crash writes them once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    sender TEXT NOT NULL, -- 'customer' | 'agent'
    content TEXT NOT NULL,
    route_trace TEXT, -- JSON array of steps taken
    payload TEXT -- Full enriched payload as JSON
);
CREATE INDEX IF NOT EXISTS idx_session ON messages(session_id, timestamp);
CREATE INDEX IF NOT EXISTS idx_timestamp ON messages(timestamp);
"""


def agent_row_id(message_id: str) -> str:
    """The history row id of the agent's answer to a message."""
    return f"{message_id}:agent"


class HistoryStore:
    """The `messages` table."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> HistoryStore:
        """Open (and create) the database in WAL mode."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, timeout=10, isolation_level=None)  # autocommit
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA busy_timeout=10000")
        await self._db.executescript(SCHEMA)
        return self

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("HistoryStore is not open")
        return self._db

    async def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def ping(self) -> None:
        """Raise unless the database answers."""
        await self.db.execute_fetchall("SELECT 1")

    async def record_exchange(self, *, message_id: str, session_id: str, customer_text: str, agent_text: str,
                              route_trace: list[str], payload: dict[str, Any], customer_at: str | None = None,
                              agent_row: str | None = None) -> int:
        """Write the customer's row and the agent's row (`agent_row`, default `<message_id>:agent`) once; returns
        how many rows were new."""
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        trace = orjson.dumps(route_trace).decode()
        body = orjson.dumps(payload).decode()
        # One statement for both rows: both or neither, in one transaction.
        cur = await self.db.execute(
            "INSERT OR IGNORE INTO messages (message_id, session_id, timestamp, sender, content, route_trace, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?)",
            (message_id, session_id, customer_at or now, "customer", customer_text, trace, None,
             agent_row or agent_row_id(message_id), session_id, now, "agent", agent_text, trace, body),
        )
        return cur.rowcount

    async def record_message(self, *, message_id: str, session_id: str, sender: str, content: str,
                             route_trace: list[str]) -> None:
        """Write one row of a conversation a person has taken over (the customer's message, or an agent's
        reply: `route_trace` ["console:<agent>"] names them), once."""
        await self.db.execute(
            "INSERT OR IGNORE INTO messages (message_id, session_id, timestamp, sender, content, route_trace, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (message_id, session_id, datetime.now(UTC).isoformat(timespec="microseconds"), sender, content,
             orjson.dumps(route_trace).decode()),
        )

    async def has_session(self, session_id: str) -> bool:
        """Whether any message of the session is recorded."""
        rows = await self.db.execute_fetchall("SELECT 1 FROM messages WHERE session_id = ? LIMIT 1", (session_id,))
        return bool(rows)

    async def history(self, session_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """The latest `limit` rows of a session, oldest first (a customer row before its agent row)."""
        rows = [dict(r) for r in await self.db.execute_fetchall(
            "SELECT message_id, session_id, timestamp, sender, content, route_trace FROM messages"
            " WHERE session_id = ? ORDER BY timestamp DESC, sender ASC LIMIT ?",
            (session_id, limit),
        )]
        rows.reverse()
        return rows

    async def prune(self, retention_days: float, *, batch: int = 1000, now: datetime | None = None) -> int:
        """Delete rows older than `retention_days` (0 keeps everything), `batch` rows per transaction so the
        writer is never blocked for long; returns how many rows were deleted."""
        if retention_days <= 0:
            return 0
        cutoff = ((now or datetime.now(UTC)) - timedelta(days=retention_days)).isoformat(timespec="microseconds")
        deleted = 0
        while True:
            cur = await self.db.execute(
                "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages WHERE timestamp < ? LIMIT ?)",
                (cutoff, batch),
            )
            deleted += cur.rowcount
            if cur.rowcount < batch:
                return deleted
            await asyncio.sleep(0)  # let the step in flight write its rows between two batches
