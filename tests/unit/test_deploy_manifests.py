"""The deployment examples agree with the supervisor they deploy.

Each container that runs ``runner-supervisor`` in ``deploy/kubernetes/*.yaml`` is
parsed with the CLI's own parser, so every bound below is the one that container
really runs with (a default, or the flag it sets). The invariants, and why
(docs/fleet.md explains them for operators):

- the command parses; it serves (``--serve``), on a port the kubelet can reach
  (``--health-host 0.0.0.0``), and every probe targets that port;
- startup and liveness probe ``/healthz``, readiness ``/readyz``; and ``/healthz`` is
  200 in every phase but a permanent one, so no probe kills a pod for a slow load,
  a warm-up or a restart backoff (checked on the health app itself);
- startup: the supervisor gets at least ``start_timeout`` to answer, as long as it
  gives a runner to start its heartbeat;
- liveness: the kubelet gives up on the supervisor's loop no sooner than the
  supervisor gives up on a busy runner (``busy_grace``, and so ``freeze_bound``);
- readiness: probed at least as often as ``/readyz``'s ``Retry-After`` suggests, and
  out of rotation well before tasks waiting for a Ready runner time out (``ready_wait``);
- termination: ``terminationGracePeriodSeconds`` covers preStop + ``shutdown_grace`` +
  ``stop_grace`` + an exit margin, so the kubelet's SIGKILL never cuts a graceful stop;
- a Deployment's progress deadline covers ``start_timeout + load_timeout +
  warmup_timeout``: a rollout is not declared stuck before the supervisor could
  have declared the first load stalled;
- ``--memory-limit`` is below the container's memory limit (we report the runner's
  growth with evidence before the kernel's OOM killer acts); GPUs are limits;
- a LeaderWorkerSet recreates the whole group on a restart and its ranks do not
  restart alone (``--restart never``); each pod runs its node's ranks as one runner
  (``--world-size``), one GPU per rank.

The systemd unit beside them still parses as an INI file with the same stop bound.
"""

from __future__ import annotations

import argparse
import configparser
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.cli.app import build_parser, config_from_args, policy_from_args
from supervisor.cli.args import spec_from_args
from supervisor.config import SupervisorConfig
from supervisor.ops.health import LOADING_RETRY_AFTER, HealthApp
from supervisor.ops.observe import RunnerHealth
from supervisor.ops.phases import ALL_PHASES, PERMANENT_PHASES, READY_PHASES, Phase
from supervisor.restart.policy import RestartPolicy

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
UNIT = DEPLOY / "runner-supervisor.service"
#: After the runner is gone: reap it, flush output, exit the interpreter (measured in
#: tens of milliseconds; the margin is for a loaded node and a CUDA context teardown).
EXIT_MARGIN = 5.0
#: Addresses on which the kubelet (probing the pod IP) reaches the health port.
POD_REACHABLE = {"0.0.0.0", "::"}


@dataclass(frozen=True)
class Worker:
    """One container that runs the supervisor, with the bounds it really runs with."""

    where: str
    pod: dict[str, Any]
    container: dict[str, Any]
    args: argparse.Namespace
    config: SupervisorConfig
    policy: RestartPolicy

    def probe(self, kind: str) -> dict[str, Any]:
        probe = self.container.get(kind)
        assert isinstance(probe, dict), f"{self.where}: no {kind}"
        return probe


