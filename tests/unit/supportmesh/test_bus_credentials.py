"""The bus credentials offline: who may do what (the permission table), the generated files and Secrets, and the
manifests' use of them. The refusals by real servers are in test_bus_auth.py."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import yaml

from supportmesh import natsauth, redisauth
from supportmesh.credentials import MeshCredentials
from supportmesh.k8s_secrets import generate, nats_users
from supportmesh.natsserver import find_binary
from actors import registry
from tests.support import REPO

ACTORS = registry.names(registry.ACTORS)


def allowed(user: str) -> list[str]:
    perms = natsauth.permissions(user)
    assert perms is not None
    return perms["publish"]["allow"]


def test_only_the_answering_actors_reply_and_move_a_saga() -> None:
    for actor in ACTORS:
        may = allowed(actor)
        answering = actor in natsauth.ANSWERING_ACTORS
        assert (natsauth.REPLY_SUBJECTS in may) == answering, actor
        # ...and the actors that suspend sagas to wait for a person (they move the state to `waiting` and back).
        assert ("$KV.saga_state.>" in may) == (answering or actor in natsauth.WAITING_ACTORS), actor
        assert ("$KV.chat_results.>" in may) == answering, actor
        assert "$KV.saga_log.>" in may  # every actor records its own steps
    assert natsauth.WAITING_ACTORS == ("execution_coordinator",)



def test_only_recovery_reaches_the_dead_letters_and_each_actor_only_its_consumer() -> None:
    for user in [natsauth.GATEWAY, *ACTORS]:
        may = allowed(user)
        assert any("DEADLETTERS" in s for s in may) == (user == "escalation_router"), user
        fetches = [s for s in may if ".MSG.NEXT.SUPPORT." in s]
        assert fetches == ([] if user == natsauth.GATEWAY else [f"$JS.API.CONSUMER.MSG.NEXT.SUPPORT.{user}"]), user
        assert not any(s in (">", "$JS.API.>", "ecommerce.support.>") for s in may), user


def test_the_gateway_publishes_only_first_steps() -> None:
    steps = [s for s in allowed(natsauth.GATEWAY) if s.startswith("ecommerce.support.")]
    # ...and the resumes of waits it signals, which run only on the message recorded with the wait.
    assert steps == ["ecommerce.support.sentiment_analyzer", "ecommerce.support._resume.*"]
    assert natsauth.permissions(natsauth.OPERATOR) is None


def test_credentials_are_private_and_reused(tmp_path) -> None:
    first = MeshCredentials.load_or_create(tmp_path, ["gateway", "operator"], list(redisauth.USERS))
    again = MeshCredentials.load_or_create(tmp_path, ["gateway", "operator"], list(redisauth.USERS))
    assert first.nats_public == again.nats_public
    assert first.redis_password("gateway") == again.redis_password("gateway")
    for path in [*first.nats_seeds.values(), *first.redis_passwords.values()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.root.stat().st_mode) == 0o700
    described = str(first.describe())
    assert first.redis_password("gateway") not in described
    assert all(p.read_text().strip() not in described for p in first.nats_seeds.values())


def test_generated_secrets_configure_nats_server(tmp_path) -> None:
    """`supportmesh secrets` + the ConfigMap's nats.conf is a configuration nats-server accepts, with a user per
    process and no anonymous user."""
    secrets = {s["metadata"]["name"]: s["stringData"] for s in generate()}
    assert set(secrets["supportmesh-nats-credentials"]) == {f"{u}.nk" for u in nats_users()}
    auth = secrets["supportmesh-nats-auth"]["auth.conf"]
    assert "no_auth_user" not in auth and auth.count('"nkey"') == len(nats_users())
    config = next(d for d in yaml.safe_load_all((REPO / "k8s/base/nats.yaml").read_text())
                  if d["kind"] == "ConfigMap")["data"]["nats.conf"]
    (tmp_path / "auth").mkdir()
    for key, text in secrets["supportmesh-nats-auth"].items():  # auth.conf and routes.conf
        (tmp_path / "auth" / key).write_text(text)
    (tmp_path / "nats.conf").write_text(config.replace("/data", str(tmp_path / "data")))
    # The pod's name (the node's server_name) comes from the environment, as in the StatefulSet.
    check = subprocess.run([find_binary(), "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True, text=True,
                           timeout=30, env={**os.environ, "POD_NAME": "nats-1"})
    assert check.returncode == 0, check.stderr or check.stdout
    acl = secrets["supportmesh-redis-acl"]["users.acl"]
    assert acl.startswith("user default off") and not any(
        pw in acl for pw in secrets["supportmesh-redis-credentials"].values())


def test_generated_secrets_route_the_three_nats_pods() -> None:
    """The cluster's routes (Secret key routes.conf): one per StatefulSet pod through the headless Service, each
    signing in as the route user with the Secret's password; the password is nowhere in the ConfigMap."""
    auth = next(s for s in generate() if s["metadata"]["name"] == "supportmesh-nats-auth")["stringData"]
    routes = auth["routes.conf"]
    password = re.search(r'password: "([^"]+)"', routes).group(1)
    assert len(password) >= 32
    urls = re.findall(r'"(nats-route://[^"]+)"', routes)
    assert urls == [f"nats-route://route:{password}@nats-{i}.nats-headless:6222" for i in range(3)]
    assert password not in (REPO / "k8s/base/nats.yaml").read_text()


def test_each_pod_mounts_only_its_own_credentials_and_the_repo_ships_none() -> None:
    docs = [d for path in sorted((REPO / "k8s").rglob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    assert not [d for d in docs if d.get("kind") == "Secret"]
    signed_in = {}
    for d in docs:
        if d.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        if "nats-credentials" not in volumes:
            continue
        user = env["SUPPORTMESH_NATS_USER"]
        items = volumes["nats-credentials"]["secret"]["items"]
        assert items == [{"key": f"{user}.nk", "path": f"{user}.nk"}], d["metadata"]["name"]
        assert env["SUPPORTMESH_NATS_CREDENTIALS"].endswith(f"/{user}.nk")
        signed_in[user] = d["metadata"]["name"]
    assert set(signed_in) == {natsauth.GATEWAY, *ACTORS}


def test_redis_dsn_signs_in_with_the_password_file(tmp_path) -> None:
    from config.settings import Settings

    (tmp_path / "pw").write_text("s3cr/et\n")
    settings = Settings(redis_url="redis://127.0.0.1:6380/0", redis_username="gateway",
                        redis_password_file=str(tmp_path / "pw"))
    assert settings.redis_dsn == "redis://gateway:s3cr%2Fet@127.0.0.1:6380/0"
    assert Settings(redis_url="redis://127.0.0.1:6380/0").redis_dsn == "redis://127.0.0.1:6380/0"
    assert "s3cr" not in repr(settings)
