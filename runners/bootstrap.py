"""The runner process's entrypoint (the multiprocessing target)."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.ipc.spawn_args import BootstrapArgs

#: Exit code of a runner whose engine or loop raised.
EXIT_CRASHED = 1
#: Exit code of a runner whose supervisor disappeared (task pipe EOF).
EXIT_ORPHANED = 3


def _redirect_output(fd: int) -> None:
    """Point fds 1 and 2 at the supervisor's capture pipe, line buffered."""
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _setup_logging(runner_id: str) -> None:
    """The runner logs with the standard library, to the captured stderr.

    Not loguru, as the host does: importing it (and the asyncio it pulls in) costs
    ~100 ms of every runner's start-up, which is most of the time to recover from
    a death. Lines reach the host's loguru through the stderr capture anyway.
    """
    import logging

    level = os.environ.get("RUNNER_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s.%(msecs)03d %(levelname)-7s runner {runner_id} | %(message)s",
            datefmt="%H:%M:%S",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")


def main(args: BootstrapArgs) -> None:
    if args.keeper:
        # First, while single-threaded: this process stays behind as the keeper of
        # the runner's tree; only the runner returns from here.
        from runners.keeper import split

        split(args)
    else:
        args.shared.set_runner_pid(os.getpid())
    # Heartbeat next: everything after this (engine imports, weights) may be slow.
    from runners.heartbeat import Heartbeat, die_with_parent

    heartbeat = Heartbeat(args.shared, args.heartbeat_interval)
    # First beat from here, before the thread exists: if the main thread then grabs
    # the GIL for good, the supervisor still knows the interpreter came up.
    args.shared.beat()
    heartbeat.start()
    die_with_parent()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # lead our own group so the supervisor can kill the tree
    # The early death signal (runners.deathwatch), in our group: a signal aimed at the
    # host's group must not reach the sentinels.
    from runners.deathwatch import start_sentinels

    start_sentinels(args.shared)
    _redirect_output(args.output.fileno())
    # fatal signals (SIGSEGV, SIGABRT, ...) print every thread's stack; SIGUSR1 too,
    # which the supervisor sends to a wedged runner before it stops it.
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host's Ctrl-C is its business

    os.environ.update(args.spec.env)
    # A rank's variables, already there when spawn exec'd us; not with forkserver.
    os.environ.update(args.env)
    _setup_logging(args.runner_id)
    events = args.events
    try:
        from runners.chaos import Chaos, chaos_enabled
        from runners.engines import create_engine
        from runners.runner import Runner

        chaos = Chaos(chaos_enabled(args.chaos, os.environ), os.environ)
        engine = create_engine(args.spec.engine, args.spec.options)
        runner = Runner(args.runner_id, engine, args.tasks, events, args.shared, chaos)
        clean = runner.run()
    except BaseException as exc:  # noqa: BLE001 - report anything, then die
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        with contextlib.suppress(Exception):
            from supervisor.protocol import CrashReport

            events.send(CrashReport(f"{type(exc).__name__}: {exc}", tb))
        _exit(EXIT_CRASHED)
    _exit(0 if clean else EXIT_ORPHANED)


def _exit(code: int) -> None:
    """Exit now: engine threads (non-daemon pools) must not keep a dead runner alive."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
