"""Prometheus configuration for the local mesh: one scrape job per process kind, every process's /metrics."""

from __future__ import annotations

import yaml


def render_scrape_config(targets: dict[str, list[str]], scrape_interval: str = "5s") -> str:
    """A prometheus.yml scraping `targets` ({job: ["host:port", ...]}), e.g. from endpoints.json."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "scrape_interval": scrape_interval,
                "static_configs": [{"targets": sorted(hosts), "labels": {"service": f"supportmesh-{job}"}}],
            }
            for job, hosts in sorted(targets.items())
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)
