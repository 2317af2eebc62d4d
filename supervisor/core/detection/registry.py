"""Every way a runner's end is noticed, in one list.

The rank supervisor starts the loop of each detector here that has one, and nothing
else detects: a new way to notice an end is a `protocol.Detector` literal plus an
entry here (``tests/unit/test_detection_registry.py`` holds the two together, and
checks that the config fields named exist). docs/operations.md's detection table is
this list in prose.
"""

from __future__ import annotations

import anyio

from supervisor.core.detection.interface import DetectorSpec, Watched


async def _exit(w: Watched) -> None:
    # The exit itself, and the early signal that the runner is dying (a runner
    # holding GiBs exits only once its memory is torn down, hundreds of ms later).
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.watches.watch_exit)
        tg.start_soon(w.early_death)


async def _poll(w: Watched) -> None:
    await w.watches.poll_alive()


async def _heartbeat(w: Watched) -> None:
    await w.watches.watch_heartbeat()


async def _progress(w: Watched) -> None:
    await w.watches.watch_progress()


async def _probe(w: Watched) -> None:
    await w.prober.run()


async def _channel(w: Watched) -> None:
    await w.relay.forward_events()


DETECTORS: tuple[DetectorSpec, ...] = (
    DetectorSpec(
        name="channel",
        watches="the event pipe: EOF (the runner closed it or died), an undecodable "
        "frame; also forwards every event to the host",
        config_fields=(),
        modules=("supervisor.core.relay",),
        reasons=(None, "crashed", "channel_closed"),
        run=_channel,
    ),
    DetectorSpec(
        name="sentinel",
        watches="the started process's exit: its pidfd (multiprocessing's sentinel "
        "without pidfds), readable the moment it is gone; and the early death signal: "
        "the runner's sentinel helpers die with its threads, and /proc says it is dying",
        config_fields=(),
        modules=("supervisor.core.detection.watches", "supervisor.core.dying"),
        reasons=(None,),
        run=_exit,
    ),
    DetectorSpec(
        name="poll",
        watches="is_alive and the runner tree's memory, every poll_interval: the "
        "backstop for death, and memory_limit",
        config_fields=("poll_interval", "memory_limit"),
        modules=("supervisor.core.detection.watches",),
        reasons=(None, "memory_limit"),
        run=_poll,
    ),
    DetectorSpec(
        name="heartbeat",
        watches="the runner's heartbeat thread's beat in shared memory, with the "
        "process state and CPU time from /proc as a second opinion: a frozen or "
        "stopped process",
        config_fields=(
            "heartbeat_interval",
            "heartbeat_check_interval",
            "heartbeat_stale_checks",
            "busy_grace",
            "start_timeout",
        ),
        modules=("supervisor.core.detection.watches",),
        reasons=(None, "unresponsive"),
        run=_heartbeat,
    ),
    DetectorSpec(
        name="progress",
        watches="the main loop's progress tick in shared memory against the current "
        "phase's deadline: a wedged main loop (idle runners are not watched)",
        config_fields=(
            "load_timeout",
            "warmup_timeout",
            "prefill_timeout",
            "decode_timeout",
            "progress_check_interval",
        ),
        modules=("supervisor.core.detection.watches",),
        reasons=("stalled",),
        run=_progress,
    ),
    DetectorSpec(
        name="probe",
        watches="answers to the deep health canary sent to an idle runner",
        config_fields=("probe_interval", "probe_timeout", "probe_failures"),
        modules=("supervisor.core.detection.prober",),
        reasons=("probe_failed",),
        run=_probe,
    ),
    DetectorSpec(
        name="log",
        watches="each runner output line against the fatal patterns",
        config_fields=("fatal_patterns", "default_fatal_patterns"),
        modules=("supervisor.logs.hook",),
        reasons=("fatal_log",),
        driven_by="the output pump: OutputCapture.on_line -> OutputHook.on_line, "
        "which calls RankSupervisor's fatal-line end",
    ),
    DetectorSpec(
        name="supervisor",
        watches="the supervisor itself: a bug in one of its loops, a runner that could "
        "not be started, a run the host cancelled",
        config_fields=(),
        modules=("supervisor.core.rank_supervisor",),
        reasons=("supervisor_error", "spawn_failed", "abandoned"),
        driven_by="the rank supervisor's guard around every loop, its end path when the "
        "host cancels run, and the restart layer's launcher",
    ),
    DetectorSpec(
        name="nvml",
        watches="the runner's GPUs through NVML, from outside the runner: Xid critical "
        "and double-bit ECC errors, a lost GPU, GPU memory per process tree",
        config_fields=("gpu_memory_limit",),
        modules=("supervisor.gpu.watcher",),
        reasons=("gpu_fault", "memory_limit"),
        driven_by="the node's one GpuWatcher, which ends a runner through its public fail verb",
    ),
)

BY_NAME: dict[str, DetectorSpec] = {spec.name: spec for spec in DETECTORS}


def loops() -> tuple[DetectorSpec, ...]:
    """The detectors the rank supervisor starts a loop for, in start order."""
    return tuple(spec for spec in DETECTORS if spec.run is not None)


__all__ = ["BY_NAME", "DETECTORS", "loops"]
