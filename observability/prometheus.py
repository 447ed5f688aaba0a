"""Prometheus configuration for the local mesh: one scrape job per process kind, every process's /metrics.

Jobs and their `service` label are named as the processes' traces are: job `intent-analyzer` (as in
Kubernetes, where the job is the pod's `app.kubernetes.io/name`), service `supportmesh-intent-analyzer` (the
OpenTelemetry service name), so a series leads to its traces in Jaeger."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

# The alert rules (storage, backlog, dead letters, gateway 5xx), shared with k8s (grafana/kustomization.yaml).
ALERT_RULES = Path(__file__).resolve().parent.parent / "grafana" / "alerts" / "supportmesh.rules.yml"


def job_name(process: str) -> str:
    """The scrape job of a process kind: `intent_analyzer` -> `intent-analyzer`."""
    return process.replace("_", "-")


def service_name(process: str) -> str:
    """The OpenTelemetry service name of a process kind: `intent_analyzer` -> `supportmesh-intent-analyzer`."""
    return f"supportmesh-{job_name(process)}"


def render_scrape_config(targets: dict[str, list[str]], scrape_interval: str = "5s",
                         rule_files: Sequence[str | Path] = ()) -> str:
    """A prometheus.yml scraping `targets` ({process kind: ["host:port", ...]}), e.g. from endpoints.json, and
    evaluating the alert rules of `rule_files`."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        **({"rule_files": [str(path) for path in rule_files]} if rule_files else {}),
        "scrape_configs": [
            {
                "job_name": job_name(process),
                "metrics_path": "/metrics",
                "scrape_interval": scrape_interval,
                "static_configs": [{"targets": sorted(hosts), "labels": {"service": service_name(process)}}],
            }
            for process, hosts in sorted(targets.items())
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)
