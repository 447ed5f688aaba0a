"""`supportmesh chat "My order 12345 is late!"`: send one message to a running mesh and print the answer.

Past the gateway's deadline the answer is followed up with `GET /api/chat/{id}` for a bounded time
(`--wait`, by default the gateway's `follow_timeout_s`); then the command stops with the message id, so the
answer can still be looked up later.

The customer is signed in with a token: `--token` (or `SUPPORTMESH_TOKEN`), else one minted for `--email` with the
local secret (`SUPPORTMESH_AUTH_SECRET`, else `<data-dir>/secrets/auth-secret`, as `supportmesh token` does).
`--guest` sends no token: a guest chat (no actions; an order only by its number and the `--email` on it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from gateway.auth import mint_token, read_secret

DEFAULT_WAIT_S = 180.0
EXIT_STILL_PROCESSING = 3


def _gateway_url(data_dir: str) -> str:
    path = Path(data_dir) / "endpoints.json"
    if path.exists():
        return json.loads(path.read_text())["gateway_url"]
    return "http://127.0.0.1:8000"


def _follow_timeout(client: httpx.Client) -> float:
    """The gateway's advice on how long to follow a message (its /api/config), or the default."""
    try:
        return float(client.get("/api/config").json().get("follow_timeout_s") or DEFAULT_WAIT_S)
    except (httpx.HTTPError, ValueError, TypeError, AttributeError):
        return DEFAULT_WAIT_S


def follow(client: httpx.Client, message_id: str, wait_s: float, poll_s: float = 0.5) -> httpx.Response | None:
    """Poll `GET /api/chat/{id}` until it is no longer 202, or None after `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        try:
            r = client.get(f"/api/chat/{message_id}")
        except httpx.HTTPError:
            continue  # the gateway may be restarting: keep following until the deadline
        if r.status_code != 202:
            return r
    return None


def _token(args: argparse.Namespace) -> str | None:
    """The token to send: given, else minted with the local secret; None for a guest (or without a secret)."""
    if args.guest:
        return None
    given = args.token or os.environ.get("SUPPORTMESH_TOKEN")
    if given:
        return given
    secret = os.environ.get("SUPPORTMESH_AUTH_SECRET") or read_secret(args.data_dir)
    return mint_token(secret, args.email, 600) if secret else None


def _print_answer(data: dict[str, Any], url: str) -> None:
    print(f"[{data['status']}] {data['response']}")
    plan = data.get("action_plan") or {}
    if plan.get("action") and plan.get("action") != "none":
        print(f"action: {plan.get('action')} on order {plan.get('order_id')} (approved: {plan.get('approved')})")
    print(f"message {data['message_id']}  timeline {url}/saga.html?id={data['message_id']}  trace {data.get('trace_id')}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh chat`."""
    parser = argparse.ArgumentParser(prog="supportmesh chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("message", help="what the customer says")
    parser.add_argument("--email", default="user@example.com", help="the customer (signed in as them unless --guest)")
    parser.add_argument("--token", default=None, help="a customer token (default: $SUPPORTMESH_TOKEN, else minted "
                        "for --email with the local secret)")
    parser.add_argument("--guest", action="store_true", help="send no token: a guest chat")
    parser.add_argument("--session", default=None, help="session id (default: a new one)")
    parser.add_argument("--gateway", default=None, help="gateway URL (default: from .supportmesh/endpoints.json)")
    parser.add_argument("--data-dir", default=".supportmesh")
    parser.add_argument("--wait", type=float, default=None,
                        help="seconds to follow a message past the deadline (default: the gateway's advice)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    parser.add_argument("--yes", action="store_true", help="when the agent asks to confirm an action, answer yes "
                        "(without it, reply later with `--session <id> yes`)")
    args = parser.parse_args(argv)
    if args.wait is not None and args.wait <= 0:
        parser.error("--wait must be positive")
    url = args.gateway or _gateway_url(args.data_dir)
    body = {"session_id": args.session or uuid.uuid4().hex, "customer_email": args.email, "message": args.message}
    token = _token(args)
    if token is None and not args.guest:
        print("supportmesh chat: no token and no local secret: sending as a guest (see `supportmesh token`)",
              file=sys.stderr)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            r = _send(client, body, args, url)
            if r is not None and args.yes and r.status_code == 200 and r.json()["status"] == "needs_confirmation":
                r = _send(client, {**body, "message": "yes"}, args, url)
            if r is None:
                return EXIT_STILL_PROCESSING
    except httpx.HTTPError as exc:
        print(f"supportmesh chat: cannot reach the gateway at {url} ({exc}); is `supportmesh up` running?",
              file=sys.stderr)
        return 2
    if r.status_code != 200:
        print(f"supportmesh chat: {r.status_code} {r.text}", file=sys.stderr)
        return 1
    data = r.json()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_answer(data, url)
        if data["status"] == "needs_confirmation":
            print(f"to go ahead: supportmesh chat --session {body['session_id']} yes")
    return 0


def _send(client: httpx.Client, body: dict[str, Any], args: argparse.Namespace, url: str) -> httpx.Response | None:
    """POST one message; past the gateway's deadline, follow it up for a bounded time (None: still processing)."""
    r = client.post("/api/chat", json=body)
    if r.status_code != 202:
        return r
    message_id = r.json()["message_id"]
    wait_s = args.wait or _follow_timeout(client)
    final = follow(client, message_id, wait_s)
    if final is None:
        print(f"supportmesh chat: no answer after {wait_s:g}s; message {message_id} is still being "
              f"processed.\n  follow it: {url}/api/chat/{message_id}\n"
              f"  timeline:  {url}/saga.html?id={message_id}", file=sys.stderr)
    return final
