"""The GPU check script's plumbing, on a machine without a GPU (bench/gpu)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.gpu import checks, wheels
from bench.gpu.checks import Setup, has_spare_stage
from bench.report import Section
from supervisor.ipc.proctree import descendants
from tests.support.fake_nvml import FakeNvml

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_runs_every_check_without_a_gpu(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--dry-run", "--reps", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "gpu.md").read_text()
    assert report.startswith("## GPU (dry run: no GPU; these are not GPU results)")
    assert "| device | no GPU |" in report
    assert "broke" not in report
    for row in (
        "ours: RunnerFailed at host (dry run: CPU stand-in engine) | 1 |",
        "baseline: plain Python process, pidfd readable | 1 |",
        "baseline: spawn (dry run: CPU stand-in engine) | 1 |",
        "prespawn (today's spare) | 1 |",
        "ours: illegal address (fatal_log by log) | 1 |",
        "baseline: illegal address, fatal patterns off",
        "OOM task Failed, next task Complete: as wanted",
        "GPU watcher reading |  | not measured: no NVML (no GPU)",
    ):
        assert row in report, row
    stage_rows = [line for line in report.splitlines() if "spare_stage=" in line]
    assert len(stage_rows) == 3
    if not has_spare_stage():
        assert all("not available (RestartPolicy has no spare_stage)" in r for r in stage_rows)
    assert (tmp_path / "gpu-log.txt").exists()


class TreeNvml(FakeNvml):
    """One fake GPU on which every process below this test holds 3 GiB."""

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=3 * 2**30) for p in descendants(os.getpid())]


@pytest.mark.anyio
async def test_the_nvml_check_reads_the_runner_through_the_watcher() -> None:
    setup = Setup(gpu=False, reps=1, weights_mb=1024, nvml=True, nvml_module=TreeNvml(gpus=1))
    section = Section("gpu")
    await checks.nvml_memory(setup, section)
    [held, reading, *_] = section.rows
    assert held.stats is not None
    assert held.stats.median >= 3 * 2**30  # the runner's tree, keeper and runner
    assert "GPU-fake-0" in held.note
    assert reading.stats is not None
    assert reading.stats.n == 20
    assert any("registered on GPU(s): 0" in note for note in section.notes)


def test_missing_names_what_is_not_installed() -> None:
    lacking = wheels.missing(["anyio>=4", "surely-not-installed-pkg>=1"])
    assert lacking[0] == "surely-not-installed-pkg"
    assert "anyio" not in lacking
    assert "loguru" in [r.split(">")[0] for r in wheels.requirements()]


def test_wheels_are_found_by_normalised_name(tmp_path: Path) -> None:
    for name in ("loguru-0.7.3-py3-none-any.whl", "google_re2-1.1-cp312-cp312-x.whl", "x.txt"):
        (tmp_path / name).write_text("")
    found = wheels.wheels_for(["loguru", "google-re2", "py-spy"], tmp_path)
    assert {k: v.name for k, v in found.items()} == {
        "loguru": "loguru-0.7.3-py3-none-any.whl",
        "google-re2": "google_re2-1.1-cp312-cp312-x.whl",
    }
    assert wheels.install(["py-spy"], tmp_path, tmp_path / "site") == [
        f"py-spy: no wheel in {tmp_path}"
    ]
