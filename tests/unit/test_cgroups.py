"""cgroup v2 detection and the runner cgroup's file protocol, on fake trees.

The kernel's side (mkdir making interface files, cgroup.kill killing) is exercised
for real in tests/integration/test_containment_cgroup.py where the machine allows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.cgroups import (
    Delegation,
    RunnerCgroup,
    cgroup2_mount,
    enable_memory,
    find_delegation,
    host_dir,
    unified_path,
)

HYBRID = """\
9:name=systemd:/
4:memory:/process_api/ee2a34
1:cpu:/
0::/
"""
V1_ONLY = "4:memory:/user.slice\n1:cpu,cpuacct:/user.slice\n"
MOUNTS_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_unified_path_is_the_zero_line() -> None:
    assert unified_path(HYBRID) == "/"
    assert unified_path("0::/system.slice/app.service\n") == "/system.slice/app.service"
    assert unified_path(V1_ONLY) is None
    assert unified_path("") is None
    # a v1 hierarchy numbered 0 would name controllers: not the unified one
    assert unified_path("0:cpu:/x\n") is None


def test_cgroup2_mount_and_escapes() -> None:
    assert cgroup2_mount(MOUNTS_HYBRID) == ("/sys/fs/cgroup/unified", "/")
    line = r"30 1 0:26 /a\040b /sys/fs/my\040cg rw - cgroup2 cgroup2 rw"
    assert cgroup2_mount(line) == ("/sys/fs/my cg", "/a b")
    assert cgroup2_mount(MOUNTS_HYBRID.splitlines()[1]) is None  # v1 only


def test_host_dir_maps_the_path_under_the_mount() -> None:
    assert host_dir("/", ("/sys/fs/cgroup", "/")) == Path("/sys/fs/cgroup")
    assert host_dir("/a/b", ("/sys/fs/cgroup", "/")) == Path("/sys/fs/cgroup/a/b")
    # a mount of a subtree (a container's bind mount of its own cgroup)
    assert host_dir("/pod/c1/x", ("/cg", "/pod/c1")) == Path("/cg/x")
    assert host_dir("/pod/c1", ("/cg", "/pod/c1")) == Path("/cg")
    assert host_dir("/pod/c10", ("/cg", "/pod/c1")) is None  # a sibling, not inside
    assert host_dir("/elsewhere", ("/cg", "/pod/c1")) is None


@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    unified_path(text)
    cgroup2_mount(text)


def _fake(
    tmp_path: Path, own: str, *, kill: bool = True, files: dict[str, str] | None = None
) -> Path:
    """A /proc/self with ``own`` as its cgroup, and a cgroup2 mount holding it."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    mount = tmp_path / "cgroup2"
    (proc / "self" / "cgroup").write_text(f"1:cpu:/\n0::{own}\n")
    (proc / "self" / "mountinfo").write_text(f"41 31 0:38 / {mount} rw - cgroup2 cgroup2 rw\n")
    base = mount / own.lstrip("/")
    base.mkdir(parents=True)
    (base / "cgroup.procs").write_text(f"{os.getpid()}\n")
    if kill:
        (base / "cgroup.kill").write_text("")
    for name, text in (files or {}).items():
        (base / name).write_text(text)
    return proc


def test_a_delegated_cgroup_is_found(tmp_path: Path) -> None:
    proc = _fake(tmp_path, "/system.slice/app.service")
    found = find_delegation(str(proc))
    assert found.base == tmp_path / "cgroup2" / "system.slice" / "app.service"
    assert "delegated" in found.reason


def test_the_root_cgroup_is_not_a_delegation(tmp_path: Path) -> None:
    # A hierarchy root has no cgroup.kill: creating cgroups there manages the machine.
    found = find_delegation(str(_fake(tmp_path, "/", kill=False)))
    assert found.base is None
    assert "root" in found.reason


def test_no_unified_hierarchy(tmp_path: Path) -> None:
    proc = _fake(tmp_path, "/x")
    (proc / "self" / "cgroup").write_text(V1_ONLY)
    found = find_delegation(str(proc))
    assert found.base is None
    assert "v1" in found.reason


def test_no_cgroup2_mount(tmp_path: Path) -> None:
    proc = _fake(tmp_path, "/x")
    (proc / "self" / "mountinfo").write_text(MOUNTS_HYBRID.splitlines()[1] + "\n")
    assert find_delegation(str(proc)).reason == "cgroup v2 is not mounted"


def test_own_cgroup_not_under_the_mount(tmp_path: Path) -> None:
    proc = _fake(tmp_path, "/x")
    (proc / "self" / "cgroup").write_text("0::/gone\n")
    assert "not visible" in find_delegation(str(proc)).reason


def test_unreadable_proc(tmp_path: Path) -> None:
    assert find_delegation(str(tmp_path / "nowhere")).base is None


def _delegation(tmp_path: Path, **files: str) -> Delegation:
    proc = _fake(tmp_path, "/svc", files={k.replace("_", ".", 1): v for k, v in files.items()})
    found = find_delegation(str(proc))
    assert found.base is not None
    return found


def test_memory_controller_not_offered(tmp_path: Path) -> None:
    d = _delegation(tmp_path, cgroup_controllers="cpu io\n", cgroup_subtree_control="")
    assert enable_memory(d, os.getpid()).memory is False


def test_memory_controller_already_on(tmp_path: Path) -> None:
    d = _delegation(tmp_path, cgroup_controllers="memory\n", cgroup_subtree_control="memory\n")
    assert enable_memory(d, os.getpid()).memory is True


def test_memory_controller_turned_on(tmp_path: Path) -> None:
    d = _delegation(tmp_path, cgroup_controllers="cpu memory\n", cgroup_subtree_control="")
    assert enable_memory(d, os.getpid()).memory is True
    assert d.base is not None
    assert (d.base / "cgroup.subtree_control").read_text() == "+memory"


def test_no_memory_without_a_controllers_file(tmp_path: Path) -> None:
    d = _delegation(tmp_path)
    assert enable_memory(d, os.getpid()) == d


def test_runner_cgroup_file_protocol(tmp_path: Path) -> None:
    d = _delegation(tmp_path)
    assert d.base is not None
    cg = RunnerCgroup.create(d, "r/../weird id")
    assert cg.path.parent == d.base
    assert "/" not in cg.path.name
    assert " " not in cg.path.name
    assert cg.pids() == []
    assert cg.memory() is None  # no memory controller
    cg.add(1234)
    assert cg.pids() == [1234]
    cg.kill()
    assert (cg.path / "cgroup.kill").read_text() == "1"
    (cg.path / "memory.current").write_text("5000\n")
    (cg.path / "memory.stat").write_text("anon 3000\ninactive_file 1500\nactive_file 500\n")
    assert cg.memory() == 3500
    assert cg.remove() is False  # not empty (a real cgroup dir is empty of processes)
    for f in cg.path.iterdir():
        f.unlink()
    assert cg.remove() is True
    assert cg.remove() is True  # already gone


def test_runner_cgroups_are_unique(tmp_path: Path) -> None:
    d = _delegation(tmp_path)
    a, b = RunnerCgroup.create(d, "same"), RunnerCgroup.create(d, "same")
    assert a.path != b.path


def test_kill_of_a_removed_cgroup_is_quiet(tmp_path: Path) -> None:
    d = _delegation(tmp_path)
    cg = RunnerCgroup.create(d, "x")
    cg.remove()
    cg.kill()
    with pytest.raises(FileNotFoundError):
        (cg.path / "cgroup.kill").read_text()
