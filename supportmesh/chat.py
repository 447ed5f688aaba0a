"""`supportmesh chat "My order 12345 is late!"`: send one message to a running mesh and print the answer."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

import httpx


def _gateway_url(data_dir: str) -> str:
    path = Path(data_dir) / "endpoints.json"
    if path.exists():
        return json.loads(path.read_text())["gateway_url"]
    return "http://127.0.0.1:8000"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh chat`."""
    parser = argparse.ArgumentParser(prog="supportmesh chat", description=__doc__)
    parser.add_argument("message", help="what the customer says")
    parser.add_argument("--email", default="user@example.com")
    parser.add_argument("--session", default=None, help="session id (default: a new one)")
    parser.add_argument("--gateway", default=None, help="gateway URL (default: from .supportmesh/endpoints.json)")
    parser.add_argument("--data-dir", default=".supportmesh")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    args = parser.parse_args(argv)
    url = args.gateway or _gateway_url(args.data_dir)
    body = {"session_id": args.session or uuid.uuid4().hex, "customer_email": args.email, "message": args.message}
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            r = client.post("/api/chat", json=body)
            while r.status_code == 202:  # past the deadline: follow up until the saga finishes
                time.sleep(0.5)
                r = client.get(f"/api/chat/{r.json()['message_id']}")
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
        return 0
    print(f"[{data['status']}] {data['response']}")
    plan = data.get("action_plan") or {}
    if plan.get("action") and plan.get("action") != "none":
        print(f"action: {plan.get('action')} on order {plan.get('order_id')} (approved: {plan.get('approved')})")
    print(f"message {data['message_id']}  timeline {url}/saga.html?id={data['message_id']}  trace {data.get('trace_id')}")
    return 0
