"""`TreeWalk` finds what `proctree.descendants` finds, with its files kept open."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.tree_walk import TreeWalk
from supervisor.ipc.proctree import descendants


def _write(tmp: Path, tree: dict[int, dict[int, list[int]]]) -> str:
    """``tree``: pid -> {tid: [children forked by that thread]} (a fake /proc)."""
    for pid, threads in tree.items():
        for tid, kids in threads.items():
            task = tmp / str(pid) / "task" / str(tid)
            task.mkdir(parents=True, exist_ok=True)
            (task / "children").write_text("".join(f"{k} " for k in kids))
    return str(tmp)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_same_tree_as_proctree_and_follows_changes(tmp_path: Path) -> None:
    proc = _write(tmp_path, {1: {1: [2, 3]}, 2: {2: [4]}, 3: {3: []}, 4: {4: []}})
    walk = TreeWalk(proc)
    try:
        assert walk.descendants(1) == descendants(1, proc)
        # a new thread of pid 3 forks pid 5: the link count of 3's task dir changes
        _write(tmp_path, {3: {6: [5]}, 5: {5: []}})
        assert sorted(walk.descendants(1)) == [2, 3, 4, 5]
        # pid 4 exits (its parent's children file no longer names it)
        (tmp_path / "2" / "task" / "2" / "children").write_text("")
        assert sorted(walk.descendants(1)) == sorted(descendants(1, proc)) == [2, 3, 5]
    finally:
        walk.close()


def test_files_of_processes_that_left_are_closed(tmp_path: Path) -> None:
    proc = _write(tmp_path, {1: {1: [2]}, 2: {2: [3]}, 3: {3: []}})
    before = _open_fds()
    walk = TreeWalk(proc)
    walk.descendants(1)
    assert _open_fds() == before + 6  # a task dir and one children file per process
    (tmp_path / "1" / "task" / "1" / "children").write_text("")
    assert walk.descendants(1) == []
    assert _open_fds() == before + 2  # the root's only
    walk.close()
    assert _open_fds() == before


@given(
    st.dictionaries(
        st.integers(2, 30), st.lists(st.integers(2, 30), max_size=3), min_size=1, max_size=12
    )
)
def test_any_tree_as_proctree(edges: dict[int, list[int]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tree = {1: {1: list(edges)}} | {pid: {pid: kids} for pid, kids in edges.items()}
        proc = _write(Path(tmp), tree)
        walk = TreeWalk(proc)
        try:
            assert walk.descendants(1) == descendants(1, proc)
        finally:
            walk.close()


def test_real_processes_and_a_thread_that_forks() -> None:
    walk = TreeWalk()
    kids = [subprocess.Popen(["sleep", "60"])]
    try:
        assert set(walk.descendants(os.getpid())) >= {kids[0].pid}
        started = threading.Event()

        def fork_from_a_thread() -> None:
            kids.append(subprocess.Popen(["sleep", "60"]))
            started.set()

        thread = threading.Thread(target=fork_from_a_thread)
        thread.start()
        started.wait(10)
        thread.join()
        # listed under the thread that forked it, then (the thread gone) under another
        assert {k.pid for k in kids} <= set(walk.descendants(os.getpid()))
        kids[0].kill()
        kids[0].wait()
        assert kids[0].pid not in walk.descendants(os.getpid())
    finally:
        for kid in kids:
            kid.kill()
            kid.wait()
        walk.close()
