"""``python -m bench.gpu --out DIR [--wheels DIR] [--dry-run]``: the GPU checks.

Writes ``DIR/gpu.md`` (a section for bench/RESULTS.md: the device, the driver, the
table and its notes) and ``DIR/gpu-log.txt`` (the supervisor's log lines), and prints
the table. ``--dry-run`` runs on a machine without a GPU: the rows a CPU can run use
the echo engine to prove the plumbing, the others say "no GPU"; its figures are not
GPU results. Exit 1 if a check broke. Also ``python -m bench --only gpu``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio

from bench.common import SUPERVISOR_LOG, Mode, progress, quiet_supervisor_logs
from bench.gpu.checks import CHECKS, Setup, has_spare_stage
from bench.report import Section, machine_info, render_notes, render_table

#: One run stays under about five minutes with these.
REPS = 5
WEIGHTS_MB = 2048


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu.md and gpu-log.txt")
    p.add_argument(
        "--wheels",
        type=Path,
        default=None,
        help="folder of wheels for what this machine lacks (docs/gpu.md says how to fetch them)",
    )
    p.add_argument(
        "--site",
        type=Path,
        default=Path("/tmp/runner-supervisor-site"),
        help="where the wheels are installed (default /tmp/runner-supervisor-site)",
    )
    p.add_argument("--dry-run", action="store_true", help="no GPU: check the plumbing only")
    p.add_argument("--reps", type=int, default=REPS, help=f"repetitions per row (default {REPS})")
    p.add_argument(
        "--weights-mb",
        type=int,
        default=WEIGHTS_MB,
        help=f"MiB the CUDA engine puts on the GPU (default {WEIGHTS_MB})",
    )
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    return p


def detect(dry_run: bool, reps: int, weights_mb: int, nvml_module: Any = None) -> Setup:
    """What this machine has; a dry run never touches a GPU even where there is one."""
    setup = Setup(gpu=False, reps=reps, weights_mb=weights_mb, nvml_module=nvml_module)
    if dry_run:
        return setup
    from supervisor.gpu.nvml import Nvml

    nvml = Nvml.open(nvml_module)
    if nvml is None:
        return setup
    try:
        setup.nvml = True
        setup.device, setup.driver = device_words(nvml_module)
    finally:
        nvml.close()
    try:
        import torch

        setup.gpu = bool(torch.cuda.is_available())
    except ImportError:
        setup.gpu = False
    return setup


def device_words(module: Any = None) -> tuple[str, str]:
    """The first GPU's name and the driver version, as NVML reports them."""
    if module is None:
        import pynvml as module
    module.nvmlInit()
    try:
        count = module.nvmlDeviceGetCount()
        names = [
            str(module.nvmlDeviceGetName(module.nvmlDeviceGetHandleByIndex(i)))
            for i in range(count)
        ]
        driver = str(module.nvmlSystemGetDriverVersion())
    finally:
        module.nvmlShutdown()
    return f"{count} x {names[0]}" if names else "no GPU", driver


def versions() -> str:
    out = [f"python {platform.python_version()}"]
    for name in ("torch", "cupy-cuda13x", "cupy-cuda12x", "nvidia-ml-py", "py-spy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{name} {metadata.version(name)}")
    return ", ".join(out)


def run_checks(setup: Setup, backend: str) -> tuple[Section, bool]:
    title = "GPU checks" + (" (DRY RUN: no GPU, plumbing only)" if not setup.gpu else "")
    section = Section(title)
    broken = False
    started = time.monotonic()
    for check in CHECKS:
        try:
            anyio.run(check, setup, section, backend=backend)
        except Exception as exc:  # noqa: BLE001 - report the others, then fail the run
            broken = True
            traceback.print_exc()
            section.not_measured(check.__name__, "all", "s", f"broke: {type(exc).__name__}: {exc}")
    section.seconds = time.monotonic() - started
    if not has_spare_stage():
        section.notes.append(
            "Spare stages: RestartPolicy has no spare_stage field at this commit, so the "
            "imported/prepared/loaded rows are not available."
        )
    return section, broken


def render(setup: Setup, section: Section, command: str) -> str:
    lines = [
        "## GPU" + ("" if setup.gpu else " (dry run: no GPU; these are not GPU results)"),
        "",
        f"Produced by `{command}` at commit {dict(machine_info('gpu', 'asyncio'))['commit']}; "
        "every figure beside its "
        "baseline from the same run.",
        "",
        "| machine | |",
        "|---|---|",
        f"| device | {setup.device} |",
        f"| driver | {setup.driver or '-'} |",
        f"| software | {versions()} |",
        "",
        render_table([section]),
        "",
        render_notes([section]),
        "",
    ]
    return "\n".join(lines)


def run(mode: Mode) -> Section:
    """For ``python -m bench --only gpu``: the checks as one section of the report."""
    setup = detect(False, reps=mode.pick(3, REPS), weights_mb=WEIGHTS_MB)
    if not setup.gpu:
        section = Section("GPU checks")
        section.not_measured("GPU checks", "all", "s", "no GPU (python -m bench.gpu --dry-run)")
        return section
    section, _ = run_checks(setup, mode.backend)
    return section


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.reps < 1 or args.weights_mb < 1:
        print("python -m bench.gpu: --reps and --weights-mb must be >= 1", file=sys.stderr)
        return 2
    quiet_supervisor_logs()
    setup = detect(args.dry_run, args.reps, args.weights_mb)
    progress(f"gpu: {setup.device}, driver {setup.driver or '-'}; {setup.engine_words}")
    section, broken = run_checks(setup, args.backend)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    report = render(setup, section, command.strip())
    (args.out / "gpu.md").write_text(report)
    (args.out / "gpu-log.txt").write_text("".join(SUPERVISOR_LOG))
    print(render_table([section]))
    progress(f"wrote {args.out / 'gpu.md'}")
    return 1 if broken else 0
