"""NVML readings -> decisions, without a GPU (supervisor.gpu.xid, supervisor.gpu.decisions)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.gpu.decisions import (
    DeviceSample,
    GpuEvent,
    GpuProcess,
    RunnerGpu,
    on_event,
    over_memory_limit,
    place,
)
from supervisor.gpu.xid import XIDS, describe_xid

GIB = 2**30


def dev(index: int, *procs: tuple[int, int | None], **kw: object) -> DeviceSample:
    return DeviceSample(
        index,
        f"GPU-{index}",
        tuple(GpuProcess(p, m) for p, m in procs),
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ the Xid table
def test_xids_the_issue_names_are_known_and_classified() -> None:
    critical = {13, 31, 43, 48, 61, 62, 64, 74, 79, 94, 95, 119, 120}
    for number in critical:
        assert describe_xid(number).critical, number
    # 45 follows every CUDA process killed mid-kernel (our own kills too); 63 and 92
    # are informational: acting on them would restart healthy runners.
    for number in (45, 63, 92):
        assert not describe_xid(number).critical, number


def test_every_row_says_what_it_means() -> None:
    for number, info in XIDS.items():
        assert info.number == number
        assert info.meaning
        assert "\n" not in info.meaning
        assert info.action in ("fail", "fail_context", "record")


@given(st.integers(min_value=0, max_value=10_000).filter(lambda n: n not in XIDS))
def test_an_unknown_xid_is_recorded_not_acted_on(number: int) -> None:
    info = describe_xid(number)
    assert info.number == number
    assert not info.critical
    assert str(number) in info.meaning


# ----------------------------------------------------------------------- placement
def test_place_matches_pids_of_the_whole_tree_and_sums_memory() -> None:
    devices = [
        dev(0, (100, GIB), (101, 2 * GIB), (999, GIB), ecc_uncorrected=1, retired_pages=2),
        dev(1, (101, GIB), (200, 3 * GIB), ecc_uncorrected=0, retired_pages=0),
    ]
    got = place(devices, {"a": [10, 100, 101], "b": [20, 200], "idle": [30]})
    assert set(got) == {"a", "b"}  # "idle" has no process on a GPU; 999 is nobody's
    assert got["a"].memory == 4 * GIB
    assert got["a"].by_pid == {100: GIB, 101: 3 * GIB}
    assert got["a"].gpus == ("GPU-0", "GPU-1")
    assert got["a"].ecc_uncorrected == 1  # each GPU counted once, not per process
    assert got["a"].retired_pages == 2
    assert got["b"] == RunnerGpu(3 * GIB, {200: 3 * GIB}, ("GPU-1",), 0, None, 0, None)


def test_place_counts_unknown_memory_as_zero_and_keeps_unknown_ecc_unknown() -> None:
    got = place([dev(0, (1, None))], {"a": [1]})
    assert got["a"].memory == 0
    assert got["a"].ecc_uncorrected is None
    assert got["a"].retirement_pending is None


def test_a_pending_retirement_on_any_gpu_shows() -> None:
    devices = [dev(0, (1, 1), retirement_pending=False), dev(1, (1, 1), retirement_pending=True)]
    assert place(devices, {"a": [1]})["a"].retirement_pending is True


pid_lists = st.lists(st.integers(min_value=1, max_value=60), max_size=6)


@given(
    procs=st.lists(
        st.lists(
            st.tuples(st.integers(min_value=1, max_value=60), st.integers(0, 2**40)), max_size=6
        ),
        max_size=4,
    ),
    runners=st.dictionaries(st.sampled_from("abcd"), pid_lists, max_size=4),
)
def test_place_properties(
    procs: list[list[tuple[int, int]]], runners: dict[str, list[int]]
) -> None:
    devices = [dev(i, *ps) for i, ps in enumerate(procs)]
    got = place(devices, runners)
    owner: dict[int, str] = {}
    for rid, pids in runners.items():
        for pid in pids:
            owner.setdefault(pid, rid)
    # a runner appears iff one of its pids is on some GPU, and holds what its pids hold
    for rid in runners:
        mine = [(d.uuid, p) for d in devices for p in d.processes if owner.get(p.pid) == rid]
        if not mine:
            assert rid not in got
            continue
        assert got[rid].memory == sum(p.memory or 0 for _, p in mine)
        assert sum(got[rid].by_pid.values()) == got[rid].memory
        assert set(got[rid].gpus) == {uuid for uuid, _ in mine}
        assert len(set(got[rid].gpus)) == len(got[rid].gpus)
    assert set(got) <= set(runners)


# -------------------------------------------------------------------------- events
PLACED = place(
    [dev(0, (100, GIB)), dev(1, (200, GIB), (300, GIB))], {"a": [100], "b": [200], "c": [300]}
)


def test_a_critical_xid_fails_every_runner_on_that_gpu_only() -> None:
    got = on_event(GpuEvent(1, "GPU-1", "xid", 79), PLACED)
    assert sorted(d.runner_id for d in got) == ["b", "c"]
    for d in got:
        assert d.reason == "gpu_fault"
        assert "Xid 79" in d.message
        assert "fallen off the bus" in d.message
        assert "xid=79" in d.diagnostics
        assert "xid_meaning=GPU has fallen off the bus" in d.diagnostics
        assert "gpu_uuid=GPU-1" in d.diagnostics
    assert (
        "runner_gpu_pids=200" in got[0].diagnostics or "runner_gpu_pids=200" in got[1].diagnostics
    )


def test_a_context_xid_says_nvml_cannot_name_the_process() -> None:
    (d,) = on_event(GpuEvent(0, "GPU-0", "xid", 31), PLACED)
    assert d.runner_id == "a"
    assert any(line.startswith("scope=context") for line in d.diagnostics)


def test_a_recorded_xid_fails_nobody() -> None:
    assert on_event(GpuEvent(0, "GPU-0", "xid", 45), PLACED) == []
    assert on_event(GpuEvent(0, "GPU-0", "xid", 12345), PLACED) == []


def test_double_bit_ecc_and_a_lost_gpu_fail_the_runners_on_it() -> None:
    (d,) = on_event(GpuEvent(0, "GPU-0", "double_bit_ecc"), PLACED)
    assert (d.runner_id, d.reason) == ("a", "gpu_fault")
    assert "double-bit ECC" in d.message
    lost = on_event(GpuEvent(1, "GPU-1", "gpu_lost"), PLACED)
    assert sorted(x.runner_id for x in lost) == ["b", "c"]
    assert all("lost" in x.message for x in lost)


def test_an_event_on_a_gpu_without_runners_fails_nobody() -> None:
    assert on_event(GpuEvent(7, "GPU-7", "xid", 79), PLACED) == []


@given(st.integers(min_value=-5, max_value=500), st.integers(0, 3))
def test_on_event_fails_exactly_the_runners_on_the_gpu_for_critical_xids(
    xid: int, gpu: int
) -> None:
    got = on_event(GpuEvent(gpu, f"GPU-{gpu}", "xid", xid), PLACED)
    on_gpu = {rid for rid, g in PLACED.items() if f"GPU-{gpu}" in g.gpus}
    expected = on_gpu if describe_xid(xid).critical else set()
    assert {d.runner_id for d in got} == expected
    assert len(got) == len(expected)


# ----------------------------------------------------------------- memory limit
def test_over_memory_limit() -> None:
    placed = place([dev(0, (1, 3 * GIB), (2, GIB))], {"big": [1], "small": [2]})
    assert over_memory_limit(placed, None) == []
    (d,) = over_memory_limit(placed, 2 * GIB)
    assert (d.runner_id, d.reason) == ("big", "memory_limit")
    assert "3072 MiB exceeds gpu_memory_limit 2048 MiB" in d.message
    assert "gpu_memory_by_pid=1: 3072 MiB" in d.diagnostics
    assert over_memory_limit(placed, 3 * GIB) == []  # at the limit is within it


def test_docs_gpu_md_lists_the_xid_table_as_the_code_has_it() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "gpu.md").read_text()
    rows = {
        int(m.group(1)): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| (\d+) \| (.+?) \| `(\w+)` \|$", text, re.MULTILINE)
    }
    assert rows == {n: (i.meaning, i.action) for n, i in XIDS.items()}
