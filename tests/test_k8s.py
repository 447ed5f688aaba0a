"""The Kubernetes deployment, checked offline: every overlay builds with kustomize and passes strict schema
validation; images are pinned; every actor has probes, resources and the settings the code reads; Grafana gets
every dashboard; the Prometheus configuration is valid; the Dockerfile's install and entry point work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supportmesh.config import Settings
from supportmesh.up import ACTORS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OVERLAYS = ["k8s/base", "k8s/overlays/k3d", "k8s/overlays/keda"]
# Custom resources have no bundled schema (KEDA is optional and installed by the user).
NO_SCHEMA = {"ScaledObject"}
NEEDED = {"SUPPORTMESH_NATS_URL", "SUPPORTMESH_REDIS_URL", "SUPPORTMESH_CUSTOMERS_API_URL",
          "SUPPORTMESH_ORDERS_API_URL", "SUPPORTMESH_TRACKING_API_URL", "SUPPORTMESH_METRICS_PORT",
          "SUPPORTMESH_METRICS_HOST", "SUPPORTMESH_SQLITE_PATH"}


def render(overlay: str) -> list[dict]:
    out = subprocess.run([str(BIN / "kubectl"), "kustomize", str(REPO / overlay)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def k3d() -> list[dict]:
    return render("k8s/overlays/k3d")


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_validates_strictly(overlay: str, tmp_path) -> None:
    docs = [d for d in render(overlay) if d["kind"] not in NO_SCHEMA]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_generated_manifests_are_up_to_date() -> None:
    sys.path.insert(0, str(REPO / "k8s"))
    import generate_actors

    assert (REPO / "k8s/base/actors.yaml").read_text() == generate_actors.render()
    assert (REPO / "k8s/overlays/keda/scaledobjects.yaml").read_text() == generate_actors.render_keda()


def test_every_image_is_pinned(k3d) -> None:
    for d in k3d:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest", (d["metadata"]["name"], c["image"])


def test_actors_have_probes_resources_and_settings(k3d) -> None:
    deployments = by_kind(k3d, "Deployment")
    config = by_kind(k3d, "ConfigMap")["supportmesh-config"]["data"]
    fields = {f"SUPPORTMESH_{name.upper()}" for name in Settings.model_fields}
    assert NEEDED <= fields, NEEDED - fields  # a renamed setting breaks this test, not the cluster
    assert {k for k in config if k.startswith("SUPPORTMESH_")} <= fields
    for actor in ACTORS:
        d = deployments[actor.replace("_", "-")]
        pod = d["spec"]["template"]
        c = pod["spec"]["containers"][0]
        assert c["args"] == ["actor", actor]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert {"configMapRef": {"name": "supportmesh-config"}} in c["envFrom"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "actor"
        assert pod["metadata"]["labels"]["supportmesh.io/actor"] == actor
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["spec"]["terminationGracePeriodSeconds"] >= 20
        assert NEEDED - {"SUPPORTMESH_SQLITE_PATH"} <= set(config)
    aggregator = deployments["response-aggregator"]
    assert aggregator["spec"]["replicas"] == 1 and aggregator["spec"]["strategy"]["type"] == "Recreate"
    assert "SUPPORTMESH_SQLITE_PATH" in config


def test_grafana_gets_every_dashboard(k3d) -> None:
    maps = by_kind(k3d, "ConfigMap")
    files = {p.name for p in (REPO / "grafana/dashboards").glob("*.json")}
    assert set(maps["grafana-dashboards"]["data"]) == files
    for name, body in maps["grafana-dashboards"]["data"].items():
        assert body == (REPO / "grafana/dashboards" / name).read_text()  # the files themselves, not copies
    assert "datasources.yaml" in maps["grafana-datasources"]["data"]
    grafana = by_kind(k3d, "Deployment")["grafana"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in grafana["containers"][0]["volumeMounts"]}
    assert "/var/lib/grafana/dashboards" in mounts


def test_prometheus_config_passes_promtool(k3d, tmp_path) -> None:
    """Debian's promtool is built without Kubernetes service discovery: the `kubernetes_sd_configs` block is
    checked here, and promtool checks everything else (globals, relabeling, regexes) with that block swapped
    for a static target."""
    config = yaml.safe_load(by_kind(k3d, "ConfigMap")["prometheus-config"]["data"]["prometheus.yml"])
    for job in config["scrape_configs"]:
        for sd in job.pop("kubernetes_sd_configs", []):
            assert sd["role"] in {"pod", "service", "endpoints", "endpointslice", "node", "ingress"}
            assert sd["namespaces"]["names"] == ["supportmesh"]
            job.setdefault("static_configs", [{"targets": ["127.0.0.1:9090"]}])
        relabels = {tuple(r.get("source_labels", [])): r for r in job.get("relabel_configs", [])}
        assert ("__meta_kubernetes_pod_annotation_prometheus_io_scrape",) in relabels
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_nats_is_durable(k3d) -> None:
    conf = by_kind(k3d, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "sync_interval: always" in conf
    nats = by_kind(k3d, "StatefulSet")["nats"]
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_dockerfile_image_is_pinned_and_runs_unprivileged() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    base = next(line for line in lines if line.startswith("FROM ")).split()[1]
    assert ":" in base and "latest" not in base and "slim" in base
    user = [line for line in lines if line.startswith("USER ")][-1].split()[1]
    assert user not in ("root", "0")
    assert 'ENTRYPOINT ["supportmesh"]' in lines
    for line in lines:
        if line.startswith("COPY ") and not line.startswith("COPY --"):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"


def test_dockerfile_install_and_entry_point(tmp_path) -> None:
    """The image's `pip install .` and entry point, without Docker: build the wheel, install it into a fresh
    virtualenv (dependencies from the project's environment, so nothing is downloaded), run `supportmesh`."""
    wheels = tmp_path / "wheels"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(wheels), str(REPO)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # The project's environment provides the dependencies, but not the project itself.
    site = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" /
     "project-deps.pth").write_text(site + "\n")
    wheel = next(wheels.glob("supportmesh-*.whl"))
    out = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([str(venv / "bin" / "supportmesh"), "--help"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and "actor" in out.stdout and "gateway" in out.stdout, out.stderr
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import actors.runtime, gateway.app, mocks.app, saga.log; print(gateway.app.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 0 and str(venv) in probe.stdout, probe.stderr + probe.stdout
