"""Prometheus metrics for supervised runners (needs the ``health`` extra: prometheus-client).

Two kinds of numbers:

- Things that happen (failures, restarts, give-ups, finished tasks, detection
  latency) are counted as they happen: `SupervisorMetrics` is a
  `SupervisorObserver`; attach it before the runners start.
- Things that are (heartbeat age, RSS, tasks in flight, phase, incarnation) are
  read from the live supervisors at scrape time by a custom collector, from
  values the supervisors already hold: a scrape does no system calls.

Every `SupervisorMetrics` has its own `CollectorRegistry` (never the global one),
so several nodes or tests in one process do not collide.

Label values that come from outside (runner ids; failure reasons and detectors, which
a runner's own status report could carry) go through `printable` first: Prometheus
escapes only backslash, quote and newline, so a carriage return or an escape
sequence would reach scrapers raw, and a lone surrogate would fail every scrape.

Detection latency (``runner_supervisor_detection_latency_seconds``) is the time
from the best estimate of the moment the runner died or froze to the moment its
`RunnerFailed` was emitted. For deaths the estimate is when the kernel reported
the exit through a pidfd (independent of the detectors), for freezes the last
heartbeat change the supervisor saw. Wedges (progress deadlines), failed probes
and memory-limit kills have no such moment and are not observed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from supervisor.logs.files import dropped_lines, reopened_log_files
from supervisor.ops.escape import printable
from supervisor.ops.observe import HealthSource, RunnerHealth
from supervisor.ops.phases import ALL_PHASES
from supervisor.ops.readiness import ready_runners, source_ready
from supervisor.protocol import RunnerFailed, TaskStatus

PREFIX = "runner_supervisor"
#: Seconds. Death detection is event driven (ms); freezes take seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)


class _LiveCollector(Collector):
    def __init__(self, sources: list[HealthSource]) -> None:
        self._sources = sources

    def _snapshots(self) -> Iterable[RunnerHealth]:
        for source in self._sources:
            yield from source.health_snapshots()

    def collect(self) -> Iterator[Metric]:
        heartbeat = GaugeMetricFamily(
            f"{PREFIX}_heartbeat_age_seconds",
            "Seconds since the runner's heartbeat last changed, as of the last check",
            labels=["runner_id"],
        )
        rss = GaugeMetricFamily(
            f"{PREFIX}_rss_bytes",
            "Memory of the runner's process tree (the runner's RSS plus its descendants' "
            "unshared memory, or the cgroup's memory.current), as memory_limit sees it",
            labels=["runner_id"],
        )
        descendants = GaugeMetricFamily(
            f"{PREFIX}_descendants",
            "Processes the runner started that are alive (tokenizer pools, compile workers)",
            labels=["runner_id"],
        )
        containment = GaugeMetricFamily(
            f"{PREFIX}_containment",
            "1 for the layer that holds the runner's process tree (cgroup, keeper or group)",
            labels=["runner_id", "layer"],
        )
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_tasks_in_flight",
            "Tasks sent and not finished: pending (not acknowledged) or in_progress",
            labels=["runner_id", "state"],
        )
        phase = GaugeMetricFamily(
            f"{PREFIX}_phase", "1 for the runner's current phase", labels=["runner_id", "phase"]
        )
        ready = GaugeMetricFamily(
            f"{PREFIX}_ready",
            "1 if the runner takes tasks (Ready or Running; a group member only while its "
            "whole group does)",
            labels=["runner_id"],
        )
        incarnation = GaugeMetricFamily(
            f"{PREFIX}_incarnation",
            "Number of the runner's current incarnation",
            labels=["runner_id"],
        )
        group_ready = GaugeMetricFamily(
            f"{PREFIX}_group_ready",
            "1 if every member of the restart group takes tasks",
            labels=["group"],
        )
        gpu_memory = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_bytes",
            "GPU memory held by the runner's process tree, per NVML, as gpu_memory_limit "
            "sees it (only with the GPU watcher)",
            labels=["runner_id"],
        )
        gpu_ecc = GaugeMetricFamily(
            f"{PREFIX}_gpu_ecc_uncorrected_errors",
            "Uncorrected ECC errors since the driver loaded, on the GPUs the runner uses",
            labels=["runner_id"],
        )
        gpu_retired = GaugeMetricFamily(
            f"{PREFIX}_gpu_retired_pages",
            "Pages retired or rows remapped for memory errors, on the GPUs the runner uses",
            labels=["runner_id"],
        )
        gpu_pending = GaugeMetricFamily(
            f"{PREFIX}_gpu_retirement_pending",
            "1 if a page retirement or row remapping on the runner's GPUs waits for a reset",
            labels=["runner_id"],
        )
        rank_rss = GaugeMetricFamily(
            f"{PREFIX}_rank_rss_bytes",
            "Memory of one rank's process tree, for runners made of ranks (world_size > 1)",
            labels=["runner_id", "rank"],
        )
        rank_heartbeat = GaugeMetricFamily(
            f"{PREFIX}_rank_heartbeat_age_seconds",
            "Seconds since one rank's heartbeat last changed (world_size > 1)",
            labels=["runner_id", "rank"],
        )
        rank_phase = GaugeMetricFamily(
            f"{PREFIX}_rank_phase",
            "1 for one rank's current phase (world_size > 1)",
            labels=["runner_id", "rank", "phase"],
        )
        snaps = list(self._snapshots())
        for h in snaps:
            rid = printable(h.runner_id)
            for r in h.ranks:
                labels = [rid, str(r.rank)]
                if r.rss is not None:
                    rank_rss.add_metric(labels, float(r.rss))
                if r.heartbeat_age is not None:
                    rank_heartbeat.add_metric(labels, r.heartbeat_age)
                rank_phase.add_metric([*labels, r.phase], 1.0)
        ready_ids = {h.runner_id for h in ready_runners(snaps)}
        groups: dict[str, bool] = {}
        for h in snaps:
            if h.group is not None:
                groups[h.group] = groups.get(h.group, True) and h.runner_id in ready_ids
        for name, is_ready in groups.items():
            group_ready.add_metric([printable(name)], 1.0 if is_ready else 0.0)
        for h in snaps:
            rid = printable(h.runner_id)
            if h.heartbeat_age is not None:
                heartbeat.add_metric([rid], h.heartbeat_age)
            if h.rss is not None:
                rss.add_metric([rid], float(h.rss))
            if h.descendants is not None:
                descendants.add_metric([rid], float(h.descendants))
            if h.containment is not None:
                containment.add_metric([rid, h.containment], 1.0)
            if h.gpu_memory is not None:
                gpu_memory.add_metric([rid], float(h.gpu_memory))
            if h.gpu_ecc_uncorrected is not None:
                gpu_ecc.add_metric([rid], float(h.gpu_ecc_uncorrected))
            if h.gpu_retired_pages is not None:
                gpu_retired.add_metric([rid], float(h.gpu_retired_pages))
            if h.gpu_retirement_pending is not None:
                gpu_pending.add_metric([rid], 1.0 if h.gpu_retirement_pending else 0.0)
            in_flight.add_metric([rid, "pending"], float(h.pending))
            in_flight.add_metric([rid, "in_progress"], float(h.in_progress))
            for name in ALL_PHASES:
                phase.add_metric([rid, name], 1.0 if h.phase == name else 0.0)
            ready.add_metric([rid], 1.0 if h.runner_id in ready_ids else 0.0)
            incarnation.add_metric([rid], float(h.incarnation))
        yield from (heartbeat, rss, descendants, containment, in_flight, phase, ready, incarnation)
        yield group_ready
        node_ready = GaugeMetricFamily(
            f"{PREFIX}_node_ready",
            "1 if what is served is ready, as /readyz and systemd READY=1 say (min_ready, groups)",
        )
        node_ready.add_metric([], 1.0 if all(source_ready(s) for s in self._sources) else 0.0)
        yield node_ready
        yield from (rank_rss, rank_heartbeat, rank_phase)
        yield from (gpu_memory, gpu_ecc, gpu_retired, gpu_pending)
        yield CounterMetricFamily(
            f"{PREFIX}_log_lines_dropped",
            "Runner log-file lines lost, in this process: the writer fell behind (a slow "
            "disk) or could not write them (a full disk, a file that cannot be opened)",
            value=dropped_lines(),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_log_files_reopened",
            "Runner log files found removed or replaced while open, and made again, in this "
            "process",
            value=reopened_log_files(),
        )


class SupervisorMetrics:
    """Prometheus metrics of one node (or one supervised runner), in their own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, source: HealthSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sources: list[HealthSource] = []
        r = self.registry
        self.failures = Counter(
            f"{PREFIX}_failures",
            "Runner incarnation failures (RunnerFailed) by reason and detector",
            ["runner_id", "reason", "detected_by"],
            registry=r,
        )
        self.restarts = Counter(
            f"{PREFIX}_restarts",
            "Runner restarts started by the restart policy",
            ["runner_id"],
            registry=r,
        )
        self.gave_up = Counter(
            f"{PREFIX}_gave_up",
            "Times the restart policy gave up on a runner",
            ["runner_id"],
            registry=r,
        )
        self.tasks = Counter(
            f"{PREFIX}_tasks",
            "Host tasks by terminal status",
            ["runner_id", "status"],
            registry=r,
        )
        self.detection_latency = Histogram(
            f"{PREFIX}_detection_latency_seconds",
            "RunnerFailed emitted minus the best estimate of the death or freeze time",
            ["detected_by"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_LiveCollector(self._sources))
        if source is not None:
            self.watch(source)

    def watch(self, source: HealthSource) -> None:
        """Export ``source``'s live gauges and count what happens to it from now on."""
        self.watch_live(source)
        source.add_observer(self)

    def watch_live(self, source: HealthSource) -> None:
        """Export ``source``'s live gauges only (when this object was already given to
        the supervisor as an observer at construction)."""
        self._sources.append(source)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    # ------------------------------------------------------ SupervisorObserver
    def on_failure(
        self, runner_id: str, failure: RunnerFailed, detection_latency: float | None
    ) -> None:
        detected_by = printable(failure.detected_by)
        self.failures.labels(printable(runner_id), printable(failure.reason), detected_by).inc()
        if detection_latency is not None:
            self.detection_latency.labels(detected_by).observe(detection_latency)

    def on_restart(self, runner_id: str, incarnation: int, delay: float) -> None:
        self.restarts.labels(printable(runner_id)).inc()

    def on_gave_up(self, runner_id: str, reason: str) -> None:
        self.gave_up.labels(printable(runner_id)).inc()

    def on_task_finished(self, runner_id: str, status: TaskStatus) -> None:
        self.tasks.labels(printable(runner_id), str(status)).inc()


__all__ = ["LATENCY_BUCKETS", "PREFIX", "SupervisorMetrics"]
