"""py-spy's native stacks: bounded, never raising, saying why when there are none."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest

from supervisor.core import native_stacks
from tests.support import leaks

pytestmark = pytest.mark.anyio


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-py-spy"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_a_failing_dump_says_why(tmp_path: Path) -> None:
    # py-spy's error, then a backtrace of its own: the error is what is kept
    said = "Error: Failed to get process executable name. Check that the process is running."
    exe = _script(tmp_path, f'echo "{said}" >&2; echo "   9: main" >&2; exit 1')
    lines = await native_stacks.dump_native_stacks([os.getpid()], exe=exe)
    assert lines == [f"native stacks of pid {os.getpid()} (py-spy dump --native): failed: {said}"]


async def test_a_dump_without_ptrace_rights_says_what_it_needs(tmp_path: Path) -> None:
    # py-spy's words when ptrace is refused (a container without CAP_SYS_PTRACE)
    said = "Permission Denied: Try running again with elevated permissions by going 'sudo'"
    exe = _script(tmp_path, f'echo "{said}" >&2; exit 1')
    (line,) = await native_stacks.dump_native_stacks([os.getpid()], exe=exe)
    assert line.endswith(f"failed: {native_stacks.PTRACE_DENIED}")
    assert "CAP_SYS_PTRACE" in line


async def test_a_dump_over_its_budget_is_cut_off_and_killed(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    exe = _script(tmp_path, f"echo $$ > {marker}; exec sleep 30")
    started = time.monotonic()
    lines = await native_stacks.dump_native_stacks([1, 2], exe=exe, budget=0.5)
    assert time.monotonic() - started < 5
    assert lines == [
        "native stacks of pid 1 (py-spy dump --native): cut off after 0.5s",
        "native stacks of pid 2 (py-spy dump --native): cut off after 0.5s",
    ]
    assert not leaks.running(int(marker.read_text()))  # killed, not left behind


async def test_nothing_is_tried_without_py_spy(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent")
    lines = await native_stacks.dump_native_stacks([os.getpid()], exe=missing)
    assert len(lines) == 1
    assert "could not run py-spy: FileNotFoundError" in lines[0]
    assert await native_stacks.dump_native_stacks([], exe=missing) == []


@pytest.mark.skipif(native_stacks.py_spy() is None, reason="py-spy is not installed ([stacks])")
async def test_a_real_dump_shows_a_c_frame() -> None:
    code = "import ctypes; print('go', flush=True); ctypes.CDLL(None).pause()"
    async with await anyio.open_process([sys.executable, "-c", code]) as child:
        try:
            assert child.stdout is not None
            assert (await child.stdout.receive()).startswith(b"go")
            await anyio.sleep(0.3)  # into pause()
            lines = await native_stacks.dump_native_stacks([child.pid], budget=5.0)
        finally:
            child.kill()
    assert lines[0] == f"native stacks of pid {child.pid} (py-spy dump --native):"
    assert any(line.strip().startswith("pause (libc") for line in lines), lines


@pytest.mark.skipif(
    native_stacks.py_spy() is None or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs py-spy, root and setpriv (to run py-spy as another user)",
)
async def test_a_real_dump_refused_by_the_kernel_says_what_it_needs() -> None:
    # py-spy as user nobody against our process: ptrace is refused, as in a container
    # without CAP_SYS_PTRACE. (A copy in a directory nobody may enter.)
    real = native_stacks.py_spy()
    assert real is not None
    with tempfile.TemporaryDirectory(prefix="py-spy-as-nobody-") as where:
        os.chmod(where, 0o755)
        copy = shutil.copy(real, os.path.join(where, "py-spy"))
        os.chmod(copy, 0o755)
        exe = _script(
            Path(where), f'exec setpriv --reuid=65534 --regid=65534 --clear-groups {copy} "$@"'
        )
        (line,) = await native_stacks.dump_native_stacks([os.getpid()], exe=exe, budget=5.0)
    assert line == (
        f"native stacks of pid {os.getpid()} (py-spy dump --native): failed: "
        f"{native_stacks.PTRACE_DENIED}"
    )
