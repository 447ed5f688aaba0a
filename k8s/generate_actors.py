"""Writes k8s/base/actors.yaml: one Deployment per actor, all of the same shape (kustomize cannot loop, and nine
hand-copied files drift). Run `python k8s/generate_actors.py` after changing the shape; a test checks the
committed file is what this script writes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.llm import LOCAL_MODEL  # noqa: E402
from supportmesh.config import Settings  # noqa: E402
from supportmesh.up import ACTORS  # noqa: E402

IMAGE = "supportmesh:0.1.0"
# LLM calls one step can make: the intent analyzer asks again when the model's JSON is malformed.
LLM_CALLS_PER_STEP = {"intent_analyzer": 2, "response_generator": 1}
LLM_ACTORS = set(LLM_CALLS_PER_STEP)
# Time to finish a step after its last LLM call (ack, saga writes, next hop) and close the connections.
DRAIN_MARGIN_S = 15
MIN_GRACE_S = 30
BASE = Path(__file__).resolve().parent / "base"
OUT = BASE / "actors.yaml"
KEDA_OUT = Path(__file__).resolve().parent / "overlays" / "keda" / "scaledobjects.yaml"


def setting(name: str) -> str:
    """A setting as the pods see it: the ConfigMap's value, else the code's default (never this machine's
    environment, so the output does not depend on who runs the script)."""
    data = yaml.safe_load((BASE / "config.yaml").read_text())["data"]
    return str(data.get(f"SUPPORTMESH_{name.upper()}", Settings.model_fields[name].default))


def worst_llm_step_s(actor: str) -> float:
    """The longest an actor's step can spend in LLM calls: each call tries `llm_retries + 1` times for up to
    `llm_timeout_s`, plus one more try on the fallback model when that is a provider too (the local model
    answers at once)."""
    tries = int(setting("llm_retries")) + 1 + (setting("llm_fallback_model") != LOCAL_MODEL)
    return LLM_CALLS_PER_STEP.get(actor, 0) * tries * float(setting("llm_timeout_s"))


def termination_grace_s(actor: str) -> int:
    """Long enough for the step in flight to finish on SIGTERM (the runtime stops fetching, then drains)."""
    return max(MIN_GRACE_S, math.ceil(worst_llm_step_s(actor)) + DRAIN_MARGIN_S)


def deployment(actor: str) -> dict:
    name = actor.replace("_", "-")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "supportmesh",
              "app.kubernetes.io/component": "actor", "supportmesh.io/actor": actor}
    memory = "768Mi" if actor in LLM_ACTORS else "384Mi"
    container = {
        "name": "actor",
        "image": IMAGE,
        "args": ["actor", actor],
        "envFrom": [{"configMapRef": {"name": "supportmesh-config"}},
                    {"secretRef": {"name": "supportmesh-llm-keys", "optional": True}}],
        "env": [{"name": "OTEL_SERVICE_NAME", "value": f"supportmesh-{name}"}],
        "ports": [{"name": "metrics", "containerPort": 9090}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": memory}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    spec: dict = {
        "replicas": 2,
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        "template": {
            "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                                                           "prometheus.io/path": "/metrics"}},
            "spec": {"terminationGracePeriodSeconds": termination_grace_s(actor), "containers": [container]},
        },
    }
    if actor == "response_aggregator":
        # The only SQLite writer: one replica, and Recreate so two pods never hold the volume at once.
        spec["replicas"] = 1
        spec["strategy"] = {"type": "Recreate"}
        container["volumeMounts"] = [{"name": "history", "mountPath": "/data"}]
        spec["template"]["spec"]["volumes"] = [{"name": "history", "persistentVolumeClaim": {"claimName": "history"}}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels}, "spec": spec}


def scaled_object(actor: str) -> dict:
    """KEDA scales an actor on the backlog of its JetStream consumer."""
    name = actor.replace("_", "-")
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"name": name}, "minReplicaCount": 1, "maxReplicaCount": 8,
            "pollingInterval": 5, "cooldownPeriod": 60,
            "triggers": [{"type": "nats-jetstream", "metadata": {
                "natsServerMonitoringEndpoint": "nats.supportmesh.svc.cluster.local:8222", "account": "$G",
                "stream": "SUPPORT", "consumer": actor, "lagThreshold": "20"}}],
        },
    }


HEADER = "# Generated by k8s/generate_actors.py — edit the script, not this file.\n"


def render() -> str:
    """k8s/base/actors.yaml."""
    return HEADER + yaml.safe_dump_all([deployment(a) for a in ACTORS], sort_keys=False)


def render_keda() -> str:
    """k8s/overlays/keda/scaledobjects.yaml (not the aggregator: it is the single SQLite writer)."""
    objects = [scaled_object(a) for a in ACTORS if a != "response_aggregator"]
    return HEADER + yaml.safe_dump_all(objects, sort_keys=False)


if __name__ == "__main__":
    OUT.write_text(render())
    KEDA_OUT.write_text(render_keda())
    print(f"wrote {OUT} and {KEDA_OUT}")
