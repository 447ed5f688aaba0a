"""Writes k8s/base/actors.yaml: one Deployment per actor of the registry (actors/registry.py), all of the same
shape (kustomize cannot loop, and hand-copied files drift), and the KEDA overlay's ScaledObjects. Run
`python k8s/generate_actors.py` after changing the shape or the registry; a test checks the committed files are
what this script writes."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource  # noqa: E402

from actors.drain import termination_grace_s  # noqa: E402
from actors.registry import ACTORS, ActorSpec  # noqa: E402
from config.settings import Settings  # noqa: E402
from supportmesh.redisauth import SESSION_ACTORS, SESSIONS  # noqa: E402

IMAGE = "supportmesh:0.1.0"
# The image's user (Dockerfile: USER 10001). Every pod runs as it, with a read-only root filesystem.
UID = 10001
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}
BASE = Path(__file__).resolve().parent / "base"
OUT = BASE / "actors.yaml"
KEDA_OUT = Path(__file__).resolve().parent / "overlays" / "keda" / "scaledobjects.yaml"


class _ConfigMapSettings(Settings):
    """Settings from the values given only (no environment, no .env file)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **_: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def pod_settings() -> Settings:
    """The settings as the pods see them: the ConfigMap's values over the code's defaults, validated (never this
    machine's environment, so the output does not depend on who runs the script)."""
    data = yaml.safe_load((BASE / "config.yaml").read_text())["data"]
    values = {key.removeprefix("SUPPORTMESH_").lower(): value for key, value in data.items()
              if key.startswith("SUPPORTMESH_")}
    return _ConfigMapSettings(**values)


NATS_SEEDS = "/etc/supportmesh/nats"
REDIS_PASSWORDS = "/etc/supportmesh/redis"
# Secret files readable by the pod's group (fsGroup), not by others.
SECRET_MODE = 0o440


def credentials(nats_user: str, redis_user: str | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(env, volumeMounts, volumes) that sign a pod in as its NATS user (its own seed out of
    supportmesh-nats-credentials) and, when it uses Redis, as its Redis ACL user: see `supportmesh secrets`."""
    env = [{"name": "SUPPORTMESH_NATS_USER", "value": nats_user},
           {"name": "SUPPORTMESH_NATS_CREDENTIALS", "value": f"{NATS_SEEDS}/{nats_user}.nk"}]
    mounts = [{"name": "nats-credentials", "mountPath": NATS_SEEDS, "readOnly": True}]
    volumes = [{"name": "nats-credentials", "secret": {
        "secretName": "supportmesh-nats-credentials", "defaultMode": SECRET_MODE,
        "items": [{"key": f"{nats_user}.nk", "path": f"{nats_user}.nk"}]}}]
    if redis_user:
        env += [{"name": "SUPPORTMESH_REDIS_USERNAME", "value": redis_user},
                {"name": "SUPPORTMESH_REDIS_PASSWORD_FILE", "value": f"{REDIS_PASSWORDS}/{redis_user}.password"}]
        mounts.append({"name": "redis-credentials", "mountPath": REDIS_PASSWORDS, "readOnly": True})
        volumes.append({"name": "redis-credentials", "secret": {
            "secretName": "supportmesh-redis-credentials", "defaultMode": SECRET_MODE,
            "items": [{"key": f"{redis_user}.password", "path": f"{redis_user}.password"}]}})
    return env, mounts, volumes


def deployment(spec: ActorSpec, settings: Settings) -> dict:
    """One actor's Deployment (its grace period from `settings`, the pods' own)."""
    actor = spec.name
    name = actor.replace("_", "-")
    # Only the actors that call an LLM get the provider keys (the Secret `supportmesh-llm-keys`) and egress to
    # the internet (k8s/base/networkpolicies.yaml selects them by the label `supportmesh.io/llm`).
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "supportmesh",
              "app.kubernetes.io/component": "actor", "supportmesh.io/actor": actor,
              "supportmesh.io/llm": str(spec.needs_llm_key).lower()}
    cred_env, cred_mounts, cred_volumes = credentials(actor, SESSIONS if actor in SESSION_ACTORS else None)
    container = {
        "name": "actor",
        "image": IMAGE,
        "args": ["actor", actor],
        "envFrom": [{"configMapRef": {"name": "supportmesh-config"}},
                    *([{"secretRef": {"name": "supportmesh-llm-keys", "optional": True}}] if spec.needs_llm_key
                      else [])],
        "env": [{"name": "OTEL_SERVICE_NAME", "value": f"supportmesh-{name}"}, *cred_env],
        "ports": [{"name": "metrics", "containerPort": 9090}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": spec.memory}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *cred_mounts],
    }
    deploy: dict = {
        "replicas": spec.replicas,
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        "template": {
            "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                                                           "prometheus.io/path": "/metrics"}},
            "spec": {"terminationGracePeriodSeconds": termination_grace_s(actor, settings, ACTORS),
                     "automountServiceAccountToken": False,
                     "securityContext": POD_SECURITY,
                     "containers": [container],
                     "volumes": [{"name": "tmp", "emptyDir": {}}, *cred_volumes]},
        },
    }
    if spec.writes_history:
        # The only SQLite writer: Recreate, so two pods never hold the volume at once.
        deploy["strategy"] = {"type": "Recreate"}
        container["volumeMounts"].append({"name": "history", "mountPath": "/data"})
        deploy["template"]["spec"]["volumes"].append({"name": "history",
                                                      "persistentVolumeClaim": {"claimName": "history"}})
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": deploy}


def scaled_object(spec: ActorSpec) -> dict:
    """KEDA scales an actor on the backlog of its JetStream consumer. NATS is a cluster: the scaler finds the
    consumer's leader node and asks it at `<node>.<endpoint>`, so the endpoint is the headless Service (whose
    pod names are the nodes' server names)."""
    actor = spec.name
    name = actor.replace("_", "-")
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"name": name}, "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "pollingInterval": 5, "cooldownPeriod": 60,
            "triggers": [{"type": "nats-jetstream", "metadata": {
                "natsServerMonitoringEndpoint": "nats-headless.supportmesh.svc.cluster.local:8222", "account": "$G",
                "stream": "SUPPORT", "consumer": actor, "lagThreshold": "20"}}],
        },
    }


class _NoAliases(yaml.SafeDumper):
    """Writes shared dicts (the security contexts) in full in every Deployment, not as YAML anchors."""

    def ignore_aliases(self, data: object) -> bool:
        return True


HEADER = "# Generated by k8s/generate_actors.py — edit the script, not this file.\n"


def render() -> str:
    """k8s/base/actors.yaml."""
    settings = pod_settings()
    return HEADER + yaml.dump_all([deployment(a, settings) for a in ACTORS], Dumper=_NoAliases, sort_keys=False)


def render_keda() -> str:
    """k8s/overlays/keda/scaledobjects.yaml (the actors that autoscale: not the single SQLite writer)."""
    objects = [scaled_object(a) for a in ACTORS if a.autoscale]
    return HEADER + yaml.safe_dump_all(objects, sort_keys=False)


if __name__ == "__main__":
    OUT.write_text(render())
    KEDA_OUT.write_text(render_keda())
    print(f"wrote {OUT} and {KEDA_OUT}")
