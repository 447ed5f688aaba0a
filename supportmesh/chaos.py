"""`supportmesh chaos`: kill random actor processes (local) or delete random actor pods (k8s) at an interval,
for a duration, and print what was killed and when.

    supportmesh chaos --target local --interval 1 --duration 60
    supportmesh chaos --target local --include-nats --actors intent_analyzer,execution_coordinator

With `--include-nats` against a NATS cluster (`supportmesh up --nats-cluster 3`) the victims include the nodes
(`nats-n1`...), one at a time: a node is a victim only while every node is up and healthy, so the next is killed
only once the supervisor has brought the last one back and it has caught up (never a majority down).
    supportmesh chaos --target k8s --namespace supportmesh --selector app.kubernetes.io/component=actor
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class Kill:
    """One thing chaos did."""

    at_s: float
    target: str
    detail: str
    wall: float = 0.0  # epoch seconds, to line kills up with the saga log's event times


@dataclass
class Report:
    """What a chaos run did."""

    kills: list[Kill] = field(default_factory=list)
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    dry_run: bool = False  # the kills were only planned

    def summary(self) -> str:
        """One paragraph for the end of the run (a dry run's says that nothing was killed)."""
        by_target: dict[str, int] = {}
        for k in self.kills:
            by_target[k.target] = by_target.get(k.target, 0) + 1
        parts = ", ".join(f"{name} x{n}" for name, n in sorted(by_target.items()))
        kills = f"{len(self.kills)} kills ({parts or 'none'})"
        head = f"chaos (dry run, nothing was killed): would have made {kills}" if self.dry_run else f"chaos: {kills}"
        return f"{head}; {self.skipped} rounds found nothing to kill; {len(self.failures)} failed"


class ChaosError(RuntimeError):
    """One round could not list or kill its victim (logged and counted; the run goes on)."""


class Backend(Protocol):
    """Where victims are found and killed."""

    def victims(self) -> list[str]: ...

    def kill(self, victim: str, dry_run: bool) -> str: ...


class LocalBackend:
    """Actor processes of a running `supportmesh up`, found in its endpoints.json (re-read every round,
    since the supervisor restarts killed processes under new PIDs)."""

    def __init__(self, data_dir: Path, actors: set[str] | None, include_nats: bool) -> None:
        self.endpoints = Path(data_dir) / "endpoints.json"
        self.actors = actors
        self.include_nats = include_nats

    def _read(self) -> dict:
        if not self.endpoints.exists():
            raise SystemExit(f"supportmesh chaos: {self.endpoints} not found; is `supportmesh up` running?")
        return json.loads(self.endpoints.read_text())

    def victims(self) -> list[str]:
        """Actor processes that are serving: a process the supervisor is still starting (its `/readyz` not yet
        200) holds no step, so killing it again would test nothing (and on a busy machine most kills would)."""
        doc = self._read()
        names = [
            name for name, p in doc["processes"].items()
            if p.get("kind") == "actor" and p.get("pid") and (self.actors is None or p.get("actor") in self.actors)
            and _ready(p.get("url"))
        ]
        if self.include_nats:
            names += nats_victims(doc)
        return names

    def kill(self, victim: str, dry_run: bool) -> str:
        doc = self._read()
        nodes = {f"nats-{n['name']}": n.get("pid") for n in doc.get("nats_nodes", [])}
        pid = (doc.get("nats_pid") if victim == "nats-server" else nodes[victim] if victim in nodes
               else doc["processes"].get(victim, {}).get("pid"))
        if not pid:
            raise ChaosError(f"{victim} has no PID (down, being restarted)")
        if not dry_run:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                return f"pid {pid} already gone"
        return f"SIGKILL pid {pid}"


def nats_victims(doc: dict) -> list[str]:
    """The NATS victims of a local mesh: its single server, or, in a cluster, its nodes while all of them are up
    and healthy (so one at a time: never a second before the first is back and current)."""
    nodes = doc.get("nats_nodes") or []
    if len(nodes) <= 1:
        return ["nats-server"] if doc.get("nats_pid") else []
    if all(n.get("pid") and _ready(n.get("monitor_url"), path="/healthz") for n in nodes):
        return [f"nats-{n['name']}" for n in nodes]
    return []


def _ready(url: str | None, timeout_s: float = 2.0, path: str = "/readyz") -> bool:
    """True when the process at `url` answers `path` (`/readyz`) with 200 (one without a URL counts as ready)."""
    if not url:
        return True
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}{path}", timeout=timeout_s) as r:  # noqa: S310 (loopback)
            return r.status == 200
    except (OSError, ValueError):
        return False