def _pod_specs(node: Any) -> Iterator[dict[str, Any]]:
    """Every pod spec (a mapping with ``containers``) anywhere in a document."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for value in node.values():
            yield from _pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _pod_specs(value)


def _cli_argv(container: dict[str, Any]) -> list[str] | None:
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    for i, word in enumerate(argv):
        if word.rsplit("/", 1)[-1] == "runner-supervisor":
            return argv[i + 1 :]
    return None


def _worker(where: str, pod: dict[str, Any], container: dict[str, Any], argv: list[str]) -> Worker:
    args = build_parser().parse_args(argv)
    return Worker(where, pod, container, args, config_from_args(args), policy_from_args(args))


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _workers(path: Path) -> list[Worker]:
    found = []
    for doc in _documents(path):
        for pod in _pod_specs(doc):
            for container in pod["containers"]:
                argv = _cli_argv(container)
                if argv is not None:
                    where = f"{path.name}: {doc['kind']}/{container['name']}"
                    found.append(_worker(where, pod, container, argv))
    return found


def _window(probe: dict[str, Any]) -> float:
    """Seconds of consecutive failures before the kubelet acts on a probe."""
    return float(probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3))


def _prestop_seconds(container: dict[str, Any]) -> float:
    pre = container.get("lifecycle", {}).get("preStop")
    if pre is None:
        return 0.0
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    assert command[:1] == ["sleep"], f"preStop must be a sleep, got {pre}"
    return float(command[1])


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)([KMGTPE]i?|[kmu]?)$")
_FACTORS = {"": 1, "k": 1e3, "m": 1e-3, "u": 1e-6, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_FACTORS.update({"E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50})


def _quantity(value: Any) -> float:
    """A Kubernetes resource quantity (``1Gi``, ``768M``, ``500m``, ``2``) as a number."""
    m = _QUANTITY.match(str(value))
    assert m is not None, f"not a Kubernetes quantity: {value!r}"
    return float(m.group(1)) * _FACTORS[m.group(2)]


ALL = [w for path in MANIFESTS for w in _workers(path)]
IDS = [w.where for w in ALL]


def test_every_manifest_runs_the_supervisor() -> None:
    assert MANIFESTS, "deploy/kubernetes/ has no manifests"
    for path in MANIFESTS:
        docs = _documents(path)
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
        assert _workers(path), f"{path.name} runs no runner-supervisor container"


def test_one_manifest_gives_each_worker_one_gpu() -> None:
    gpus = [w.container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for w in ALL]
    assert 1 in gpus, "no manifest for GPU nodes (nvidia.com/gpu: 1 per worker)"


@pytest.mark.parametrize("w", ALL, ids=IDS)
def test_health_port_is_served_and_probed(w: Worker) -> None:
    assert w.args.command == "run", w.where
    assert w.args.serve, f"{w.where}: a service needs --serve"
    assert w.args.health_port, f"{w.where}: no --health-port"
    assert w.args.health_host in POD_REACHABLE, f"{w.where}: the kubelet cannot reach it"
    ports = {p.get("name"): p["containerPort"] for p in w.container.get("ports", [])}
    assert w.args.health_port in ports.values(), f"{w.where}: health port not declared"
    for kind, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = w.probe(kind)["httpGet"]
        assert get["path"] == path, f"{w.where}: {kind} must probe {path}"
        port = ports.get(get["port"], get["port"])
        assert port == w.args.health_port, f"{w.where}: {kind} probes port {get['port']}"


@pytest.mark.parametrize("w", ALL, ids=IDS)
def test_probe_timings_fit_the_supervisor_bounds(w: Worker) -> None:
    c, p = w.config, w.policy
    startup, live, ready = (w.probe(k) for k in ("startupProbe", "livenessProbe", "readinessProbe"))
    assert _window(startup) >= c.start_timeout, f"{w.where}: startup budget < start_timeout"
    assert _window(live) >= max(c.busy_grace, c.freeze_bound), f"{w.where}: liveness too eager"
    for probe in (startup, live, ready):
        assert 1 <= probe.get("timeoutSeconds", 1) <= probe.get("periodSeconds", 10)
    assert ready.get("periodSeconds", 10) <= LOADING_RETRY_AFTER, f"{w.where}: readiness slow"
    assert _window(ready) <= p.ready_wait, f"{w.where}: out of rotation after ready_wait"
    assert ready.get("successThreshold", 1) == 1, f"{w.where}: a Ready replacement waits"


@pytest.mark.parametrize("w", ALL, ids=IDS)
def test_termination_grace_covers_a_graceful_stop(w: Worker) -> None:
    prestop = _prestop_seconds(w.container)
    grace = w.pod.get("terminationGracePeriodSeconds", 30)
    needed = prestop + w.config.shutdown_grace + w.config.stop_grace + EXIT_MARGIN
    assert grace >= needed, f"{w.where}: grace {grace} s < {needed} s"


@pytest.mark.parametrize("w", ALL, ids=IDS)
def test_memory_and_gpu_limits(w: Worker) -> None:
    resources = w.container.get("resources", {})
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    if w.config.memory_limit is not None and "memory" in limits:
        assert w.config.memory_limit < _quantity(limits["memory"]), w.where
    if "nvidia.com/gpu" in requests:
        assert requests["nvidia.com/gpu"] == limits.get("nvidia.com/gpu"), w.where


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_workload_settings(path: Path) -> None:
    for doc in _documents(path):
        spec = doc["spec"]
        if doc["kind"] == "Deployment":
            labels = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items(), path.name
            for w in _workers(path):
                c = w.config
                load = c.start_timeout + c.load_timeout + c.warmup_timeout
                assert spec.get("progressDeadlineSeconds", 600) >= load, w.where
        elif doc["kind"] == "LeaderWorkerSet":
            template = spec["leaderWorkerTemplate"]
            assert template["restartPolicy"] == "RecreateGroupOnPodRestart", path.name
            assert template["size"] >= 2, path.name
            for w in _workers(path):
                assert w.policy.mode == "never", f"{w.where}: a rank must not restart alone"
                # Each pod runs its node's ranks as one logical runner, a GPU per rank.
                world_size = spec_from_args(w.args).world_size
                assert world_size >= 2, f"{w.where}: no --world-size"
                gpus = int(w.container["resources"]["limits"].get("nvidia.com/gpu", 0))
                assert gpus == world_size, f"{w.where}: {gpus} GPUs for {world_size} ranks"


class _Source:
    """A node of one runner in a given phase, for the health app."""

    def __init__(self, phase: Phase) -> None:
        self.phase = phase

    def health_snapshots(self) -> list[RunnerHealth]:
        return [RunnerHealth("r", self.phase, 1, 0, None, None, None, 0, 0)]

    def add_observer(self, observer: object) -> None:
        pass


@pytest.mark.parametrize("phase", ALL_PHASES)
def test_probe_endpoints_mean_what_the_manifests_assume(phase: Phase) -> None:
    app = HealthApp(_Source(phase))
    live, _, _ = app.respond("GET", "/healthz")
    ready, _, _ = app.respond("GET", "/readyz")
    assert (live == 200) == (phase not in PERMANENT_PHASES)
    assert (ready == 200) == (phase in READY_PHASES)


# ----------------------------------------------------------------- systemd
def _timespan(text: str) -> float:
    """A systemd time span of the simple kinds the unit uses: ``30s``, ``15min``, ``10``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?\s*", text)
    assert m is not None, f"unsupported time span {text!r}"
    scale = {"ms": 1e-3, None: 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    return float(m.group(1)) * scale[m.group(2)]


def test_systemd_unit_parses() -> None:
    # systemd allows repeated keys and has no interpolation; keys are case-sensitive.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"].replace("\\\n", " "))
    assert argv[0].endswith("runner-supervisor"), argv[0]
    args = build_parser().parse_args(argv[1:])
    config = config_from_args(args)
    assert args.serve
    stop = _timespan(service.get("TimeoutStopSec", "90s"))
    assert stop >= config.shutdown_grace + config.stop_grace + EXIT_MARGIN
