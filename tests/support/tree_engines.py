"""An engine that starts children the way real ML runners do, loaded in the runner as
``tests.support.tree_engines:TreeEngine``.

``load()`` starts a ``sleep`` through subprocess, a fork-started multiprocessing child
(which inherits every fd of the runner: its pipes, multiprocessing's sentinel), and a
daemon (``sh -c 'setsid sleep 600 &'``, which leaves the process group and is
orphaned at once). It writes their pids, as JSON, to ``options["pid_file"]``.
``alloc_mib`` makes the fork child allocate and touch that many MiB first.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from runners.engines.base import EngineContext
from runners.engines.echo import EchoEngine


def _hold(alloc_mib: int, go: Any, ready: Any) -> None:
    go.wait()  # the pids are written first, however soon a memory limit strikes
    # Bytes repetition writes every byte: the pages are resident, not lazily zero.
    data = b"\x01" * (alloc_mib << 20)
    ready.set()
    time.sleep(600)
    del data


class TreeEngine(EchoEngine):
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.pid_file = str(options["pid_file"])
        self.alloc_mib = int(options.get("alloc_mib", 0))
        super().__init__({k: v for k, v in options.items() if k in ("token_delay",)})

    def load(self, ctx: EngineContext) -> None:
        sleeper = subprocess.Popen(["sleep", "600"])
        fork = multiprocessing.get_context("fork")
        go, ready = fork.Event(), fork.Event()
        child = fork.Process(target=_hold, args=(self.alloc_mib, go, ready), name="tree-fork-child")
        child.start()
        daemon_file = f"{self.pid_file}.daemon"
        subprocess.run(["sh", "-c", 'setsid sleep 600 & echo $! > "$0"', daemon_file], check=True)
        with open(daemon_file) as f:
            daemon = int(f.read())
        os.unlink(daemon_file)
        pids = {"subprocess": sleeper.pid, "fork": child.pid, "daemon": daemon}
        tmp = f"{self.pid_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(pids, f)
        os.replace(tmp, self.pid_file)
        go.set()
        while not ready.wait(0.05):  # allocating 500 MiB takes a while
            ctx.tick()
        # Keep the handles: a collected Popen would not kill its child anyway, and the
        # point is that nothing here cleans up after itself.
        self._children = (sleeper, child)
