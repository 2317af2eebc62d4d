"""What one runner output line costs the supervisor: fatal matching and the log file.

Measured in one run, each beside its baseline:
- fatal matching of an ordinary line: the defaults alone, the defaults plus one pattern
  of the user's (RE2, what the supervisor runs), and that pattern with Python's ``re``
  (the engine used before; backtracking);
- a hostile line, 27 ``a`` and a ``!``, against ``(a+)+$``: RE2's time, and ``re``'s on
  a shorter line of the same shape (its time doubles with each ``a``: 27 would take
  seconds);
- the log-file writer: lines per second from `RunnerLog.write` to the disk (flushed),
  and the process CPU per line, against a plain ``file.write`` loop of the same text.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable

from bench.common import Mode, progress
from bench.report import Row, Section, Stats, ratio
from supervisor.logs.fatal import FatalMatcher
from supervisor.logs.files import flush_log_files, open_runner_log

ORDINARY = "12:00:01.123 INFO    runner r1 | generated 128 tokens in 0.53s (241.5 tok/s)"
USER_PATTERN = r"engine \w+ is dead"
EVIL_PATTERN = r"(a+)+$"
EVIL_LINE = "a" * 27 + "!"
RE_EVIL_AS = 20  # ``re`` gets 20 ``a``: 2**7 times less work than 27, still measurable


def _per_call(fn: Callable[[], object], calls: int, rounds: int) -> list[float]:
    """Seconds per call, one sample per round of ``calls`` calls."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    return samples


def _writer(lines: int, rounds: int) -> tuple[list[float], list[float]]:
    """(lines/s, CPU s per line) through the runner log writer."""
    rates, cpu = [], []
    with tempfile.TemporaryDirectory(prefix="bench-loglines-") as log_dir:
        for r in range(rounds):
            log = open_runner_log(
                log_dir, f"r{r}", incarnation=1, pid=1, rotation="50 MB", retention=2
            )
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(lines):
                log.write("output", f"{ORDINARY} {i}")
            log.close()
            flush_log_files(60.0)
            wall, used = time.perf_counter() - t0, time.process_time() - c0
            rates.append(lines / wall)
            cpu.append(used / lines)
    return rates, cpu


def _plain_file(lines: int, rounds: int) -> tuple[list[float], list[float]]:
    rates, cpu = [], []
    with tempfile.TemporaryDirectory(prefix="bench-loglines-") as log_dir:
        for r in range(rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            with open(f"{log_dir}/plain{r}.log", "w") as f:
                for i in range(lines):
                    f.write(f"{ORDINARY} {i}\n")
            wall, used = time.perf_counter() - t0, time.process_time() - c0
            rates.append(lines / wall)
            cpu.append(used / lines)
    return rates, cpu


def run(mode: Mode) -> Section:
    calls, rounds = mode.pick((20_000, 5), (100_000, 15))
    s = Section("Runner output lines: fatal matching and log files")
    progress("loglines: fatal matching, RE2 against re")
    defaults = FatalMatcher()
    with_user = FatalMatcher([USER_PATTERN])
    python_re = re.compile(USER_PATTERN)
    m = "fatal match, ordinary line"
    base = Stats.of(_per_call(lambda: defaults.match(ORDINARY), calls, rounds), "s")
    ours = Stats.of(_per_call(lambda: with_user.match(ORDINARY), calls, rounds), "s")
    old = Stats.of(
        _per_call(lambda: (defaults.match(ORDINARY), python_re.search(ORDINARY)), calls, rounds),
        "s",
    )
    s.add(Row(m, "ours: defaults + 1 user pattern (RE2 set)", "s", ours))
    s.add(Row(m, "defaults alone (keyword pre-check, RE2)", "s", base))
    s.add(
        Row(
            m,
            "baseline: defaults + the user pattern with re",
            "s",
            old,
            ratio(ours.median, old.median, "s"),
        )
    )

    evil = FatalMatcher([EVIL_PATTERN], use_defaults=False)
    e = "fatal match, (a+)+$ on a's then '!'"
    ours_evil = Stats.of(_per_call(lambda: evil.match(EVIL_LINE), 100, rounds), "s")
    s.add(
        Row(
            e,
            f"ours: RE2, {len(EVIL_LINE)} chars",
            "s",
            ours_evil,
            target="< 50 ms per line",
            met=ours_evil.tail < 0.05,
        )
    )
    progress(f"loglines: re on {RE_EVIL_AS} a's (backtracks)")
    evil_re = re.compile(EVIL_PATTERN)
    short = "a" * RE_EVIL_AS + "!"
    re_evil = Stats.of(_per_call(lambda: evil_re.search(short), 1, rounds), "s")
    s.add(Row(e, f"baseline: re, {len(short)} chars (27 a's: ~{2**7}x this)", "s", re_evil))

    progress("loglines: log file writer against a plain file loop")
    lines = mode.pick(50_000, 200_000)
    w_rate, w_cpu = _writer(lines, rounds)
    p_rate, p_cpu = _plain_file(lines, rounds)
    t = "log file lines, write to disk"
    ours_rate, plain_rate = Stats.of(w_rate, "/s"), Stats.of(p_rate, "/s")
    s.add(Row(t, "ours: RunnerLog.write -> writer thread (flushed)", "/s", ours_rate))
    s.add(
        Row(
            t,
            "baseline: file.write loop",
            "/s",
            plain_rate,
            ratio(ours_rate.median, plain_rate.median, "/s"),
        )
    )
    c = "log file lines, CPU per line"
    ours_cpu, plain_cpu = Stats.of(w_cpu, "s"), Stats.of(p_cpu, "s")
    s.add(Row(c, "ours: event loop + writer thread", "s", ours_cpu))
    s.add(
        Row(
            c,
            "baseline: file.write loop",
            "s",
            plain_cpu,
            ratio(ours_cpu.median, plain_cpu.median, "s"),
        )
    )
    s.notes.append(
        "The writer's rate includes waiting for the flush; its CPU is the whole process's "
        "(caller and writer thread). The user pattern is searched on every line; the "
        "defaults only on a line with one of their keywords."
    )
    return s