class K8sBackend:
    """Actor pods, deleted through kubectl (grace period 0: a crash, not a drain)."""

    def __init__(self, namespace: str, selector: str, actors: set[str] | None, kubectl: str = "kubectl") -> None:
        self.namespace = namespace
        self.selector = selector
        self.actors = actors
        self.kubectl = kubectl

    def _run(self, *args: str) -> str:
        try:
            out = subprocess.run([self.kubectl, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ChaosError(f"kubectl {' '.join(args)} failed: {exc}") from exc
        if out.returncode != 0:
            raise ChaosError(f"kubectl {' '.join(args)} failed: {out.stderr.strip() or f'exit {out.returncode}'}")
        return out.stdout

    def victims(self) -> list[str]:
        raw = self._run("get", "pods", "-n", self.namespace, "-l", self.selector, "-o", "json")
        try:
            pods = json.loads(raw).get("items", [])
        except (ValueError, AttributeError) as exc:
            raise ChaosError(f"kubectl get pods printed no pod list: {exc}") from exc
        names = []
        for pod in pods:
            meta = pod.get("metadata", {})
            actor = meta.get("labels", {}).get("supportmesh.io/actor")
            status = pod.get("status", {})
            # Running and Ready: a pod still starting holds no step (killing it tests nothing).
            running = status.get("phase") == "Running" and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
            # A pod being deleted still says Running until it is gone: deleting it again kills nothing.
            terminating = bool(meta.get("deletionTimestamp"))
            if running and not terminating and (self.actors is None or actor in self.actors):
                names.append(meta["name"])
        return names

    def kill(self, victim: str, dry_run: bool) -> str:
        args = ["delete", "pod", victim, "-n", self.namespace, "--grace-period=0", "--force", "--wait=false"]
        if dry_run:
            return "would run: kubectl " + " ".join(args)
        self._run(*args)
        return "deleted pod"


def run(backend: Backend, *, interval_s: float, duration_s: float, seed: int | None, dry_run: bool,
        rounds: int | None = None, out=sys.stdout) -> Report:  # type: ignore[no-untyped-def]
    """Kill one random victim every `interval_s` seconds for `duration_s` seconds, or until `rounds` rounds
    (a kill, a failed kill or nothing to kill) have run, whichever comes first."""
    rng = random.Random(seed)
    report = Report(dry_run=dry_run)
    start = time.monotonic()
    done = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= duration_s or (rounds is not None and done >= rounds):
            break
        done += 1
        try:
            victims = backend.victims()
            if victims:
                victim = rng.choice(sorted(victims))
                wall = time.time()
                detail = backend.kill(victim, dry_run)
                report.kills.append(Kill(round(elapsed, 2), victim.rsplit("-", 1)[0] if "-" in victim else victim,
                                         detail, wall))
                print(f"[chaos +{elapsed:6.2f}s @{wall:.3f}] {'(dry run) ' if dry_run else ''}{victim}: {detail}",
                      file=out, flush=True)
            else:
                report.skipped += 1
        except ChaosError as exc:
            # One failed round (a pod already gone, an API server hiccup) must not end the experiment.
            report.failures.append(str(exc))
            print(f"[chaos +{elapsed:6.2f}s] failed: {exc}", file=out, flush=True)
        time.sleep(max(0.0, min(interval_s, duration_s - (time.monotonic() - start))))
    print(report.summary(), file=out, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh chaos`."""
    parser = argparse.ArgumentParser(prog="supportmesh chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=["local", "k8s"], default="local")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between kills")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run")
    parser.add_argument("--actors", default="", help="comma-separated actor names (default: all)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None,
                        help="stop after this many rounds (with --seed: the same victims on any machine)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be killed, kill nothing")
    parser.add_argument("--data-dir", default=".supportmesh", help="local: where endpoints.json is")
    parser.add_argument("--include-nats", action="store_true",
                        help="local: nats-server is a victim too (in a cluster, one node at a time)")
    parser.add_argument("--namespace", default="supportmesh", help="k8s: namespace")
    parser.add_argument("--selector", default="app.kubernetes.io/component=actor", help="k8s: pod label selector")
    parser.add_argument("--kubectl", default="kubectl", help="k8s: kubectl binary")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.duration <= 0 or (args.rounds is not None and args.rounds <= 0):
        parser.error("--interval, --duration and --rounds must be positive")
    actors = {a.strip() for a in args.actors.split(",") if a.strip()} or None
    backend: Backend
    if args.target == "local":
        backend = LocalBackend(Path(args.data_dir), actors, args.include_nats)
    else:
        backend = K8sBackend(args.namespace, args.selector, actors, args.kubectl)
    try:
        report = run(backend, interval_s=args.interval, duration_s=args.duration, seed=args.seed,
                     dry_run=args.dry_run, rounds=args.rounds)
    except KeyboardInterrupt:
        return 130
    if report.failures and not report.kills:
        print(f"supportmesh chaos: every round failed, e.g. {report.failures[0]}", file=sys.stderr)
        return 1
    return 0
