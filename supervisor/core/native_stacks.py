"""Native stacks of a wedged runner, from py-spy, taken just before it is killed.

faulthandler (SIGUSR1) shows where each thread is in Python; a main loop stuck in
an NCCL call, ``cudaStreamSynchronize`` or a lock shows there only as the Python
line that called it. ``py-spy dump --native`` reads every thread's C/C++ frames
too, from outside, through ptrace: where py-spy is installed (the ``stacks``
extra) and the host may ptrace the runner (root, the same user with
``kernel.yama.ptrace_scope`` 0, or CAP_SYS_PTRACE in a container), its output goes
into the failure's diagnostics and the runner's log file. Without py-spy nothing
is tried; without ptrace rights the one line py-spy prints says so.

Each dump is a child process awaited without blocking the loop, bounded in time,
and killed when over; nothing here raises.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

#: How long all dumps together may take (py-spy pauses the process while it reads).
BUDGET_S = 1.0
#: What a dump refused for want of ptrace rights says.
PTRACE_DENIED = (
    "permission denied: reading another process's stacks needs ptrace rights (root, "
    "or CAP_SYS_PTRACE in a container: see docs/operations.md)"
)
#: Lines kept of one process's dump (a runner with many threads prints many).
MAX_LINES = 200


def py_spy() -> str | None:
    """The py-spy executable: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


async def dump_one(exe: str, pid: int) -> list[str]:
    """``py-spy dump --native`` of ``pid``: its lines, or one line saying why none."""
    head = f"native stacks of pid {pid} (py-spy dump --native):"
    try:
        done = await anyio.run_process(
            [exe, "dump", "--native", "--pid", str(pid)],
            stdin=None,
            check=False,
        )
    except Exception as exc:  # noqa: BLE001 - evidence is best effort, never a new failure
        return [f"{head} could not run py-spy: {type(exc).__name__}: {exc}"]
    # Without the blank lines and py-spy's "Process N: <command line>" header.
    out = [
        line
        for line in done.stdout.decode("utf-8", "replace").splitlines()
        if line.strip() and not line.startswith("Process ")
    ]
    if done.returncode != 0 or not out:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        # py-spy prints "Error: ..." and then, at times, a backtrace of its own
        errors = [line for line in why if line.startswith("Error")] or why
        reason = errors[0] if errors else f"exit status {done.returncode}"
        if reason.lower().startswith("permission denied"):
            reason = PTRACE_DENIED  # (py-spy's own advice is to rerun it with sudo)
        return [f"{head} failed: {reason}"]
    return [head, *out[:MAX_LINES]]


#: Dumps in flight, by pid: ptrace admits one tracer, and the ranks of a group that
#: stall together each ask for every rank's stacks. A second asker awaits the first's.
_inflight: dict[int, tuple[anyio.Event, list[list[str]]]] = {}


async def dump_shared(exe: str, pid: int) -> list[str]:
    """`dump_one`, or the result of the dump of ``pid`` already in flight."""
    entry = _inflight.get(pid)
    if entry is not None:
        done, box = entry
        await done.wait()
        return box[0] if box else [f"native stacks of pid {pid} (py-spy dump --native): cut off"]
    done, box = anyio.Event(), []
    _inflight[pid] = (done, box)
    try:
        box.append(await dump_one(exe, pid))
        return box[0]
    finally:
        del _inflight[pid]
        done.set()


async def dump_native_stacks(
    pids: Sequence[int], *, budget: float = BUDGET_S, exe: str | None = None
) -> list[str]:
    """Every process's native stacks, dumped in parallel within ``budget`` seconds.

    [] where py-spy is not installed. A dump still running at the deadline is killed
    and named as cut off."""
    exe = exe or py_spy()
    if exe is None or not pids:
        return []
    results: dict[int, list[str]] = {}

    async def one(pid: int) -> None:
        results[pid] = await dump_shared(exe, pid)

    with anyio.move_on_after(budget):
        async with anyio.create_task_group() as tg:
            for pid in pids:
                tg.start_soon(one, pid)
    lines: list[str] = []
    for pid in pids:
        lines.extend(
            results.get(pid)
            or [f"native stacks of pid {pid} (py-spy dump --native): cut off after {budget:g}s"]
        )
    return lines


__all__ = ["BUDGET_S", "PTRACE_DENIED", "dump_native_stacks", "dump_one", "dump_shared", "py_spy"]
