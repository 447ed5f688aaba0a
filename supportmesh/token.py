"""`supportmesh token EMAIL`: print a customer token (a JWT signed HS256, `sub` = EMAIL) for local use.
`supportmesh token --agent NAME`: a support agent's token for the console (`sub` = NAME, `"role": "agent"`).

The secret is `SUPPORTMESH_AUTH_SECRET`, else the one `supportmesh up` keeps at `<data-dir>/secrets/auth-secret`.
Send the token as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway.auth import AGENT_NAME, mint_agent_token, mint_token, read_secret, secret_path
from gateway.schemas import EMAIL

DEFAULT_TTL_S = 3600


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh token`."""
    parser = argparse.ArgumentParser(prog="supportmesh token", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("email", nargs="?", help="the customer the token names (its `sub`)")
    parser.add_argument("--agent", metavar="NAME", help="a support agent's token for the console instead")
    parser.add_argument("--data-dir", default=".supportmesh", help="where `supportmesh up` keeps the secret")
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="seconds the token is valid")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    if (args.agent is None) == (args.email is None):
        parser.error("give either a customer's EMAIL or --agent NAME")
    if args.agent is not None and not AGENT_NAME.match(args.agent):
        parser.error(f"{args.agent!r} is not an agent's name (1-64 letters, digits, spaces or . _ @ -)")
    if args.email is not None and not EMAIL.match(args.email):
        parser.error(f"{args.email!r} is not an email address")
    secret = os.environ.get("SUPPORTMESH_AUTH_SECRET") or read_secret(args.data_dir)
    if not secret:
        print(f"supportmesh token: no secret: set SUPPORTMESH_AUTH_SECRET or start `supportmesh up --data-dir "
              f"{args.data_dir}` once (it creates {secret_path(args.data_dir)})", file=sys.stderr)
        return 2
    if args.agent is not None:
        print(mint_agent_token(secret, args.agent, args.ttl))
    else:
        print(mint_token(secret, args.email, args.ttl))
    return 0
