"""`supportmesh` command line: one entry point, each subcommand owned by the module that implements it.

Each subcommand module exposes `main(argv: list[str]) -> int` and parses its own options, so adding a
command never touches the others.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("supportmesh.up", "start the whole mesh locally (NATS, Redis, mocks, actors, gateway)"),
    "actor": ("actors.__main__", "run one actor process: supportmesh actor <name>"),
    "gateway": ("gateway.server", "run the HTTP gateway"),
    "mocks": ("mocks.server", "run the mock customer, orders and tracking APIs"),
    "chat": ("supportmesh.chat", "send one message to a running mesh and print the answer"),
    "token": ("supportmesh.token", "print a token for local use: supportmesh token EMAIL | --agent NAME"),
    "chaos": ("supportmesh.chaos", "kill random actor processes (local) or pods (k8s)"),
    "demo": ("supportmesh.demo", "run the runtime demo: toy actors and their saga log"),
    "secrets": ("supportmesh.k8s_secrets", "print fresh Kubernetes Secrets for the NATS and Redis credentials"),
}


def _usage() -> str:
    lines = ["usage: supportmesh <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommand's module."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"supportmesh: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
