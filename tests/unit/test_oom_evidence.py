"""The kernel's OOM evidence: cgroup and vmstat counters, kernel log records (fake
/proc trees and records; one real child for the kept-open cgroup file)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.evidence import OomWitness, kmsg, memcg
from supervisor.core.procfs import ProcFile

V1_CGROUP = "9:name=systemd:/\n4:memory:/jobs/a\n3:cpuset:/\n0::/\n"
V2_CGROUP = "0::/jobs/b\n"
MOUNTINFO = (
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
V2_ONLY = "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
MEMCG_LINE = (
    "6,900,1378145515,-;Memory cgroup out of memory: Killed process 4242 (python) "
    "total-vm:193868kB, anon-rss:108928kB\n"
)
SUMMARY = (
    "6,899,1378145510,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
    "task=python,pid=4242,uid=0\n SUBSYSTEM=memory\n"
)


def test_the_memory_cgroup_is_v1_where_the_controller_lives_there() -> None:
    cg = memcg.memory_cgroup(V1_CGROUP, MOUNTINFO)
    assert cg == memcg.MemoryCgroup(Path("/sys/fs/cgroup/memory/jobs/a"), 1)
    assert cg.counter_file.name == "memory.oom_control"
    v2 = memcg.memory_cgroup(V2_CGROUP, V2_ONLY)
    assert v2 == memcg.MemoryCgroup(Path("/sys/fs/cgroup/jobs/b"), 2)
    assert v2.counter_file.name == "memory.events"
    assert memcg.memory_cgroup(V1_CGROUP, "") is None  # v1 path, hierarchy not mounted
    assert memcg.memory_cgroup("", MOUNTINFO) is None


def test_counters_read_the_oom_kill_line() -> None:
    assert memcg.oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3
    assert memcg.oom_kill_count("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n") == 1
    assert memcg.oom_kill_count("pgfault 10\n") is None
    assert memcg.oom_kill_count("oom_kill x\n") is None


@given(st.text(max_size=300))
def test_cgroup_parsers_never_raise(text: str) -> None:
    memcg.memory_cgroup(text, text)
    memcg.oom_kill_count(text)
    kmsg.parse_record(text)
    kmsg.oom_pid(text)


def test_kernel_lines_name_the_pid_after_the_start() -> None:
    records = [SUMMARY, MEMCG_LINE, "6,901,1378145600,-;Killed process 77 (other)\n"]
    lines = kmsg.oom_lines(records, {4242}, since=1378.0)
    assert lines == [SUMMARY.split(";", 1)[1].split("\n")[0], MEMCG_LINE.split(";", 1)[1][:-1]]
    assert kmsg.oom_lines(records, {4242}, since=1379.0) == []  # before this runner
    assert kmsg.oom_lines(records, {42}, since=0.0) == []  # pid 42 is not 4242
    assert kmsg.oom_pid("Out of memory: Killed process 12 (x) total-vm:1kB") == 12
    assert kmsg.oom_pid("oom_reaper: reaped process 12 (x)") is None
    assert kmsg.parse_record("garbage") is None


def test_an_unreadable_kernel_log_is_no_records(tmp_path: Path) -> None:
    assert kmsg.read_records(str(tmp_path / "absent")) == []


def _fake_proc(root: Path, pid: int, cgroup_text: str, stat_flags: int, state: str = "S") -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "cgroup").write_text(cgroup_text)
    (root / str(pid) / "stat").write_text(f"{pid} (py thon) {state} 1 1 1 0 -1 {stat_flags} 0 0\n")


def test_the_witness_follows_a_move_and_reads_the_increase(tmp_path: Path) -> None:
    proc, fs = tmp_path / "proc", tmp_path / "fs"
    (proc / "self").mkdir(parents=True)
    mount = f"35 31 0:32 / {fs} rw - cgroup cgroup rw,memory\n"
    (proc / "self" / "mountinfo").write_text(mount)
    (proc / "vmstat").write_text("nr_free_pages 1\noom_kill 5\n")
    for name, kills in (("a", 2), ("b", 7)):
        (fs / name).mkdir(parents=True)
        (fs / name / "memory.oom_control").write_text(f"oom_kill_disable 0\noom_kill {kills}\n")
    witness = OomWitness(str(proc), kmsg_path=str(tmp_path / "no-kmsg"))
    _fake_proc(proc, 10, "4:memory:/a\n", 0)
    witness.note(10)
    _fake_proc(proc, 10, "4:memory:/b\n", 0)  # moved into b
    witness.note(10)
    _fake_proc(proc, 10, "4:memory:/\n", 0x4, "R")  # exiting: v1 shows the root now
    witness.note(10)
    (fs / "b" / "memory.oom_control").write_text("oom_kill 8\n")
    (proc / "vmstat").write_text("oom_kill 6\n")
    evidence = witness.collect()
    assert evidence.cgroup == fs / "b"
    assert (evidence.cgroup_kills, evidence.system_kills) == (1, 1)
    assert evidence.oom_killed
    assert evidence.kmsg_readable is None  # not read yet
    assert witness.read_kernel_log(evidence, [10]).kmsg_readable is False


@pytest.mark.anyio
async def test_the_kernel_log_is_read_only_after_a_counted_oom_kill(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "vmstat").write_text("oom_kill 5\n")
    witness = OomWitness(str(proc), kmsg_path=str(tmp_path / "no-kmsg"))
    quiet = await witness.after_sigkill([10])
    assert (quiet.system_kills, quiet.kmsg_readable) == (0, None)
    assert "kmsg" not in quiet.counters()
    (proc / "vmstat").write_text("oom_kill 6\n")
    counted = await witness.after_sigkill([10])
    assert (counted.system_kills, counted.kmsg_readable) == (1, False)
    assert counted.counters().endswith("; /dev/kmsg not readable")
    assert not counted.oom_killed  # the system's count alone names nobody


def test_the_real_system_counter_is_readable_on_linux() -> None:
    if os.path.exists("/proc/vmstat"):
        assert memcg.system_oom_kills() is not None


def test_the_kernel_log_is_read_from_its_start_on_only(tmp_path: Path) -> None:
    ring = tmp_path / "kmsg"  # a file stands in: several records per read are parsed too
    ring.write_text(MEMCG_LINE)  # before the reader started: not ours to find
    log = kmsg.KernelLog(str(ring))
    assert log.readable is None
    log.start()
    assert log.readable
    assert log.oom_lines({4242}, since=0.0) == []
    with ring.open("a") as f:
        f.write("6,950,1378145600,-;eth0: link up\n" + SUMMARY + MEMCG_LINE)
    assert log.oom_lines({4242}, since=1378.0) == [
        SUMMARY.split(";", 1)[1].split("\n")[0],
        MEMCG_LINE.split(";", 1)[1].rstrip("\n"),
    ]
    assert log.oom_lines({4242}, since=1379.0) == []  # kept, but before that time
    assert log.oom_lines({7}, since=0.0) == []
    log.close()
    missing = kmsg.KernelLog(str(tmp_path / "absent"))
    missing.start()
    assert (missing.readable, missing.oom_lines({1}, 0.0)) == (False, None)


def test_the_kept_open_cgroup_file_reads_like_a_fresh_open_until_the_process_is_gone() -> None:
    child = subprocess.Popen(["sleep", "30"])
    file = ProcFile(child.pid, "cgroup")
    try:
        first = memcg.decode_cgroup(file.read())
        assert first is not None
        assert first == memcg.proc_cgroup(child.pid)
        assert file.read() == first.encode()  # read again from the start, not where it ended
    finally:
        child.kill()
        child.wait()
    assert file.read() is None  # reaped: the fd names the dead process, never a new one
    file.close()
    file.close()
    assert file.read() is None
    assert ProcFile(2**22 + 12345, "cgroup").read() is None  # never there


def test_a_proc_file_longer_than_its_first_read_is_read_whole() -> None:
    small = ProcFile(os.getpid(), "status", size=16)
    try:
        data = small.read()
        assert data is not None
        with open(f"/proc/{os.getpid()}/status", "rb") as f:
            assert data.split(b"\n")[0] == f.read().split(b"\n")[0]
        assert len(data) > 16
    finally:
        small.close()
