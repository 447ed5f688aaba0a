"""`supportmesh secrets`: print fresh Kubernetes Secrets for the bus credentials (the repository ships none).

    supportmesh secrets | kubectl -n supportmesh apply -f -

Four Secrets, all referenced by the base manifests (no pod starts without them):
- `supportmesh-nats-auth` (`auth.conf`): nats-server's users and permissions, public nkeys only; and
  (`routes.conf`) the cluster's routes between the NATS pods with the password they open them with;
- `supportmesh-nats-credentials` (`<user>.nk`): each process's nkey seed; each pod mounts only its own;
- `supportmesh-redis-acl` (`users.acl`): redis-server's ACL users, password hashes only;
- `supportmesh-redis-credentials` (`<user>.password`): the passwords of the gateway's and the session actors'
  Redis users.
The operator's seed and password are printed too (in the credentials Secrets) but mounted in no pod: take them
out with kubectl for an operator's tools. Running it again makes new credentials: apply, then restart every pod.
"""

from __future__ import annotations

import argparse
import secrets
import sys

import yaml

from supportmesh import natsauth, redisauth
from supportmesh.credentials import new_nkey_seed, nkey_public, redis_password_hash
from supportmesh.natsserver import route_url, routes_config

NATS_AUTH = "supportmesh-nats-auth"
NATS_CREDENTIALS = "supportmesh-nats-credentials"
REDIS_ACL = "supportmesh-redis-acl"
REDIS_CREDENTIALS = "supportmesh-redis-credentials"
# The NATS StatefulSet (k8s/base/nats.yaml): its pods, reached through the headless Service, on the route port.
NATS_NODES = 3
ROUTE_USER = "route"


def nats_routes(password: str, nodes: int = NATS_NODES) -> str:
    """`routes.conf`, included in the `cluster` block of every NATS pod: the route user and the three routes."""
    urls = [route_url(f"nats-{i}.nats-headless", 6222, ROUTE_USER, password) for i in range(nodes)]
    return routes_config(urls, ROUTE_USER, password)


def nats_users() -> list[str]:
    """Every NATS user of a Kubernetes deployment: the gateway, each actor of the built-in registry (the one
    the k8s generator uses), the operator."""
    from actors.registry import ACTORS, names

    return [natsauth.GATEWAY, *names(ACTORS), natsauth.OPERATOR]


def _secret(name: str, namespace: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "supportmesh"}},
            "stringData": data}


def generate(namespace: str = "supportmesh", stream: str = "SUPPORT") -> list[dict]:
    """Four Secrets with fresh credentials (see the module's docstring)."""
    seeds = {user: new_nkey_seed() for user in nats_users()}
    passwords = {user: secrets.token_urlsafe(32) for user in redisauth.USERS}
    auth_conf = natsauth.authorization_config({user: nkey_public(seed) for user, seed in seeds.items()}, stream)
    acl = redisauth.acl_file(lambda user: redis_password_hash(passwords[user]))
    return [
        _secret(NATS_AUTH, namespace, {"auth.conf": auth_conf,
                                       "routes.conf": nats_routes(secrets.token_urlsafe(32))}),
        _secret(NATS_CREDENTIALS, namespace, {f"{user}.nk": seed + "\n" for user, seed in seeds.items()}),
        _secret(REDIS_ACL, namespace, {"users.acl": acl}),
        _secret(REDIS_CREDENTIALS, namespace, {f"{user}.password": pw for user, pw in passwords.items()}),
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line values (the configuration files) as literal blocks, readable in `kubectl get -o yaml`."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value.strip() else None))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh secrets`."""
    parser = argparse.ArgumentParser(prog="supportmesh secrets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", default="supportmesh")
    args = parser.parse_args(argv)
    sys.stdout.write(yaml.dump_all(generate(args.namespace), Dumper=_Dumper, sort_keys=False))
    return 0
