"""The /proc walks the keeper and the host share, on a fake /proc."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.procfs import uss
from supervisor.ipc.proctree import children, descendants, name, parent


def _proc(tmp_path: Path, tree: dict[int, dict[int, list[int]]]) -> str:
    """``tree``: pid -> {tid: [children forked by that thread]}."""
    for pid, threads in tree.items():
        for tid, kids in threads.items():
            task = tmp_path / str(pid) / "task" / str(tid)
            task.mkdir(parents=True)
            (task / "children").write_text("".join(f"{k} " for k in kids))
    return str(tmp_path)


def test_children_of_every_thread(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {10: {10: [11], 12: [13, 14]}})
    assert sorted(children(10, proc)) == [11, 13, 14]
    assert children(99, proc) == []  # gone


def test_descendants_parents_first(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {1: {1: [2, 3]}, 2: {2: [4]}, 3: {3: []}, 4: {4: [5]}, 5: {5: []}})
    out = descendants(1, proc)
    assert sorted(out) == [2, 3, 4, 5]
    assert out.index(2) < out.index(4) < out.index(5)


def test_a_racy_read_cannot_loop(tmp_path: Path) -> None:
    # pid reuse between reads could show a "cycle"; the walk must still end
    proc = _proc(tmp_path, {1: {1: [2]}, 2: {2: [1, 3]}, 3: {3: []}})
    assert sorted(descendants(1, proc)) == [2, 3]


def test_parent_and_name_with_a_hostile_comm(tmp_path: Path) -> None:
    d = tmp_path / "7"
    d.mkdir()
    (d / "stat").write_text("7 (a) (b) c) S 42 7 7 0 -1\n")
    (d / "comm").write_text("a) (b) c\n")
    assert parent(7, str(tmp_path)) == 42
    assert name(7, str(tmp_path)) == "a) (b) c"
    assert parent(8, str(tmp_path)) is None
    assert name(8, str(tmp_path)) == "?"


@given(st.binary())
def test_children_file_of_any_content(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp, "5", "task", "5")
        task.mkdir(parents=True)
        (task / "children").write_bytes(data)
        assert all(isinstance(c, int) for c in children(5, tmp))


def test_real_process() -> None:
    me = os.getpid()
    assert parent(me) == os.getppid()
    assert name(me).startswith(("python", "pytest"))
    private = uss(me)
    assert private is None or private > 1 << 20
