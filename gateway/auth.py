"""Who is asking: customer tokens, guests, and who may read what.

A signed-in customer sends `Authorization: Bearer <JWT>`, signed HS256 with `SUPPORTMESH_AUTH_SECRET` by the
shop's backend (which has signed the customer in): `sub` is the customer's email, `exp` is required, `iat`
optional. Without a token the caller is a guest. Identity never comes from a request body.

Every saga and session has an owner: `customer:<email>` when a verified customer started it, else `guest`. A
customer reads what their `sub` owns; a guest reads what was started in a session whose id they present (the
server-issued, unguessable session id is the guest's capability, sent as `X-Session-Id`). Anything else is 404.

A support agent's token (`supportmesh token --agent NAME`) is signed the same way, with `sub` = the agent's name
and `"role": "agent"`. It opens the console's API (`/api/console/...`) and nothing else: on the customers' routes
an agent token is refused with 403, so it can never read or write as a customer (agents read conversations through
the console's routes, which say whose they are).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from fastapi import HTTPException, Request

from actors.domain import GUEST_OWNER, customer_owner
from config.private_files import write_private
from gateway.schemas import EMAIL

ALGORITHM = "HS256"
SESSION_HEADER = "X-Session-Id"
SECRET_FILE = Path("secrets") / "auth-secret"
AGENT_ROLE = "agent"
# An agent's name: what the console shows the customer ("Alice"), so letters, digits and a few separators.
AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@ -]{0,63}$")


class AuthError(ValueError):
    """A token that proves nothing: forged, expired or malformed (the message says which)."""


def mint_token(secret: str, email: str, ttl_s: float, *, now: float | None = None) -> str:
    """A customer token for `email`, valid for `ttl_s` seconds."""
    if not secret:
        raise AuthError("no auth secret configured")
    issued = int(now if now is not None else time.time())
    return jwt.encode({"sub": email.lower(), "iat": issued, "exp": issued + int(ttl_s)}, secret, algorithm=ALGORITHM)


def mint_agent_token(secret: str, name: str, ttl_s: float, *, now: float | None = None) -> str:
    """A support agent's token for `name` (`"role": "agent"`), valid for `ttl_s` seconds."""
    if not secret:
        raise AuthError("no auth secret configured")
    if not AGENT_NAME.match(name):
        raise AuthError("an agent's name is 1-64 letters, digits, spaces or . _ @ -")
    issued = int(now if now is not None else time.time())
    return jwt.encode({"sub": name, "role": AGENT_ROLE, "iat": issued, "exp": issued + int(ttl_s)}, secret,
                      algorithm=ALGORITHM)


@dataclass(frozen=True)
class Identity:
    """What a valid token proves: a customer's email, or an agent's name (`role` "agent")."""

    sub: str
    role: str = "customer"


def verify_token(secret: str, token: str, *, leeway_s: float = 30.0) -> str:
    """The customer's email a customer token proves; raises AuthError with the reason otherwise (an agent's
    token proves no customer)."""
    identity = verify_identity(secret, token, leeway_s=leeway_s)
    if identity.role != "customer":
        raise AuthError("this is an agent's token, not a customer's")
    return identity.sub


def verify_identity(secret: str, token: str, *, leeway_s: float = 30.0) -> Identity:
    """Who a token proves (a customer or an agent); raises AuthError with the reason otherwise."""
    if not secret:
        raise AuthError("this gateway verifies no tokens (no auth secret configured)")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=leeway_s,
                            options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("token signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.DecodeError:
        raise AuthError("token is malformed") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"token is invalid: {exc}") from None
    sub = claims.get("sub")
    role = claims.get("role", "customer")
    if role == AGENT_ROLE:
        if not isinstance(sub, str) or not AGENT_NAME.match(sub):
            raise AuthError("token subject is not an agent's name")
        return Identity(sub=sub, role=AGENT_ROLE)
    if role != "customer":
        raise AuthError("token has an unknown role")
    if not isinstance(sub, str) or not EMAIL.match(sub):
        raise AuthError("token subject is not an email address")
    return Identity(sub=sub.lower())


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a verified customer (`email`), a support agent (`agent`, their name), or a guest
    (neither). `session_id` is the session a guest presents as their capability (the `X-Session-Id` header)."""

    email: str | None = None
    session_id: str | None = None
    agent: str | None = None

    @property
    def role(self) -> str:
        """"agent", "customer" or "guest"."""
        return AGENT_ROLE if self.agent else "customer" if self.email else "guest"

    @property
    def verified(self) -> bool:
        return self.email is not None

    @property
    def owner(self) -> str:
        """The owner of what this caller starts."""
        return customer_owner(self.email) if self.email else GUEST_OWNER

    def may_read(self, owner: str | None, session_id: str | None) -> bool:
        """Whether this caller may read something owned by `owner`, started in `session_id`."""
        if not owner:
            return False
        if owner == GUEST_OWNER:
            return bool(session_id) and self.session_id == session_id
        return self.email is not None and owner == customer_owner(self.email)


def unauthorized(reason: str) -> HTTPException:
    """401 with the reason, and the challenge RFC 6750 asks for."""
    return HTTPException(401, reason, headers={
        "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'})


# Where a request keeps its verified caller: the rate limiter and the route both ask who is calling, and the
# token's signature is checked once per request (checking it twice was 6 % of the gateway's CPU per chat).
_CALLER_SCOPE_KEY = "supportmesh.caller"


def caller_from(request: Request, secret: str, leeway_s: float) -> Caller:
    """The caller of a request: a guest without `Authorization`, a customer with a valid bearer token; 401 for
    any other `Authorization`. Verified once per request; a refused token is checked again (and refused again)."""
    known: Caller | None = request.scope.get(_CALLER_SCOPE_KEY)
    if known is None:
        known = request.scope[_CALLER_SCOPE_KEY] = _verified_caller(request, secret, leeway_s)
    return known


def _verified_caller(request: Request, secret: str, leeway_s: float) -> Caller:
    session = request.headers.get(SESSION_HEADER) or None
    header = request.headers.get("authorization")
    if header is None:
        return Caller(session_id=session)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Authorization must be 'Bearer <token>'")
    try:
        identity = verify_identity(secret, token.strip(), leeway_s=leeway_s)
    except AuthError as exc:
        raise unauthorized(str(exc)) from None
    if identity.role == AGENT_ROLE:
        return Caller(agent=identity.sub, session_id=session)
    return Caller(email=identity.sub, session_id=session)


def secret_path(data_dir: str | Path) -> Path:
    """Where `supportmesh up` keeps the generated secret."""
    return Path(data_dir) / SECRET_FILE


def read_secret(data_dir: str | Path) -> str | None:
    """The secret kept in the data dir, or None."""
    path = secret_path(data_dir)
    if not path.exists():
        return None
    return path.read_text().strip() or None


def load_or_create_secret(data_dir: str | Path) -> str:
    """The secret kept at `<data-dir>/secrets/auth-secret`, created (directory 0700, file 0600) when absent."""
    path = secret_path(data_dir)
    existing = read_secret(data_dir)
    if existing:
        return existing
    secret = secrets.token_urlsafe(48)
    write_private(path, secret + "\n")
    return secret


def new_session_id() -> str:
    """A fresh, unguessable session id (192 random bits; fits SESSION_ID)."""
    return secrets.token_urlsafe(24)
