"""Fatal output patterns: what fails a runner at once, and what must not."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.logs.fatal import DEFAULT_FATAL_PATTERNS, FatalMatcher, fatal_matcher

MUST_MATCH = [
    ("RuntimeError: CUDA error: an illegal memory access was encountered", "illegal memory access"),
    (
        "RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered",
        "illegal memory access",
    ),
    ("HIP error: an illegal memory access was encountered", "illegal memory access"),
    ("CUDA_ERROR_ILLEGAL_ADDRESS raised by cuLaunchKernel", "illegal memory access"),
    ("  what():  cudaErrorIllegalAddress", "illegal memory access"),
    ("RuntimeError: CUDA error: device-side assert triggered", "device-side assert"),
    (
        "CUDA kernel errors might be asynchronously reported; device-side assertion triggered",
        "device-side assert",
    ),
    ("RuntimeError: CUDA error: unspecified launch failure", "unspecified launch failure"),
    ("RuntimeError: CUDA error: misaligned address", "misaligned address"),
    ("Triton Error [CUDA]: misaligned address", "misaligned address"),
    ("CUDA error: an illegal instruction was encountered", "illegal instruction"),
    ("CUDA error: hardware stack error", "hardware stack error"),
    ("CUDA error: the launch timed out and was terminated", "kernel launch timeout"),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "uncorrectable ECC error"),
    ("NVML: Uncorrectable ECC error on GPU 3", "uncorrectable ECC error"),
    (
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, "
        "unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL version 2.20.5",
        "NCCL error",
    ),
    ("NCCL error: unhandled system error, NCCL version 2.18.1", "NCCL error"),
    (
        "ncclRemoteError: A call failed possibly due to a network error or a remote process "
        "exiting prematurely.",
        "NCCL error",
    ),
    ("ncclInternalError: Internal check failed.", "NCCL error"),
    (
        "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, "
        "OpType=ALLREDUCE) ran for 600000 milliseconds before timing out.",
        "NCCL watchdog",
    ),
    (
        "Some NCCL operations have failed or timed out. Due to the asynchronous nature of "
        "CUDA kernels, subsequent GPU operations might run on corrupted/incomplete data.",
        "NCCL watchdog",
    ),
    (
        "Unable to determine the device handle for GPU0000:3B:00.0: GPU has fallen off the bus.",
        "GPU fell off the bus",
    ),
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3", "fatal Xid"),
    ("NVRM: Xid (PCI:0000:07:00): 48, pid=88, An uncorrectable double bit error", "fatal Xid"),
    ("NVRM: Xid (PCI:0000:07:00): 94, pid=88, Contained ECC error", "fatal Xid"),
]

MUST_NOT_MATCH = [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a "
    "total capacity of 79.15 GiB of which 3.06 MiB is free.",
    "RuntimeError: CUDA error: out of memory",
    "CUDA_ERROR_OUT_OF_MEMORY: out of memory",
    "cudaErrorMemoryAllocation",
    "12:00:01.123 INFO    runner r1 | generated 128 tokens in 0.53s (241.5 tok/s)",
    "NCCL INFO Bootstrap : Using eth0:10.0.0.2<0>",
    "NCCL WARN Cuda failure 'out of memory'",
    "NCCL_DEBUG=INFO",
    "NCCL error: invalid usage (run with NCCL_DEBUG=WARN for details)",
    "ncclInvalidArgument: Invalid value for an argument.",
    "NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, Graphics SM Warp Exception",
    "NVRM: Xid (PCI:0000:3b:00): 63, pid=1234, ECC page retirement recorded",
    "NVRM: Xid (PCI:0000:3b:00): 790, not a real Xid",
    "ECC errors: corrected 3, volatile 0",
    "launched 8 workers; stack size 8 MiB; assert statements enabled",
    "Traceback (most recent call last):",
    "",
]


@pytest.mark.parametrize(("line", "name"), MUST_MATCH)
def test_default_patterns_catch_unrecoverable_errors(line: str, name: str) -> None:
    assert FatalMatcher().match(line) == name


@pytest.mark.parametrize("line", MUST_NOT_MATCH)
def test_default_patterns_leave_recoverable_and_ordinary_lines_alone(line: str) -> None:
    assert FatalMatcher().match(line) is None


def test_every_default_has_a_reason_a_keyword_and_a_table_row() -> None:
    named = {name for _, name in MUST_MATCH}
    for pattern in DEFAULT_FATAL_PATTERNS:
        assert pattern.why
        assert pattern.keywords
        assert all(k == k.lower() for k in pattern.keywords)
        assert pattern.name in named, f"no must-match line for {pattern.name}"


@pytest.mark.parametrize("pattern", DEFAULT_FATAL_PATTERNS, ids=lambda p: p.name)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_keywords_never_hide_a_match(pattern: object, data: st.DataObject) -> None:
    """Whatever the regex matches passes the keyword pre-check too."""
    assert hasattr(pattern, "regex")
    line = data.draw(st.from_regex(re.compile(pattern.regex)))
    assert re.search(pattern.regex, line)
    assert FatalMatcher().match(line) is not None


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(line: str) -> None:
    matcher = fatal_matcher((r"(?i)engine\s+dead", r"(a+)+$"), True)
    result = matcher.match(line)
    assert result is None or isinstance(result, str)


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_arbitrary_user_pattern_compiles_or_is_a_value_error(regex: str) -> None:
    try:
        matcher = FatalMatcher([regex], use_defaults=False)
    except ValueError as exc:
        message = str(exc)
    else:
        message = ""
    assert "\n" not in message  # the CLI prints it as one usage line
    if message:
        return
    matcher.match("some output line")
    matcher.match(regex)


def test_user_patterns_add_to_the_defaults() -> None:
    m = FatalMatcher([r"engine (?:wedged|dead)", r"(?i)tpu halted"])
    assert m.match("my engine wedged at step 3") == "pattern 'engine (?:wedged|dead)'"
    assert m.match("TPU HALTED") == "pattern '(?i)tpu halted'"
    assert m.match("CUDA error: unspecified launch failure") == "unspecified launch failure"
    assert m.match("engine fine") is None


def test_defaults_can_be_turned_off() -> None:
    m = FatalMatcher(["engine dead"], use_defaults=False)
    assert m.match("CUDA error: an illegal memory access was encountered") is None
    assert m.match("engine dead") == "pattern 'engine dead'"
    empty = FatalMatcher((), use_defaults=False)
    assert not empty
    assert empty.match("engine dead") is None


def test_patterns_with_the_same_group_name_are_told_apart() -> None:
    m = FatalMatcher([r"(?P<code>E\d+) failed", r"(?P<code>F\d+) lost"], use_defaults=False)
    assert m.match("E7 failed") == "pattern '(?P<code>E\\\\d+) failed'"
    assert m.match("F12 lost") == "pattern '(?P<code>F\\\\d+) lost'"
    assert m.match("E7 lost") is None


def test_a_line_with_a_lone_surrogate_is_matched_not_an_error() -> None:
    """An undecodable byte the runner wrote arrives as a lone surrogate: RE2 cannot take
    it as it is, so the line is matched with it escaped."""
    m = FatalMatcher([r"engine dead"])
    assert m.match("path /x/\udcff: engine dead") == "pattern 'engine dead'"
    assert m.match("\udcff CUDA error: an illegal memory access was encountered") == (
        "illegal memory access"
    )
    assert m.match("\udcff nothing") is None


EVIL = ["(a+)+$", "(a|a)+$", "(a|aa)+$", "(.*a){12}$", "^(\\w+\\s?)+$", "(x+x+)+y"]


def fastest(fn: object, tries: int = 3) -> float:
    """The best of a few timings: a loaded machine may preempt one, never all three."""
    assert callable(fn)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("regex", EVIL)
def test_backtracking_patterns_cost_a_line_linear_time(regex: str) -> None:
    """Python's re takes seconds (27 'a' then '!' against (a+)+$: 4.7 s); RE2 cannot
    backtrack. No line may hold the event loop for 50 ms."""
    m = FatalMatcher([regex], use_defaults=False)
    for line in ("a" * 27 + "!", "a" * 5000 + "!", "x" * 5000, ("word " * 2000) + "!"):
        took = fastest(lambda line=line: m.match(line))
        assert took < 0.05, f"{regex!r} took {took * 1e3:.0f} ms on a {len(line)}-char line"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "aa", "a+", "a*", "(a+)+", "(a|a)*", ".*", "x", "b?"]))
    .map("".join)
    .filter(lambda r: r != ""),
    st.integers(min_value=0, max_value=3000),
    st.sampled_from(["!", "", "b", "x"]),
)
def test_no_pattern_and_line_cost_the_loop_50_ms(regex: str, count: int, tail: str) -> None:
    try:
        m = FatalMatcher([regex + "$"], use_defaults=False)
    except ValueError:
        return  # matches an empty line: refused
    line = "a" * count + tail
    assert fastest(lambda: m.match(line)) < 0.05


FRAGMENTS = [
    "CUDA error: ",
    "an illegal memory access was encountered",
    "illegal instruction",
    "cudaErrorAssert",
    "device-side assertion triggered",
    "misaligned address",
    "[CUDA]: misaligned address",
    "NCCL error in: x.cpp:1, ",
    "unhandled cuda error",
    "remote process exited",
    "Watchdog caught collective operation timeout",
    "NVRM: Xid (PCI:0000:3b:00): ",
    "79",
    "790",
    "Uncorrectable ECC Error",
    "GPU has fallen off the bus",
    "the launch timed out and was terminated",
]


@settings(max_examples=400)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(FRAGMENTS), st.text(st.characters(min_codepoint=32, max_codepoint=126))
        ),
        max_size=8,
    ).map("".join)
)
def test_defaults_find_what_python_re_finds(line: str) -> None:
    """RE2 with the keyword pre-check gives Python re's answer (pieces of fatal lines,
    in any order, among any ASCII)."""
    expected = next((p.name for p in DEFAULT_FATAL_PATTERNS if re.search(p.regex, line)), None)
    assert FatalMatcher().match(line) == expected


@pytest.mark.parametrize(("line", "name"), MUST_MATCH)
def test_defaults_find_their_lines_inside_other_text(line: str, name: str) -> None:
    assert FatalMatcher().match(f"[rank3]: {line} (pid 7)") == name


def test_the_config_refuses_what_re2_cannot_match() -> None:
    from supervisor import SupervisorConfig

    with pytest.raises(ValueError, match="no backreferences"):
        SupervisorConfig(fatal_patterns=(r"(\w+) then \1",))
    with pytest.raises(ValueError, match="no lookahead or lookbehind"):
        SupervisorConfig(fatal_patterns=("engine(?! ok)",))
    assert SupervisorConfig(fatal_patterns=(r"(a+)+$",)).fatal_patterns == (r"(a+)+$",)


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        ("(unclosed", "invalid fatal pattern '(unclosed': missing )"),
        ("a{1001}", "invalid fatal pattern 'a{1001}': invalid repetition size"),
        (r"(a)\1", "no backreferences"),
        (r"(?P<x>a)(?P=x)", "invalid fatal pattern"),
        ("engine(?= dead)", "no lookahead or lookbehind"),
        ("(?<!not )dead", "no lookahead or lookbehind"),
        ("x*", "matches an empty line"),
        ("^", "matches an empty line"),
    ],
)
def test_bad_user_patterns_are_one_line_value_errors(regex: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        FatalMatcher([regex])
    assert "\n" not in str(info.value)
