"""The Redis ACL users of the mesh, as redis-server's ACL file (`--aclfile`).

The default user is off, so a connection without credentials can run nothing. The gateway reaches the session
keys and its rate-limit keys; the actors that keep session state (context retriever, response aggregator) only
the session keys; the operator (tests, an operator's tools) everything. Passwords are stored as SHA-256.
"""

from __future__ import annotations

from collections.abc import Callable

GATEWAY = "gateway"
SESSIONS = "sessions"
OPERATOR = "operator"
USERS: tuple[str, ...] = (GATEWAY, SESSIONS, OPERATOR)
# The actors that keep session state, and so sign in to Redis as SESSIONS; the others get no Redis user.
SESSION_ACTORS: tuple[str, ...] = ("context_retriever", "response_aggregator")

# Reads, writes and Lua scripts (the rate limits are scripts), never admin or dangerous commands
# (FLUSHALL, CONFIG, KEYS, DEBUG...).
_COMMANDS = "-@all +@connection +@read +@write +@scripting -@dangerous"
RULES: dict[str, str] = {
    GATEWAY: f"~session:* ~supportmesh:ratelimit:* resetchannels {_COMMANDS}",
    SESSIONS: f"~session:* resetchannels {_COMMANDS}",
    OPERATOR: "~* &* +@all",
}


def acl_file(password_hash: Callable[[str], str]) -> str:
    """The ACL file: `password_hash(user)` gives each user's `#<sha256>` (see credentials.redis_password_hash)."""
    lines = ["user default off resetkeys resetchannels -@all"]
    lines += [f"user {user} on {password_hash(user)} {rules}" for user, rules in RULES.items()]
    return "\n".join(lines) + "\n"
