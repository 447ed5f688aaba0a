"""The bus credentials of a local mesh, generated once under `<data-dir>/secrets/` and reused on restart.

NATS: one nkey per identity (`secrets/nats/<user>.nk`, the seed). The server's configuration holds only the public
keys, and a client proves it holds the seed by signing the server's nonce, so no secret is ever sent or stored on
the server side. Redis: one password per ACL user (`secrets/redis/<user>.password`); redis-server's ACL file holds
their SHA-256 only. Files are 0600 in 0700 directories; `endpoints.json` names the files, never their contents.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys

from config.private_files import write_private

SECRETS_DIR = "secrets"


def new_nkey_seed() -> str:
    """A fresh NATS user nkey seed (`SU...`)."""
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def nkey_public(seed: str) -> str:
    """The public key (`U...`) of a user nkey seed: what the server's configuration names."""
    return nkeys.from_seed(bytearray(seed.strip().encode())).public_key.decode()


def _load_or_create(path: Path, make: object) -> str:
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    value = make()  # type: ignore[operator]
    write_private(path, value + "\n")
    return value


def redis_password_hash(password: str) -> str:
    """What redis-server's ACL file keeps of a password (`#<sha256 hex>`)."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


@dataclass
class MeshCredentials:
    """Paths of every credential file of a local mesh and the public halves the servers need."""

    root: Path
    nats_seeds: dict[str, Path] = field(default_factory=dict)
    nats_public: dict[str, str] = field(default_factory=dict)
    redis_passwords: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def load_or_create(cls, data_dir: Path, nats_users: list[str], redis_users: list[str]) -> MeshCredentials:
        """Read the credentials kept in `data_dir`, creating the missing ones (existing ones are reused, so a
        restarted mesh keeps its identities)."""
        root = Path(data_dir) / SECRETS_DIR
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        creds = cls(root=root)
        for user in nats_users:
            path = root / "nats" / f"{user}.nk"
            creds.nats_public[user] = nkey_public(_load_or_create(path, new_nkey_seed))
            creds.nats_seeds[user] = path
        for user in redis_users:
            path = root / "redis" / f"{user}.password"
            _load_or_create(path, lambda: secrets.token_urlsafe(32))
            creds.redis_passwords[user] = path
        return creds

    def route_password(self) -> str:
        """The password the nodes of a local NATS cluster open routes with (created once, kept like the rest)."""
        return _load_or_create(self.root / "nats-routes" / "route.password", lambda: secrets.token_urlsafe(32))

    def redis_password(self, user: str) -> str:
        """The password of a Redis ACL user (for the ACL file's hash)."""
        return self.redis_passwords[user].read_text().strip()

    def describe(self) -> dict[str, dict[str, str]]:
        """What `endpoints.json` says about credentials: the files, never their contents."""
        return {"nats": {user: str(path) for user, path in self.nats_seeds.items()},
                "redis": {user: str(path) for user, path in self.redis_passwords.items()}}


def nats_options(endpoints: dict[str, Any], user: str = "operator") -> dict[str, Any]:
    """Keyword arguments of `nats.connect` to sign in to a running local mesh (its `endpoints.json`) as `user`:
    the URL and the user's seed file (the URL alone for a mesh without credentials). Tests and benchmarks sign in
    as the operator; as another user they get that user's permissions and inbox."""
    from saga.transport import inbox_prefix

    options: dict[str, Any] = {"servers": endpoints.get("nats_urls") or endpoints["nats_url"]}
    seed = endpoints.get("credentials", {}).get("nats", {}).get(user)
    if seed:
        options["nkeys_seed"] = seed
        if user != "operator":
            options["inbox_prefix"] = inbox_prefix(user)
    return options


def redis_url(endpoints: dict[str, Any], user: str = "operator") -> str:
    """The Redis URL of a running local mesh with `user`'s credentials (as is when it has none)."""
    path = endpoints.get("credentials", {}).get("redis", {}).get(user)
    if not path:
        return str(endpoints["redis_url"])
    password = Path(path).read_text().strip()
    return str(endpoints["redis_url"]).replace("redis://", f"redis://{user}:{password}@", 1)
